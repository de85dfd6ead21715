"""ReconfigVM_Task with disk chains (issue 3, point 5).

Attaching an existing VMDK needs its files and keeps its chain; a unit in use
is refused; removing keeps files unless ``destroy`` is asked, which deletes
only files no other VM uses and is refused when another VM uses them; the
changes of one spec apply together or not at all. Files are checked on the
datastores through the control API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests.conftest import Target
from tests.vsphere import (
    add_disk_change,
    connect,
    moref,
    props,
    remove_disk_change,
    task_fault,
    task_ok,
    virtual_disks,
)
from vmdk_snap.testing import Simulator

DS = "ds-shared-1"


def _vm(si: Any, value: str) -> Any:
    return moref(si, "VirtualMachine", value)


def _controller_key(si: Any, vm: Any) -> int:
    devices = props(si, vm, "config.hardware.device")["config.hardware.device"]
    (scsi,) = [d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController)]
    key: int = scsi.key
    return key


def _disk_files(vmdk: str) -> list[str]:
    return [vmdk, vmdk.replace(".vmdk", "-flat.vmdk")]


def _reconfigure(vm: Any, *changes: Any, **extra: str) -> Any:
    """Start ReconfigVM_Task with these device changes and extraConfig entries."""
    spec = vim.vm.ConfigSpec(
        deviceChange=list(changes),
        extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in sorted(extra.items())],
    )
    return vm.ReconfigVM_Task(spec)


@pytest.mark.cassette
def test_attach_existing_vmdk_keeps_its_backing(vc: Target) -> None:
    inst = vc.ctl.scenario("attached-volume")["instances"][0]
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    files_before = vc.ctl.files(DS)
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        ctl = _controller_key(si, vm)
        change = add_disk_change(ctl, vol["vmdk"])
        change.device.backing.uuid = vol["disk_uuid"]
        task_ok(si, _reconfigure(vm, change, **{f"volume-{vol['id']}": vol["disk_uuid"]}))

        disks = virtual_disks(si, vm)
        (added,) = [d for d in disks if d.backing.fileName == vol["vmdk"]]
        assert added.backing.uuid == vol["disk_uuid"]
        assert added.backing.parent is None
        assert added.backing.diskMode == "persistent"
        assert added.controllerKey == ctl
        # The first free unit of the controller; the capacity comes from the disk.
        units = sorted(d.unitNumber for d in disks)
        assert units == list(range(len(disks)))
        assert added.capacityInKB == 1024
        assert added.key not in {d.key for d in disks if d is not added}
        got = props(si, vm, "config.extraConfig", "summary.config.numVirtualDisks", "layout.disk")
        assert {o.key: o.value for o in got["config.extraConfig"]}[f"volume-{vol['id']}"] == (
            vol["disk_uuid"]
        )
        assert got["summary.config.numVirtualDisks"] == len(disks)
        layout = {d.key: list(d.diskFile) for d in got["layout.disk"]}
        assert layout[added.key] == [vol["vmdk"]]
    # Attaching creates and deletes nothing.
    assert vc.ctl.files(DS) == files_before


@pytest.mark.cassette
def test_attach_delta_rebuilds_the_parent_chain_from_the_descriptors(vc: Target) -> None:
    inst = vc.ctl.scenario("attached-volume")["instances"][0]
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    with connect(vc) as si:
        backing = _vm(si, vol["moref"])
        task_ok(si, backing.CreateSnapshot_Task("s", "", False, False))
        (delta_disk,) = virtual_disks(si, backing)
        delta = delta_disk.backing.fileName
        assert delta != vol["vmdk"]

        vm = _vm(si, inst["moref"])
        # The client names only the top file; the chain comes from the descriptors.
        task_ok(si, _reconfigure(vm, add_disk_change(_controller_key(si, vm), delta)))
        (added,) = [d for d in virtual_disks(si, vm) if d.backing.fileName == delta]
        assert added.backing.parent is not None
        assert added.backing.parent.fileName == vol["vmdk"]
        assert added.backing.parent.parent is None
        layout = props(si, vm, "layout.disk")["layout.disk"]
        assert [list(d.diskFile) for d in layout if d.key == added.key] == [[delta, vol["vmdk"]]]


@pytest.mark.cassette
def test_attach_needs_the_files(vc: Target) -> None:
    inst = vc.ctl.scenario("attached-volume")["instances"][0]
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        ctl = _controller_key(si, vm)
        disks_before = [d.backing.fileName for d in virtual_disks(si, vm)]
        missing = f"[{DS}] nowhere/nothing.vmdk"
        fault = task_fault(si, _reconfigure(vm, add_disk_change(ctl, missing)))
        assert isinstance(fault, vim.fault.FileNotFound)
        assert fault.file == missing

        # A descriptor without its data file is no disk either.
        flat = vol["vmdk"].replace(".vmdk", "-flat.vmdk")
        content = si.RetrieveContent()
        datacenter = props(si, content.rootFolder, "childEntity")["childEntity"][0]
        delete = content.fileManager.DeleteDatastoreFile_Task(flat, datacenter)
        task_ok(si, delete)
        fault = task_fault(si, _reconfigure(vm, add_disk_change(ctl, vol["vmdk"])))
        assert isinstance(fault, vim.fault.FileNotFound)
        assert fault.file == flat
        assert [d.backing.fileName for d in virtual_disks(si, vm)] == disks_before


@pytest.mark.cassette
def test_unit_in_use_fails_the_whole_spec(vc: Target) -> None:
    inst = vc.ctl.scenario("attached-volume")["instances"][0]
    vol_a = vc.ctl.scenario("available-volume")["volumes"][0]
    vol_b = vc.ctl.scenario("available-volume")["volumes"][0]
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        ctl = _controller_key(si, vm)
        used = max(d.unitNumber for d in virtual_disks(si, vm))
        # Two valid changes first, then one on a unit in use: nothing applies.
        free = add_disk_change(ctl, vol_a["vmdk"], unit=used + 1)
        also_free = add_disk_change(ctl, vol_b["vmdk"], unit=used + 2)
        taken = add_disk_change(ctl, vol_b["vmdk"], unit=used)
        fault = task_fault(si, _reconfigure(vm, free, also_free, taken, **{"vmdk-snap.k": "v"}))
        assert isinstance(fault, vim.fault.InvalidDeviceSpec)
        assert fault.deviceIndex == 2
        files = {d.backing.fileName for d in virtual_disks(si, vm)}
        assert vol_a["vmdk"] not in files
        extra = props(si, vm, "config.extraConfig")["config.extraConfig"]
        assert "vmdk-snap.k" not in {o.key for o in extra}

        # Unit 7 is the SCSI controller's own.
        fault = task_fault(si, _reconfigure(vm, add_disk_change(ctl, vol_a["vmdk"], unit=7)))
        assert isinstance(fault, vim.fault.InvalidDeviceSpec)


@pytest.mark.cassette
def test_remove_without_file_operation_keeps_the_files(vc: Target) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        (disk,) = [d for d in virtual_disks(si, vm) if d.backing.fileName == vol["vmdk"]]
        # Nova detaches: remove the device and its extraConfig entry.
        task_ok(si, _reconfigure(vm, remove_disk_change(disk), **{f"volume-{vol['id']}": ""}))
        assert vol["vmdk"] not in {d.backing.fileName for d in virtual_disks(si, vm)}
        extra = props(si, vm, "config.extraConfig")["config.extraConfig"]
        assert f"volume-{vol['id']}" not in {o.key for o in extra}
        # The backing still has its disk.
        backing = _vm(si, vol["moref"])
        assert [d.backing.fileName for d in virtual_disks(si, backing)] == [vol["vmdk"]]
    files = vc.ctl.files(DS)
    assert all(f in files for f in _disk_files(vol["vmdk"]))


@pytest.mark.cassette
def test_destroy_is_refused_while_another_vm_uses_the_file(vc: Target) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        (disk,) = [d for d in virtual_disks(si, vm) if d.backing.fileName == vol["vmdk"]]
        fault = task_fault(si, _reconfigure(vm, remove_disk_change(disk, "destroy")))
        assert isinstance(fault, vim.fault.FileLocked)
        assert fault.file == vol["vmdk"]
        assert vol["vmdk"] in {d.backing.fileName for d in virtual_disks(si, vm)}
    files = vc.ctl.files(DS)
    assert all(f in files for f in _disk_files(vol["vmdk"]))


@pytest.mark.cassette
def test_create_then_destroy_makes_and_deletes_the_files(vc: Target) -> None:
    inst = vc.ctl.scenario("attached-volume")["instances"][0]
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        before = {d.key for d in virtual_disks(si, vm)}
        new = add_disk_change(
            _controller_key(si, vm), f"[{DS}]", file_operation="create", capacity_kb=4096
        )
        task_ok(si, _reconfigure(vm, new))
        (created,) = [d for d in virtual_disks(si, vm) if d.key not in before]
        path = created.backing.fileName
        assert path == f"[{DS}] {inst['name']}/{inst['name']}_1.vmdk"
        assert created.capacityInKB == 4096
        assert all(f in vc.ctl.files(DS) for f in _disk_files(path))

        task_ok(si, _reconfigure(vm, remove_disk_change(created, "destroy")))
        assert {d.key for d in virtual_disks(si, vm)} == before
    assert not any(f in vc.ctl.files(DS) for f in _disk_files(path))


@pytest.mark.cassette
def test_destroy_keeps_parents_that_other_chains_use(vc: Target) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    with connect(vc) as si:
        backing = _vm(si, vol["moref"])
        task_ok(si, backing.CreateSnapshot_Task("s", "", False, False))
        (disk,) = virtual_disks(si, backing)
        delta = disk.backing.fileName
        # The snapshot still needs the base: only the delta goes.
        task_ok(si, _reconfigure(backing, remove_disk_change(disk, "destroy")))
        assert virtual_disks(si, backing) == []
    files = vc.ctl.files(DS)
    assert not any(f in files for f in _disk_files(delta))
    assert all(f in files for f in _disk_files(vol["vmdk"]))


@pytest.mark.cassette
def test_detach_is_refused_while_a_snapshot_of_the_vm_holds_the_chain(vc: Target) -> None:
    # vSphere: "Cannot remove virtual disk ... because it or one of its parent
    # disks is part of a snapshot of the virtual machine" (model table).
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    with connect(vc) as si:
        backing = _vm(si, vol["moref"])
        task_ok(si, backing.CreateSnapshot_Task("s", "", False, False))
        (disk,) = virtual_disks(si, backing)
        fault = task_fault(si, _reconfigure(backing, remove_disk_change(disk)))
        assert isinstance(fault, vim.fault.InvalidDeviceSpec)
        (message,) = [str(m.message) for m in fault.faultMessage]
        assert "part of a snapshot of the virtual machine" in message
        assert vol["vmdk"] in message  # the file the snapshot holds
        # Nothing changed; once the snapshot is gone the detach is allowed.
        assert [d.backing.fileName for d in virtual_disks(si, backing)] == [disk.backing.fileName]
        (snap,) = props(si, backing, "snapshot")["snapshot"].rootSnapshotList
        task_ok(si, snap.snapshot.RemoveSnapshot_Task(False, False))
        task_ok(si, _reconfigure(backing, remove_disk_change(disk)))
        assert virtual_disks(si, backing) == []
    assert all(f in vc.ctl.files(DS) for f in _disk_files(vol["vmdk"]))


@pytest.mark.cassette
def test_a_snapshot_cannot_take_a_file_a_running_vm_writes(vc: Target) -> None:
    # The instance writes to the volume's file (its top): the backing, which
    # shares it, cannot make it a read-only parent.
    vol = vc.ctl.scenario("attached-volume")["volumes"][0]
    with connect(vc) as si:
        backing = _vm(si, vol["moref"])
        fault = task_fault(si, backing.CreateSnapshot_Task("s", "", False, False))
        assert isinstance(fault, vim.fault.FileLocked)
        assert fault.file == vol["vmdk"]
        assert props(si, backing, "snapshot").get("snapshot") is None
        assert [d.backing.fileName for d in virtual_disks(si, backing)] == [vol["vmdk"]]


@pytest.mark.cassette
def test_swap_in_one_spec_frees_and_reuses_a_unit(vc: Target) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    other = vc.ctl.scenario("available-volume")["volumes"][0]
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        (disk,) = [d for d in virtual_disks(si, vm) if d.backing.fileName == vol["vmdk"]]
        swap = add_disk_change(disk.controllerKey, other["vmdk"], unit=disk.unitNumber)
        extra_config = {f"volume-{vol['id']}": "", f"volume-{other['id']}": other["disk_uuid"]}
        task_ok(si, _reconfigure(vm, remove_disk_change(disk), swap, **extra_config))
        (swapped,) = [d for d in virtual_disks(si, vm) if d.unitNumber == disk.unitNumber]
        assert swapped.backing.fileName == other["vmdk"]
        assert vol["vmdk"] not in {d.backing.fileName for d in virtual_disks(si, vm)}
        extra = {o.key: o.value for o in props(si, vm, "config.extraConfig")["config.extraConfig"]}
        assert extra.get(f"volume-{other['id']}") == other["disk_uuid"]
        assert f"volume-{vol['id']}" not in extra


@pytest.mark.live
def test_other_settings_go_to_the_stock_handler(vc: Target) -> None:
    inst = vc.ctl.scenario("attached-volume")["instances"][0]
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        spec = vim.vm.ConfigSpec(
            numCPUs=2, extraConfig=[vim.option.OptionValue(key="a", value="b")]
        )
        task_ok(si, vm.ReconfigVM_Task(spec))
        assert props(si, vm, "config.hardware.numCPU")["config.hardware.numCPU"] == 2


@pytest.mark.live
def test_attach_follows_a_relative_parent_hint(vc: Target, simulator: Simulator) -> None:
    """ESX names a parent in the same directory by its bare file name.

    Live only: the test edits a descriptor on the datastore directly.
    """
    inst = vc.ctl.scenario("attached-volume")["instances"][0]
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    assert simulator.info is not None
    with connect(vc) as si:
        backing = _vm(si, vol["moref"])
        task_ok(si, backing.CreateSnapshot_Task("s", "", False, False))
        (delta_disk,) = virtual_disks(si, backing)
        delta = delta_disk.backing.fileName
        local = Path(simulator.info.root) / DS / delta.split("] ", 1)[1]
        text = local.read_text()
        base_name = vol["vmdk"].rsplit("/", 1)[1]
        assert f'parentFileNameHint="{vol["vmdk"]}"' in text
        local.write_text(text.replace(vol["vmdk"], base_name))

        vm = _vm(si, inst["moref"])
        task_ok(si, _reconfigure(vm, add_disk_change(_controller_key(si, vm), delta)))
        (added,) = [d for d in virtual_disks(si, vm) if d.backing.fileName == delta]
        assert added.backing.parent.fileName == vol["vmdk"]
