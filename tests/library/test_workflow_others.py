"""Failures and crashes at ``follow_other_volumes``, on the simulator.

Scenario ``instance-two-volumes``: an instance with two attached volumes
whose backings share the instance's files (neither was duplicated). A forced
snapshot of ``vol-a`` gives *every* disk of the instance a new delta, so the
step ``follow_other_volumes`` (after the point of no return) must give
``vol-b``'s backing its new delta, or a detach or clone of ``vol-b`` would
read stale data. Each test also runs with a third volume attached (so the
step makes two calls, and the failure or the crash hits the second). A
failure or a crash there is finished forward by ``recover``: ``vol-a``'s
snapshot holds its data, every other backing reads what the instance wrote
to its volume, and no file is lost.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target, child_env
from tests.workflow_checks import (
    assert_forced_snapshot_invariants,
    assert_nothing_running,
    make_driver,
    snapshot_trees,
    vm,
    volume_disk_key,
)
from vmdk_snap.driver import Volume
from vmdk_snap.errors import VmdkSnapError
from vmdk_snap.types import DiskSpec
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.volumeops import VolumeOps
from vmdk_snap.vsphere.volumeops.lookups import tasks_in_flight
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.engine import Incomplete
from vmdk_snap.workflows.journal import Journal

STEP = "follow_other_volumes"
SLOW_MS = 1500  # the dead process's task still runs while recover starts
VOLUMES = [2, 3]  # volumes attached to the instance; the first is snapshotted


def _attach_third(vc: Target, ops: Any, seeded: dict[str, Any]) -> None:
    """Attach one more volume to the scenario's instance, as Nova does.

    Its VMDK by path on the instance's controller, ``extraConfig`` naming it;
    the backing keeps using the same file (not duplicated).
    """
    inst = seeded["instances"][0]
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    (backing,) = ops.get_vms([vm(vol["moref"])])
    info = ops.get_vm(vm(inst["moref"]))
    controller = info.disks[0].controller_key
    used = {d.unit for d in info.disks if d.controller_key == controller}
    unit = next(u for u in range(16) if u != 7 and u not in used)
    spec = DiskSpec(
        path=vol["vmdk"],
        controller_key=controller,
        unit=unit,
        capacity_kb=backing.disks[0].capacity_kb,
        uuid=vol["disk_uuid"],
    )
    ops.reconfigure_disks(
        vm(inst["moref"]), add=[spec], extra_config={vol["name"]: vol["disk_uuid"]}
    )
    seeded["volumes"].append({**vol, "attached_to": inst["uuid"]})


def _seed(vc: Target, ops: Any, volumes: int) -> dict[str, Any]:
    """The scenario, and what the checks compare against (read before the workflow).

    ``others``: the volumes besides the snapshotted one, in the order the
    step reconfigures their backings (by their ``volume-<id>`` keys).
    """
    seeded = vc.ctl.scenario("instance-two-volumes")
    if volumes == 3:
        _attach_third(vc, ops, seeded)
    inst = seeded["instances"][0]
    vol_a, *others = seeded["volumes"]
    others.sort(key=lambda v: f"volume-{v['id']}")
    key_a = volume_disk_key(ops, vol_a, inst["moref"])
    keys = {v["id"]: volume_disk_key(ops, v, inst["moref"]) for v in others}
    backings = ops.get_vms([vm(v["moref"]) for v in others])
    files = {v["id"]: b.disks[0].path for v, b in zip(others, backings, strict=True)}
    for v in others:
        # Not duplicated: the backing uses the instance's file, so the step
        # has a backing to reconfigure.
        assert files[v["id"]] == vc.ctl.read_disk(inst["moref"], keys[v["id"]])["chain"][0]
    return {
        "seeded": seeded,
        "inst": inst,
        "vol_a": vol_a,
        "others": others,
        "keys": keys,
        "files": files,
        "tokens_a": vc.ctl.read_disk(inst["moref"], key_a)["tokens"],
        "tokens": {
            v["id"]: vc.ctl.read_disk(inst["moref"], keys[v["id"]])["tokens"] for v in others
        },
        "instance_tree": snapshot_trees(ops, inst["moref"])[0],
    }


def _backing_of(vc: Target, ops: Any, vol: dict[str, Any]) -> tuple[str, list[str]]:
    """A volume's backing: its disk's file and the data read through it."""
    (backing,) = ops.get_vms([vm(vol["moref"])])
    (disk,) = backing.disks
    return disk.path, vc.ctl.read_disk(vol["moref"], disk.key)["tokens"]


def _write_others(vc: Target, s: dict[str, Any], token: str) -> None:
    """Write ``token`` through the instance to every other volume."""
    for v in s["others"]:
        vc.ctl.write(s["inst"]["moref"], s["keys"][v["id"]], token)


def _assert_finished(vc: Target, ops: Any, s: dict[str, Any], *, written: list[str]) -> None:
    """The forced snapshot of vol-a is complete and the other backings follow the instance.

    ``written``: tokens the test wrote through the instance to the other
    volumes after the snapshot; their backings must read them (why the step
    exists).
    """
    inst, vol_a = s["inst"], s["vol_a"]
    for v in s["others"]:
        # The backing uses the instance's current file for its volume, its
        # tree untouched, and reads what the instance wrote.
        path, tokens = _backing_of(vc, ops, v)
        on_instance = vc.ctl.read_disk(inst["moref"], s["keys"][v["id"]])
        assert path == on_instance["chain"][0]
        assert path != s["files"][v["id"]]  # the new delta, not the file it shared before
        assert snapshot_trees(ops, v["moref"]) == [()]
        assert tokens == on_instance["tokens"] == [*s["tokens"][v["id"]], *written]
    # And they keep reading what the instance writes from now on.
    _write_others(vc, s, "after-recover")
    for v in s["others"]:
        assert _backing_of(vc, ops, v)[1] == [*s["tokens"][v["id"]], *written, "after-recover"]
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
@pytest.mark.parametrize("volumes", VOLUMES, ids=[f"{n}-volumes" for n in VOLUMES])
def test_writes_to_other_volumes_after_the_snapshot_are_read_through_their_backings(
    vc: Target, ops: Any, tmp_path: Path, volumes: int
) -> None:
    """Why the step exists: the instance writes every volume to a new delta.

    After the snapshot of vol-a each other volume's backing must read what
    the instance writes to that volume (a Nova detach or a Cinder clone of
    it reads through its backing), one ReconfigVM per backing.
    """
    s = _seed(vc, ops, volumes)
    driver = make_driver(ops, tmp_path)
    vc.ctl.reset_calls()
    driver.create_snapshot(
        Volume(s["vol_a"]["id"], "in-use", s["inst"]["uuid"]), "snapshot-1", force=True
    )
    # hand_over_top's one, then one per other backing.
    assert vc.ctl.calls()["ReconfigVM_Task"] == 1 + len(s["others"])
    (record,) = driver.journal.workflows(s["vol_a"]["id"])
    step = record.step(STEP)
    assert step is not None
    assert step.changes is not None
    followed = [name for name, _path in step.changes["followed"]]
    assert followed == [v["name"] for v in s["others"]]
    _write_others(vc, s, "after-snapshot")
    _assert_finished(vc, ops, s, written=["after-snapshot"])


@pytest.mark.live
@pytest.mark.parametrize("volumes", VOLUMES, ids=[f"{n}-volumes" for n in VOLUMES])
def test_failure_at_follow_other_volumes_is_finished_by_recover(
    clean_sim: Target, ops: Any, tmp_path: Path, volumes: int
) -> None:
    """The last other backing's ReconfigVM fails: Incomplete, then recover finishes it.

    With three volumes the step has already given the first other backing
    its delta when the second fails: recover keeps that and does the rest.
    """
    vc = clean_sim
    s = _seed(vc, ops, volumes)
    inst, vol_a, last = s["inst"], s["vol_a"], s["others"][-1]
    driver = make_driver(ops, tmp_path)
    # Only that backing: hand_over_top reconfigures vol-a's, which must pass.
    vc.ctl.inject_fault("ReconfigVM_Task", "task", "FileLocked", match=f">{last['moref']}<")
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
    # The failed call changed nothing: that backing still has the file the
    # instance no longer writes, so a write to its volume is not seen through
    # it (the backings before it already follow).
    _write_others(vc, s, "while-lagging")
    assert _backing_of(vc, ops, last) == (s["files"][last["id"]], s["tokens"][last["id"]])
    for v in s["others"][:-1]:
        assert _backing_of(vc, ops, v)[1] == [*s["tokens"][v["id"]], "while-lagging"]
    # The volume cannot be snapshotted again until recover has run.
    with pytest.raises(VmdkSnapError, match="interrupted snapshot_attached workflow"):
        driver.create_snapshot(Volume(vol_a["id"], "in-use", inst["uuid"]), "x", force=True)

    vc.ctl.reset_calls()
    (result,) = driver.recover()
    assert (result.workflow_id, result.outcome) == (record.id, "finished")
    assert driver.journal.unfinished() == []
    assert vc.ctl.calls().get("ReconfigVM_Task", 0) == 1  # only the one that failed
    _assert_finished(vc, ops, s, written=["while-lagging"])


_CHILD = """
import os, signal, sys
from pathlib import Path
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.workflows.journal import Journal
from vmdk_snap.types import DiskSpec
from vmdk_snap.vsphere.session import Session
url, user, ca, journal, vol, inst, die_at, nth = sys.argv[1:]
if die_at:
    # Die the moment the journal would record the id of the nth task of step
    # die_at: its call was sent and answered, the id is never written.
    record_task = Journal.step_task
    seen = []
    def step_task(self, wf_id, index, task):
        step = next(s for s in self.get(wf_id).steps if s.index == index)
        if step.name == die_at:
            seen.append(task)
            if len(seen) == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)
        record_task(self, wf_id, index, task)
    Journal.step_task = step_task
