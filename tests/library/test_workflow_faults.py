"""Failures and crashes at every step of the forced snapshot, on the simulator.

Scenario ``attached-volume-moved`` runs all seven steps (relocate, swap,
instance snapshot, backing snapshot, hand-over, remove, delete stale copy).
A failure injected at each step in turn must leave everything as it was; a
process killed at each step must be finished or rolled back by ``recover``
with no data lost.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target, child_env
from tests.workflow_checks import (
    World,
    assert_files_consistent,
    assert_nothing_running,
    make_driver,
    powered_off,
    snapshot_trees,
    vm,
    volume_disk_key,
    world,
)
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.errors import VmdkSnapError
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.volumeops import VolumeOps
from vmdk_snap.vsphere.volumeops.lookups import tasks_in_flight
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.engine import Incomplete, RollbackFailed
from vmdk_snap.workflows.journal import Journal

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
STEPS_BEFORE_COMMIT = 5  # up to hand_over_top, the point of no return


def _seed(vc: Target, ops: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], World]:
    seeded = vc.ctl.scenario("attached-volume-moved")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    return seeded, inst, vol, world(vc, ops, inst["moref"], vol["moref"])


def _assert_as_before(
    vc: Target, ops: Any, inst: dict[str, Any], vol: dict[str, Any], *, before: World
) -> None:
    """Trees, homes, every chain, every file and all data exactly as before.

    After the instance snapshot, its undo merges the temporary deltas back
    (no snapshot holds the files they sit on), so nothing is left behind.
    """
    after = world(vc, ops, inst["moref"], vol["moref"])
    assert after.trees == before.trees
    assert after.homes == before.homes  # host, pool and home datastore of both VMs
    assert after.chains == before.chains
    old, new = before.disks(inst["moref"]), after.disks(inst["moref"])
    assert old.keys() == new.keys()
    for key, disk in old.items():
        assert new[key] == disk, f"instance disk {key} changed"
    assert after.files == before.files


@pytest.fixture
def vc(own_vc: Target) -> Target:
    """A simulator of each test's own (``session`` and ``ops`` use it): each test seeds
    scenarios and kills, which would burden every later test of the worker."""
    return own_vc


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

    if step in ("remove_instance_snapshot", "delete_stale_copy"):
        # After the point of no return: the snapshot stands, recover finishes.
        assert isinstance(info.value, Incomplete)
        assert record.state == jn.RUNNING
        assert vol["vmdk"] in vc.ctl.files("ds-shared-1")
        (result,) = driver.recover()
        assert result.outcome == "finished"
        assert vol["vmdk"] not in vc.ctl.files("ds-shared-1")
        assert snapshot_trees(ops, inst["moref"]) == before.trees[:1]
        assert snapshot_trees(ops, vol["moref"]) == [(("snapshot-1", ()),)]
        assert_files_consistent(vc, seeded)
        return
    assert record.state == jn.ROLLED_BACK
    undone = [s.name for s in record.steps if s.state == jn.UNDONE]
    assert step not in undone
    _assert_as_before(vc, ops, inst, vol, before=before)
    # The volume is usable afterwards: the same snapshot now succeeds.
    node = driver.create_snapshot(volume, "snapshot-1", force=True)
    assert snapshot_trees(ops, vol["moref"]) == [(("snapshot-1", ()),)]
    assert node.name == "snapshot-1"
    assert_files_consistent(vc, seeded)


_CHILD = """
import os, signal, sys
from pathlib import Path
from vmdk_snap.vsphere.session import Session
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.workflows.journal import Journal
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.volumeops import VolumeOps
url, user, ca, journal, op, vol, inst, die_at = sys.argv[1:]
if die_at:
    # Die the moment the journal would record the task id of step die_at:
    # its call was sent and answered, the id is never written.
    # "undo:<step>": die in that step's undo instead; DIE_AFTER_RECORD=1:
    # die just after the id is written.
    record_task = Journal.step_task
    after = os.environ.get("DIE_AFTER_RECORD") == "1"
    def step_task(self, wf_id, index, task):
        step = next(s for s in self.get(wf_id).steps if s.index == index)
        undoing = die_at == f"undo:{step.name}" and step.state == "undoing"
        if after:
            record_task(self, wf_id, index, task)
        if step.name == die_at or undoing:
            os.kill(os.getpid(), signal.SIGKILL)
        record_task(self, wf_id, index, task)
    Journal.step_task = step_task
with Session(url, user, os.environ["VMDK_SNAP_TEST_PASSWORD"], ca_file=ca) as s:
    depth = int(os.environ.get("VMDK_SNAP_TEST_COPY_DEPTH", "14"))
    driver = Driver(s, journal_path=Path(journal), copy_depth=depth)
    if op == "snapshot":
        driver.create_snapshot(Volume(vol, "in-use", inst), "snapshot-1", force=True)
    elif op == "consolidate":
        driver.consolidate(Volume(vol, "in-use", inst))
    elif op == "delete":
        driver.delete_snapshot(Volume(vol, "available"), "snapshot-1")
    elif op == "compact":
        driver.compact(Volume(vol, "in-use", inst))
    elif op == "delete-attached":
        driver.delete_snapshot(Volume(vol, "in-use", inst), "snapshot-1")
    elif op == "group":
        members = [Volume(v, "in-use", inst) for v in vol.split(",")]
        driver.create_group_snapshot(members, "snapshot-1", force=True)
    else:
        driver.revert_to_snapshot(Volume(vol, "available"), "snapshot-1")
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


