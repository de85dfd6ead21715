"""oslo.vmware, Cinder's vSphere client, against our simulator (issue 13, first part).

A client no one here wrote, through a WSDL generated at test time
(:mod:`tests.cinder.wsdl`), in a process of its own patched by eventlet as
cinder-volume is (:mod:`tests.cinder.oslo_child`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cinder.children import run_child
from tests.cinder.wsdl import vim_wsdl
from tests.conftest import Target
from tests.workflow_checks import make_driver, vm
from vmdk_snap.driver import Volume

pytest.importorskip("oslo_vmware")


def oslo(vc: Target, *calls: list[Any]) -> list[dict[str, Any]]:
    """Run ``calls`` through oslo.vmware in a child process; their results."""
    return run_child("tests.cinder.oslo_child", vc, list(calls), timeout=120)


@pytest.mark.live
def test_the_generated_wsdl_is_cached_and_names_the_calls_cinder_makes() -> None:
    path = vim_wsdl()
    assert vim_wsdl() == path  # the second call finds it
    text = (path.parent / "vim.wsdl").read_text()
    for method in (
        "RetrieveServiceContent",
        "Login",
        "RetrievePropertiesEx",
        "CreateSnapshot_Task",
        "CloneVM_Task",
        "ExtendVirtualDisk_Task",
        "FindAllByUuid",
        "RegisterExtension",
    ):
        assert f'<operation name="{method}">' in text, method
    # Derived from the shipped schema, which stays oslo.vmware's file.
    assert (path.parent / "vim-types.xsd").is_symlink()


@pytest.mark.live
def test_oslo_vmware_logs_in_reads_and_snapshots(vc: Target) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    hosts, datastores, name, snap, missing = oslo(
        vc,
        ["objects", "HostSystem", ["name"]],
        ["objects", "Datastore", ["summary.name", "summary.type"]],
        ["property", "VirtualMachine", vol["moref"], "name"],
        ["snapshot", vol["moref"], "by-oslo"],
        ["property", "VirtualMachine", "vm-nope", "name"],
    )
    assert {h["name"] for h in hosts["result"]} == {"DC0_C0_H0", "DC0_C0_H1"}
    names = {d["summary.name"] for d in datastores["result"]}
    assert {"ds-shared-1", "ds-shared-2"} <= names
    assert name["result"] == f"volume-{vol['id']}"
    # The snapshot is really there, as pyVmomi and our simulator see it.
    tree = vc.ctl.chain(vol["moref"])
    assert snap["result"].startswith("snapshot-")
    assert tree["disks"][0]["chain"][0] != vol["vmdk"]  # a delta on top now
    assert missing["error"] == "ManagedObjectNotFoundException"


@pytest.mark.live
def test_what_cinders_driver_asks_at_setup(vc: Target) -> None:
    """do_setup's calls: the extension, the instance by UUID, the datastores."""
    seeded = vc.ctl.scenario("attached-volume")
    inst = seeded["instances"][0]
    key = f"org.openstack.storage.{inst['uuid'][:8]}"  # the simulator is shared
    found_none, registered, found, again, by_uuid, none, datastores, hosts = oslo(
        vc,
        ["invoke", "FindExtension", "extensionManager", {"extensionKey": key}],
        ["register_extension", key],
        ["invoke", "FindExtension", "extensionManager", {"extensionKey": key}],
        ["register_extension", key],
        ["invoke", "FindAllByUuid", "searchIndex",
         {"uuid": inst["uuid"], "vmSearch": True, "instanceUuid": True}],
        ["invoke", "FindAllByUuid", "searchIndex",
         {"uuid": "00000000-0000-0000-0000-000000000000", "vmSearch": True,
          "instanceUuid": True}],
        ["objects", "Datastore", ["summary.name", "summary.type", "host"]],
        ["objects", "HostSystem", ["name"]],
    )  # fmt: skip
    assert found_none["result"] in (None, [], "")
    assert "error" not in registered, registered
    assert found["result"]["key"] == key
    assert found["result"]["company"] == "OpenStack Foundation"
    assert again["error"] == "VimFaultException"  # a key is registered once
    assert by_uuid["result"] == [inst["moref"]]
    assert none["result"] in (None, [], "")
    by_name = {d["summary.name"]: d for d in datastores["result"]}
    assert by_name["ds-shared-1"]["summary.type"] == "VMFS"
    mounts = by_name["ds-shared-1"]["host"]["DatastoreHostMount"]
    host = {h["name"]: h["moref"] for h in hosts["result"]}
    assert {m["key"] for m in mounts} == set(host.values())  # both hosts mount it
    local = by_name["ds-local-h0"]["host"]["DatastoreHostMount"]
    assert [m["key"] for m in local] == [host["DC0_C0_H0"]]