with Session(url, user, os.environ["VMDK_SNAP_TEST_PASSWORD"], ca_file=ca) as s:
    driver = Driver(s, journal_path=Path(journal))
    driver.create_snapshot(Volume(vol, "in-use", inst), "snapshot-1", force=True)
"""


def _kill_at_step(
    vc: Target, session: Any, journal: Path, s: dict[str, Any], *, before_task_id: bool
) -> None:
    """Run the forced snapshot of vol-a in a child process; SIGKILL it during the step.

    It dies during the ReconfigVM of the last other backing (the step's nth
    task). ``before_task_id``: the child kills itself right after that call
    was answered, before the journal records the task's id (it holds the
    previous backing's, or none); otherwise the test kills it once the
    journal shows that id. The task is slow, so it still runs in vCenter
    when the process is gone.
    """
    vc.ctl.set_task_time("ReconfigVM_Task", SLOW_MS)
    env = child_env(VMDK_SNAP_TEST_PASSWORD=vc.password)
    nth = len(s["others"])
    die_at = STEP if before_task_id else ""
    args = [vc.url, vc.username, vc.ca_file, str(journal), s["vol_a"]["id"], s["inst"]["uuid"]]
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *args, die_at, str(nth)], env=env)
    try:
        if before_task_id:
            assert proc.wait(60) == -signal.SIGKILL
        else:
            _wait_for_task_ids(journal, proc, nth)
            proc.kill()  # the task goes on in vCenter; the process is gone
            proc.wait()
        # The last backing's ReconfigVM still runs; the journal has its id or not.
        (running,) = tasks_in_flight(session, [vm(s["others"][-1]["moref"])])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        vc.ctl.reset_timing()
    rec = Journal(journal).workflows()[-1].step(STEP)
    assert rec is not None
    assert rec.state == jn.STARTED
    assert (rec.task == running.ref.value) != before_task_id
    assert (rec.task is None) == (before_task_id and nth == 1)


def _wait_for_task_ids(journal: Path, proc: subprocess.Popen[bytes], nth: int) -> None:
    """Until the child's journal has shown ``nth`` task ids for the step."""
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the workflow ended before the step's last call"
        if journal.exists():
            for record in Journal(journal).workflows():
                rec = record.step(STEP)
                if rec is not None and rec.state == jn.STARTED and rec.task:
                    seen.add(rec.task)
        if len(seen) == nth:
            return
        time.sleep(0.02)
    pytest.fail(f"step {STEP} never sent its call number {nth}")


