"""The driver on the simulator: every path of issue 5 and its invariants."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import (
    assert_files_consistent,
    assert_forced_snapshot_invariants,
    make_driver,
    snapshot_trees,
    tree,
    vm,
    volume_disk_key,
    world,
)
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.errors import Busy, InvalidInput, InvalidState, NotFound
from vmdk_snap.locks import VolumeLock
from vmdk_snap.types import DiskSpec


def _forced(
    vc: Target, ops: Any, driver: Driver, scenario: str, *, quiesce: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Seed a scenario, snapshot its first volume forced, check every invariant."""
    seeded = vc.ctl.scenario(scenario)
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    key = volume_disk_key(ops, vol, inst["moref"])
    tokens = vc.ctl.read_disk(inst["moref"], key)["tokens"]
    inst_tree, backing_tree = snapshot_trees(ops, inst["moref"], vol["moref"])
    if quiesce:
        vc.ctl.set_tools(inst["moref"], True)
    node = driver.create_snapshot(
        Volume(vol["id"], "in-use", inst["uuid"]), "snapshot-1", force=True, quiesce=quiesce
    )
    assert node.name == "snapshot-1"
    assert_forced_snapshot_invariants(
        vc,
        ops,
        seeded,
        volume=vol,
        instance=inst,
        node=node,
        instance_tree_before=inst_tree,
        backing_tree_before=backing_tree,
        tokens_at_snapshot=tokens,
    )
    return seeded, {"node": node, "tokens": tokens, "key": key}


