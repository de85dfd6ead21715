"""The driver on the simulator: snapshots and their invariants (issue 5).

Available volumes, forced snapshots of attached volumes (after a storage
vMotion too), Work Flow 2, volumes with earlier snapshots, quiesced
snapshots (and without VMware Tools), an instance's own snapshots, other
volumes following the instance's delta.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import (
    assert_files_consistent,
    forced_snapshot,
    make_driver,
    snapshot_checked,
    snapshot_trees,
    tree,
    vm,
    volume_disk_key,
    world,
)
from vmdk_snap.driver import Volume
from vmdk_snap.errors import InvalidState


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
def test_forced_snapshot_invariants_without_consolidation(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    seeded, _got = forced_snapshot(vc, ops, make_driver(ops, tmp_path), "attached-volume")
    info = ops.get_vm(vm(seeded["instances"][0]["moref"]))
    # The temporary snapshot's deltas stay (consolidate=False), by design.
    assert info.consolidation_needed


@pytest.mark.live
def test_forced_snapshot_invariants_after_storage_vmotion(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    forced_snapshot(vc, ops, make_driver(ops, tmp_path), "attached-volume-moved")


@pytest.mark.live
def test_work_flow_2_snapshots_only_the_named_volume(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("workflow2")
    inst = seeded["instances"][0]
    vol_a, vol_b = seeded["volumes"]
    key_b = volume_disk_key(ops, vol_b, inst["moref"])
    before_b = vc.ctl.chain(vol_b["moref"])
    tokens_b = vc.ctl.read_disk(inst["moref"], key_b)["tokens"]

    snapshot_checked(vc, ops, driver, seeded, volume=vol_a, name="snapshot-a")
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
    snapshot_checked(vc, ops, driver, seeded, volume=vol, name="snapshot-2")
    assert vc.ctl.read_snapshot(first.ref.value, 2000)["tokens"] == [f"seed:{vol['id']}"]


@pytest.mark.live
def test_consolidation_of_a_volume_with_earlier_snapshots(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """Snapshot, storage-vMotion the instance, snapshot again: nothing is copied."""
    driver = make_driver(ops, tmp_path)
    seeded, got = forced_snapshot(vc, ops, driver, "attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    ds2 = ops.datastore_named("ds-shared-2")
    ops.relocate(vm(inst["moref"]), datastore=ds2)  # storage vMotion, as SDRS would
    vc.ctl.write(inst["moref"], got["key"], "moved")
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    state = driver.describe(volume)
    assert state.duplicated
    assert len(state.stale_files) == 1  # only the old top: the rest holds snapshot-1
    (stale,) = state.stale_files
    vc.ctl.reset_bytes_copied()
    snapshot_checked(vc, ops, driver, seeded, volume=vol, name="snapshot-2")
    assert vc.ctl.bytes_copied()["total"] == 0
    # The stale copy is a delta; the simulator deletes deltas too, as vCenter does.
    assert stale not in vc.ctl.files(stale.split("]", 1)[0].lstrip("["))
    # The first snapshot still holds what it held, where it was.
    assert vc.ctl.read_snapshot(got["node"].ref.value, 2000)["tokens"] == got["tokens"]


@pytest.mark.live
def test_quiesced_forced_snapshot(vc: Target, ops: Any, tmp_path: Path) -> None:
    _seeded, got = forced_snapshot(
        vc, ops, make_driver(ops, tmp_path), "attached-volume", quiesce=True
    )
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


@pytest.mark.live
def test_other_volume_with_snapshots_follows_through_a_temporary_snapshot(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    # vSphere refuses to detach a disk whose chain a snapshot of its VM holds:
    # the other volume's backing, whose retained snapshot holds the file it
    # is on, follows the instance's new delta through a temporary snapshot.
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("instance-two-volumes")
    inst = seeded["instances"][0]
    vol_a, vol_b = seeded["volumes"]
    key_b = volume_disk_key(ops, vol_b, inst["moref"])
    kept = driver.create_snapshot(Volume(vol_b["id"], "in-use", inst["uuid"]), "b-1", force=True)
    (bkey,) = [d.key for d in ops.get_vm(vm(vol_b["moref"])).disks]
    kept_tokens = vc.ctl.read_snapshot(kept.ref.value, bkey)["tokens"]
    vc.ctl.write(inst["moref"], key_b, "before-a")
    vc.ctl.reset_calls()
    driver.create_snapshot(Volume(vol_a["id"], "in-use", inst["uuid"]), "a-1", force=True)
    calls = vc.ctl.calls()
    vc.ctl.write(inst["moref"], key_b, "after-a")
    backing_b, instance = ops.get_vms([vm(vol_b["moref"]), vm(inst["moref"])])
    (bdisk,) = backing_b.disks
    assert bdisk.path == instance.disk_by_uuid(bdisk.uuid).path  # it follows
    assert [n.name for n in backing_b.all_snapshots()] == ["b-1"]  # no temporary one left
    assert vc.ctl.read_snapshot(kept.ref.value, bkey)["tokens"] == kept_tokens
    assert vc.ctl.read_disk(vol_b["moref"], bkey)["tokens"][-2:] == ["before-a", "after-a"]
    # Created: the instance's temporary snapshot, a-1, b's temporary one;
    # removed: the instance's and b's temporary ones.
    assert calls["CreateSnapshot_Task"] == 3
    assert calls["RemoveSnapshot_Task"] == 2
    assert_files_consistent(vc, seeded)
