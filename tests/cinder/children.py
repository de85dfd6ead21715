"""Run code no one here wrote (oslo.vmware, Cinder) in a process of its own.

Each child module (:mod:`tests.cinder.oslo_child`, :mod:`tests.cinder.cinder_child`)
reads one JSON request on stdin: the simulator's address and credentials,
the generated WSDL (:mod:`tests.cinder.wsdl`) and a list of calls; it prints
one JSON list, a result or an error per call.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from tests.cinder.wsdl import vim_wsdl
from tests.conftest import child_env

__all__ = ["Endpoint", "child_results", "run_child", "start_child"]


class Endpoint(Protocol):
    """What a child needs to reach vCenter (a test's Target, the benchmark's simulator)."""

    @property
    def url(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def password(self) -> str: ...
    @property
    def ca_file(self) -> str: ...


def _request(vc: Endpoint, calls: list[list[Any]], **fields: Any) -> str:
    """The JSON request a child reads on stdin."""
    return json.dumps(
        {
            "options": {},
            **fields,
            "url": vc.url,
            "username": vc.username,
            "password": vc.password,
            "ca_file": vc.ca_file,
            "wsdl": vim_wsdl().as_uri(),
            "calls": calls,
        }
    )


def start_child(
    module: str,
    vc: Endpoint,
    calls: list[list[Any]],
    *,
    extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``module`` on ``calls`` without waiting; :func:`child_results` reads its answer.

    A new interpreter, with ``env`` added to the test's environment.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(**(env or {})),
    )
    assert proc.stdin is not None
    proc.stdin.write(_request(vc, calls, **(extra or {})))
    proc.stdin.close()
    proc.stdin = None  # written: communicate() only reads
    return proc


def child_results(proc: subprocess.Popen[str], timeout: float) -> list[Any]:
    """The JSON answer of a child :func:`start_child` started (killed if it overruns)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return _answer(proc.returncode, out, err)


def _answer(code: int, out: str, err: str) -> list[Any]:
    """A child's JSON answer, the last line it printed; it must have succeeded."""
    assert code == 0, err[-3000:]
    results: list[Any] = json.loads(out.strip().splitlines()[-1])
    return results


def run_child(
    module: str,
    vc: Endpoint,
    calls: list[list[Any]],
    timeout: float,
    *,
    options: dict[str, Any] | None = None,
    count_calls: bool = False,
    extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Run ``module`` on ``calls`` against ``vc`` (with backend ``options``); its JSON answer.

    ``count_calls``: each call's result also says how many SOAP round trips
    it made (the simulator's count; nothing else may use it meanwhile).
    """
    fields = {"options": options or {}, "count_calls": count_calls, **(extra or {})}
    if module in _FORKED and env is None and os.environ.get("VMDK_SNAP_TEST_FORK", "1") == "1":
        return _answer(*_zygote().run(module, _request(vc, calls, **fields), timeout))
    # Its own environment (a package on its path): a new interpreter.
    return child_results(start_child(module, vc, calls, extra=fields, env=env), timeout)


# The eventlet-patched children, as cinder-volume runs (oslo_child runs
# oslo.vmware unpatched: a new interpreter each time).
_FORKED = frozenset({"tests.cinder.cinder_child", "tests.cinder.manager_child"})


class _Zygote:
    """:mod:`tests.cinder.zygote`: forks each child with Cinder imported already.

    One per test process, started on first use, ended with the process (its
    input closes). The children are the same modules, run as ``python -m``
    runs them; only the import is shared. ``VMDK_SNAP_TEST_FORK=0`` starts a
    new interpreter per child instead.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cinder.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self.answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, name="cinder-zygote", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.answers.put(json.loads(line))
        self.answers.put(None)  # it ended

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _answer(self, timeout: float) -> dict[str, Any]:
        answer = self.answers.get(timeout=timeout)
        if answer is None:
            raise RuntimeError(f"the Cinder zygote ended (exit {self.proc.wait()})")
        return answer

    def run(self, module: str, request: str, timeout: float) -> tuple[int, str, str]:
        """Fork ``module`` on ``request``: its exit code, stdout and stderr."""
        with tempfile.TemporaryDirectory(prefix="cinder-fork-") as tmp:
            files = {name: Path(tmp, name) for name in ("stdin", "stdout", "stderr")}
            files["stdin"].write_text(request)
            line = {"module": module, **{k: str(v) for k, v in files.items()}}
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(line) + "\n")
            self.proc.stdin.flush()
            pid = self._answer(60)["pid"]
            try:
                code = int(self._answer(timeout)["rc"])
            except queue.Empty:
                os.kill(pid, signal.SIGKILL)
                self._answer(60)
                raise subprocess.TimeoutExpired(module, timeout) from None
            return code, files["stdout"].read_text(), files["stderr"].read_text()


_ZYGOTE: _Zygote | None = None
_ZYGOTE_LOCK = threading.Lock()


def _zygote() -> _Zygote:
    global _ZYGOTE  # noqa: PLW0603 - one per test process
    with _ZYGOTE_LOCK:
        if _ZYGOTE is None or not _ZYGOTE.alive():
            _ZYGOTE = _Zygote()
        return _ZYGOTE