def _killed_at(
    vc: Target,
    tmp_path: Path,
    step: str,
    vol: str,
    inst: str,
    *,
    before_task_id: bool,
    op: str = "snapshot",
    method: str = "",
    copy_depth: int = 14,
) -> None:
    """Run workflow ``op`` in a child process and SIGKILL it during ``step``.

    ``before_task_id``: the child kills itself right after the step's call
    was answered, before the journal records the task's id (the window a
    lost answer or an unlucky kill leaves open); otherwise the test kills it
    once the journal shows the task id. The step's task is slow (1.5 s), so
    it is still running in vCenter when the process is gone.
    """
    journal = tmp_path / "state" / "journal.sqlite"
    vc.ctl.set_task_time(method or STEPS[step][0], 1500)
    env = child_env(VMDK_SNAP_TEST_PASSWORD=vc.password, VMDK_SNAP_TEST_COPY_DEPTH=str(copy_depth))
    die_at = step if before_task_id else ""
    args = [vc.url, vc.username, vc.ca_file, str(journal), op, vol, inst, die_at]
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *args], env=env)
    try:
        if before_task_id:
            assert proc.wait(60) == -signal.SIGKILL
            rec = Journal(journal).workflows()[-1].step(step)
            assert rec is not None
            assert (rec.state, rec.task) == (jn.STARTED, None)
        else:
            _wait_for_task_of(journal, step, proc)
            proc.kill()  # the task goes on in vCenter; the process is gone
            proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        vc.ctl.reset_timing()


def _recover_and_check(
    vc: Target,
    ops: Any,
    tmp_path: Path,
    step: str,
    *,
    seeded: dict[str, Any],
    before: World,
    tokens: list[str],
    key: int,
) -> None:
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    driver = make_driver(ops, tmp_path)
    (interrupted,) = driver.journal.unfinished()
    with pytest.raises(VmdkSnapError, match="interrupted snapshot_attached workflow"):
        driver.create_snapshot(Volume(vol["id"], "in-use", inst["uuid"]), "x", force=True)
    (result,) = driver.recover()
    assert_nothing_running(
        ops, inst["moref"], vol["moref"]
    )  # recover waited for the dead process's task
    # Any task the dead process left running (1.5 s each) has ended before we
    # look, so a task recover failed to wait for would show in what follows.
    time.sleep(1.6)
    assert result.workflow_id == interrupted.id
    assert driver.journal.unfinished() == []
    if step in ("hand_over_top", "remove_instance_snapshot", "delete_stale_copy"):
        # The hand-over's task ran to its end (recover waited for it): past
        # the point of no return, the workflow is finished.
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
        _assert_as_before(vc, ops, inst, vol, before=before)
    assert_files_consistent(vc, seeded)


@pytest.mark.live
@pytest.mark.parametrize("before_task_id", [False, True], ids=["task-journaled", "task-unknown"])
@pytest.mark.parametrize("step", list(STEPS))
def test_kill_at_each_step_then_recover(
    vc: Target, ops: Any, tmp_path: Path, step: str, before_task_id: bool
) -> None:
    """Killed during each step, with or without the task id journaled: recover settles it.

    Without the task id the journal only says the step started; recover
    must still wait for the task the dead process left running (or it would
    roll back and then, say, find a temporary instance snapshot appear).
    """
    seeded, inst, vol, before = _seed(vc, ops)
    key = volume_disk_key(ops, vol, inst["moref"])
    tokens = vc.ctl.read_disk(inst["moref"], key)["tokens"]
    _killed_at(vc, tmp_path, step, vol["id"], inst["uuid"], before_task_id=before_task_id)
    _recover_and_check(
        vc, ops, tmp_path, step, seeded=seeded, before=before, tokens=tokens, key=key
    )


# -- the one-step workflows: delete and revert (irreversible, no undo) --------------

SINGLE = {
    "delete": ("remove_snapshot", "RemoveSnapshot_Task"),
    "revert": ("revert_to_snapshot", "RevertToSnapshot_Task"),
}


def _with_snapshot(vc: Target, ops: Any, tmp_path: Path) -> tuple[dict[str, Any], Any]:
    """An available volume with snapshot-1, written to after it."""
    seeded = vc.ctl.scenario("available-volume")
    vol = seeded["volumes"][0]
    node = make_driver(ops, tmp_path).create_snapshot(Volume(vol["id"]), "snapshot-1")
    vc.ctl.write(vol["moref"], 2000, "after-snapshot")
    return seeded, node


def _assert_done(vc: Target, ops: Any, op: str, vol: dict[str, Any]) -> None:
    backing = ops.get_vm(vm(vol["moref"]))
    tokens = vc.ctl.read_disk(vol["moref"], 2000)["tokens"]
    if op == "delete":  # merged into the base, no data lost
        assert backing.snapshots == ()
        assert backing.disks[0].chain == (vol["vmdk"],)
        assert tokens == [f"seed:{vol['id']}", "after-snapshot"]
    else:  # back to the snapshot's data, the snapshot kept
        assert [n.name for n in backing.all_snapshots()] == ["snapshot-1"]
        assert tokens == [f"seed:{vol['id']}"]


