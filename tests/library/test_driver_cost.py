"""What a forced snapshot costs, counted exactly on the simulator (issue 5's budgets).

Counted from right after login, on a session of its own (nothing warmed up),
then again in the same session; bytes copied counted too. Never timed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import make_driver, vm, volume_disk_key
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.volumeops import VolumeOps


@pytest.fixture
def quick_tasks(vc: Target) -> Iterator[None]:
    """Tasks that end within one wait, so round trips are counted exactly."""
    vc.ctl.set_default_task_time(0)
    try:
        yield
    finally:
        vc.ctl.reset_timing()


@contextmanager
def fresh_driver(vc: Target, tmp_path: Path) -> Iterator[Driver]:
    """A Driver on a Session of its own, just logged in (nothing warmed up)."""
    with Session(vc.url, vc.username, vc.password, ca_file=vc.ca_file) as session:
        yield make_driver(VolumeOps(session, task_timeout=60), tmp_path)


def _counted(vc: Target, driver: Driver, scenario: str) -> tuple[int, dict[str, Any], Any]:
    """Round trips of one forced snapshot of a fresh scenario's volume."""
    seeded = vc.ctl.scenario(scenario)
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    vc.ctl.reset_calls()
    vc.ctl.reset_bytes_copied()
    node = driver.create_snapshot(
        Volume(vol["id"], "in-use", inst["uuid"]), "snapshot-1", force=True
    )
    calls = vc.ctl.calls()
    assert vc.ctl.bytes_copied()["total"] == 0
    assert node.name == "snapshot-1"
    return sum(calls.values()), calls, seeded


@pytest.mark.live
def test_forced_snapshot_of_attached_volume(
    vc: Target, ops: Any, tmp_path: Path, quick_tasks: None
) -> None:
    planned = vc.ctl.scenario("attached-volume")["volumes"][0]
    with fresh_driver(vc, tmp_path) as driver:
        plan = driver.plan_snapshot(Volume(planned["id"]), "snapshot-1", force=True)
        assert [s.name for s in plan.steps] == [
            "snapshot_instance",
            "snapshot_backing",
            "hand_over_top",
            "disable_instance_consolidation",
            "remove_instance_snapshot",
        ]
    with fresh_driver(vc, tmp_path) as driver:
        # Counted from right after login (the session sets its task watcher
        # up at login): 2 FindByUuid and 1 read to resolve, 4 tasks x 3
        # (start, ModifyListView, WaitForUpdatesEx), 1 read before the hand-over,
        # 1 DisableMethods (vSphere's Consolidate, while the snapshot holds files).
        cold, calls, _ = _counted(vc, driver, "attached-volume")
        assert cold == 17, calls
        assert "CreatePropertyCollector" not in calls
        warm, calls, _ = _counted(vc, driver, "attached-volume")  # same session, again
        assert warm == 17, calls


@pytest.mark.live
def test_forced_snapshot_with_consolidation_copies_nothing(
    vc: Target, ops: Any, tmp_path: Path, quick_tasks: None
) -> None:
    seeded = vc.ctl.scenario("attached-volume-moved")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    with fresh_driver(vc, tmp_path) as driver:
        state = driver.describe(vol["id"])
    assert state.duplicated
    assert state.backing_datastore == "ds-shared-1"
    assert state.instance_datastore == "ds-shared-2"
    assert state.stale_files == (vol["vmdk"],)
    key = volume_disk_key(ops, vol, inst["moref"])
    assert vc.ctl.read_disk(inst["moref"], key)["tokens"][-1].startswith("post-move")

    with fresh_driver(vc, tmp_path) as driver:
        # From right after login: 3 to resolve, 7 tasks x 3, 1 read before the
        # hand-over, 1 datastore read for the stale copy's datacenter (once
        # per session).
        cold, calls, seeded = _counted(vc, driver, "attached-volume-moved")
        assert cold == 27, calls
        vol = seeded["volumes"][0]
        assert vol["vmdk"] not in vc.ctl.files("ds-shared-1")  # the stale copy is gone
        warm, calls, seeded = _counted(vc, driver, "attached-volume-moved")
        assert warm == 26, calls  # the datastores are known by now
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    key = volume_disk_key(ops, vol, inst["moref"])
    tokens = vc.ctl.read_disk(inst["moref"], key)["tokens"]  # nothing written since
    node = ops.get_vm(vm(vol["moref"])).snapshot_named("snapshot-1")
    assert node is not None
    assert vc.ctl.read_snapshot(node.ref.value, 2000)["tokens"] == tokens


