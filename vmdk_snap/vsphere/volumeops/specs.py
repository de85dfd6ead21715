"""pyVmomi specs built from vmdk_snap.types values."""

from __future__ import annotations

from typing import Any

from pyVmomi import vim

from vmdk_snap.types import Disk, DiskSpec

__all__ = ["add_disk", "remove_disk"]


def remove_disk(disk: Disk, destroy: bool) -> Any:
    device = vim.vm.device.VirtualDisk(
        key=disk.key,
        controllerKey=disk.controller_key,
        unitNumber=disk.unit,
        capacityInKB=disk.capacity_kb,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName=disk.path, diskMode=disk.mode
        ),
    )
    return vim.vm.device.VirtualDeviceSpec(
        operation="remove", device=device, fileOperation="destroy" if destroy else None
    )


def add_disk(disk: DiskSpec, key: int) -> Any:
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=disk.path, diskMode=disk.mode)
    if disk.uuid:
        backing.uuid = disk.uuid
    device = vim.vm.device.VirtualDisk(
        key=key,
        controllerKey=disk.controller_key,
        unitNumber=disk.unit,
        capacityInKB=disk.capacity_kb,
        backing=backing,
    )
    return vim.vm.device.VirtualDeviceSpec(operation="add", device=device)