@pytest.mark.live
def test_faults_and_guards_apply_to_suds_requests(vc: Target, ops: Any, tmp_path: Path) -> None:
    """suds names the object as <ns0:_this>: injected faults aimed at an object
    and the Consolidate guard see it as they see pyVmomi's requests."""
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    other = vc.ctl.scenario("available-volume")["volumes"][0]
    # Our forced snapshot leaves vSphere's Consolidate disabled on the instance.
    make_driver(ops, tmp_path).create_snapshot(
        Volume(vol["id"], "in-use", inst["uuid"]), "s1", force=True
    )
    vc.ctl.inject_fault("CreateSnapshot_Task", "task", "FileLocked", match=f">{other['moref']}<")
    try:
        consolidate, failed = oslo(
            vc,
            ["task", "ConsolidateVMDisks_Task", "VirtualMachine", inst["moref"], {}],
            ["snapshot", other["moref"], "aimed-at"],
        )
    finally:
        vc.ctl.clear_faults()
    assert "MethodDisabled" in consolidate["message"], consolidate
    assert "vmdk-snap" in consolidate["message"]  # our reason, naming what to do
    assert "FileLocked" in failed["message"] or failed["error"] == "FileLockedException", failed
    assert ops.get_vm(vm(other["moref"])).snapshots == ()


@pytest.mark.live
def test_a_keyed_property_path_reads_one_extra_config_entry(vc: Target) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    key = f"volume-{vol['id']}"
    entry, missing = oslo(
        vc,
        ["property", "VirtualMachine", inst["moref"], f'config.extraConfig["{key}"]'],
        ["property", "VirtualMachine", inst["moref"], 'config.extraConfig["no-such-key"]'],
    )
    assert entry["result"]["key"] == key
    assert entry["result"]["value"]  # Nova's key holds the disk's uuid
    assert missing["result"] is None


@pytest.mark.live
def test_extend_virtual_disk_as_cinders_extend_volume_calls_it(vc: Target, ops: Any) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    attached = vc.ctl.scenario("attached-volume")["volumes"][0]
    (dc,) = oslo(vc, ["objects", "Datacenter", ["name"]])
    dc_ref = ["Datacenter", dc["result"][0]["moref"]]

    def extend(path: str, kb: int) -> list[Any]:
        args = {"name": path, "datacenter": dc_ref, "newCapacityKb": kb, "eagerZero": False}
        return ["task", "ExtendVirtualDisk_Task", "service", "virtualDiskManager", args]

    grown, shrink, in_use = oslo(
        vc, extend(vol["vmdk"], 4096), extend(vol["vmdk"], 2048), extend(attached["vmdk"], 8192)
    )
    assert grown["result"] == "success"
    (disk,) = ops.get_vm(vm(vol["moref"])).disks
    assert disk.capacity_kb == 4096  # the backing sees the new size
    assert "InvalidArgument" in shrink["message"] or "cannot shrink" in shrink["message"], shrink
    assert "locked" in in_use["message"].lower() or "FileLocked" in in_use["message"], in_use
    (still,) = [d for d in ops.get_vm(vm(attached["moref"])).disks]
    assert still.capacity_kb != 8192