@pytest.mark.live
@pytest.mark.parametrize("op", list(SINGLE))
def test_failure_at_delete_or_revert_changes_nothing(
    vc: Target, ops: Any, tmp_path: Path, op: str
) -> None:
    """No undo, but nothing to undo: the only step failed, so nothing changed."""
    seeded, node = _with_snapshot(vc, ops, tmp_path)
    vol = seeded["volumes"][0]
    step, method = SINGLE[op]
    before = world(vc, ops, vol["moref"])
    driver = make_driver(ops, tmp_path)
    run = driver.delete_snapshot if op == "delete" else driver.revert_to_snapshot
    vc.ctl.inject_fault(method, "task", "FileLocked", match=f">{node.ref.value}<")
    try:
        with pytest.raises(VmdkSnapError, match="FileLocked"):
            run(Volume(vol["id"]), "snapshot-1")
    finally:
        vc.ctl.clear_faults()
    (record,) = [r for r in driver.journal.workflows() if r.kind == op]
    assert record.state == jn.ROLLED_BACK
    assert [(s.name, s.state) for s in record.steps] == [(step, jn.FAILED)]
    assert world(vc, ops, vol["moref"]) == before
    run(Volume(vol["id"]), "snapshot-1")  # and it works once the cause is gone
    _assert_done(vc, ops, op, vol)
    assert_files_consistent(vc, seeded)


@pytest.mark.live
@pytest.mark.parametrize("before_task_id", [False, True], ids=["task-journaled", "task-unknown"])
@pytest.mark.parametrize("op", list(SINGLE))
def test_kill_during_delete_or_revert_then_recover_finishes(
    vc: Target, ops: Any, tmp_path: Path, op: str, before_task_id: bool
) -> None:
    """The call was sent when the process died: recover reads vCenter and finishes."""
    seeded, _node = _with_snapshot(vc, ops, tmp_path)
    vol = seeded["volumes"][0]
    step, method = SINGLE[op]
    _killed_at(
        vc, tmp_path, step, vol["id"], "", before_task_id=before_task_id, op=op, method=method
    )
    # `vmdk-snap recover` runs in a new process, with a session of its own.
    with Session(vc.url, vc.username, vc.password, ca_file=vc.ca_file) as session:
        driver = make_driver(VolumeOps(session, task_timeout=60), tmp_path)
        (result,) = driver.recover()
        assert_nothing_running(ops, vol["moref"])  # recover waited for the dead process's task
    time.sleep(1.6)  # any task left running has ended before we look
    assert (result.kind, result.outcome) == (op, "finished")
    assert driver.journal.unfinished() == []
    _assert_done(vc, ops, op, vol)
    assert_files_consistent(vc, seeded)


# -- the instance snapshot's undo merges back only what nobody else holds ----------


def _forced_failing(
    vc: Target,
    ops: Any,
    tmp_path: Path,
    inst: dict[str, Any],
    vol: dict[str, Any],
    *,
    method: str,
    match: str | None,
    skip: int = 0,
    name: str = "s1",
) -> jn.WorkflowRecord:
    """A forced snapshot whose ``method`` task fails (FileLocked): rolled back."""
    vc.ctl.inject_fault(method, "task", "FileLocked", skip=skip, match=match)
    driver = make_driver(ops, tmp_path)
    try:
        with pytest.raises(VmdkSnapError, match="FileLocked"):
            driver.create_snapshot(Volume(vol["id"], "in-use", inst["uuid"]), name, force=True)
    finally:
        vc.ctl.clear_faults()
    record = driver.journal.workflows(vol["id"])[-1]
    assert (record.state, record.params["name"]) == (jn.ROLLED_BACK, name)
    return record


