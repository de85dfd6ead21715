"""Failures and crashes at ``follow_other_volumes``, on the simulator.

Scenario ``instance-two-volumes``: an instance with two attached volumes
whose backings share the instance's files (neither was duplicated). A forced
snapshot of ``vol-a`` gives *every* disk of the instance a new delta, so the
step ``follow_other_volumes`` (after the point of no return) must give
``vol-b``'s backing its new delta, or a detach or clone of ``vol-b`` would
read stale data. A failure or a crash there is finished forward by
``recover``: ``vol-a``'s snapshot holds its data, ``vol-b``'s backing reads
what the instance wrote, and no file is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import (
    assert_forced_snapshot_invariants,
    make_driver,
    snapshot_trees,
    vm,
    volume_disk_key,
)
from vmdk_snap import journal as jn
from vmdk_snap.driver import Volume
from vmdk_snap.engine import Incomplete
from vmdk_snap.errors import VmdkSnapError
from vmdk_snap.journal import Journal
from vmdk_snap.volumeops.lookups import tasks_in_flight

STEP = "follow_other_volumes"
SLOW_MS = 1500  # the dead process's task still runs while recover starts


def _seed(vc: Target, ops: Any) -> dict[str, Any]:
    """The scenario, and what the checks compare against (read before the workflow)."""
    seeded = vc.ctl.scenario("instance-two-volumes")
    inst = seeded["instances"][0]
    vol_a, vol_b = seeded["volumes"]
    key_a = volume_disk_key(ops, vol_a, inst["moref"])
    key_b = volume_disk_key(ops, vol_b, inst["moref"])
    (backing_b,) = ops.get_vms([vm(vol_b["moref"])])
    # vol-b is not duplicated: its backing uses the instance's file, so the
    # step has a backing to reconfigure.
    assert backing_b.disks[0].path == vc.ctl.read_disk(inst["moref"], key_b)["chain"][0]
    return {
        "seeded": seeded,
        "inst": inst,
        "vol_a": vol_a,
        "vol_b": vol_b,
        "key_b": key_b,
        "tokens_a": vc.ctl.read_disk(inst["moref"], key_a)["tokens"],
        "tokens_b": vc.ctl.read_disk(inst["moref"], key_b)["tokens"],
        "instance_tree": snapshot_trees(ops, inst["moref"])[0],
        "file_b": backing_b.disks[0].path,
    }


def _backing_b(vc: Target, ops: Any, s: dict[str, Any]) -> tuple[str, list[str]]:
    """vol-b's backing: its disk's file and the data read through it."""
    (backing,) = ops.get_vms([vm(s["vol_b"]["moref"])])
    (disk,) = backing.disks
    return disk.path, vc.ctl.read_disk(s["vol_b"]["moref"], disk.key)["tokens"]


def _assert_finished(vc: Target, ops: Any, s: dict[str, Any], *, written: list[str]) -> None:
    """The forced snapshot of vol-a is complete and vol-b's backing follows the instance.

    ``written``: tokens the test wrote through the instance to vol-b after
    the snapshot; vol-b's backing must read them (why the step exists).
    """
    inst, vol_a, vol_b = s["inst"], s["vol_a"], s["vol_b"]
    # vol-b's backing uses the instance's current file for vol-b, its tree untouched.
    path, tokens = _backing_b(vc, ops, s)
    inst_b = vc.ctl.read_disk(inst["moref"], s["key_b"])
    assert path == inst_b["chain"][0]
    assert path != s["file_b"]  # the new delta, not the file it shared before
    assert snapshot_trees(ops, vol_b["moref"]) == [()]
    assert tokens == inst_b["tokens"] == [*s["tokens_b"], *written]
    # And keeps reading what the instance writes to vol-b from now on.
    vc.ctl.write(inst["moref"], s["key_b"], "b-after-recover")
    assert _backing_b(vc, ops, s)[1] == [*s["tokens_b"], *written, "b-after-recover"]
    # vol-a: one snapshot holding its data at the snapshot, the backing shares
    # the instance's current file, the instance's tree is as before, and
    # every file any chain references exists.
    node = ops.get_vm(vm(vol_a["moref"])).snapshot_named("snapshot-1")
    assert node is not None
    assert_forced_snapshot_invariants(
        vc,
        ops,
        s["seeded"],
        volume=vol_a,
        instance=inst,
        node=node,
        instance_tree_before=s["instance_tree"],
        backing_tree_before=(),
        tokens_at_snapshot=s["tokens_a"],
    )


@pytest.mark.live
def test_failure_at_follow_other_volumes_is_finished_by_recover(
    clean_sim: Target, ops: Any, tmp_path: Path
) -> None:
    vc = clean_sim
    s = _seed(vc, ops)
    inst, vol_a, vol_b = s["inst"], s["vol_a"], s["vol_b"]
    driver = make_driver(ops, tmp_path)
    # Only vol-b's backing: hand_over_top reconfigures vol-a's, which must pass.
    vc.ctl.inject_fault("ReconfigVM_Task", "task", "FileLocked", match=f">{vol_b['moref']}<")
    try:
        with pytest.raises(Incomplete, match="FileLocked"):
            driver.create_snapshot(
                Volume(vol_a["id"], "in-use", inst["uuid"]), "snapshot-1", force=True
            )
    finally:
        vc.ctl.clear_faults()
    (record,) = driver.journal.workflows(vol_a["id"])
    assert record.state == jn.RUNNING
    failed = record.step(STEP)
    assert failed is not None
    assert failed.state == jn.FAILED
    assert failed.error is not None
    assert "FileLocked" in failed.error
    # The failed call changed nothing: vol-b's backing still has the file the
    # instance no longer writes, so a write to vol-b is not seen through it.
    vc.ctl.write(inst["moref"], s["key_b"], "b-while-lagging")
    assert _backing_b(vc, ops, s) == (s["file_b"], s["tokens_b"])
    # The volume cannot be snapshotted again until recover has run.
    with pytest.raises(VmdkSnapError, match="interrupted snapshot_attached workflow"):
        driver.create_snapshot(Volume(vol_a["id"], "in-use", inst["uuid"]), "x", force=True)

    (result,) = driver.recover()
    assert (result.workflow_id, result.outcome) == (record.id, "finished")
    assert driver.journal.unfinished() == []
    _assert_finished(vc, ops, s, written=["b-while-lagging"])


_CHILD = """
import os, signal, sys
from pathlib import Path
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.journal import Journal
from vmdk_snap.session import Session
url, user, ca, journal, vol, inst, die_at = sys.argv[1:]
if die_at:
    # Die the moment the journal would record the task id of step die_at:
    # its call was sent and answered, the id is never written.
    record_task = Journal.step_task
    def step_task(self, wf_id, index, task):
        step = next(s for s in self.get(wf_id).steps if s.index == index)
        if step.name == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        record_task(self, wf_id, index, task)
    Journal.step_task = step_task
