"""Where the backing goes when its instance moved: host, resource pool, datastore (issue 5).

The instance was vMotioned to the other host, into a child resource pool and
storage-vMotioned to ``ds-shared-2`` after its volume was attached (scenario
``attached-volume-moved`` with ``host`` and ``pool``): a forced snapshot, or
``consolidate`` alone, moves the backing to the instance's host, pool and
datastore, copying nothing. A move that changes only the pool (the
instance moved into a child pool and took a snapshot of its own) is checked
step by step against vCenter, with a failing task and with a process killed
during it. When the instance's host cannot see the
datastore of the backing's old disk (``ds-local-h0``, mounted on the first
host only), vCenter refuses the relocation and nothing changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests.conftest import Target
from tests.library.test_workflow_faults import _killed_at
from tests.vsphere import connect, moref, props
from tests.workflow_checks import (
    assert_files_consistent,
    make_driver,
    snapshot_checked,
    snapshot_trees,
    vm,
    volume_disk_key,
    world,
)
from vmdk_snap.driver import Volume
from vmdk_snap.errors import InvalidState, TaskFailed
from vmdk_snap.strategies import AttachedStrategy
from vmdk_snap.types import DiskLocator, Moref, VmInfo, datastore_of
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.consolidation import relocate_backing
from vmdk_snap.workflows.journal import Journal
from vmdk_snap.workflows.stepctx import OpsContext

HOST0, HOST1 = "DC0_C0_H0", "DC0_C0_H1"
POOL = "tenant-a"  # a child of the cluster's root pool, made by the scenario


def _moved_to_host1(vc: Target) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    seeded = vc.ctl.scenario("attached-volume-moved", host=HOST1, pool=POOL)
    return seeded, seeded["instances"][0], seeded["volumes"][0]


def _pool_name(vc: Target, pool: Moref) -> str:
    """A resource pool's name, read with the property collector."""
    with connect(vc) as si:
        return str(props(si, moref(si, "ResourcePool", pool.value), "name")["name"])


def _placement(info: VmInfo) -> tuple[Moref | None, Moref | None, str]:
    """Host, resource pool and home datastore of a VM."""
    return info.host, info.resource_pool, datastore_of(info.vm_path_name)


def _assert_backing_where_instance_is(ops: Any, vol: dict[str, Any], inst: dict[str, Any]) -> None:
    backing, instance = ops.get_vms([vm(vol["moref"]), vm(inst["moref"])])
    key = volume_disk_key(ops, vol, inst["moref"])
    top = next(d for d in instance.disks if d.key == key)
    assert _placement(backing) == (instance.host, instance.resource_pool, "ds-shared-2")
    assert datastore_of(top.path) == "ds-shared-2"
    assert backing.disks[0].path == top.path


def _assert_moved_away(
    vc: Target, ops: Any, vol: dict[str, Any], inst: dict[str, Any]
) -> tuple[VmInfo, VmInfo]:
    """Before: backing on host 0 in the root pool, instance on host 1 in POOL."""
    backing, instance = ops.get_vms([vm(vol["moref"]), vm(inst["moref"])])
    assert ops.get_host(backing.host).name == HOST0
    assert ops.get_host(instance.host).name == HOST1
    assert backing.resource_pool == ops.get_host(backing.host).resource_pool  # the root pool
    assert instance.resource_pool is not None
    assert _pool_name(vc, instance.resource_pool) == POOL
    assert datastore_of(instance.vm_path_name) == "ds-shared-2"
    # Each of host, pool and datastore differs: the move is real in all three.
    for ours, theirs in zip(_placement(backing), _placement(instance), strict=True):
        assert ours != theirs
    return backing, instance