@pytest.mark.live
def test_rollback_keeps_the_instance_delta_when_a_backing_snapshot_holds_its_file(
    vc: Target, ops: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A backing snapshot taken by hand while attached holds the instance's file.

    Merging the instance's temporary delta back on rollback would write into
    that file: the snapshot's data would change with every later write through
    the instance. The undo must see it, keep the delta (consolidate=False) and
    say why; the hand-made snapshot keeps its data.
    """
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    key = volume_disk_key(ops, vol, inst["moref"])
    with powered_off(vc, inst["moref"]):  # running, the instance locks its file
        by_hand = ops.create_snapshot(vm(vol["moref"]), "by-hand")  # holds the instance's file
    bkey = ops.get_vm(vm(vol["moref"])).disks[0].key
    frozen = vc.ctl.read_snapshot(by_hand.value, bkey)
    assert frozen["chain"] == [vol["vmdk"]]
    instance_before = vc.ctl.read_disk(inst["moref"], key)

    match = f">{vol['moref']}<"
    # The backing's disk is now its own delta: the workflow first gives it the
    # instance's file through a temporary snapshot (hold_old_disk, the
    # backing's first CreateSnapshot_Task); its own snapshot is the second.
    record = _forced_failing(
        vc, ops, tmp_path, inst, vol, method="CreateSnapshot_Task", match=match, skip=1
    )
    failed = record.step("snapshot_backing")
    assert failed is not None
    assert failed.error is not None
    assert "FileLocked" in failed.error
    assert "a snapshot or a deeper chain holds " + vol["vmdk"] in caplog.text
    after = vc.ctl.read_disk(inst["moref"], key)
    assert after["tokens"] == instance_before["tokens"]
    assert after["chain"][1:] == instance_before["chain"]  # one delta kept on top
    assert snapshot_trees(ops, inst["moref"]) == [()]
    assert snapshot_trees(ops, vol["moref"]) == [(("by-hand", ()),)]
    vc.ctl.write(inst["moref"], key, "after-rollback")
    assert vc.ctl.read_snapshot(by_hand.value, bkey) == frozen
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_rollback_merges_back_after_earlier_forced_snapshots(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """After a forced snapshot the backing's snapshot holds the file below the
    shared one; a second, failing snapshot still rolls back exactly."""
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    key = volume_disk_key(ops, vol, inst["moref"])
    driver = make_driver(ops, tmp_path)
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    driver.create_snapshot(volume, "s1", force=True)
    vc.ctl.write(inst["moref"], key, "after-s1")
    before = world(vc, ops, inst["moref"], vol["moref"])

    match = f">{vol['moref']}<"
    _forced_failing(vc, ops, tmp_path, inst, vol, method="ReconfigVM_Task", match=match, name="s2")
    assert world(vc, ops, inst["moref"], vol["moref"]) == before
    assert_files_consistent(vc, seeded)


# Steps up to the point of no return (a failure of its own call is rolled
# back), per scenario with two volumes: Work Flow 2 consolidates first; with
# no storage vMotion the other volume shares the instance's file.
TWO_VOLUME_STEPS = [("workflow2", step) for step in list(STEPS)[:STEPS_BEFORE_COMMIT]] + [
    ("instance-two-volumes", step)
    for step in (
        "snapshot_instance",
        "snapshot_backing",
        "hand_over_top",
    )
]


@pytest.mark.live
@pytest.mark.parametrize(("scenario", "step"), TWO_VOLUME_STEPS)
def test_failure_with_two_volumes_restores_every_vm_exactly(
    vc: Target, ops: Any, tmp_path: Path, scenario: str, step: str
) -> None:
    """The undo merges the temporary deltas of the root disk and of both
    volumes back: the instance, both backings, every file and all data are
    exactly as before, the other volume included."""
    seeded = vc.ctl.scenario(scenario)
    inst = seeded["instances"][0]
    vol_a, vol_b = seeded["volumes"]
    morefs = (inst["moref"], vol_a["moref"], vol_b["moref"])
    before = world(vc, ops, *morefs)
    method, whose, skip = STEPS[step]
    if scenario == "instance-two-volumes":
        skip = 0  # no consolidation: hand_over_top is the backing's first ReconfigVM
    match = None if whose is None else f">{(inst if whose == 'instance' else vol_a)['moref']}<"
    record = _forced_failing(vc, ops, tmp_path, inst, vol_a, method=method, match=match, skip=skip)
    assert record.step(step) is not None
    assert world(vc, ops, *morefs) == before
    assert_files_consistent(vc, seeded)


# undone step -> (the later step made to fail, the method of the undo's first task)
UNDOS: dict[str, tuple[str, str]] = {
    "relocate_backing": ("swap_backing_disk", "RelocateVM_Task"),
    "swap_backing_disk": ("snapshot_instance", "ReconfigVM_Task"),
    "snapshot_instance": ("snapshot_backing", "RemoveSnapshot_Task"),
    "snapshot_backing": ("hand_over_top", "ReconfigVM_Task"),
}


@pytest.mark.live
@pytest.mark.parametrize("after_record", [True, False], ids=["task-journaled", "task-unknown"])
@pytest.mark.parametrize("undone", list(UNDOS))
def test_kill_during_the_rollback_then_recover_restores_exactly(
    vc: Target, ops: Any, tmp_path: Path, undone: str, after_record: bool
) -> None:
    """A later step fails, and the process dies while the undo of ``undone``
    runs its first task (slow): recover waits for that task, then finishes
    the rollback, exactly."""
    seeded, inst, vol, before = _seed(vc, ops)
    journal = tmp_path / "state" / "journal.sqlite"
    failing, slow = UNDOS[undone]
    method, whose, skip = STEPS[failing]
    match = None if whose is None else f">{(inst if whose == 'instance' else vol)['moref']}<"
    vc.ctl.inject_fault(method, "task", "FileLocked", skip=skip, match=match)
    vc.ctl.set_task_time(slow, 1500)
    env = child_env(VMDK_SNAP_TEST_PASSWORD=vc.password, DIE_AFTER_RECORD=str(int(after_record)))
    args = [vc.url, vc.username, vc.ca_file, str(journal), "snapshot", vol["id"], inst["uuid"]]
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, *args, f"undo:{undone}"],
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        vc.ctl.clear_faults()
        vc.ctl.reset_timing()
    assert proc.returncode == -signal.SIGKILL
    (record,) = Journal(journal).workflows()
    undoing = record.step(undone)
    assert undoing is not None
    assert undoing.state == jn.UNDOING
    # The undo's task still runs; the journal names it only if the id was written.
    vms = [vm(inst["moref"]), vm(vol["moref"])]
    running = [t.ref.value for t in tasks_in_flight(ops.session, vms)]
    assert len(running) == 1
    assert (undoing.task == running[0]) is after_record

    driver = make_driver(ops, tmp_path)
    (result,) = driver.recover()
    assert_nothing_running(
        ops, inst["moref"], vol["moref"]
    )  # recover waited for the dead process's task
    time.sleep(1.6)  # a task recover failed to wait for would show below
    assert result.outcome == "rolled_back"
    assert driver.journal.unfinished() == []
    _assert_as_before(vc, ops, inst, vol, before=before)
    assert_files_consistent(vc, seeded)


# -- the consolidate workflow on its own (`vmdk-snap consolidate`) --------------------

CONSOLIDATE_STEPS = ("relocate_backing", "swap_backing_disk", "delete_stale_copy")


def _consolidated(vc: Target, ops: Any, inst: dict[str, Any], vol: dict[str, Any]) -> None:
    """The backing shares the instance's file, on its datastore; the old copy is gone."""
    key = volume_disk_key(ops, vol, inst["moref"])
    on_instance = vc.ctl.read_disk(inst["moref"], key)
    backing = ops.get_vm(vm(vol["moref"]))
    assert backing.disks[0].path == on_instance["chain"][0]
    assert backing.vm_path_name.startswith("[ds-shared-2] ")
    assert vc.ctl.read_disk(vol["moref"], backing.disks[0].key) == on_instance
    assert vol["vmdk"] not in vc.ctl.files("ds-shared-1")


@pytest.mark.live
@pytest.mark.parametrize("step", CONSOLIDATE_STEPS)
def test_failure_during_consolidate_is_rolled_back_or_finished(
    vc: Target, ops: Any, tmp_path: Path, step: str
) -> None:
    """Before the stale copy's deletion starts: rolled back exactly. Once it
    has started the consolidation is final: recover deletes the copy."""
    seeded, inst, vol, before = _seed(vc, ops)
    method, whose, skip = STEPS[step]
    match = None if whose is None else f">{vol['moref']}<"
    vc.ctl.inject_fault(method, "task", "FileLocked", skip=skip, match=match)
    driver = make_driver(ops, tmp_path)
    try:
        with pytest.raises(VmdkSnapError, match="FileLocked") as info:
            driver.consolidate(Volume(vol["id"], "in-use", inst["uuid"]))
    finally:
        vc.ctl.clear_faults()
    (record,) = driver.journal.workflows(vol["id"])
    if step == "delete_stale_copy":
        assert isinstance(info.value, Incomplete)
        assert record.state == jn.RUNNING
        (result,) = driver.recover()
        assert result.outcome == "finished"
        _consolidated(vc, ops, inst, vol)
    else:
        assert record.state == jn.ROLLED_BACK
        _assert_as_before(vc, ops, inst, vol, before=before)
    assert_files_consistent(vc, seeded)


@pytest.mark.live
@pytest.mark.parametrize("before_task_id", [False, True], ids=["task-journaled", "task-unknown"])
@pytest.mark.parametrize("step", CONSOLIDATE_STEPS)
def test_kill_during_consolidate_then_recover(
    vc: Target, ops: Any, tmp_path: Path, step: str, before_task_id: bool
) -> None:
    """Killed in each step of `vmdk-snap consolidate`: recover rolls back
    (relocate, swap) or finishes (the stale copy's deletion), never stuck."""
    seeded, inst, vol, before = _seed(vc, ops)
    _killed_at(
        vc, tmp_path, step, vol["id"], inst["uuid"], before_task_id=before_task_id,
        op="consolidate",
    )  # fmt: skip
    driver = make_driver(ops, tmp_path)
    (result,) = driver.recover()
    assert_nothing_running(
        ops, inst["moref"], vol["moref"]
    )  # recover waited for the dead process's task
    time.sleep(1.6)  # a task recover failed to wait for would show below
    assert driver.journal.unfinished() == []
    if step == "delete_stale_copy":
        assert result.outcome == "finished"
        _consolidated(vc, ops, inst, vol)
    else:
        assert result.outcome == "rolled_back"
        _assert_as_before(vc, ops, inst, vol, before=before)
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_a_failed_undo_is_kept_and_recover_finishes_the_rollback_exactly(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """The backing's snapshot fails, then so does the undo of the instance
    snapshot: the user gets both errors and a hint, the journal keeps the
    workflow, nothing else is attempted on the volume until `recover`, which
    (the cause gone) finishes the rollback: everything exactly as before."""
    seeded, inst, vol, before = _seed(vc, ops)
    vc.ctl.inject_fault("CreateSnapshot_Task", "task", "FileLocked", match=f">{vol['moref']}<")
    # Both the merge and the fallback removal without merging fail.
    vc.ctl.inject_fault("RemoveSnapshot_Task", "task", "FileLocked", count=2)
    driver = make_driver(ops, tmp_path)
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    try:
        with pytest.raises(RollbackFailed) as info:
            driver.create_snapshot(volume, "s1", force=True)
    finally:
        vc.ctl.clear_faults()
    assert "undoing step snapshot_instance failed too" in str(info.value)
    assert "vmdk-snap recover" in (info.value.hint or "")
    (record,) = driver.journal.workflows(vol["id"])
    assert record.state == jn.ROLLBACK_FAILED
    undo = record.step("snapshot_instance")
    assert undo is not None
    assert undo.state == jn.UNDO_FAILED
    with pytest.raises(VmdkSnapError, match="interrupted snapshot_attached workflow"):
        driver.create_snapshot(volume, "s1", force=True)

    (result,) = driver.recover()
    assert result.outcome == "rolled_back"
    assert driver.journal.unfinished() == []
    _assert_as_before(vc, ops, inst, vol, before=before)
    assert_files_consistent(vc, seeded)


# -- writes through the instance while the workflow runs ------------------------------


def _write_during(
    vc: Target, ops: Any, tmp_path: Path, *, fail_hand_over: bool
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str], BaseException | None]:
    """A forced snapshot of attached-volume's volume; once the instance's
    temporary snapshot exists (its backing's snapshot is slow), the guest
    writes "during". Returns the scenario, the tokens before, and the error."""
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    key = volume_disk_key(ops, vol, inst["moref"])
    start = vc.ctl.read_disk(inst["moref"], key)
    if fail_hand_over:
        vc.ctl.inject_fault("ReconfigVM_Task", "task", "FileLocked", match=f">{vol['moref']}<")
    vc.ctl.set_task_time("CreateSnapshot_Task", 1500)
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            make_driver(ops, tmp_path).create_snapshot(
                Volume(vol["id"], "in-use", inst["uuid"]), "s1", force=True
            )
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while len(vc.ctl.read_disk(inst["moref"], key)["chain"]) == len(start["chain"]):
            assert time.monotonic() < deadline, "the instance snapshot never came"
            time.sleep(0.05)
        # The workflow is still running (its backing's snapshot is slow).
        assert worker.is_alive()
        assert not outcome
        vc.ctl.write(inst["moref"], key, "during")
    finally:
        worker.join(60)
        vc.ctl.clear_faults()
        vc.ctl.reset_timing()
    assert not worker.is_alive()
    return seeded, inst, vol, start["tokens"], outcome[0]


@pytest.mark.live
def test_a_write_during_the_snapshot_is_kept_but_not_in_the_snapshot(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    seeded, inst, vol, before, error = _write_during(vc, ops, tmp_path, fail_hand_over=False)
    assert error is None
    key = volume_disk_key(ops, vol, inst["moref"])
    backing = ops.get_vm(vm(vol["moref"]))
    node = backing.snapshot_named("s1")
    assert node is not None
    # The snapshot froze the volume when the instance's snapshot was taken.
    assert vc.ctl.read_snapshot(node.ref.value, backing.disks[0].key)["tokens"] == before
    # The write is in the volume, seen through the instance and the backing.
    assert vc.ctl.read_disk(inst["moref"], key)["tokens"] == [*before, "during"]
    assert vc.ctl.read_disk(vol["moref"], backing.disks[0].key)["tokens"] == [*before, "during"]
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_a_write_during_a_rolled_back_snapshot_is_not_lost(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """The rollback merges the instance's temporary delta back: what the guest
    wrote meanwhile is in the volume's file, seen through both VMs."""
    seeded, inst, vol, before, error = _write_during(vc, ops, tmp_path, fail_hand_over=True)
    assert isinstance(error, VmdkSnapError)
    assert "FileLocked" in str(error)
    key = volume_disk_key(ops, vol, inst["moref"])
    on_instance = vc.ctl.read_disk(inst["moref"], key)
    assert on_instance["chain"] == [vol["vmdk"]]  # merged back: the old chain exactly
    assert on_instance["tokens"] == [*before, "during"]
    backing = ops.get_vm(vm(vol["moref"]))
    assert backing.snapshots == ()
    assert vc.ctl.read_disk(vol["moref"], backing.disks[0].key) == on_instance
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_rollback_sees_a_volume_attached_without_novas_key(
    vc: Target, ops: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The instance's second volume was attached by hand (no ``volume-<id>``
    key) and its backing has a snapshot taken while it shared the instance's
    file. The guard finds that backing by the file, not by the key, and keeps
    the delta: the hand-made snapshot keeps its data."""
    seeded = vc.ctl.scenario("instance-two-volumes")
    inst = seeded["instances"][0]
    vol_a, vol_b = seeded["volumes"]
    key_b = volume_disk_key(ops, vol_b, inst["moref"])
    ops.set_extra_config(vm(inst["moref"]), {f"volume-{vol_b['id']}": ""})  # "" removes it
    assert f"volume-{vol_b['id']}" not in ops.get_vm(vm(inst["moref"])).volume_keys
    with powered_off(vc, inst["moref"]):  # running, the instance locks its file
        by_hand = ops.create_snapshot(vm(vol_b["moref"]), "by-hand")
    bkey = ops.get_vm(vm(vol_b["moref"])).disks[0].key
    frozen = vc.ctl.read_snapshot(by_hand.value, bkey)
    assert frozen["chain"] == [vol_b["vmdk"]]

    match = f">{vol_a['moref']}<"
    _forced_failing(vc, ops, tmp_path, inst, vol_a, method="CreateSnapshot_Task", match=match)

    assert "a snapshot or a deeper chain holds " + vol_b["vmdk"] in caplog.text
    vc.ctl.write(inst["moref"], key_b, "after-rollback")
    assert vc.ctl.read_snapshot(by_hand.value, bkey) == frozen
    assert_files_consistent(vc, seeded)


COMPACTION_STEPS = {
    "repoint_backing_0": "ReconfigVM_Task",
    "consolidate_instance": "ConsolidateVMDisks_Task",
}


@pytest.mark.live
@pytest.mark.parametrize("before_task_id", [False, True], ids=["task-journaled", "task-unknown"])
@pytest.mark.parametrize("step", list(COMPACTION_STEPS))
def test_kill_during_compaction_then_recover(
    vc: Target, ops: Any, tmp_path: Path, step: str, before_task_id: bool
) -> None:
    """Killed at each step of a compaction: recover finishes or undoes it, no data lost."""
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    setup = Driver(ops, journal_path=tmp_path / "setup.sqlite", compact=False)
    setup.create_snapshot(volume, "snapshot-1", force=True)
    setup.delete_snapshot(volume, "snapshot-1")
    key = volume_disk_key(ops, vol, inst["moref"])
    vc.ctl.write(inst["moref"], key, "after")
    tokens = vc.ctl.read_disk(inst["moref"], key)["tokens"]
    pending = world(vc, ops, inst["moref"], vol["moref"])
    _killed_at(
        vc,
        tmp_path,
        step,
        vol["id"],
        inst["uuid"],
        before_task_id=before_task_id,
        op="compact",
        method=COMPACTION_STEPS[step],
    )
    driver = make_driver(ops, tmp_path)
    (result,) = driver.recover()
    assert_nothing_running(ops, inst["moref"], vol["moref"])
    assert driver.journal.unfinished() == []
    backing, instance = ops.get_vms([vm(vol["moref"]), vm(inst["moref"])])
    if result.outcome == "finished":
        assert all(len(d.chain) == 1 for d in instance.disks)
        assert not instance.consolidation_needed
        assert backing.disks[0].path == next(d.path for d in instance.disks if d.key == key)
    else:
        assert result.outcome == "rolled_back", result
        after = world(vc, ops, inst["moref"], vol["moref"])
        assert (after.chains, after.files, after.trees) == (
            pending.chains,
            pending.files,
            pending.trees,
        )
    assert vc.ctl.read_disk(inst["moref"], key)["tokens"] == tokens
    # Either way the backing is on the instance's current file again.
    assert vc.ctl.read_disk(vol["moref"], backing.disks[0].key)["tokens"] == tokens
    assert_files_consistent(vc, seeded)


# Steps on a backing with a retained snapshot: the swap through a temporary
# snapshot (the instance storage-vMotioned) and the copy-out (chains deep).
KEPT_STEPS: dict[str, str] = {
    "hold_old_disk": "CreateSnapshot_Task",
    "swap_backing_disk": "ReconfigVM_Task",
    "release_old_disk": "RemoveSnapshot_Task",
    "copy_snapshots_out": "RelocateVM_Task",
}
# Killed during these, the workflow is past its point of no return.
KEPT_FINISHED = {"release_old_disk", "copy_snapshots_out"}


@pytest.mark.live
@pytest.mark.parametrize("before_task_id", [False, True], ids=["task-journaled", "task-unknown"])
@pytest.mark.parametrize("step", list(KEPT_STEPS))
def test_kill_at_the_steps_of_a_backing_with_snapshots_then_recover(
    vc: Target, ops: Any, tmp_path: Path, step: str, before_task_id: bool
) -> None:
    """Killed at each step a retained snapshot brings: recover finishes or undoes it,
    the retained snapshot keeps its data, no temporary snapshot or file is left."""
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    kept = Driver(ops, journal_path=tmp_path / "setup.sqlite").create_snapshot(
        volume, "kept", force=True
    )
    (bkey,) = [d.key for d in ops.get_vm(vm(vol["moref"])).disks]
    kept_tokens = vc.ctl.read_snapshot(kept.ref.value, bkey)["tokens"]
    if step != "copy_snapshots_out":
        ops.relocate(vm(inst["moref"]), datastore=ops.datastore_named("ds-shared-2"))
    key = volume_disk_key(ops, vol, inst["moref"])
    vc.ctl.write(inst["moref"], key, "before")
    tokens = vc.ctl.read_disk(inst["moref"], key)["tokens"]
    before = world(vc, ops, inst["moref"], vol["moref"])
    _killed_at(
        vc,
        tmp_path,
        step,
        vol["id"],
        inst["uuid"],
        before_task_id=before_task_id,
        method=KEPT_STEPS[step],
        copy_depth=1 if step == "copy_snapshots_out" else 14,
    )
    driver = make_driver(ops, tmp_path)
    (result,) = driver.recover()
    assert_nothing_running(ops, inst["moref"], vol["moref"])
    time.sleep(1.6)  # a task recover failed to wait for would show below
    assert driver.journal.unfinished() == []
    backing = ops.get_vm(vm(vol["moref"]))
    assert vc.ctl.read_snapshot(kept.ref.value, bkey)["tokens"] == kept_tokens
    assert vc.ctl.read_disk(inst["moref"], key)["tokens"] == tokens
    if step in KEPT_FINISHED:
        assert result.outcome == "finished"
        assert [n.name for n in backing.all_snapshots()] == ["kept", "snapshot-1"]
        made = backing.snapshot_named("snapshot-1")
        assert made is not None
        assert vc.ctl.read_snapshot(made.ref.value, bkey)["tokens"] == tokens
        assert backing.disks[0].path == vc.ctl.read_disk(inst["moref"], key)["chain"][0]
    else:
        assert result.outcome == "rolled_back"
        after = world(vc, ops, inst["moref"], vol["moref"])
        assert (after.trees, after.homes, after.chains) == (
            before.trees,
            before.homes,
            before.chains,
        )
    assert_files_consistent(vc, seeded)


# A group snapshot of three volumes: step -> (the task's method, how it ends);
# the consolidation steps on Work Flow 2 (two volumes, instance moved).
GROUP_STEPS: dict[str, tuple[str, str]] = {
    "relocate_backing_1": ("RelocateVM_Task", "rolled_back"),
    "swap_backing_disk_0": ("ReconfigVM_Task", "rolled_back"),
    "snapshot_instance": ("CreateSnapshot_Task", "rolled_back"),
    "snapshot_backing_1": ("CreateSnapshot_Task", "rolled_back"),
    "hand_over_top_0": ("ReconfigVM_Task", "finished"),  # the point of no return
    "hand_over_top_2": ("ReconfigVM_Task", "finished"),
    "remove_instance_snapshot": ("RemoveSnapshot_Task", "finished"),
}


@pytest.mark.live
@pytest.mark.parametrize("before_task_id", [False, True], ids=["task-journaled", "task-unknown"])
@pytest.mark.parametrize("step", list(GROUP_STEPS))
def test_kill_during_a_group_snapshot_then_recover(
    vc: Target, ops: Any, tmp_path: Path, step: str, before_task_id: bool
) -> None:
    """All members or none, their data intact, and the records say which."""
    moved = step.startswith(("relocate_backing", "swap_backing_disk"))
    seeded = vc.ctl.scenario("workflow2" if moved else "instance-three-volumes")
    inst, vols = seeded["instances"][0], seeded["volumes"]
    keys = [volume_disk_key(ops, v, inst["moref"]) for v in vols]
    tokens = [vc.ctl.read_disk(inst["moref"], k)["tokens"] for k in keys]
    morefs = [inst["moref"], *(v["moref"] for v in vols)]
    before = world(vc, ops, *morefs)
    method, ending = GROUP_STEPS[step]
    ids = ",".join(v["id"] for v in vols)
    _killed_at(
        vc, tmp_path, step, ids, inst["uuid"], before_task_id=before_task_id, op="group",
        method=method,
    )  # fmt: skip
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    (record,) = journal.unfinished()
    assert {m["state"] for m in record.params["members"]} == {"creating"}
    driver = make_driver(ops, tmp_path)
    (result,) = driver.recover()
    assert_nothing_running(ops, *morefs)
    time.sleep(1.6)  # a task recover failed to wait for would show below
    assert result.outcome == ending
    (record,) = driver.journal.workflows(vols[0]["id"])
    states = {m["state"] for m in record.params["members"]}
    instance = ops.get_vm(vm(inst["moref"]))
    assert instance.snapshots == ()
    if ending == "finished":
        assert states == {"available"}
        for v, k, want in zip(vols, keys, tokens, strict=True):
            backing = ops.get_vm(vm(v["moref"]))
            node = backing.snapshot_named("snapshot-1")
            assert node is not None
            (bdisk,) = backing.disks
            assert vc.ctl.read_snapshot(node.ref.value, bdisk.key)["tokens"] == want
            assert bdisk.path == next(d.path for d in instance.disks if d.key == k)
    else:
        assert states == {"error"}
        after = world(vc, ops, *morefs)
        assert (after.trees, after.homes, after.chains, after.files) == (
            before.trees,
            before.homes,
            before.chains,
            before.files,
        )
    for k, want in zip(keys, tokens, strict=True):
        assert vc.ctl.read_disk(inst["moref"], k)["tokens"] == want
    assert_files_consistent(vc, seeded)


@pytest.mark.live
@pytest.mark.parametrize("before_task_id", [False, True], ids=["task-journaled", "task-unknown"])
def test_kill_while_deleting_unused_copies_then_recover(
    vc: Target, ops: Any, tmp_path: Path, before_task_id: bool
) -> None:
    """The last copied-out snapshot deleted, killed while its copies are deleted:
    recover deletes the rest; the instance's data and files are intact."""
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    setup = Driver(ops, journal_path=tmp_path / "setup.sqlite", copy_depth=1)
    setup.create_snapshot(volume, "snapshot-0", force=True)
    setup.create_snapshot(volume, "snapshot-1", force=True)  # copies both out
    setup.delete_snapshot(volume, "snapshot-0")
    key = volume_disk_key(ops, vol, inst["moref"])
    vc.ctl.write(inst["moref"], key, "after")
    tokens = vc.ctl.read_disk(inst["moref"], key)["tokens"]
    _killed_at(
        vc, tmp_path, "delete_unused_copies", vol["id"], inst["uuid"],
        before_task_id=before_task_id, op="delete-attached", method="DeleteVirtualDisk_Task",
    )  # fmt: skip
    driver = make_driver(ops, tmp_path)
    (result,) = driver.recover()
    assert result.outcome == "finished"
    time.sleep(1.6)  # a delete recover failed to wait for would show below
    assert ops.get_vm(vm(vol["moref"])).snapshots == ()
    assert vc.ctl.read_disk(inst["moref"], key)["tokens"] == tokens
    assert_files_consistent(vc, seeded)  # no copy left behind
