"""Locks are the host's, not the journal's (issue 11), on the simulator.

cinder-volume (the library, its own journal) and an operator's ``vmdk-snap``
(its own ``--journal``) on one host snapshot two volumes of one instance at
the same time: real processes, as on the host. They share the host's lock
directory (here the test's, from ``VMDK_SNAP_LOCK_DIR``), so the second waits
for the instance and both succeed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target, child_env
from tests.workflow_checks import (
    assert_forced_snapshot_invariants,
    snapshot_trees,
    vm,
    volume_disk_key,
)
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.journal import Journal

# cinder-volume's side: the library with its own journal, nothing else given.
_CINDER = """
import os, sys
from pathlib import Path
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.vsphere.session import Session
url, user, ca, journal, vol, inst, name = sys.argv[1:]
with Session(url, user, os.environ["VMDK_SNAP_PASSWORD"], ca_file=ca) as s:
    driver = Driver(s, journal_path=Path(journal))
    driver.create_snapshot(Volume(vol, "in-use", inst), name, force=True)
"""

# Each workflow holds the instance for about 5 s (5 tasks of 1 s): the
# operator's arrives while cinder-volume's holds it, even on a loaded machine.
TASK_MS = 1000


def _wait_until_running(journal: Path, proc: subprocess.Popen[str]) -> None:
    """Until the process's journal shows its workflow (it holds the instance)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"cinder-volume's snapshot ended before the operator's began: {err}")
        if journal.exists() and Journal(journal).workflows():
            return
        time.sleep(0.05)
    pytest.fail("cinder-volume's snapshot never began")


@pytest.mark.live
def test_cli_and_library_with_other_journals_take_turns_on_an_instance(
    clean_sim: Target, ops: Any, tmp_path: Path
) -> None:
    vc = clean_sim
    seeded = vc.ctl.scenario("instance-two-volumes")
    inst, vols = seeded["instances"][0], seeded["volumes"]
    keys = [volume_disk_key(ops, v, inst["moref"]) for v in vols]
    tokens = [vc.ctl.read_disk(inst["moref"], k)["tokens"] for k in keys]
    inst_tree, *backing_trees = snapshot_trees(ops, inst["moref"], *(v["moref"] for v in vols))
    journals = [tmp_path / "cinder" / "journal.sqlite", tmp_path / "operator" / "journal.sqlite"]
    names = ["snapshot-cinder", "snapshot-operator"]
    env = child_env(  # VMDK_SNAP_LOCK_DIR: the test's (tests/conftest.py)
        HOME=str(tmp_path / "home"),  # no config file of the machine's
        VMDK_SNAP_URL=vc.url,
        VMDK_SNAP_USERNAME=vc.username,
        VMDK_SNAP_PASSWORD=vc.password,
        VMDK_SNAP_CA_FILE=vc.ca_file,
    )
    env.pop("VMDK_SNAP_JOURNAL", None)
    cinder_args = [vc.url, vc.username, vc.ca_file, str(journals[0])]
    cinder_args += [vols[0]["id"], inst["uuid"], names[0]]
    operator_args = ["-v", "snapshot", vols[1]["id"], "--name", names[1], "--force"]
    operator_args += ["--journal", str(journals[1])]

    vc.ctl.set_default_task_time(TASK_MS)
    # cinder-volume's holds the instance through its temporary snapshot's
    # removal, long enough for the operator's process to start even when the
    # machine is loaded (a CI run beside Cinder's tests was not).
    vc.ctl.set_task_time("RemoveSnapshot_Task", 12000)
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _CINDER, *cinder_args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        _wait_until_running(journals[0], procs[0])
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "vmdk_snap.cli", *operator_args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        ended = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    (cinder_rc, operator_rc) = (p.returncode for p in procs)
    assert (cinder_rc, operator_rc) == (0, 0), ended
    # The operator's waited for the instance: one after the other.
    assert "is locked by another workflow" in ended[1][1], ended[1][1]
    first, second = (Journal(j).workflows() for j in journals)
    assert [w.state for w in (*first, *second)] == [jn.DONE, jn.DONE]
    assert first[0].updated <= second[0].created
    # No temporary snapshot is left on the instance; each backing has its
    # snapshot and reads the instance's current file of its volume.
    assert snapshot_trees(ops, inst["moref"]) == [inst_tree]
    for vol, name, tree_before, at_snapshot in zip(vols, names, backing_trees, tokens, strict=True):
        node = ops.get_vm(vm(vol["moref"])).snapshot_named(name)
        assert node is not None, f"volume {vol['id']} has no snapshot {name}"
        assert_forced_snapshot_invariants(
            vc,
            ops,
            seeded,
            volume=vol,
            instance=inst,
            node=node,
            instance_tree_before=inst_tree,
            backing_tree_before=tree_before,
            tokens_at_snapshot=at_snapshot,
        )