@pytest.mark.live
def test_forced_snapshot_moves_the_backing_to_the_instance_host_pool_and_datastore(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded, inst, vol = _moved_to_host1(vc)
    backing, _instance = _assert_moved_away(vc, ops, vol, inst)
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    plan = driver.plan_snapshot(volume, "snapshot-1", force=True)
    assert plan.steps[0].name == "relocate_backing"
    assert f"to host {HOST1}, pool {POOL}, datastore ds-shared-2" in plan.steps[0].description

    vc.ctl.reset_bytes_copied()
    snapshot_checked(vc, ops, driver, seeded, volume=vol, name="snapshot-1")
    assert vc.ctl.bytes_copied()["total"] == 0
    _assert_backing_where_instance_is(ops, vol, inst)
    (record,) = driver.journal.workflows(vol["id"])
    assert record.state == jn.DONE
    step = record.step("relocate_backing")
    assert step is not None
    assert step.state == jn.STEP_DONE
    # The old copy is gone, with the backing's old home.
    assert vol["vmdk"] not in vc.ctl.files("ds-shared-1")
    assert not [f for f in vc.ctl.files("ds-shared-1") if f"] {backing.name}/" in f]


@pytest.mark.live
def test_consolidate_moves_the_backing_to_the_instance_host_pool_and_datastore(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded, inst, vol = _moved_to_host1(vc)
    _assert_moved_away(vc, ops, vol, inst)
    key = volume_disk_key(ops, vol, inst["moref"])
    tokens = vc.ctl.read_disk(inst["moref"], key)["tokens"]
    trees = snapshot_trees(ops, inst["moref"], vol["moref"])

    vc.ctl.reset_bytes_copied()
    assert driver.consolidate(Volume(vol["id"], "in-use", inst["uuid"])) is True
    assert vc.ctl.bytes_copied()["total"] == 0
    _assert_backing_where_instance_is(ops, vol, inst)
    assert vc.ctl.read_disk(vol["moref"], 2000)["tokens"] == tokens
    assert snapshot_trees(ops, inst["moref"], vol["moref"]) == trees
    assert vol["vmdk"] not in vc.ctl.files("ds-shared-1")
    assert_files_consistent(vc, seeded)
    # Nothing left to do: a second consolidate changes nothing.
    assert driver.consolidate(Volume(vol["id"], "in-use", inst["uuid"])) is False


# -- a move that changes only the pool ------------------------------------------------


def _child_pool(vc: Target, ops: Any, host: Moref, name: str) -> Moref:
    """A new child of ``host``'s cluster root pool (CreateResourcePool)."""
    root = ops.get_host(host).resource_pool
    alloc = vim.ResourceAllocationInfo(
        reservation=0,
        limit=-1,
        expandableReservation=True,
        shares=vim.SharesInfo(level="normal", shares=0),
    )
    spec = vim.ResourceConfigSpec(cpuAllocation=alloc, memoryAllocation=alloc)
    with connect(vc) as si:
        pool = moref(si, "ResourcePool", root.value).CreateResourcePool(name, spec)
        return Moref("ResourcePool", str(pool._moId))


def _pool_only(
    vc: Target, ops: Any
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], Moref, VmInfo]:
    """The instance moved into a child pool (same host, same datastore) and
    took a snapshot of its own: the backing lags behind the instance's new
    delta, in the instance's directory on the backing's datastore. Only the
    pool differs, so the relocation changes only the pool."""
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    backing = ops.get_vm(vm(vol["moref"]))
    assert backing.host is not None
    pool = _child_pool(vc, ops, backing.host, f"pool-{inst['name']}")
    ops.relocate(vm(inst["moref"]), pool=pool)
    ops.create_snapshot(vm(inst["moref"]), "user-snapshot")
    key = volume_disk_key(ops, vol, inst["moref"])
    vc.ctl.write(inst["moref"], key, "after-user-snapshot")
    instance = ops.get_vm(vm(inst["moref"]))
    assert instance.resource_pool == pool != backing.resource_pool
    assert (instance.host, datastore_of(instance.vm_path_name)) == (
        backing.host,
        datastore_of(backing.vm_path_name),
    )
    return seeded, inst, vol, pool, backing


@pytest.mark.live
def test_relocate_backing_check_compares_the_pool(vc: Target, ops: Any, tmp_path: Path) -> None:
    """The step's check against vCenter, directly: "moved" only once the
    backing is in the instance's pool too, and not any more after the undo."""
    driver = make_driver(ops, tmp_path)
    _seeded, inst, vol, pool, backing = _pool_only(vc, ops)
    state = driver.describe(Volume(vol["id"], "in-use", inst["uuid"]))
    assert state.duplicated
    params = AttachedStrategy().consolidate(state).params
    r = params["relocate"]
    assert r is not None
    assert (r["host"], r["pool"]) == (params["origin"]["host"], ["ResourcePool", pool.value])
    assert r["datastore_name"] == params["origin"]["datastore_name"]
    step = relocate_backing()
    ctx = OpsContext(params=params, ops=ops)

    assert step.check(ctx) is None  # host and datastore already right, the pool not
    changes = step.do(ctx)
    assert ops.get_vm(vm(vol["moref"])).resource_pool == pool
    assert step.check(ctx) == changes == {"from": params["origin"]}
    assert step.undo is not None
    step.undo(ctx, changes)
    assert _placement(ops.get_vm(vm(vol["moref"]))) == _placement(backing)
    assert step.check(ctx) is None


@pytest.mark.live
def test_failed_pool_only_relocation_is_not_undone(
    vc: Target, ops: Any, tmp_path: Path, clean_sim: Target
) -> None:
    """The relocation's task fails: the step's check must see the backing is
    still in its old pool, so the rollback sends no relocation back."""
    driver = make_driver(ops, tmp_path)
    seeded, inst, vol, pool, _backing = _pool_only(vc, ops)
    before = world(vc, ops, inst["moref"], vol["moref"])
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    vc.ctl.inject_fault("RelocateVM_Task", "task", "FileLocked", match=f">{vol['moref']}<")
    vc.ctl.reset_calls()
    with pytest.raises(TaskFailed, match="FileLocked"):
        driver.consolidate(volume)
    assert vc.ctl.calls().get("RelocateVM_Task") == 1
    (record,) = driver.journal.workflows(vol["id"])
    assert record.state == jn.ROLLED_BACK
    step = record.step("relocate_backing")
    assert step is not None
    assert step.state == jn.FAILED  # not "undone": it never happened
    assert world(vc, ops, inst["moref"], vol["moref"]) == before

    # Without the fault the pool-only move goes through, copying nothing.
    vc.ctl.reset_bytes_copied()
    assert driver.consolidate(volume) is True
    assert vc.ctl.bytes_copied()["total"] == 0
    backing, instance = ops.get_vms([vm(vol["moref"]), vm(inst["moref"])])
    assert _placement(backing) == _placement(instance)
    assert backing.resource_pool == pool
    key = volume_disk_key(ops, vol, inst["moref"])
    assert backing.disks[0].path == next(d for d in instance.disks if d.key == key).path
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_forced_snapshot_after_a_pool_only_move(vc: Target, ops: Any, tmp_path: Path) -> None:
    """Every invariant, the pool's included: the backing joins the instance's pool."""
    driver = make_driver(ops, tmp_path)
    seeded, inst, vol, pool, _backing = _pool_only(vc, ops)
    vc.ctl.reset_bytes_copied()
    snapshot_checked(vc, ops, driver, seeded, volume=vol, name="snapshot-1")
    assert vc.ctl.bytes_copied()["total"] == 0
    assert ops.get_vm(vm(vol["moref"])).resource_pool == pool
    # The instance's own snapshot is still there, with what it held.
    assert snapshot_trees(ops, inst["moref"]) == [(("user-snapshot", ()),)]


@pytest.mark.live
@pytest.mark.parametrize("task", ["succeeds", "fails"])
def test_kill_during_a_pool_only_relocation_then_recover(
    vc: Target, ops: Any, tmp_path: Path, clean_sim: Target, task: str
) -> None:
    """`vmdk-snap consolidate` killed while its pool-only relocation runs
    (task id journaled). recover waits for the task, then reads vCenter: a
    relocation that happened is undone (the backing back in its pool); one
    whose task failed did not happen, and no relocation is sent back."""
    _seeded, inst, vol, _pool, _backing = _pool_only(vc, ops)
    before = world(vc, ops, inst["moref"], vol["moref"])
    if task == "fails":
        vc.ctl.inject_fault("RelocateVM_Task", "task", "FileLocked", match=f">{vol['moref']}<")
    vc.ctl.reset_calls()
    _killed_at(
        vc, tmp_path, "relocate_backing", vol["id"], inst["uuid"], before_task_id=False,
        op="consolidate",
    )  # fmt: skip
    (result,) = make_driver(ops, tmp_path).recover()
    assert result.outcome == "rolled_back"
    (record,) = Journal(tmp_path / "state" / "journal.sqlite").workflows(vol["id"])
    step = record.step("relocate_backing")
    assert step is not None
    if task == "succeeds":
        assert step.state == jn.UNDONE
        assert vc.ctl.calls().get("RelocateVM_Task") == 2  # the move and its undo
    else:
        assert step.state == jn.SKIPPED  # recover saw it had not happened
        assert vc.ctl.calls().get("RelocateVM_Task") == 1
    assert world(vc, ops, inst["moref"], vol["moref"]) == before


# -- the instance's host cannot see the backing's old disk ------------------------------


@pytest.mark.live
def test_refused_when_the_instance_host_cannot_see_the_old_disk(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """The volume was created on ds-local-h0 (mounted on host 0 only) and the
    instance moved to host 1: the backing cannot follow while it still holds
    its old disk there. vCenter refuses the relocation, nothing changes."""
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume-moved", volume_datastore="ds-local-h0", host=HOST1)
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    assert vol["vmdk"].startswith("[ds-local-h0] ")
    instance = ops.get_vm(vm(inst["moref"]))
    assert ops.get_host(instance.host).datastore_named("ds-local-h0") is None
    before = world(vc, ops, inst["moref"], vol["moref"])
    tokens = vc.ctl.read_disk(vol["moref"], 2000)["tokens"]
    volume = Volume(vol["id"], "in-use", inst["uuid"])

    # The dry run says so beforehand (one read of the host more).
    plan = driver.plan_snapshot(volume, "snapshot-1", force=True)
    assert plan.notes[-1] == (
        f"vCenter will refuse relocate_backing: host {HOST1} cannot see datastore ds-local-h0 "
        f"(the backing's old disk); mount ds-local-h0 on {HOST1}, or vMotion instance "
        f"{inst['name']} to a host that sees both, then retry"
    )
    vc.ctl.reset_calls()
    with pytest.raises(InvalidState) as info:  # where the instance is: exit 4
        driver.create_snapshot(volume, "snapshot-1", force=True)
    err = info.value
    # What was refused, by names (not morefs), and what to do.
    assert f"{inst['name']}'s host {HOST1} (pool Resources, datastore ds-shared-2)" in err.message
    assert "while its old disk stays on ds-local-h0" in err.message
    assert err.message.endswith("nothing was changed")
    assert f"mount ds-local-h0 on {HOST1}, or vMotion instance {inst['name']}" in err.hint
    # Refused by vCenter at its first call that changes anything: no task ran.
    calls = vc.ctl.calls()
    assert calls.get("RelocateVM_Task") == 1
    assert not [m for m in calls if m.endswith("_Task") and m != "RelocateVM_Task"]
    # Nothing changed: trees, homes (host, pool, datastore), chains, files, data.
    assert world(vc, ops, inst["moref"], vol["moref"]) == before
    assert vc.ctl.read_disk(vol["moref"], 2000)["tokens"] == tokens
    assert_files_consistent(vc, seeded)
    # The journal: the workflow started, its first step failed, nothing to undo.
    (record,) = driver.journal.workflows(vol["id"])
    assert record.state == jn.ROLLED_BACK
    assert [(s.name, s.state) for s in record.steps] == [("relocate_backing", jn.FAILED)]
    assert driver.journal.unfinished() == []
    assert driver.recover() == []
    # consolidate alone is refused the same way.
    with pytest.raises(InvalidState, match="ds-local-h0"):
        driver.consolidate(volume)
    assert world(vc, ops, inst["moref"], vol["moref"]) == before

    # What the hint says works: with the instance back on a host that sees
    # both datastores, the same snapshot goes through, copying nothing.
    ops.relocate(vm(inst["moref"]), host=ops.get_vm(vm(vol["moref"])).host)
    vc.ctl.reset_bytes_copied()
    snapshot_checked(vc, ops, driver, seeded, volume=vol, name="snapshot-1")
    assert vc.ctl.bytes_copied()["total"] == 0
    assert vol["vmdk"] not in vc.ctl.files("ds-local-h0")


# -- a vMotion or a pool move alone (the chain is not duplicated) ----------------------


@pytest.mark.live
def test_forced_snapshot_after_a_vmotion_alone_moves_only_the_backing_home(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """The instance was vMotioned to host 1 (shared datastores, no storage
    move): the volume's file is still shared, but the backing would stay on
    host 0. The forced snapshot relocates its home (host, pool) first, with
    its disk kept where it is: nothing is copied, every invariant holds (the
    backing on the instance's host and pool included)."""
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    backing = ops.get_vm(vm(vol["moref"]))
    assert backing.host is not None
    host1 = _sibling_host(vc, backing.host, HOST1)
    ops.relocate(vm(inst["moref"]), host=host1, pool=ops.get_host(host1).resource_pool)
    state = driver.describe(Volume(vol["id"], "in-use", inst["uuid"]))
    assert not state.duplicated
    assert ops.get_vm(vm(inst["moref"])).host == host1 != backing.host

    vc.ctl.reset_bytes_copied()
    vc.ctl.reset_calls()
    snapshot_checked(vc, ops, driver, seeded, volume=vol, name="snapshot-1")
    assert vc.ctl.bytes_copied()["total"] == 0
    assert vc.ctl.calls()["RelocateVM_Task"] == 1
    moved = ops.get_vm(vm(vol["moref"]))
    assert moved.host == host1
    assert datastore_of(moved.vm_path_name) == datastore_of(backing.vm_path_name)
    (record,) = driver.journal.workflows(vol["id"])
    assert [s.name for s in record.steps][:2] == ["relocate_backing", "snapshot_instance"]


def _sibling_host(vc: Target, host: Moref, name: str) -> Moref:
    """The host called ``name`` in ``host``'s cluster (read with the property collector)."""
    with connect(vc) as si:
        cluster = props(si, moref(si, "HostSystem", host.value), "parent")["parent"]
        for h in props(si, cluster, "host")["host"]:
            if props(si, h, "name")["name"] == name:
                return Moref("HostSystem", str(h._moId))
    raise AssertionError(f"no host {name} beside {host.value}")


@pytest.mark.live
def test_repeated_forced_snapshots_do_not_move_a_backing_whose_instance_lives_elsewhere(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """The instance's home is on another datastore than its volume (Nova's
    usual layout; only its .vmx moved, same host and pool). After a forced
    snapshot the shared file is the instance's delta, in the instance's
    folder: the next forced snapshot must not take that as a reason to move
    the backing (16 round trips, no RelocateVM)."""
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    instance = ops.get_vm(vm(inst["moref"]))
    keep = [DiskLocator(d.key, d.datastore) for d in instance.disks if d.datastore]
    ops.relocate(vm(inst["moref"]), datastore=ops.datastore_named("ds-shared-2"), disks=keep)
    moved = ops.get_vm(vm(inst["moref"]))
    assert datastore_of(moved.vm_path_name) == "ds-shared-2"
    assert [d.path for d in moved.disks] == [d.path for d in instance.disks]
    home = ops.get_vm(vm(vol["moref"])).vm_path_name

    vc.ctl.set_default_task_time(0)  # every task ends within one wait: exact counts
    try:
        vc.ctl.reset_calls()
        snapshot_checked(vc, ops, driver, seeded, volume=vol, name="snapshot-1")  # invariants
        assert "RelocateVM_Task" not in vc.ctl.calls()
        vc.ctl.reset_calls()
        driver.create_snapshot(Volume(vol["id"], "in-use", inst["uuid"]), "snapshot-2", force=True)
        calls = vc.ctl.calls()
        assert "RelocateVM_Task" not in calls
        assert sum(calls.values()) == 17, calls
    finally:
        vc.ctl.reset_timing()
    backing = ops.get_vm(vm(vol["moref"]))
    assert backing.vm_path_name == home
    assert datastore_of(backing.disks[0].path) == "ds-shared-2"  # the instance's delta