@pytest.mark.live
@pytest.mark.parametrize("before_task_id", [False, True], ids=["task-journaled", "task-unknown"])
@pytest.mark.parametrize("volumes", VOLUMES, ids=[f"{n}-volumes" for n in VOLUMES])
def test_kill_at_follow_other_volumes_then_recover_finishes(
    clean_sim: Target, ops: Any, tmp_path: Path, volumes: int, before_task_id: bool
) -> None:
    """Killed while the last other backing is reconfigured: recover waits for that task.

    Without its task id the journal only says the step started (or holds the
    previous backing's task). Recover must still wait for the ReconfigVM the
    dead process left running on that backing (a VM other than the
    workflow's backing and instance) before it checks the step: else it sees
    the backing still lagging, sends the same ReconfigVM again and reports
    the workflow finished while the dead process's task still runs.
    """
    vc = clean_sim
    s = _seed(vc, ops, volumes)
    morefs = [v["moref"] for v in s["seeded"]["volumes"]] + [s["inst"]["moref"]]
    driver = make_driver(ops, tmp_path)
    _kill_at_step(vc, ops.session, driver.journal.path, s, before_task_id=before_task_id)
    (interrupted,) = driver.journal.unfinished()

    vc.ctl.reset_calls()
    (result,) = driver.recover()
    # Nothing the dead process started is still running when recover returns,
    # and recover did not send the dead process's call a second time.
    assert_nothing_running(ops, *morefs)
    assert vc.ctl.calls().get("ReconfigVM_Task", 0) == 0
    assert (result.workflow_id, result.outcome) == (interrupted.id, "finished")
    assert driver.journal.unfinished() == []
    time.sleep(SLOW_MS / 1000 + 0.1)  # a task recover failed to wait for would show below
    _write_others(vc, s, "after-snapshot")
    _assert_finished(vc, ops, s, written=["after-snapshot"])


