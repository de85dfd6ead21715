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
from typing import Any

from tests.cinder.wsdl import vim_wsdl
from tests.conftest import Target, child_env

__all__ = ["run_child"]


def run_child(
    module: str,
    vc: Target,
    calls: list[list[Any]],
    timeout: float,
    options: dict[str, Any] | None = None,
) -> list[Any]:
    """Run ``module`` on ``calls`` against ``vc`` (with backend ``options``); its JSON answer."""
    request = {
        "options": options or {},
        "url": vc.url,
        "username": vc.username,
        "password": vc.password,
        "ca_file": vc.ca_file,
        "wsdl": vim_wsdl().as_uri(),
        "calls": calls,
    }
    proc = subprocess.run(
        [sys.executable, "-m", module],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results: list[Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results
