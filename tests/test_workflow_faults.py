"""Failures and crashes at every step of the forced snapshot, on the simulator.

Scenario ``attached-volume-moved`` runs all seven steps (relocate, swap,
instance snapshot, backing snapshot, hand-over, remove, delete stale copy).
A failure injected at each step in turn must leave everything as it was; a
process killed at each step must be finished or rolled back by ``recover``
with no data lost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import (
    World,
    assert_files_consistent,
    make_driver,
    snapshot_trees,
    vm,
    volume_disk_key,
    world,
)
from vmdk_snap import journal as jn
from vmdk_snap.driver import Volume
from vmdk_snap.engine import Incomplete
from vmdk_snap.errors import VmdkSnapError
from vmdk_snap.journal import Journal

# step -> (SOAP method, which VM's moref to match, calls of it to let through)
STEPS: dict[str, tuple[str, str | None, int]] = {
    "relocate_backing": ("RelocateVM_Task", "backing", 0),
    "swap_backing_disk": ("ReconfigVM_Task", "backing", 0),
    "snapshot_instance": ("CreateSnapshot_Task", "instance", 0),
    "snapshot_backing": ("CreateSnapshot_Task", "backing", 0),
    "hand_over_top": ("ReconfigVM_Task", "backing", 1),
    "remove_instance_snapshot": ("RemoveSnapshot_Task", None, 0),
    "delete_stale_copy": ("DeleteVirtualDisk_Task", None, 0),
}
AFTER_INSTANCE_SNAPSHOT = ("snapshot_backing", "hand_over_top", "remove_instance_snapshot")


def _seed(vc: Target, ops: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], World]:
    seeded = vc.ctl.scenario("attached-volume-moved")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    return seeded, inst, vol, world(vc, ops, inst["moref"], vol["moref"])


def _assert_as_before(
    vc: Target, ops: Any, inst: dict[str, Any], vol: dict[str, Any], *, before: World, deltas: bool
) -> None:
    """Trees, the backing's chains and all data exactly as before.

    After the instance snapshot, the instance's disks keep its delta (undone
    with consolidate=False, never merged into files backings use): each chain
    is then the old chain with one delta on top, and the data is the same.
    """
    after = world(vc, ops, inst["moref"], vol["moref"])
    assert after.trees == before.trees
    assert after.chains[vol["moref"]] == before.chains[vol["moref"]]
    old, new = before.disks(inst["moref"]), after.disks(inst["moref"])
    assert old.keys() == new.keys()
    kept: set[str] = set()
    for key, disk in old.items():
        assert new[key]["tokens"] == disk["tokens"], f"disk {key} data changed"
        if deltas:
            assert new[key]["chain"][1:] == disk["chain"]
            top = new[key]["chain"][0]
            assert top.startswith(f"[ds-shared-2] {inst['name']}/")
            kept |= {top, top.replace(".vmdk", "-delta.vmdk")}
        else:
            assert new[key]["chain"] == disk["chain"]
    assert after.files == before.files | kept


@pytest.mark.live
@pytest.mark.parametrize("step", list(STEPS))
def test_failure_at_each_step_is_rolled_back_exactly(
    vc: Target, ops: Any, tmp_path: Path, step: str
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded, inst, vol, before = _seed(vc, ops)
    method, whose, skip = STEPS[step]
    match = None if whose is None else f">{(inst if whose == 'instance' else vol)['moref']}<"
    vc.ctl.reset_bytes_copied()
    vc.ctl.inject_fault(method, "task", "FileLocked", skip=skip, match=match)
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    try:
        with pytest.raises(VmdkSnapError) as info:
            driver.create_snapshot(volume, "snapshot-1", force=True)
    finally:
        vc.ctl.clear_faults()
    assert vc.ctl.bytes_copied()["total"] == 0
    (record,) = driver.journal.workflows(vol["id"])
    failed = record.step(step)
    assert failed is not None
    assert failed.error is not None
    assert "FileLocked" in failed.error

    if step == "delete_stale_copy":
        # After the point of no return: the snapshot stands, recover finishes.
        assert isinstance(info.value, Incomplete)
        assert record.state == jn.RUNNING
        assert vol["vmdk"] in vc.ctl.files("ds-shared-1")
        (result,) = driver.recover()
        assert result.outcome == "finished"
        assert vol["vmdk"] not in vc.ctl.files("ds-shared-1")
        assert_files_consistent(vc, seeded)
        return
    assert record.state == jn.ROLLED_BACK
    undone = [s.name for s in record.steps if s.state == jn.UNDONE]
    assert step not in undone
    _assert_as_before(vc, ops, inst, vol, before=before, deltas=step in AFTER_INSTANCE_SNAPSHOT)
    # The volume is usable afterwards: the same snapshot now succeeds.
    node = driver.create_snapshot(volume, "snapshot-1", force=True)
    assert snapshot_trees(ops, vol["moref"]) == [(("snapshot-1", ()),)]
    assert node.name == "snapshot-1"
    assert_files_consistent(vc, seeded)


_CHILD = """
import os, sys
from pathlib import Path
from vmdk_snap.session import Session
from vmdk_snap.driver import Driver, Volume
url, user, ca, journal, vol, inst = sys.argv[1:]
with Session(url, user, os.environ["VMDK_SNAP_TEST_PASSWORD"], ca_file=ca) as s:
    Driver(s, journal_path=Path(journal)).create_snapshot(
        Volume(vol, "in-use", inst), "snapshot-1", force=True)
