"""Several volumes of one instance at one moment (issue 14), on the simulator.

A database spread over volumes is restorable only from snapshots of one
moment: one temporary instance snapshot freezes every member, each backing's
snapshot holds its frozen file, and the instance's tree is as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import (
    assert_files_consistent,
    make_driver,
    snapshot_trees,
    vm,
    volume_disk_key,
    world,
)
from vmdk_snap.driver import Volume
from vmdk_snap.errors import InvalidInput, InvalidState, QuiesceFailed, VmdkSnapError
from vmdk_snap.workflows.engine import Incomplete


def _seed(vc: Target, ops: Any, scenario: str = "instance-three-volumes") -> tuple[Any, ...]:
    seeded = vc.ctl.scenario(scenario)
    inst = seeded["instances"][0]
    vols = seeded["volumes"]
    keys = [volume_disk_key(ops, v, inst["moref"]) for v in vols]
    return seeded, inst, vols, keys


def _in_use(vols: list[dict[str, Any]], inst: dict[str, Any]) -> list[Volume]:
    return [Volume(v["id"], "in-use", inst["uuid"]) for v in vols]


def _tokens(vc: Target, moref: str, key: int) -> list[str]:
    return list(vc.ctl.read_disk(moref, key)["tokens"])


@pytest.mark.live
def test_three_volumes_at_one_moment(vc: Target, ops: Any, tmp_path: Path) -> None:
    seeded, inst, vols, keys = _seed(vc, ops)
    for v, k in zip(vols, keys, strict=True):
        vc.ctl.write(inst["moref"], k, f"before:{v['id']}")
    before = [_tokens(vc, inst["moref"], k) for k in keys]
    inst_tree = snapshot_trees(ops, inst["moref"])
    driver = make_driver(ops, tmp_path)
    vc.ctl.reset_calls()

    result = driver.create_group_snapshot(_in_use(vols, inst), "db-1", force=True)

    calls = vc.ctl.calls()
    # One instance snapshot froze all three: one creation on the instance,
    # three on the backings; one removal (the instance's temporary snapshot).
    assert calls["CreateSnapshot_Task"] == 4
    assert calls["RemoveSnapshot_Task"] == 1
    assert [m.volume_id for m in result.members] == [v["id"] for v in vols]
    assert {m.state for m in result.members} == {"available"}
    assert all(m.created and m.snapshot is not None for m in result.members)
    assert result.instance_uuid == inst["uuid"]
    for v, k in zip(vols, keys, strict=True):
        vc.ctl.write(inst["moref"], k, f"after:{v['id']}")
    for v, m, want in zip(vols, result.members, before, strict=True):
        backing = ops.get_vm(vm(v["moref"]))
        node = backing.snapshot_named("db-1")
        assert node is not None
        assert m.snapshot is not None
        assert node.ref == m.snapshot.ref
        (bdisk,) = backing.disks
        assert vc.ctl.read_snapshot(node.ref.value, bdisk.key)["tokens"] == want
        # The backing holds the instance's current file: it reads the later write.
        assert vc.ctl.read_disk(v["moref"], bdisk.key)["tokens"] == [*want, f"after:{v['id']}"]
    assert snapshot_trees(ops, inst["moref"]) == inst_tree
    # The journal's records: creating first, available at the end.
    (record,) = driver.journal.workflows(vols[0]["id"])
    assert record.kind == "snapshot_group"
    assert [m["state"] for m in record.params["members"]] == ["available"] * 3
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_a_retry_returns_the_group_and_changes_nothing(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    _seeded, inst, vols, _keys = _seed(vc, ops, "instance-two-volumes")
    driver = make_driver(ops, tmp_path)
    first = driver.create_group_snapshot(_in_use(vols, inst), "db-1", force=True)
    vc.ctl.reset_calls()
    again = driver.create_group_snapshot(_in_use(vols, inst), "db-1", force=True)
    assert not any(m.endswith("_Task") for m in vc.ctl.calls())
    assert [m.created for m in again.members] == [False, False]
    assert [m.snapshot.ref for m in again.members if m.snapshot] == [
        m.snapshot.ref for m in first.members if m.snapshot
    ]


@pytest.mark.live
def test_each_member_may_have_its_own_name_as_cinder_names_them(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """Cinder names every member snapshot-<its id>: one moment, a name each."""
    _seeded, inst, vols, keys = _seed(vc, ops, "instance-two-volumes")
    for v, k in zip(vols, keys, strict=True):
        vc.ctl.write(inst["moref"], k, f"at-{v['id'][:8]}")
    names = {v["id"]: f"snapshot-{i}" for i, v in enumerate(vols)}
    driver = make_driver(ops, tmp_path)
    vc.ctl.reset_calls()
    made = driver.create_group_snapshot(
        _in_use(vols, inst), "group-snapshot-1", force=True, names=names
    )
    assert vc.ctl.calls().get("CreateSnapshot_Task") == 3  # one instance snapshot, two backings
    assert [m.name for m in made.members] == ["snapshot-0", "snapshot-1"]
    for v, member in zip(vols, made.members, strict=True):
        node = ops.get_vm(vm(v["moref"])).snapshot_named(names[v["id"]])
        assert node is not None
        assert member.snapshot is not None
        assert node.ref == member.snapshot.ref
        assert vc.ctl.read_snapshot(node.ref.value, 2000)["tokens"][-1] == f"at-{v['id'][:8]}"
    again = driver.create_group_snapshot(
        _in_use(vols, inst), "group-snapshot-1", force=True, names=names
    )
    assert [m.created for m in again.members] == [False, False]


@pytest.mark.live
def test_bad_groups_are_refused_before_any_change(vc: Target, ops: Any, tmp_path: Path) -> None:
    seeded, inst, vols, _keys = _seed(vc, ops, "instance-two-volumes")
    other = vc.ctl.scenario("attached-volume")
    o_inst, o_vol = other["instances"][0], other["volumes"][0]
    morefs = [inst["moref"], *(v["moref"] for v in vols), o_inst["moref"], o_vol["moref"]]
    before = world(vc, ops, *morefs)
    driver = make_driver(ops, tmp_path)
    vc.ctl.reset_calls()
    with pytest.raises(InvalidState, match="pass --force"):
        driver.create_group_snapshot(_in_use(vols, inst), "g")
    with pytest.raises(InvalidInput, match="several instances"):
        driver.create_group_snapshot(
            [*_in_use(vols, inst), Volume(o_vol["id"], "in-use", o_inst["uuid"])], "g", force=True
        )
    with pytest.raises(InvalidInput, match="ASCII letters"):
        driver.create_group_snapshot(_in_use(vols, inst), "bad name", force=True)
    # A volume said to be on this instance that is not.
    with pytest.raises(VmdkSnapError):
        driver.create_group_snapshot(
            [*_in_use(vols, inst), Volume(o_vol["id"], "in-use", inst["uuid"])], "g", force=True
        )
    # A snapshot of that name on one member only was not taken at this moment.
    driver.create_snapshot(_in_use(vols, inst)[0], "g", force=True)
    before = world(vc, ops, *morefs)
    vc.ctl.reset_calls()
    with pytest.raises(InvalidState, match="already have a snapshot g and the others do not"):
        driver.create_group_snapshot(_in_use(vols, inst), "g", force=True)
    assert not any(m.endswith("_Task") for m in vc.ctl.calls())
    assert world(vc, ops, *morefs) == before
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_a_quiesced_group_without_tools_fails_cleanly(vc: Target, ops: Any, tmp_path: Path) -> None:
    seeded, inst, vols, _keys = _seed(vc, ops)
    vc.ctl.set_tools(inst["moref"], False)
    morefs = [inst["moref"], *(v["moref"] for v in vols)]
    before = world(vc, ops, *morefs)
    driver = make_driver(ops, tmp_path)
    with pytest.raises((QuiesceFailed, InvalidState)) as err:
        driver.create_group_snapshot(_in_use(vols, inst), "db-q", force=True, quiesce=True)
    members = err.value.members
    assert members is not None
    assert [m.state for m in members] == ["error"] * 3
    assert all("ToolsUnavailable" in (m.error or "") for m in members)
    (record,) = driver.journal.workflows(vols[0]["id"])
    assert [m["state"] for m in record.params["members"]] == ["error"] * 3
    assert world(vc, ops, *morefs) == before
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_work_flow_2_for_the_group(vc: Target, ops: Any, tmp_path: Path) -> None:
    """The instance was storage-vMotioned: both members are consolidated first."""
    seeded, inst, vols, keys = _seed(vc, ops, "workflow2")
    before = [_tokens(vc, inst["moref"], k) for k in keys]
    driver = make_driver(ops, tmp_path)
    vc.ctl.reset_bytes_copied()
    result = driver.create_group_snapshot(_in_use(vols, inst), "moved", force=True)
    assert vc.ctl.bytes_copied()["total"] == 0
    assert {m.state for m in result.members} == {"available"}
    instance = ops.get_vm(vm(inst["moref"]))
    for v, k, want in zip(vols, keys, before, strict=True):
        backing = ops.get_vm(vm(v["moref"]))
        node = backing.snapshot_named("moved")
        assert node is not None
        (bdisk,) = backing.disks
        assert vc.ctl.read_snapshot(node.ref.value, bdisk.key)["tokens"] == want
        assert bdisk.path == next(d.path for d in instance.disks if d.key == k)
        assert backing.vm_path_name.startswith("[ds-shared-2] ")
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_the_group_leaves_chains_compaction_merges(vc: Target, ops: Any, tmp_path: Path) -> None:
    seeded, inst, vols, keys = _seed(vc, ops)
    start = [len(d.chain) for d in ops.get_vm(vm(inst["moref"])).disks]
    driver = make_driver(ops, tmp_path)
    driver.create_group_snapshot(_in_use(vols, inst), "g-1", force=True)
    for k in keys:
        vc.ctl.write(inst["moref"], k, "later")
    tokens = [_tokens(vc, inst["moref"], k) for k in keys]
    # One delta per disk for the whole group, not one per member.
    assert [len(d.chain) for d in ops.get_vm(vm(inst["moref"])).disks] == [n + 1 for n in start]
    for v in _in_use(vols, inst):
        driver.delete_snapshot(v, "g-1")
    instance = ops.get_vm(vm(inst["moref"]))
    assert [len(d.chain) for d in instance.disks] == start
    assert not instance.consolidation_needed
    assert [_tokens(vc, inst["moref"], k) for k in keys] == tokens
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_a_group_leftover_is_reported_never_settled_as_one_volumes(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    seeded, inst, vols, _keys = _seed(vc, ops, "instance-two-volumes")
    driver = make_driver(ops, tmp_path / "made-it")
    vc.ctl.inject_fault("RemoveSnapshot_Task", "task", "FileLocked")
    try:
        with pytest.raises(Incomplete) as err:
            driver.create_group_snapshot(_in_use(vols, inst), "g", force=True)
    finally:
        vc.ctl.clear_faults()
    assert err.value.members is not None
    assert [m.state for m in err.value.members] == ["creating", "creating"]
    # Another journal (another host) finds the temporary snapshot: it is a
    # group's, so it is reported, even with --adopt.
    (left,) = make_driver(ops, tmp_path / "elsewhere").recover(adopt=True)
    assert left.outcome == "left"
    assert "not one volume snapshot's temporary snapshot" in left.detail
    assert [n.name for n in ops.get_vm(vm(inst["moref"])).all_snapshots()] != []
    # The journal that made it finishes it.
    (done,) = driver.recover()
    assert done.outcome == "finished"
    (record,) = driver.journal.workflows(vols[0]["id"])
    assert [m["state"] for m in record.params["members"]] == ["available", "available"]
    assert ops.get_vm(vm(inst["moref"])).snapshots == ()
    assert_files_consistent(vc, seeded)
