"""VolumeOps on the simulator: every method, its effect on disks and files, its round trips.

Cassette tests run live and from their recording; budgets are counted
exactly with the session's own counter (the same in both tiers).
"""

from __future__ import annotations

import pytest
from pyVmomi import vim

from tests.conftest import Target
from vmdk_snap.errors import FileLocked, InvalidInput, NotFound, fault_name
from vmdk_snap.types import DiskLocator, DiskSpec, Moref, TaskRef
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.volumeops import VolumeOps


def vm(value: str) -> Moref:
    return Moref("VirtualMachine", value)


@pytest.mark.cassette
def test_resolve_reads_backing_and_instance_in_three_round_trips(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    session.reset_calls()

    backing, instance = ops.resolve(vol["id"], inst["uuid"])

    assert session.calls == {"FindByUuid": 2, "RetrievePropertiesEx": 1}
    assert instance is not None
    assert backing.ref == vm(vol["moref"])
    assert backing.name == f"volume-{vol['id']}"
    assert backing.instance_uuid == vol["id"]
    assert backing.power_state == "poweredOff"
    assert backing.vm_path_name.endswith(f"volume-{vol['id']}.vmx")
    assert [d.path for d in backing.disks] == [vol["vmdk"]]
    assert backing.disks[0].chain == (vol["vmdk"],)
    assert backing.disks[0].uuid == vol["disk_uuid"]
    assert backing.disks[0].mode == "persistent"
    assert backing.snapshots == ()
    assert not backing.consolidation_needed

    assert instance.ref == vm(inst["moref"])
    assert instance.instance_uuid == inst["uuid"]
    assert instance.power_state == "poweredOn"
    assert instance.volume_keys == {f"volume-{vol['id']}": vol["disk_uuid"]}
    shared = instance.disk_by_uuid(vol["disk_uuid"])
    assert shared is not None
    assert shared.path == vol["vmdk"]
    assert instance.disks[0].path == inst["root_vmdk"]
    assert instance.host is not None
    assert instance.resource_pool is not None
    assert {d.datastore for d in instance.disks} <= set(instance.datastores)
    assert not instance.tools_running


@pytest.mark.cassette
def test_resolve_finds_the_attached_instance_without_its_uuid(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    session.reset_calls()

    backing, instance = ops.resolve(vol["id"], find_attached=True)

    assert session.calls == {"FindByUuid": 1, "RetrievePropertiesEx": 2}
    assert backing.ref == vm(vol["moref"])
    assert instance is not None
    assert instance.ref == vm(inst["moref"])


@pytest.mark.cassette
def test_available_volume_has_no_attached_instance(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing, instance = ops.resolve(vol["id"], find_attached=True)
    assert backing.name == vol["name"]
    assert instance is None
    assert ops.find_attached_instance(vol["id"], backing.ref) is None


@pytest.mark.live
@pytest.mark.parametrize("count", [10, 1000])
def test_resolve_costs_the_same_with_10_or_1000_vms(own_vc: Target, count: int) -> None:
    vc = own_vc  # 1,000 VMs: not in the worker's shared simulator
    with Session(vc.url, vc.username, vc.password, ca_file=vc.ca_file) as session:
        _resolve_costs(vc, session, VolumeOps(session), count)


def _resolve_costs(vc: Target, session: Session, ops: VolumeOps, count: int) -> None:
    vc.ctl.scenario("many-vms", count=count)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]

    vc.ctl.reset_calls()
    session.reset_calls()
    backing, instance = ops.resolve(vol["id"], inst["uuid"])
    assert session.calls == {"FindByUuid": 2, "RetrievePropertiesEx": 1}
    assert vc.ctl.calls() == {"FindByUuid": 2, "RetrievePropertiesEx": 1}

    session.reset_calls()
    _, found = ops.resolve(vol["id"], find_attached=True)
    assert session.calls == {"FindByUuid": 1, "RetrievePropertiesEx": 2}
    assert instance is not None
    assert found is not None
    assert found.ref == instance.ref
    assert backing.disks[0].path in {d.path for d in instance.disks}


@pytest.mark.cassette
def test_missing_volume_and_instance_are_not_found(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    missing = "00000000-0000-5000-8000-000000000000"
    assert ops.find_backing(missing) is None
    assert ops.find_instance(missing) is None
    with pytest.raises(NotFound) as err:
        ops.resolve(missing)
    assert missing in str(err.value)
    assert err.value.hint
    with pytest.raises(NotFound, match="instance"):
        ops.resolve(vol["id"], missing)


@pytest.mark.cassette
def test_get_host_lists_pool_and_visible_datastores(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    instance = ops.get_vm(vm(seeded["instances"][0]["moref"]))
    assert instance.host is not None

    session.reset_calls()
    host = ops.get_host(instance.host)
    assert session.calls == {"RetrievePropertiesEx": 1}

    assert host.name == seeded["instances"][0]["host"]
    assert host.resource_pool == instance.resource_pool
    names = [d.name for d in host.datastores]
    assert {"ds-shared-1", "ds-shared-2", "ds-local-h0"} <= set(names)
    assert names == sorted(names)
    shared1 = host.datastore_named("ds-shared-1")
    assert shared1 is not None
    assert shared1.accessible
    assert shared1.ref == ops.datastore_named("ds-shared-1")


@pytest.mark.cassette
def test_get_vms_keeps_order_and_reads_them_in_one_call(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    seeded = vc.ctl.scenario("instance-two-volumes")
    refs = [vm(v["moref"]) for v in seeded["volumes"]] + [vm(seeded["instances"][0]["moref"])]
    session.reset_calls()
    infos = ops.get_vms(list(reversed(refs)))
    assert session.calls == {"RetrievePropertiesEx": 1}
    assert [i.ref for i in infos] == list(reversed(refs))
    assert len(infos[0].disks) == 3  # root disk and two volumes


@pytest.mark.cassette
def test_snapshot_create_then_remove_keeping_the_chain(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = vm(vol["moref"])
    base = vol["vmdk"]

    snap = ops.create_snapshot(backing, "snap-1", "first")
    after = ops.get_vm(backing)
    disk = after.disks[0]
    assert disk.chain[-1] == base
    assert disk.depth == 1
    assert disk.path != base
    node = after.snapshot_named("snap-1")
    assert node is not None
    assert node.ref == snap
    assert node.description == "first"
    assert after.current_snapshot == snap
    assert [d.path for d in ops.snapshot_disks(snap)] == [base]

    # Without consolidation the delta stays and vSphere says it needs merging.
    ops.remove_snapshot(snap, consolidate=False)
    kept = ops.get_vm(backing)
    assert kept.snapshots == ()
    assert kept.disks[0].chain == disk.chain
    assert kept.consolidation_needed

    ops.consolidate_disks(backing)
    merged = ops.get_vm(backing)
    assert not merged.consolidation_needed
    assert merged.disks[0].chain == (base,)


@pytest.mark.cassette
def test_revert_discards_what_was_written_after_the_snapshot(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = vm(vol["moref"])
    key = ops.get_vm(backing).disks[0].key
    before = vc.ctl.read_disk(vol["moref"], key)["tokens"]

    snap = ops.create_snapshot(backing, "before-write")
    vc.ctl.write(vol["moref"], key, "after-snapshot")
    assert vc.ctl.read_disk(vol["moref"], key)["tokens"] == [*before, "after-snapshot"]

    ops.revert_to_snapshot(snap)
    assert vc.ctl.read_disk(vol["moref"], key)["tokens"] == before
    reverted = ops.get_vm(backing)
    assert reverted.current_snapshot == snap
    assert reverted.disks[0].depth == 1

    ops.remove_snapshot(snap)
    assert ops.get_vm(backing).disks[0].chain == (vol["vmdk"],)


@pytest.mark.cassette
def test_relocate_moves_files_host_and_pool(vc: Target, session: Session, ops: VolumeOps) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = ops.get_vm(vm(vol["moref"]))
    assert backing.host is not None
    hosts = [ops.get_host(backing.host)]
    target_ds = ops.datastore_named("ds-shared-2")
    disk = backing.disks[0]

    ops.relocate(
        backing.ref,
        host=hosts[0].ref,
        pool=hosts[0].resource_pool,
        datastore=target_ds,
        disk_move_type="moveAllDiskBackingsAndDisallowSharing",
        disks=[DiskLocator(disk.key, target_ds)],
    )
    moved = ops.get_vm(backing.ref)
    assert moved.datastores == (target_ds,)
    assert moved.disks[0].datastore_name == "ds-shared-2"
    assert moved.disks[0].path in vc.ctl.files("ds-shared-2")
    assert moved.vm_path_name.startswith("[ds-shared-2]")


@pytest.mark.cassette
def test_relocate_to_a_datastore_the_host_cannot_see_is_invalid_input(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    seeded = vc.ctl.scenario("many-vms", count=1)  # fillers run on the second host
    filler = ops.get_vm(vm(seeded["instances"][0]["moref"]))
    assert filler.host is not None
    host = ops.get_host(filler.host)
    assert host.datastore_named("ds-local-h0") is None
    with pytest.raises(InvalidInput) as err:
        ops.relocate(filler.ref, host=host.ref, datastore=ops.datastore_named("ds-local-h0"))
    assert err.value.fault is not None
    assert "RelocateVM_Task" in str(err.value)
    assert ops.get_vm(filler.ref).datastores == filler.datastores


@pytest.mark.cassette
def test_reconfigure_swaps_disks_in_one_call(vc: Target, session: Session, ops: VolumeOps) -> None:
    seeded = vc.ctl.scenario("instance-two-volumes")
    inst = seeded["instances"][0]
    vol_a, vol_b = seeded["volumes"]
    instance = ops.get_vm(vm(inst["moref"]))
    disk_a = instance.disk_by_uuid(vol_a["disk_uuid"])
    assert disk_a is not None

    # Detach volume a (keeping its files) and attach it again at another unit,
    # and record it in extraConfig, all in one ReconfigVM.
    session.reset_calls()
    ops.reconfigure_disks(
        instance.ref,
        remove=[(disk_a, False)],
        add=[DiskSpec(disk_a.path, disk_a.controller_key, 5, disk_a.capacity_kb)],
        extra_config={"vmdk-snap-test": "1"},
    )
    assert session.calls["ReconfigVM_Task"] == 1
    after = ops.get_vm(instance.ref)
    moved = after.disk_by_path(vol_a["vmdk"])
    assert moved is not None
    assert moved.unit == 5
    assert len(after.disks) == len(instance.disks)
    assert vol_a["vmdk"] in vc.ctl.files("ds-shared-1")

    # Destroying volume b's files from its backing is refused while the
    # instance uses them: our error, with vSphere's fault and the task kept.
    backing_b = ops.get_vm(vm(vol_b["moref"]))
    with pytest.raises(FileLocked) as err:
        ops.reconfigure_disks(backing_b.ref, remove=[(backing_b.disks[0], True)])
    assert fault_name(err.value.fault) == "FileLocked"
    assert err.value.task is not None
    assert "ReconfigVM_Task" in err.value.task.description
    assert ops.get_vm(backing_b.ref).disks == backing_b.disks
    assert vol_b["vmdk"] in vc.ctl.files("ds-shared-1")


@pytest.mark.cassette
def test_reconfigure_can_destroy_the_removed_disk_files(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = ops.get_vm(vm(vol["moref"]))
    ops.reconfigure_disks(backing.ref, remove=[(backing.disks[0], True)])
    assert ops.get_vm(backing.ref).disks == ()
    remaining = vc.ctl.files("ds-shared-1")
    assert vol["vmdk"] not in remaining
    assert vol["vmdk"].replace(".vmdk", "-flat.vmdk") not in remaining


@pytest.mark.cassette
def test_attaching_a_missing_file_is_not_found(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = ops.get_vm(vm(vol["moref"]))
    disk = backing.disks[0]
    missing = disk.path.replace(".vmdk", "-missing.vmdk")
    with pytest.raises(NotFound) as err:
        ops.reconfigure_disks(backing.ref, add=[DiskSpec(missing, disk.controller_key, 3)])
    assert err.value.fault is not None
    assert ops.get_vm(backing.ref).disks == backing.disks


@pytest.mark.cassette
def test_set_extra_config_records_a_volume_key(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    inst = vm(seeded["instances"][0]["moref"])
    ops.set_extra_config(inst, {"volume-extra": "uuid-1"})
    assert ops.get_vm(inst).volume_keys["volume-extra"] == "uuid-1"


@pytest.mark.cassette
def test_delete_disk_file_removes_its_files(vc: Target, session: Session, ops: VolumeOps) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = ops.get_vm(vm(vol["moref"]))
    ops.reconfigure_disks(backing.ref, remove=[(backing.disks[0], False)])
    assert vol["vmdk"] in vc.ctl.files("ds-shared-1")

    ops.delete_disk_file(vol["vmdk"])
    remaining = vc.ctl.files("ds-shared-1")
    assert vol["vmdk"] not in remaining
    assert vol["vmdk"].replace(".vmdk", "-flat.vmdk") not in remaining
    with pytest.raises(NotFound):
        ops.delete_disk_file("[no-such-ds] x/x.vmdk")


@pytest.mark.cassette
def test_find_backing_falls_back_to_the_volume_name(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    # A backing created before the driver set instanceUuid: only its name tells.
    other = "11111111-2222-5333-8444-555555555555"
    task = session.invoke(
        session.mo(vm(vol["moref"])),
        "ReconfigVM_Task",
        spec=vim.vm.ConfigSpec(instanceUuid=other),
    )
    ops.wait(TaskRef(Moref("Task", task._moId), "rename uuid"))
    assert ops.get_vm(vm(vol["moref"])).instance_uuid == other

    session.reset_calls()
    assert ops.find_backing(vol["id"]) == vm(vol["moref"])
    assert session.calls == {"FindByUuid": 1, "RetrievePropertiesEx": 1}


@pytest.mark.cassette
def test_find_attached_falls_back_to_the_disk_without_novas_key(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    key = f"volume-{vol['id']}"
    # Nova's record lost (or attached by hand): an empty value deletes the key.
    ops.set_extra_config(vm(inst["moref"]), {key: ""})
    assert key not in ops.get_vm(vm(inst["moref"])).volume_keys

    session.reset_calls()
    assert ops.find_attached_instance(vol["id"]) == vm(inst["moref"])
    assert session.calls == {"RetrievePropertiesEx": 1}
    backing, instance = ops.resolve(vol["id"], find_attached=True)
    assert instance is not None
    assert instance.ref == vm(inst["moref"])
    assert instance.disk_by_path(backing.disks[0].path) is not None


@pytest.mark.cassette
def test_list_volumes_reads_backings_and_attachments_in_one_call(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    seeded = vc.ctl.scenario("instance-two-volumes")
    free = vc.ctl.scenario("available-volume")["volumes"][0]
    inst = seeded["instances"][0]
    session.reset_calls()
    inventory = ops.list_volumes()
    assert session.calls == {"RetrievePropertiesEx": 1}
    attached = {v["id"] for v in seeded["volumes"]}
    assert attached | {free["id"]} <= set(inventory.volumes)
    assert attached <= set(inventory.attached)
    assert free["id"] not in inventory.attached
    assert {inventory.instance_of[v] for v in attached} == {inst["moref"]}
    assert list(inventory.volumes) == sorted(inventory.volumes)
