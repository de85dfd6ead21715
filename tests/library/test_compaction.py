"""Forced snapshots do not use up the instance's disk chains (compaction).

cinder-backup of an in-use volume takes a forced snapshot and deletes it,
every night, for years: each round must leave the instance as it found it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import (
    DATASTORES,
    assert_files_consistent,
    make_driver,
    vm,
    volume_disk_key,
)
from vmdk_snap.driver import COMPACT_DEPTH, Driver, Volume
from vmdk_snap.errors import VmdkSnapError, fault_name

ROUNDS = 40  # scripts/bench_backup_loop.py runs 100


def _shape(vc: Target, ops: Any, instance: str) -> tuple[list[tuple[int, ...]], bool, list[int]]:
    """The instance's chain depths, consolidationNeeded, and files per datastore."""
    info = ops.get_vm(vm(instance))
    depths = [tuple(len(d.chain) for d in info.disks)]
    return depths, info.consolidation_needed, [len(vc.ctl.files(ds)) for ds in DATASTORES]


@pytest.fixture
def vc(own_vc: Target) -> Target:
    """A simulator of each test's own (``session`` and ``ops`` use it): rounds of workflows
    whose leftovers would burden every later test of the worker."""
    return own_vc


@pytest.mark.live
@pytest.mark.slow
@pytest.mark.usefixtures("quick_sim")  # 40 rounds: the same calls, in a tenth of the time
def test_forced_snapshot_then_delete_round_after_round_leaves_the_instance_as_it_was(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    key = volume_disk_key(ops, vol, inst["moref"])
    start = _shape(vc, ops, inst["moref"])
    for n in range(ROUNDS):
        vc.ctl.write(inst["moref"], key, f"round-{n}")
        written = vc.ctl.read_disk(inst["moref"], key)["tokens"]
        node = driver.create_snapshot(volume, f"backup-{n}", force=True)
        (bdisk,) = ops.get_vm(vm(vol["moref"])).disks
        assert vc.ctl.read_snapshot(node.ref.value, bdisk.key)["tokens"] == written
        assert driver.delete_snapshot(volume, f"backup-{n}")
        assert _shape(vc, ops, inst["moref"]) == start, f"round {n}"
    tokens = vc.ctl.read_disk(inst["moref"], key)["tokens"]
    assert tokens[-ROUNDS:] == [f"round-{n}" for n in range(ROUNDS)]
    # The backing shares the instance's file again.
    (bdisk,) = ops.get_vm(vm(vol["moref"])).disks
    assert vc.ctl.read_disk(vol["moref"], bdisk.key)["tokens"] == tokens
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_compaction_waits_until_no_snapshot_holds_the_instance_files(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    key = volume_disk_key(ops, vol, inst["moref"])
    start = _shape(vc, ops, inst["moref"])
    first = driver.create_snapshot(volume, "first", force=True)
    vc.ctl.write(inst["moref"], key, "between")
    second = driver.create_snapshot(volume, "second", force=True)
    (bdisk,) = ops.get_vm(vm(vol["moref"])).disks
    held = {n: vc.ctl.read_snapshot(s.ref.value, bdisk.key)["tokens"] for n, s in
            (("first", first), ("second", second))}  # fmt: skip
    driver.delete_snapshot(volume, "first")
    # "second" holds files of the instance's chains: nothing is merged.
    depths, needed, _ = _shape(vc, ops, inst["moref"])
    assert needed
    assert depths != start[0]
    node = ops.get_vm(vm(vol["moref"])).snapshot_named("second")
    assert vc.ctl.read_snapshot(node.ref.value, bdisk.key)["tokens"] == held["second"]
    driver.delete_snapshot(volume, "second")
    assert _shape(vc, ops, inst["moref"]) == start
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_compaction_repoints_every_backing_of_the_instance_first(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """Two volumes: the other volume's backing followed the new deltas, and is moved back."""
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("instance-two-volumes")
    inst = seeded["instances"][0]
    start = _shape(vc, ops, inst["moref"])
    one, other = seeded["volumes"]
    volume = Volume(one["id"], "in-use", inst["uuid"])
    keys = {v["id"]: volume_disk_key(ops, v, inst["moref"]) for v in (one, other)}
    for v in (one, other):
        vc.ctl.write(inst["moref"], keys[v["id"]], f"before-{v['id'][:4]}")
    driver.create_snapshot(volume, "backup", force=True)
    for v in (one, other):
        vc.ctl.write(inst["moref"], keys[v["id"]], f"after-{v['id'][:4]}")
    driver.delete_snapshot(volume, "backup")
    assert _shape(vc, ops, inst["moref"]) == start
    instance = ops.get_vm(vm(inst["moref"]))
    for v in (one, other):
        (bdisk,) = ops.get_vm(vm(v["moref"])).disks
        idisk = next(d for d in instance.disks if d.key == keys[v["id"]])
        assert bdisk.path == idisk.path
        tokens = vc.ctl.read_disk(v["moref"], bdisk.key)["tokens"]
        assert tokens[-2:] == [f"before-{v['id'][:4]}", f"after-{v['id'][:4]}"]
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_compact_on_demand_and_its_plan(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = Driver(ops, journal_path=tmp_path / "journal.sqlite", compact=False)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    start = _shape(vc, ops, inst["moref"])
    driver.create_snapshot(volume, "backup", force=True)
    plan = driver.plan_compact(volume)
    assert plan.steps == ()
    assert "snapshot backup" in plan.notes[0]
    driver.delete_snapshot(volume, "backup")
    pending = _shape(vc, ops, inst["moref"])
    assert pending != start
    plan = driver.plan_compact(volume)
    assert [s.name for s in plan.steps] == [
        "repoint_backing_0",
        "enable_instance_consolidation",
        "consolidate_instance",
    ]
    assert _shape(vc, ops, inst["moref"]) == pending  # a plan changes nothing
    assert driver.compact(volume)
    assert _shape(vc, ops, inst["moref"]) == start
    assert not driver.compact(volume)  # nothing left to merge
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_a_forced_snapshot_first_compacts_what_earlier_deletions_left(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """Deleted without compaction (elsewhere, or by an older release): the next
    forced snapshot merges those deltas before it adds its own."""
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    elsewhere = Driver(ops, journal_path=tmp_path / "elsewhere.sqlite", compact=False)
    for n in range(COMPACT_DEPTH):
        elsewhere.create_snapshot(volume, f"old-{n}", force=True)
        elsewhere.delete_snapshot(volume, f"old-{n}")
    depths, needed, _ = _shape(vc, ops, inst["moref"])
    assert needed
    assert max(depths[0]) == COMPACT_DEPTH + 1
    make_driver(ops, tmp_path).create_snapshot(volume, "new", force=True)
    instance = ops.get_vm(vm(inst["moref"]))
    # Compacted to the bases, then one delta for the new snapshot.
    assert [len(d.chain) for d in instance.disks] == [2, 2]
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_vsphere_consolidate_is_disabled_while_a_snapshot_holds_the_instance_files(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """vCenter's consolidationNeeded alarm invites pressing Consolidate: it would
    merge into the files the volume snapshots hold, so it is refused meanwhile."""
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    instance = vm(inst["moref"])
    assert ops.disabled_methods(instance) == ()
    driver.create_snapshot(volume, "first", force=True)
    driver.create_snapshot(volume, "second", force=True)
    for held_by in ("first and second", "second"):
        assert ops.disabled_methods(instance) == ("ConsolidateVMDisks_Task",), held_by
        with pytest.raises(VmdkSnapError) as err:
            ops.consolidate_disks(instance)
        assert fault_name(err.value.fault) == "MethodDisabled"
        assert err.value.fault.source == "vmdk-snap"
        assert f"snapshots of volume {vol['id']}" in str(err.value)
        if held_by == "first and second":
            driver.delete_snapshot(volume, "first")
    driver.delete_snapshot(volume, "second")  # the last one: compaction enables it
    assert ops.disabled_methods(instance) == ()
    assert not ops.get_vm(instance).consolidation_needed
