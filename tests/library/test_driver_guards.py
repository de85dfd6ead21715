"""The driver on the simulator: what it refuses or leaves alone (issue 5).

Volume states, independent disks, chains too deep and bad names are refused
before any change; a volume another workflow holds is busy; a plan changes
nothing; recovery leaves a workflow whose process still runs.
"""

from __future__ import annotations

import logging
import re
import threading
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
    world,
)
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.errors import Busy, InvalidInput, InvalidState
from vmdk_snap.types import DiskSpec, SnapshotNode
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.volumeops import VolumeOps
from vmdk_snap.workflows.locks import InstanceLock, VolumeLock


@pytest.mark.live
def test_in_use_volume_is_refused_without_force(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    vc.ctl.reset_calls()
    with pytest.raises(InvalidState, match=r"in-use by instance .*pass --force") as info:
        driver.create_snapshot(Volume(vol["id"]), "snapshot-1")
    assert inst["uuid"] in str(info.value)
    calls = vc.ctl.calls()
    assert not [m for m in calls if m.endswith("_Task")], calls
    assert snapshot_trees(ops, inst["moref"], vol["moref"]) == [(), ()]


@pytest.mark.live
@pytest.mark.parametrize("status", ["creating", "error", "maintenance"])
def test_other_statuses_are_refused(vc: Target, ops: Any, tmp_path: Path, status: str) -> None:
    driver = make_driver(ops, tmp_path)
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    with pytest.raises(InvalidState, match=f"is '{status}'; snapshots need it 'available'"):
        driver.create_snapshot(Volume(vol["id"], status), "snapshot-1", force=True)
    assert snapshot_trees(ops, vol["moref"]) == [()]


@pytest.mark.live
def test_independent_disk_cannot_be_snapshotted_attached(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    key = volume_disk_key(ops, vol, inst["moref"])
    disk = next(d for d in ops.get_vm(vm(inst["moref"])).disks if d.key == key)
    spec = DiskSpec(
        disk.path,
        disk.controller_key,
        disk.unit or 0,
        disk.capacity_kb,
        disk.uuid,
        "independent_persistent",
    )
    ops.reconfigure_disks(vm(inst["moref"]), remove=[(disk, False)], add=[spec])
    before = world(vc, ops, inst["moref"], vol["moref"])
    with pytest.raises(InvalidState, match="independent_persistent disk, which vSphere leaves"):
        driver.create_snapshot(Volume(vol["id"]), "snapshot-1", force=True)
    assert world(vc, ops, inst["moref"], vol["moref"]) == before


@pytest.mark.live
def test_deep_instance_chain_is_refused_before_any_change(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    vc.ctl.set_default_task_time(0)
    try:
        # A snapshot someone keeps (nothing can be compacted), then 30 snapshot +
        # remove(consolidate=False): each keeps a delta on every disk.
        ops.create_snapshot(vm(inst["moref"]), "kept-by-someone")
        for i in range(30):
            snap = ops.create_snapshot(vm(inst["moref"]), f"grow-{i}")
            ops.remove_snapshot(snap, False, False)
    finally:
        vc.ctl.reset_timing()
    before = world(vc, ops, inst["moref"], vol["moref"])
    vc.ctl.reset_calls()
    with pytest.raises(InvalidState, match="31 deltas deep") as err:
        driver.create_snapshot(Volume(vol["id"], "in-use", inst["uuid"]), "snap-1", force=True)
    assert "detach the volume" in str(err.value.hint)
    assert [m for m in vc.ctl.calls() if m.endswith("_Task")] == []
    assert world(vc, ops, inst["moref"], vol["moref"]) == before


@pytest.mark.live
@pytest.mark.parametrize(
    "name",
    ['snap"1', "snap'1", "<snap>", "snäp", "snap 1", "x" * 81, ""],
)
def test_bad_names_are_refused_before_any_change(
    vc: Target, ops: Any, tmp_path: Path, name: str
) -> None:
    driver = make_driver(ops, tmp_path)
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.reset_calls()
    with pytest.raises(InvalidInput, match=r"use ASCII letters, digits, '-', '_' and '\.'"):
        driver.create_snapshot(Volume(vol["id"]), name)
    with pytest.raises(InvalidInput):
        driver.plan_snapshot(Volume(vol["id"]), name)
    assert vc.ctl.calls() == {}


@pytest.mark.live
def test_second_workflow_on_a_volume_is_busy(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    with VolumeLock(driver.lock_dir, vol["id"]):  # as another process would
        vc.ctl.reset_calls()
        with pytest.raises(Busy, match=f"volume {vol['id']} is busy"):
            driver.create_snapshot(Volume(vol["id"]), "snapshot-1")
        assert vc.ctl.calls() == {}
    driver.create_snapshot(Volume(vol["id"]), "snapshot-1")


@pytest.mark.live
def test_recover_leaves_a_workflow_whose_process_is_alive(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    assert driver.recover() == []
    wf = driver.journal.begin("snapshot", vol["id"], {"name": "snapshot-1"})
    with VolumeLock(driver.lock_dir, vol["id"]):  # its process still runs
        (result,) = driver.recover()
    assert (result.workflow_id, result.outcome) == (wf, "busy")
    assert [r.id for r in driver.journal.unfinished()] == [wf]


@pytest.mark.live
@pytest.mark.parametrize("journaled", ["uuid", "moref only"])
def test_recover_waits_for_the_instance_and_leaves_it_when_still_busy(
    vc: Target, ops: Any, tmp_path: Path, journaled: str
) -> None:
    """Recovering a forced snapshot works on the instance: it waits for the
    instance's lock like the workflow did, and leaves the record when the
    workflow of another volume of that instance still holds it. The journal
    names the instance's uuid (no call); a record without it (written before)
    costs one read of the instance. Then one read across the inventory looks
    for leftover temporary snapshots (there are none here)."""
    seeded = vc.ctl.scenario("instance-two-volumes")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    driver = Driver(ops, journal_path=tmp_path / "state" / "journal.sqlite", instance_wait=0.5)
    params = {"name": "snapshot-1", "instance": ["VirtualMachine", inst["moref"]]}
    if journaled == "uuid":
        params["instance_uuid"] = inst["uuid"]
    wf = driver.journal.begin("snapshot_attached", vol["id"], params)
    before = world(vc, ops, inst["moref"], vol["moref"])
    with InstanceLock(driver.lock_dir, inst["uuid"]):  # another volume's workflow
        vc.ctl.reset_calls()
        (result,) = driver.recover()
    assert (result.workflow_id, result.outcome) == (wf, "busy")
    assert f"instance {inst['uuid']} is busy" in str(result.detail)
    assert [r.id for r in driver.journal.unfinished()] == [wf]
    calls = vc.ctl.calls()
    assert calls == {"RetrievePropertiesEx": 1 if journaled == "uuid" else 2}, calls
    assert world(vc, ops, inst["moref"], vol["moref"]) == before
    with VolumeLock(driver.lock_dir, vol["id"]) as lock:  # recover released it
        assert lock.held


@pytest.mark.live
@pytest.mark.parametrize("op", ["snapshot", "consolidate", "delete"])
def test_a_workflow_on_a_busy_instance_waits_then_is_busy_and_changes_nothing(
    vc: Target, ops: Any, tmp_path: Path, op: str
) -> None:
    """Forced snapshot, consolidation and an attached volume's deletion wait
    for the instance's lock (another volume's workflow holds it), then give up
    with Busy before any change; once it is free they go through."""
    seeded = vc.ctl.scenario("attached-volume" if op == "delete" else "attached-volume-moved")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    driver = Driver(ops, journal_path=tmp_path / "state" / "journal.sqlite", instance_wait=0.5)
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    run = {
        "snapshot": lambda: driver.create_snapshot(volume, "snapshot-2", force=True),
        "consolidate": lambda: driver.consolidate(volume),
        "delete": lambda: driver.delete_snapshot(volume, "snapshot-1"),
    }[op]
    if op == "delete":
        driver.create_snapshot(volume, "snapshot-1", force=True)
    before = world(vc, ops, inst["moref"], vol["moref"])
    with InstanceLock(driver.lock_dir, inst["uuid"]):  # as another process would
        vc.ctl.reset_calls()
        with pytest.raises(Busy, match=f"instance {inst['uuid']} is busy: .* for more than 0.5 s"):
            run()
        assert not [m for m in vc.ctl.calls() if m.endswith("_Task")]
    assert world(vc, ops, inst["moref"], vol["moref"]) == before
    assert run()
    assert world(vc, ops, inst["moref"], vol["moref"]) != before


@pytest.mark.live
def test_plan_changes_nothing(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume-moved")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    before = world(vc, ops, inst["moref"], vol["moref"])
    vc.ctl.reset_calls()
    plan = driver.plan_snapshot(Volume(vol["id"]), "snapshot-1", force=True)
    consolidation = driver.plan_consolidate(Volume(vol["id"]))
    assert not [m for m in vc.ctl.calls() if m.endswith("_Task")]
    assert world(vc, ops, inst["moref"], vol["moref"]) == before
    assert [s.name for s in plan.steps] == [
        "relocate_backing",
        "swap_backing_disk",
        "snapshot_instance",
        "snapshot_backing",
        "hand_over_top",
        "disable_instance_consolidation",
        "remove_instance_snapshot",
        "delete_stale_copy",
    ]
    assert [s.name for s in consolidation.steps] == [
        "relocate_backing",
        "swap_backing_disk",
        "delete_stale_copy",
    ]
    relocate = plan.steps[0].description
    assert "no data is copied" in relocate
    # Names, as `check` shows them, not morefs.
    host = driver.describe(vol["id"]).instance_host
    assert host
    assert f"to host {host}, pool Resources, datastore ds-shared-2" in relocate
    assert "from host " in relocate
    assert not re.search(r"\b(host|resgroup|datastore)-\d+", relocate), relocate
    remove = next(s for s in plan.steps if s.name == "remove_instance_snapshot")
    assert "point of no return" in remove.undo
    assert not remove.reversible
    assert vol["vmdk"] in plan.steps[-1].description
    assert driver.journal.workflows() == []


STALE = r"is 'available' in Cinder's record, but instance {uuid} \(instance-\w+\) has it attached"


def _stale_available_call(driver: Any, op: str, volume: Volume) -> None:
    if op == "snapshot":
        driver.create_snapshot(volume, "snapshot-2")
    elif op == "snapshot-forced":
        driver.create_snapshot(volume, "snapshot-2", force=True)
    elif op == "plan":
        driver.plan_snapshot(volume, "snapshot-2", force=True)
    elif op == "revert":
        driver.revert_to_snapshot(volume, "snapshot-1")
    elif op == "delete":
        driver.delete_snapshot(volume, "snapshot-1")
    else:
        driver.consolidate(volume)


@pytest.mark.live
@pytest.mark.parametrize(
    "op", ["snapshot", "snapshot-forced", "plan", "revert", "delete", "consolidate"]
)
def test_available_volume_attached_in_vcenter_is_refused_and_nothing_changes(
    vc: Target, ops: Any, tmp_path: Path, op: str
) -> None:
    """Cinder's record says 'available' but an instance has the volume: the
    driver must look (one read) and refuse, not snapshot, revert, delete or
    consolidate the backing under a running instance."""
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume-moved" if op == "consolidate" else "attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    if op in ("revert", "delete"):  # a snapshot to revert to or delete
        vc.ctl.set_default_task_time(0)
        try:
            volume = Volume(vol["id"], "in-use", inst["uuid"])
            driver.create_snapshot(volume, "snapshot-1", force=True)
        finally:
            vc.ctl.reset_timing()
    before = world(vc, ops, inst["moref"], vol["moref"])
    journaled = driver.journal.workflows()
    vc.ctl.reset_calls()
    with pytest.raises(InvalidState, match=STALE.format(uuid=inst["uuid"])) as err:
        _stale_available_call(driver, op, Volume(vol["id"], "available"))
    counted = vc.ctl.calls()
    assert "nothing was changed" in err.value.message
    assert "Cinder's record is stale: check the volume's attachment" in err.value.hint
    assert not [m for m in counted if m.endswith("_Task")], counted
    # 1 FindByUuid of the backing, 1 read of every VM (who has it attached),
    # 1 read of backing and instance: then refused.
    assert sum(counted.values()) == 3, counted
    assert world(vc, ops, inst["moref"], vol["moref"]) == before
    assert driver.journal.workflows() == journaled


@pytest.mark.live
def test_available_volume_with_an_instance_uuid_is_refused(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """The caller names the instance but says 'available': refused too."""
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    before = world(vc, ops, inst["moref"], vol["moref"])
    vc.ctl.reset_calls()
    with pytest.raises(InvalidState, match=STALE.format(uuid=inst["uuid"])):
        driver.create_snapshot(Volume(vol["id"], "available", inst["uuid"]), "snapshot-1")
    assert not [m for m in vc.ctl.calls() if m.endswith("_Task")]
    assert world(vc, ops, inst["moref"], vol["moref"]) == before


@pytest.mark.live
def test_forced_snapshots_of_two_volumes_of_one_instance_at_once_run_in_turn(
    vc: Target, ops: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A consistency-group snapshot: two processes snapshot the two volumes of
    one instance at the same moment. The second waits for the instance, so
    their temporary instance snapshots never interleave, and both succeed."""
    seeded = vc.ctl.scenario("instance-two-volumes")
    inst, vols = seeded["instances"][0], seeded["volumes"]
    keys = [volume_disk_key(ops, v, inst["moref"]) for v in vols]
    tokens = [vc.ctl.read_disk(inst["moref"], k)["tokens"] for k in keys]
    inst_tree, *backing_trees = snapshot_trees(ops, inst["moref"], *(v["moref"] for v in vols))
    # The journal exists already, as on a host where vmdk-snap ran before (two
    # processes creating a fresh one at the same moment can meet SQLite's
    # "database is locked" while it switches to WAL: a journal.py matter).
    journal = make_driver(ops, tmp_path).journal.path
    start = threading.Barrier(len(vols))
    results: dict[int, SnapshotNode | BaseException] = {}

    def snapshot(i: int) -> None:  # as a process of its own: its own session and driver
        try:
            with Session(vc.url, vc.username, vc.password, ca_file=vc.ca_file) as session:
                driver = Driver(VolumeOps(session, task_timeout=60), journal_path=journal)
                volume = Volume(vols[i]["id"], "in-use", inst["uuid"])
                start.wait(30)
                results[i] = driver.create_snapshot(volume, f"snapshot-{i}", force=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = exc

    caplog.set_level(logging.INFO, logger="vmdk_snap.workflows.locks")
    # Each workflow holds the instance for about 5 s (5 tasks): the second
    # arrives while the first holds it, even on a loaded machine.
    vc.ctl.set_default_task_time(1000)
    try:
        threads = [threading.Thread(target=snapshot, args=(i,)) for i in range(len(vols))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        vc.ctl.reset_timing()
    assert not any(t.is_alive() for t in threads)
    assert all(isinstance(r, SnapshotNode) for r in results.values()), results
    waits = [r for r in caplog.records if "waiting up to" in r.getMessage()]
    assert len(waits) == 1, [r.getMessage() for r in caplog.records]  # one waited its turn
    assert snapshot_trees(ops, inst["moref"]) == [inst_tree]
    for i, vol in enumerate(vols):
        node = results[i]
        assert isinstance(node, SnapshotNode)
        assert_forced_snapshot_invariants(
            vc,
            ops,
            seeded,
            volume=vol,
            instance=inst,
            node=node,
            instance_tree_before=inst_tree,
            backing_tree_before=backing_trees[i],
            tokens_at_snapshot=tokens[i],
        )
    # One after the other: the second workflow began after the first ended.
    first, second = sorted(make_driver(ops, tmp_path).journal.workflows(), key=lambda w: w.created)
    assert (first.state, second.state) == ("done", "done")
    assert first.params["instance_uuid"] == second.params["instance_uuid"] == inst["uuid"]
    assert first.updated <= second.created