@pytest.mark.live
def test_progress_is_reported_for_each_step(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    seen: list[tuple[str, int | None]] = []
    vc.ctl.set_default_task_time(400)
    try:
        driver.create_snapshot(
            Volume(vol["id"], "in-use", inst["uuid"]),
            "snapshot-1",
            force=True,
            on_progress=lambda step, pct: seen.append((step, pct)),
        )
    finally:
        vc.ctl.reset_timing()
    # Every step with a task (disable_instance_consolidation has none).
    steps = ["snapshot_instance", "snapshot_backing", "hand_over_top", "remove_instance_snapshot"]
    assert [s for s in dict.fromkeys(step for step, _ in seen)] == steps
    assert all(p is None or 0 <= p <= 100 for _, p in seen)
    assert any(p is not None and 0 < p < 100 for _, p in seen)  # fed by the tasks' progress


@pytest.mark.live
@pytest.mark.parametrize("status", ["available", None])
def test_snapshot_of_an_available_volume(
    vc: Target, tmp_path: Path, quick_tasks: None, status: str | None
) -> None:
    """Cinder's 'available' is verified (a volume attached without Cinder
    knowing must not be snapshotted under its instance): the same cost as
    when the driver derives the status itself."""
    with fresh_driver(vc, tmp_path) as driver:
        vol = vc.ctl.scenario("available-volume")["volumes"][0]
        vc.ctl.reset_calls()
        driver.create_snapshot(Volume(vol["id"], status), "snapshot-1")
        calls = vc.ctl.calls()
        # FindByUuid, 1 read of every VM (nobody has it attached), 1 read of
        # the backing; 1 task x 3 (start, ModifyListView, WaitForUpdatesEx);
        # 1 read of the backing's new snapshot. 'available' cost 6 before it
        # was verified (no read of every VM).
        assert sum(calls.values()) == 7, calls
        assert calls["RetrievePropertiesEx"] == 3, calls


@pytest.mark.live
def test_deleting_an_attached_snapshot_then_compacting(
    vc: Target, ops: Any, tmp_path: Path, quick_tasks: None
) -> None:
    """The deletion, then the compaction it triggers: counted, nothing copied."""
    with fresh_driver(vc, tmp_path) as driver:
        _, _, seeded = _counted(vc, driver, "attached-volume")
        inst, vol = seeded["instances"][0], seeded["volumes"][0]
        vc.ctl.reset_calls()
        assert driver.delete_snapshot(Volume(vol["id"], "in-use", inst["uuid"]), "snapshot-1")
        calls = vc.ctl.calls()
    assert {m: n for m, n in calls.items() if m.endswith("_Task")} == {
        "RemoveSnapshot_Task": 1,
        "ReconfigVM_Task": 1,
        "ConsolidateVMDisks_Task": 1,
    }
    # The deletion: 2 FindByUuid and 1 read to resolve, 1 task x 3. The
    # compaction: 1 read of the state, 1 lookup of the instance's other
    # volumes' backings (none), 1 read across the inventory for VMs using its
    # files, 1 read of those VMs, 1 of their snapshots' disks, 2 tasks x 3,
    # 1 EnableMethods (vSphere's Consolidate, disabled by the forced snapshot),
    # and each step's read (the backing's disk, the instance's state).
    assert sum(calls.values()) == 19, calls
    assert vc.ctl.bytes_copied()["total"] == 0


def _group_counted(vc: Target, driver: Driver, n: int) -> tuple[int, int, dict[str, int]]:
    """Round trips of a group snapshot of ``n`` volumes, then of ``n`` forced snapshots."""
    seeded = vc.ctl.scenario("instance-three-volumes", volumes=n)
    inst = seeded["instances"][0]
    volumes = [Volume(v["id"], "in-use", inst["uuid"]) for v in seeded["volumes"]]
    vc.ctl.reset_calls()
    vc.ctl.reset_bytes_copied()  # the simulator is shared: count from here
    driver.create_group_snapshot(volumes, "group-1", force=True)
    group = vc.ctl.calls()
    vc.ctl.reset_calls()
    for v in volumes:
        driver.create_snapshot(v, "single-1", force=True)
    single = vc.ctl.calls()
    assert vc.ctl.bytes_copied()["total"] == 0
    return sum(group.values()), sum(single.values()), group


# N -> (round trips of one group snapshot of N volumes, then of N forced
# snapshots of the same volumes one by one). The group: 10 + 10 N (per member
# two FindByUuid and one read to resolve, its backing's snapshot and hand-over
# as tasks of three round trips each, one read back; once: the instance's
# snapshot and its removal, the guard, the reads). One by one, every forced
# snapshot also hands the instance's new delta to each other volume's backing.
GROUP_COSTS = {1: (18, 17), 2: (28, 60), 4: (48, 240)}


@pytest.mark.live
@pytest.mark.parametrize("n", list(GROUP_COSTS))
def test_group_snapshot_costs_one_instance_snapshot(
    vc: Target, tmp_path: Path, quick_tasks: None, n: int
) -> None:
    with fresh_driver(vc, tmp_path) as driver:
        group, single, calls = _group_counted(vc, driver, n)
    # One temporary snapshot of the instance for the N volumes, one removal.
    assert calls["CreateSnapshot_Task"] == 1 + n
    assert calls["RemoveSnapshot_Task"] == 1
    assert (group, single) == GROUP_COSTS[n], calls