# -- what the other volumes cost (counted exactly, never timed) ----------------------


@pytest.mark.live
@pytest.mark.parametrize(
    ("scenario", "expected"),
    [("instance-two-volumes", 22), ("workflow2", 29)],
    ids=["shared-other-volume", "work-flow-2"],
)
def test_cost_of_a_forced_snapshot_with_another_volume(
    vc: Target, tmp_path: Path, scenario: str, expected: int
) -> None:
    """Counted from right after login, as tests/library/test_driver_cost.py counts the
    one-volume budgets (16 without, 26 with consolidation). The other volume
    adds one backing lookup and one read of its backing (the hand-over's read
    of the instance is reused); if it shared the instance's file (not
    duplicated) also its ReconfigVM task (3)."""
    seeded = vc.ctl.scenario(scenario)
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    vc.ctl.set_default_task_time(0)  # every task ends within one wait
    try:
        with Session(vc.url, vc.username, vc.password, ca_file=vc.ca_file) as session:
            driver = make_driver(VolumeOps(session, task_timeout=60), tmp_path)
            vc.ctl.reset_calls()
            driver.create_snapshot(Volume(vol["id"], "in-use", inst["uuid"]), "s1", force=True)
            calls = vc.ctl.calls()
    finally:
        vc.ctl.reset_timing()
    assert sum(calls.values()) == expected, calls
    assert calls["FindByUuid"] == 3  # backing and instance to resolve, the other backing
