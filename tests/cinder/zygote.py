"""A warm parent for Cinder's child processes: Cinder imported once per test worker.

A child (:mod:`tests.cinder.cinder_child`, :mod:`tests.cinder.manager_child`)
spends about 2.5 s of CPU importing Cinder, eventlet-patched, before it does
anything, and the tests start dozens; on a 2-core machine running the suite
on 10 workers that was minutes. This process imports them once and forks one
child per request. The child is a new process as far as Cinder and
oslo.vmware are concerned: nothing of them was configured or connected
before the fork (no ``cfg.CONF()`` call, no session, no database; only the
vim WSDL's documents read into oslo.vmware's cache), it runs
the child module as ``python -m`` would, with its own stdin, stdout and
stderr, and exits.

Protocol (one JSON line each way): the test writes ``{"module", "stdin",
"stdout", "stderr"}`` (file paths); this process answers ``{"pid": N}`` once
the child is forked, then ``{"rc": N}`` when it ended (negative: killed by
that signal). End of input ends this process.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402 - after the patch, as in cinder-volume
import os  # noqa: E402
import runpy  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

warnings.simplefilter("ignore")

# What every child imports; nothing here configures or connects anything.
from oslo_vmware import service  # noqa: E402

import tests.cinder.cinder_child  # noqa: E402
import tests.cinder.manager_child  # noqa: E402,F401
import vmdk_snap.cinder_driver  # noqa: E402,F401
from tests.cinder.wsdl import vim_wsdl  # noqa: E402

MODULES = frozenset({"tests.cinder.cinder_child", "tests.cinder.manager_child"})


def _read_wsdl() -> None:
    """Read the vim WSDL's documents into oslo.vmware's own cache, as a first
    session would: each child's session then finds them there (it still
    builds its own client). No connection is made."""
    service.Service(wsdl_url=vim_wsdl().as_uri(), soap_url="https://127.0.0.1:9/sdk")


def _child(request: dict[str, str]) -> int:
    """In the forked child: run the module on the request's files; its exit code."""
    for fd, path, flags in (
        (0, request["stdin"], os.O_RDONLY),
        (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - the process's stdin
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.argv = [request["module"]]
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported on the child's stderr, as python -m would
        traceback.print_exc()
        return 1
    return 0


def main() -> int:
    _read_wsdl()
    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("module") not in MODULES:
            out.write(json.dumps({"error": f"unknown module {request.get('module')!r}"}) + "\n")
            out.flush()
            continue
        out.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