@pytest.mark.live
def test_available_volume_snapshots_the_backing(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("available-volume")
    vol = seeded["volumes"][0]
    state = driver.describe(vol["id"])
    assert (state.status, state.instance, state.duplicated) == ("available", None, False)

    node = driver.create_snapshot(Volume(f"volume-{vol['id']}"), "snapshot-a")
    (backing,) = ops.get_vms([vm(vol["moref"])])
    assert tree(backing.snapshots) == (("snapshot-a", ()),)
    assert backing.current_snapshot == node.ref
    assert vc.ctl.read_snapshot(node.ref.value, 2000)["tokens"] == [f"seed:{vol['id']}"]
    vc.ctl.write(vol["moref"], 2000, "later")
    assert vc.ctl.read_snapshot(node.ref.value, 2000)["tokens"] == [f"seed:{vol['id']}"]
    assert_files_consistent(vc, seeded)


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
def test_forced_snapshot_invariants_without_consolidation(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    seeded, _got = _forced(vc, ops, make_driver(ops, tmp_path), "attached-volume")
    info = ops.get_vm(vm(seeded["instances"][0]["moref"]))
    # The temporary snapshot's deltas stay (consolidate=False), by design.
    assert info.consolidation_needed


@pytest.mark.live
def test_forced_snapshot_invariants_after_storage_vmotion(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    _forced(vc, ops, make_driver(ops, tmp_path), "attached-volume-moved")


@pytest.mark.live
def test_work_flow_2_snapshots_only_the_named_volume(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("workflow2")
    inst = seeded["instances"][0]
    vol_a, vol_b = seeded["volumes"]
    key_b = volume_disk_key(ops, vol_b, inst["moref"])
    before_b = vc.ctl.chain(vol_b["moref"])
    tokens_b = vc.ctl.read_disk(inst["moref"], key_b)["tokens"]

    inst_tree, backing_tree = snapshot_trees(ops, inst["moref"], vol_a["moref"])
    key_a = volume_disk_key(ops, vol_a, inst["moref"])
    tokens_a = vc.ctl.read_disk(inst["moref"], key_a)["tokens"]
    node = driver.create_snapshot(
        Volume(vol_a["id"], "in-use", inst["uuid"]), "snapshot-a", force=True
    )
    assert_forced_snapshot_invariants(
        vc,
        ops,
        seeded,
        volume=vol_a,
        instance=inst,
        node=node,
        instance_tree_before=inst_tree,
        backing_tree_before=backing_tree,
        tokens_at_snapshot=tokens_a,
    )
    # The other volume's backing is untouched: same chain, same host, no snapshot.
    assert vc.ctl.chain(vol_b["moref"]) == before_b
    assert snapshot_trees(ops, vol_b["moref"]) == [()]
    # Its instance disk got a delta from the temporary snapshot; the data is intact.
    assert vc.ctl.read_disk(inst["moref"], key_b)["tokens"] == tokens_b
    b_chain = vc.ctl.read_disk(inst["moref"], key_b)["chain"]
    assert len(b_chain) == 2
    assert b_chain[0].startswith(f"[ds-shared-2] {inst['name']}/")
    # Its own later consolidation reconciles it, copying nothing.
    vc.ctl.reset_bytes_copied()
    driver.consolidate(Volume(vol_b["id"], "in-use", inst["uuid"]))
    (backing_b,) = ops.get_vms([vm(vol_b["moref"])])
    assert backing_b.disks[0].path == b_chain[0]
    assert vc.ctl.bytes_copied()["total"] == 0
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_volume_with_earlier_snapshots(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    key = volume_disk_key(ops, vol, inst["moref"])
    first = driver.create_snapshot(volume, "snapshot-1", force=True)
    vc.ctl.write(inst["moref"], key, "between")
    tokens = vc.ctl.read_disk(inst["moref"], key)["tokens"]
    inst_tree, backing_tree = snapshot_trees(ops, inst["moref"], vol["moref"])
    second = driver.create_snapshot(volume, "snapshot-2", force=True)
    assert_forced_snapshot_invariants(
        vc,
        ops,
        seeded,
        volume=vol,
        instance=inst,
        node=second,
        instance_tree_before=inst_tree,
        backing_tree_before=backing_tree,
        tokens_at_snapshot=tokens,
    )
    assert vc.ctl.read_snapshot(first.ref.value, 2000)["tokens"] == [f"seed:{vol['id']}"]


@pytest.mark.live
def test_quiesced_forced_snapshot(vc: Target, ops: Any, tmp_path: Path) -> None:
    _seeded, got = _forced(vc, ops, make_driver(ops, tmp_path), "attached-volume", quiesce=True)
    assert got["node"].name == "snapshot-1"


@pytest.mark.live
def test_quiesce_without_tools_fails_and_changes_nothing(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    vc.ctl.set_tools(inst["moref"], False)
    before = world(vc, ops, inst["moref"], vol["moref"])
    with pytest.raises(InvalidState, match="ToolsUnavailable"):
        driver.create_snapshot(
            Volume(vol["id"], "in-use", inst["uuid"]), "snapshot-1", force=True, quiesce=True
        )
    assert world(vc, ops, inst["moref"], vol["moref"]) == before


@pytest.mark.live
def test_revert_after_a_consolidation(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    seeded, got = _forced(vc, ops, driver, "attached-volume-moved")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    with pytest.raises(InvalidState, match="only be reverted while the volume is available"):
        driver.revert_to_snapshot(volume, "snapshot-1")
    # Detach the volume as Nova does (the files stay), then revert.
    key = got["key"]
    disk = next(d for d in ops.get_vm(vm(inst["moref"])).disks if d.key == key)
    ops.reconfigure_disks(vm(inst["moref"]), remove=[(disk, False)])
    assert vc.ctl.read_disk(vol["moref"], 2000)["tokens"][-1] == "after-snapshot"
    driver.revert_to_snapshot(Volume(vol["id"], "available"), "snapshot-1")
    assert vc.ctl.read_disk(vol["moref"], 2000)["tokens"] == got["tokens"]
    assert tree(ops.get_vm(vm(vol["moref"])).snapshots) == (("snapshot-1", ()),)


@pytest.mark.live
def test_revert_of_a_missing_snapshot(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    with pytest.raises(NotFound, match="has no snapshot named 'nope'"):
        driver.revert_to_snapshot(Volume(vol["id"]), "nope")


@pytest.mark.live
def test_delete_snapshot_of_detached_volume_consolidates(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("available-volume")
    vol = seeded["volumes"][0]
    volume = Volume(vol["id"], "available")
    driver.create_snapshot(volume, "snapshot-1")
    vc.ctl.write(vol["moref"], 2000, "after")
    assert driver.delete_snapshot(volume, "snapshot-1") is True
    backing = ops.get_vm(vm(vol["moref"]))
    assert backing.snapshots == ()
    assert backing.disks[0].chain == (vol["vmdk"],)  # merged back into the base
    assert vc.ctl.read_disk(vol["moref"], 2000)["tokens"] == [f"seed:{vol['id']}", "after"]
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_delete_snapshot_of_attached_volume_keeps_files(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded, got = _forced(vc, ops, driver, "attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    chain_before = vc.ctl.read_disk(inst["moref"], got["key"])
    assert driver.delete_snapshot(Volume(vol["id"], "in-use", inst["uuid"]), "snapshot-1")
    backing, _instance = ops.get_vms([vm(vol["moref"]), vm(inst["moref"])])
    assert backing.snapshots == ()
    # Nothing was merged into a file the instance uses: same chain, same data.
    assert vc.ctl.read_disk(inst["moref"], got["key"]) == chain_before
    assert backing.disks[0].chain == tuple(chain_before["chain"])
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_delete_of_a_missing_snapshot_is_a_no_op(
    vc: Target, ops: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    driver = make_driver(ops, tmp_path)
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.reset_calls()
    with caplog.at_level("INFO", logger="vmdk_snap.driver"):
        assert driver.delete_snapshot(Volume(vol["id"]), "snapshot-gone") is False
    assert "no snapshot snapshot-gone: nothing to delete" in caplog.text
    assert not [m for m in vc.ctl.calls() if m.endswith("_Task")]


@pytest.mark.live
def test_create_is_idempotent(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    first = driver.create_snapshot(volume, "snapshot-1", force=True)
    before = world(vc, ops, inst["moref"], vol["moref"])
    vc.ctl.reset_calls()
    again = driver.create_snapshot(volume, "snapshot-1", force=True)
    assert again.ref == first.ref
    assert not [m for m in vc.ctl.calls() if m.endswith("_Task")]
    assert world(vc, ops, inst["moref"], vol["moref"]) == before
    plan = driver.plan_snapshot(volume, "snapshot-1", force=True)
    assert plan.steps == ()


@pytest.mark.live
def test_second_workflow_on_a_volume_is_busy(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    with VolumeLock(driver.journal.directory, vol["id"]):  # as another process would
        vc.ctl.reset_calls()
        with pytest.raises(Busy, match=f"volume {vol['id']} is busy"):
            driver.create_snapshot(Volume(vol["id"]), "snapshot-1")
        assert vc.ctl.calls() == {}
    driver.create_snapshot(Volume(vol["id"]), "snapshot-1")


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
    assert "point of no return" in plan.steps[5].undo
    assert not plan.steps[5].reversible
    assert vol["vmdk"] in plan.steps[-1].description
    assert driver.journal.workflows() == []


@pytest.mark.live
def test_consolidation_of_a_volume_with_earlier_snapshots(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """Snapshot, storage-vMotion the instance, snapshot again: nothing is copied."""
    driver = make_driver(ops, tmp_path)
    seeded, got = _forced(vc, ops, driver, "attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    (instance,) = ops.get_vms([vm(inst["moref"])])
    ds2 = ops.datastore_named("ds-shared-2")
    ops.relocate(vm(inst["moref"]), datastore=ds2)  # storage vMotion, as SDRS would
    vc.ctl.write(inst["moref"], got["key"], "moved")
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    state = driver.describe(volume)
    assert state.duplicated
    assert len(state.stale_files) == 1  # only the old top: the rest holds snapshot-1
    (stale,) = state.stale_files
    tokens = vc.ctl.read_disk(inst["moref"], got["key"])["tokens"]
    inst_tree, backing_tree = snapshot_trees(ops, inst["moref"], vol["moref"])
    vc.ctl.reset_bytes_copied()
    node = driver.create_snapshot(volume, "snapshot-2", force=True)
    assert vc.ctl.bytes_copied()["total"] == 0
    assert_forced_snapshot_invariants(
        vc,
        ops,
        seeded,
        volume=vol,
        instance=inst,
        node=node,
        instance_tree_before=inst_tree,
        backing_tree_before=backing_tree,
        tokens_at_snapshot=tokens,
    )
    # The stale copy is a delta; the simulator deletes deltas too, as vCenter does.
    assert stale not in vc.ctl.files(stale.split("]", 1)[0].lstrip("["))
    # The first snapshot still holds what it held, where it was.
    assert vc.ctl.read_snapshot(got["node"].ref.value, 2000)["tokens"] == got["tokens"]
    assert instance.host is not None


@pytest.mark.live
def test_recover_leaves_a_workflow_whose_process_is_alive(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    assert driver.recover() == []
    wf = driver.journal.begin("snapshot", vol["id"], {"name": "snapshot-1"})
    with VolumeLock(driver.journal.directory, vol["id"]):  # its process still runs
        (result,) = driver.recover()
    assert (result.workflow_id, result.outcome) == (wf, "busy")
    assert [r.id for r in driver.journal.unfinished()] == [wf]


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
        # 31 snapshot + remove(consolidate=False): each keeps a delta on every disk.
        for i in range(31):
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
def test_instance_with_a_user_snapshot_keeps_its_tree(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    user = ops.create_snapshot(vm(inst["moref"]), "user-before-upgrade")
    before = ops.get_vm(vm(inst["moref"]))
    assert before.current_snapshot == user
    driver.create_snapshot(Volume(vol["id"], "in-use", inst["uuid"]), "snapshot-1", force=True)
    after = ops.get_vm(vm(inst["moref"]))
    assert after.snapshots == before.snapshots  # names, refs, children
    assert after.current_snapshot == before.current_snapshot == user
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_other_shared_volume_follows_the_instance_delta(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("instance-two-volumes")
    inst = seeded["instances"][0]
    vol_a, vol_b = seeded["volumes"]
    assert driver.describe(Volume(vol_b["id"], "in-use", inst["uuid"])).duplicated is False
    driver.create_snapshot(Volume(vol_a["id"], "in-use", inst["uuid"]), "snapshot-a", force=True)
    key_b = volume_disk_key(ops, vol_b, inst["moref"])
    vc.ctl.write(inst["moref"], key_b, "after-a-snapshot")
    state_b = driver.describe(Volume(vol_b["id"], "in-use", inst["uuid"]))
    assert state_b.duplicated is False
    (backing_b,) = ops.get_vms([vm(vol_b["moref"])])
    tokens = vc.ctl.read_disk(vol_b["moref"], backing_b.disks[0].key)["tokens"]
    assert "after-a-snapshot" in tokens
    assert snapshot_trees(ops, vol_b["moref"]) == [()]
    assert_files_consistent(vc, seeded)
