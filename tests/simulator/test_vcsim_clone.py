"""CloneVM_Task, MoveVirtualDisk_Task, MarkAsTemplate and the PBM endpoint on
the disk model, with plain pyVmomi (issue 13: what Cinder's driver calls)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from pyVmomi import pbm, vim, vmodl
from pyVmomi.SoapAdapter import SoapStubAdapter

from tests.conftest import Target
from tests.vsphere import (
    connect,
    moref,
    props,
    remove_disk_change,
    task_fault,
    task_ok,
    virtual_disks,
)

GIB = 1 << 30


def _folder(si: Any, vm: Any) -> Any:
    return props(si, vm, "parent")["parent"]


def _clone(si: Any, vm: Any, name: str, **spec: Any) -> Any:
    location = spec.pop("location", vim.vm.RelocateSpec())
    return vm.CloneVM_Task(
        _folder(si, vm), name, vim.vm.CloneSpec(location=location, powerOn=False, **spec)
    )


def _named(si: Any, folder: Any, name: str) -> Any:
    for child in props(si, folder, "childEntity")["childEntity"]:
        if isinstance(child, vim.VirtualMachine) and props(si, child, "name")["name"] == name:
            return child
    return None


@pytest.mark.live
def test_a_full_clone_copies_the_chain_into_one_disk_and_leaves_the_source(vc: Target) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.write(vol["moref"], 2000, "base", size=GIB)
    with connect(vc) as si:
        source = moref(si, "VirtualMachine", vol["moref"])
        task_ok(si, source.CreateSnapshot_Task("s1", "", False, False))
        vc.ctl.write(vol["moref"], 2000, "top")
        before = vc.ctl.chain(vol["moref"])
        vc.ctl.reset_bytes_copied()
        clone = task_ok(si, _clone(si, source, "full-clone")).result
        (disk,) = virtual_disks(si, clone)
        assert disk.backing.parent is None
        assert disk.backing.fileName == "[ds-shared-1] full-clone/full-clone.vmdk"
        assert vc.ctl.read_disk(clone._moId, disk.key)["tokens"] == [
            f"seed:{vol['id']}",
            "base",
            "top",
        ]
        copied = vc.ctl.bytes_copied()
        assert copied["total"] > GIB  # the whole chain's data, the sized token's included
        assert vc.ctl.chain(vol["moref"]) == before
        assert props(si, clone, "snapshot")["snapshot"] is None
        # A second clone of that name in the folder is refused.
        with pytest.raises(vim.fault.DuplicateName):
            _clone(si, source, "full-clone")


@pytest.mark.live
def test_a_linked_clone_is_a_delta_on_the_snapshot_and_needs_one(vc: Target) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.write(vol["moref"], 2000, "at-snapshot")
    with connect(vc) as si:
        source = moref(si, "VirtualMachine", vol["moref"])
        snap = task_ok(si, source.CreateSnapshot_Task("s1", "", False, False)).result
        vc.ctl.write(vol["moref"], 2000, "after")
        linked = vim.vm.RelocateSpec(diskMoveType="createNewChildDiskBacking")
        with pytest.raises(vmodl.fault.InvalidArgument):
            _clone(si, source, "no-snapshot", location=linked)
        vc.ctl.reset_bytes_copied()
        clone = task_ok(
            si, _clone(si, source, "linked-clone", location=linked, snapshot=snap)
        ).result
        (disk,) = virtual_disks(si, clone)
        assert disk.backing.fileName == "[ds-shared-1] linked-clone/linked-clone-000001.vmdk"
        assert disk.backing.parent.fileName == vol["vmdk"]
        assert vc.ctl.read_disk(clone._moId, disk.key)["tokens"][-1] == "at-snapshot"
        assert vc.ctl.bytes_copied()["total"] == 0
        vc.ctl.write(clone._moId, disk.key, "clone-only")
        assert vc.ctl.read_disk(vol["moref"], 2000)["tokens"][-2:] == ["at-snapshot", "after"]


@pytest.mark.live
def test_a_clone_of_a_running_instance_without_its_other_disks_as_a_template(vc: Target) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    with connect(vc) as si:
        instance = moref(si, "VirtualMachine", inst["moref"])
        disks = virtual_disks(si, instance)
        volume_disk = next(d for d in disks if d.backing.fileName == vol["vmdk"])
        vc.ctl.write(inst["moref"], volume_disk.key, "through-instance")
        others = [remove_disk_change(d) for d in disks if d.key != volume_disk.key]
        before = vc.ctl.chain(inst["moref"])
        spec = vim.vm.ConfigSpec(deviceChange=others)
        clone = task_ok(si, _clone(si, instance, "tmpl", config=spec, template=True)).result
        (disk,) = virtual_disks(si, clone)
        assert vc.ctl.read_disk(clone._moId, disk.key)["tokens"][-1] == "through-instance"
        assert props(si, clone, "config.template")["config.template"] is True
        assert props(si, clone, "resourcePool")["resourcePool"] is None
        assert vc.ctl.chain(inst["moref"]) == before  # nothing removed from the instance
        # A template is out of every pool: destroying it leaves no ghost
        # that a traversal through pools would trip on.
        pool = props(si, instance, "resourcePool")["resourcePool"]
        assert clone._moId not in [v._moId for v in props(si, pool, "vm")["vm"]]
        # Cloning a template needs a pool.
        with pytest.raises(vmodl.fault.InvalidArgument):
            _clone(si, clone, "from-template")
        copy = task_ok(
            si, _clone(si, clone, "from-template", location=vim.vm.RelocateSpec(pool=pool))
        ).result
        assert props(si, copy, "config.template")["config.template"] is False
        task_ok(si, clone.Destroy_Task())
        assert clone._moId not in [v._moId for v in props(si, pool, "vm")["vm"]]


@pytest.mark.live
def test_a_clone_refuses_what_vcenter_refuses(vc: Target) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    vol = seeded["volumes"][0]
    with connect(vc) as si:
        backing = moref(si, "VirtualMachine", vol["moref"])
        # The running instance writes the backing's disk: it cannot be read.
        with pytest.raises(vim.fault.FileLocked):
            _clone(si, backing, "locked")
        # A snapshot of another VM.
        other = vc.ctl.scenario("available-volume")["volumes"][0]
        snap = task_ok(
            si,
            moref(si, "VirtualMachine", other["moref"]).CreateSnapshot_Task("x", "", False, False),
        ).result
        with pytest.raises(vmodl.fault.InvalidArgument):
            _clone(si, backing, "wrong-snapshot", snapshot=snap)
        # A datastore the host does not mount (ds-local-h0 is DC0_C0_H0's own).
        datastores = props(si, backing, "datastore")["datastore"]
        shared = datastores[0]
        hosts = {props(si, m.key, "name")["name"]: m.key for m in props(si, shared, "host")["host"]}
        dc = props(si, si.RetrieveContent().rootFolder, "childEntity")["childEntity"][0]
        local = next(
            d
            for d in props(si, dc, "datastore")["datastore"]
            if props(si, d, "name")["name"] == "ds-local-h0"
        )
        available = moref(si, "VirtualMachine", other["moref"])
        away = vim.vm.RelocateSpec(datastore=local, host=hosts["DC0_C0_H1"])
        with pytest.raises(vmodl.fault.InvalidArgument):
            _clone(si, available, "unreachable", location=away)
        for name in ("locked", "wrong-snapshot", "unreachable"):
            assert _named(si, _folder(si, backing), name) is None


@pytest.mark.live
def test_move_virtual_disk_rewrites_the_descriptor_and_refuses_a_disk_in_use(vc: Target) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    other = vc.ctl.scenario("available-volume")["volumes"][0]
    with connect(vc) as si:
        content = si.RetrieveContent()
        dc = props(si, content.rootFolder, "childEntity")["childEntity"][0]
        vdm = content.virtualDiskManager
        fault = task_fault(si, vdm.MoveVirtualDisk_Task(vol["vmdk"], dc, other["vmdk"], dc, False))
        assert isinstance(fault, vim.fault.FileLocked)
        backing = moref(si, "VirtualMachine", vol["moref"])
        (disk,) = virtual_disks(si, backing)
        vc.ctl.write(vol["moref"], 2000, "moved-token")
        task_ok(
            si, backing.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[remove_disk_change(disk)]))
        )
        target = other["vmdk"].replace(other["name"] + ".vmdk", "moved.vmdk")
        fault = task_fault(
            si,
            vdm.MoveVirtualDisk_Task(
                vol["vmdk"], dc, "[ds-shared-1] no-such-dir/x.vmdk", dc, False
            ),
        )
        assert isinstance(fault, vim.fault.FileNotFound)
        task_ok(si, vdm.MoveVirtualDisk_Task(vol["vmdk"], dc, target, dc, False))
        assert vc.ctl.read_file(target)["tokens"][-1] == "moved-token"
        files = vc.ctl.files("ds-shared-1")
        assert target.replace(".vmdk", "-flat.vmdk") in files
        assert vol["vmdk"] not in files
        fault = task_fault(si, vdm.MoveVirtualDisk_Task(target, dc, other["vmdk"], dc, False))
        assert isinstance(fault, vim.fault.FileAlreadyExists)


@pytest.mark.live
def test_the_pbm_endpoint_answers_profile_queries(vc: Target) -> None:
    """govmomi's PBM simulator, registered at /pbm: Cinder's storage-policy calls reach it."""
    with connect(vc) as si:
        stub = SoapStubAdapter(
            host=vc.host,
            port=vc.port,
            path="/pbm",
            version="pbm.version.version11",
            sslContext=ssl.create_default_context(cafile=vc.ca_file),
        )
        stub.cookie = si._stub.cookie  # PBM trusts the vCenter session
        content = pbm.ServiceInstance("ServiceInstance", stub).RetrieveContent()
        profiles = content.profileManager.PbmQueryProfile(
            resourceType=pbm.profile.ResourceType(resourceType="STORAGE"),
            profileCategory="REQUIREMENT",
        )
        assert profiles  # the PBM simulator's default policies
        names = [p.name for p in content.profileManager.PbmRetrieveContent(profileIds=profiles)]
        assert names
