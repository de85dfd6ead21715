"""VirtualDiskManager.ExtendVirtualDisk_Task on the disk model (issue 13: Cinder's extend)."""

from __future__ import annotations

from typing import Any

import pytest
from pyVmomi import vmodl

from tests.conftest import Target
from tests.vsphere import connect, moref, props, task_fault, task_ok, virtual_disks


def _extend(si: Any, path: str, kb: int) -> Any:
    content = si.RetrieveContent()
    datacenter = props(si, content.rootFolder, "childEntity")["childEntity"][0]
    return content.virtualDiskManager.ExtendVirtualDisk_Task(path, datacenter, kb, False)


@pytest.mark.live
def test_a_disk_grows_never_shrinks_and_not_under_snapshots(vc: Target) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    with connect(vc) as si:
        backing = moref(si, "VirtualMachine", vol["moref"])
        (disk,) = virtual_disks(si, backing)
        task_ok(si, _extend(si, vol["vmdk"], disk.capacityInKB * 4))
        (grown,) = virtual_disks(si, backing)
        assert grown.capacityInKB == disk.capacityInKB * 4
        fault = task_fault(si, _extend(si, vol["vmdk"], disk.capacityInKB))
        assert isinstance(fault, vmodl.fault.InvalidArgument)
        # With a snapshot, neither the delta nor the base it holds grows.
        task_ok(si, backing.CreateSnapshot_Task("s", "", False, False))
        (top,) = virtual_disks(si, backing)
        for path in (top.backing.fileName, vol["vmdk"]):
            fault = task_fault(si, _extend(si, path, disk.capacityInKB * 8))
            assert isinstance(fault, vmodl.fault.NotSupported), path
        (after,) = virtual_disks(si, backing)
        assert after.capacityInKB == disk.capacityInKB * 4
