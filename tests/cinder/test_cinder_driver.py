"""Cinder's own VMwareVcVmdkDriver against the simulator (issue 13; first calls).

Installed from PyPI, unpatched, in a process of its own patched by eventlet
as cinder-volume is (:mod:`tests.cinder.cinder_child`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.cinder.wsdl import vim_wsdl
from tests.conftest import Target, child_env

pytest.importorskip("cinder")


def cinder(vc: Target, *calls: list[Any]) -> list[dict[str, Any]]:
    """do_setup, then ``calls``, in a child process; the setup's and the calls' results."""
    request = {
        "url": vc.url,
        "username": vc.username,
        "password": vc.password,
        "ca_file": vc.ca_file,
        "wsdl": vim_wsdl().as_uri(),
        "calls": list(calls),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.cinder.cinder_child"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


@pytest.mark.live
def test_do_setup_and_stats(vc: Target) -> None:
    """do_setup logs in, finds or registers Cinder's extension, reads the API version."""
    setup, stats = cinder(vc, ["stats"])
    assert setup["result"]["vc_version"] == "6.5.0"  # what the simulator reports
    assert stats["result"]["storage_protocol"] == "vmdk"
    assert stats["result"]["vendor_name"] == "VMware"
    # A second service (another cinder-volume) finds the extension registered.
    (again,) = cinder(vc)
    assert again["result"]["vc_version"] == "6.5.0"