"""


def _wait_for_task_of(journal: Path, step: str, proc: subprocess.Popen[bytes]) -> None:
    """Until the child's journal shows ``step`` started with its task sent."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the workflow ended before the step started"
        if journal.exists():
            for record in Journal(journal).workflows():
                rec = record.step(step)
                if rec is not None and rec.state == jn.STARTED and rec.task:
                    return
        time.sleep(0.02)
    pytest.fail(f"step {step} never started")


@pytest.mark.live
@pytest.mark.parametrize("step", list(STEPS))
def test_kill_at_each_step_then_recover(vc: Target, ops: Any, tmp_path: Path, step: str) -> None:
    seeded, inst, vol, before = _seed(vc, ops)
    key = volume_disk_key(ops, vol, inst["moref"])
    tokens = vc.ctl.read_disk(inst["moref"], key)["tokens"]
    journal = tmp_path / "state" / "journal.sqlite"
    method = STEPS[step][0]
    vc.ctl.set_task_time(method, 1500)
    env = dict(os.environ, VMDK_SNAP_TEST_PASSWORD=vc.password)
    args = [vc.url, vc.username, vc.ca_file, str(journal), vol["id"], inst["uuid"]]
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *args], env=env)
    try:
        _wait_for_task_of(journal, step, proc)
        proc.kill()  # the task goes on in vCenter; the process is gone
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        vc.ctl.reset_timing()

    driver = make_driver(ops, tmp_path)
    (interrupted,) = driver.journal.unfinished()
    with pytest.raises(VmdkSnapError, match="interrupted snapshot_attached workflow"):
        driver.create_snapshot(Volume(vol["id"], "in-use", inst["uuid"]), "x", force=True)
    (result,) = driver.recover()
    assert result.workflow_id == interrupted.id
    assert driver.journal.unfinished() == []
    if step in ("remove_instance_snapshot", "delete_stale_copy"):
        assert result.outcome == "finished"
        backing = ops.get_vm(vm(vol["moref"]))
        snap = backing.snapshot_named("snapshot-1")
        assert snap is not None
        assert vc.ctl.read_snapshot(snap.ref.value, backing.disks[0].key)["tokens"] == tokens
        assert vc.ctl.read_disk(inst["moref"], key)["tokens"] == tokens
        assert backing.disks[0].path == vc.ctl.read_disk(inst["moref"], key)["chain"][0]
        assert snapshot_trees(ops, inst["moref"])[0] == before.trees[0]
        assert vol["vmdk"] not in vc.ctl.files("ds-shared-1")
    else:
        assert result.outcome == "rolled_back"
        # The killed process had sent the step's call: recover waited for it.
        deltas = step in ("snapshot_instance", *AFTER_INSTANCE_SNAPSHOT)
        _assert_as_before(vc, ops, inst, vol, before=before, deltas=deltas)
    assert_files_consistent(vc, seeded)
