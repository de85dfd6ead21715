"""Run code no one here wrote (oslo.vmware, Cinder) in a process of its own.

Each child module (:mod:`tests.cinder.oslo_child`, :mod:`tests.cinder.cinder_child`)
reads one JSON request on stdin: the simulator's address and credentials,
the generated WSDL (:mod:`tests.cinder.wsdl`) and a list of calls; it prints
one JSON list, a result or an error per call.
"""

from __future__ import annotations

import json
import subprocess
import sys
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
    module: str, vc: Endpoint, calls: list[list[Any]], *, extra: dict[str, Any] | None = None
) -> subprocess.Popen[str]:
    """Start ``module`` on ``calls`` without waiting; :func:`child_results` reads its answer."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stdin is not None
    proc.stdin.write(_request(vc, calls, **(extra or {})))
    proc.stdin.close()
    proc.stdin = None  # written: communicate() only reads
    return proc


def child_results(proc: subprocess.Popen[str], timeout: float) -> list[Any]:
    """The JSON answer of a child :func:`start_child` started."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
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
    request = _request(
        vc, calls, **{"options": options or {}, "count_calls": count_calls, **(extra or {})}
    )
    proc = subprocess.run(
        [sys.executable, "-m", module],
        input=request,
        capture_output=True,
        text=True,
        env=child_env(**(env or {})),
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results: list[Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results
