"""Cinder's own VMwareVcVmdkDriver against the simulator (issue 13; first calls).

Installed from PyPI, unpatched, in a process of its own patched by eventlet
as cinder-volume is (:mod:`tests.cinder.cinder_child`).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.cinder.children import run_child
from tests.conftest import Target

pytest.importorskip("cinder")


def cinder(vc: Target, *calls: list[Any]) -> list[dict[str, Any]]:
    """do_setup, then ``calls``, in a child process; the setup's and the calls' results."""
    return run_child("tests.cinder.cinder_child", vc, list(calls), timeout=180)


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