with Session(url, user, os.environ["VMDK_SNAP_TEST_PASSWORD"], ca_file=ca) as s:
    driver = Driver(s, journal_path=Path(journal))
    driver.create_snapshot(Volume(vol, "in-use", inst), "snapshot-1", force=True)
"""


def _kill_at_step(vc: Target, journal: Path, s: dict[str, Any], *, before_task_id: bool) -> None:
    """Run the forced snapshot of vol-a in a child process; SIGKILL it during the step.

    ``before_task_id``: the child kills itself right after vol-b's
    ReconfigVM was answered, before the journal records the task's id;
    otherwise the test kills it once the journal shows the id. The task is
    slow, so it still runs in vCenter when the process is gone.
    """
    vc.ctl.set_task_time("ReconfigVM_Task", SLOW_MS)
    env = dict(os.environ, VMDK_SNAP_TEST_PASSWORD=vc.password)
    die_at = STEP if before_task_id else ""
    args = [vc.url, vc.username, vc.ca_file, str(journal), s["vol_a"]["id"], s["inst"]["uuid"]]
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *args, die_at], env=env)
    try:
        if before_task_id:
            assert proc.wait(60) == -signal.SIGKILL
        else:
            _wait_for_task_id(journal, proc)
            proc.kill()  # the task goes on in vCenter; the process is gone
            proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        vc.ctl.reset_timing()
    rec = Journal(journal).workflows()[-1].step(STEP)
    assert rec is not None
    assert rec.state == jn.STARTED
    assert (rec.task is None) == before_task_id


def _wait_for_task_id(journal: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the workflow ended before the step started"
        if journal.exists():
            for record in Journal(journal).workflows():
                rec = record.step(STEP)
                if rec is not None and rec.state == jn.STARTED and rec.task:
                    return
        time.sleep(0.02)
    pytest.fail(f"step {STEP} never started")


@pytest.mark.live
@pytest.mark.parametrize("before_task_id", [False, True], ids=["task-journaled", "task-unknown"])
def test_kill_at_follow_other_volumes_then_recover_finishes(
    clean_sim: Target, ops: Any, session: Any, tmp_path: Path, before_task_id: bool
) -> None:
    """Killed while vol-b's backing is reconfigured: recover waits for that task.

    Without the task id the journal only says the step started. Recover must
    still wait for the ReconfigVM the dead process left running on vol-b's
    backing (a VM other than the workflow's backing and instance) before it
    checks the step: else it sees vol-b still lagging, sends the same
    ReconfigVM again and reports the workflow finished while the dead
    process's task still runs on vol-b's backing.
    """
    vc = clean_sim
    s = _seed(vc, ops)
    vms = [vm(s["inst"]["moref"]), vm(s["vol_a"]["moref"]), vm(s["vol_b"]["moref"])]
    driver = make_driver(ops, tmp_path)
    _kill_at_step(vc, driver.journal.path, s, before_task_id=before_task_id)
    (interrupted,) = driver.journal.unfinished()

    vc.ctl.reset_calls()
    (result,) = driver.recover()
    # Nothing the dead process started is still running when recover returns,
    # and recover did not send the dead process's call a second time.
    assert tasks_in_flight(session, vms) == []
    assert vc.ctl.calls().get("ReconfigVM_Task", 0) == 0
    assert (result.workflow_id, result.outcome) == (interrupted.id, "finished")
    assert driver.journal.unfinished() == []
    time.sleep(SLOW_MS / 1000 + 0.1)  # a task recover failed to wait for would show below
    vc.ctl.write(s["inst"]["moref"], s["key_b"], "b-after-snapshot")
    _assert_finished(vc, ops, s, written=["b-after-snapshot"])
