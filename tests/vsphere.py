"""Plain pyVmomi helpers for tests that check the simulator directly.

Tests read with the property collector and explicit paths, never with
pyVmomi's lazy accessors: the suite checks that no ``Fetch`` reaches the
simulator.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from tests.conftest import Target


@contextmanager
def connect(target: Target) -> Iterator[Any]:
    """Log in to the target with plain pyVmomi, verifying its certificate."""
    context = ssl.create_default_context(cafile=target.ca_file)
    si = SmartConnect(
        host=target.host,
        port=target.port,
        user=target.username,
        pwd=target.password,
        sslContext=context,
    )
    try:
        yield si
    finally:
        Disconnect(si)


def moref(si: Any, kind: str, value: str) -> Any:
    """A managed object of the given type bound to the session."""
    return getattr(vim, kind)(value, si._stub)


def props(si: Any, obj: Any, *paths: str) -> dict[str, Any]:
    """Read the given property paths of one object in one call."""
    content = si.RetrieveContent()
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False)],
        propSet=[
            vmodl.query.PropertyCollector.PropertySpec(
                type=type(obj), pathSet=list(paths), all=False
            )
        ],
    )
    result = content.propertyCollector.RetrievePropertiesEx(
        [spec], vmodl.query.PropertyCollector.RetrieveOptions()
    )
    out: dict[str, Any] = {p: None for p in paths}
    for oc in result.objects:
        for prop in oc.propSet or []:
            out[prop.name] = prop.val
    return out


def virtual_disks(si: Any, vm: Any) -> list[Any]:
    """A VM's (or a snapshot's) disk devices, in device order."""
    devices = props(si, vm, "config.hardware.device")["config.hardware.device"]
    return [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]


def disk_paths(si: Any, vm: Any) -> list[str]:
    """The file names of a VM's disks, in device order."""
    return [str(d.backing.fileName) for d in virtual_disks(si, vm)]


def watch_task(si: Any, task: Any, max_wait_seconds: int = 5) -> tuple[Any, list[tuple[str, Any]]]:
    """Wait for a task with a property-collector filter, as vCenter clients do.

    Returns the task's final ``info`` and every (state, progress) update seen
    on the way, in order. ``max_wait_seconds`` is fixed, so requests stay the
    same in cassettes.
    """
    pc = si.RetrieveContent().propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task, skip=False)],
        propSet=[
            vmodl.query.PropertyCollector.PropertySpec(
                type=vim.Task, pathSet=["info.state", "info.progress"], all=False
            )
        ],
    )
    pc_filter = pc.CreateFilter(spec, partialUpdates=False)
    seen: list[tuple[str, Any]] = []
    state, progress = "", None
    version = ""
    try:
        for _ in range(200):
            options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=max_wait_seconds)
            update = pc.WaitForUpdatesEx(version, options)
            if update is None:
                continue
            version = update.version
            for fs in update.filterSet or []:
                for oc in fs.objectSet or []:
                    for change in oc.changeSet or []:
                        if change.name == "info.state":
                            state = str(change.val)
                        elif change.name == "info.progress":
                            progress = change.val
                    seen.append((state, progress))
            if state in ("success", "error"):
                break
    finally:
        pc_filter.DestroyPropertyFilter()
    return props(si, task, "info")["info"], seen


def run_task(si: Any, task: Any) -> Any:
    """Wait for a task and return its final ``info``, success or error."""
    info, _ = watch_task(si, task)
    return info


def task_ok(si: Any, task: Any) -> Any:
    """Wait for a task that must succeed; its final ``info``."""
    info = run_task(si, task)
    assert info.state == "success", info.error
    return info


def task_fault(si: Any, task: Any) -> Any:
    """Wait for a task that must fail; the fault it failed with."""
    info = run_task(si, task)
    assert info.state == "error", info.state
    return info.error


def add_disk_change(
    controller_key: int,
    file_name: str,
    unit: int | None = None,
    file_operation: str | None = None,
    capacity_kb: int = 0,
) -> Any:
    """A deviceChange entry adding a disk backed by ``file_name``."""
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName=file_name, diskMode="persistent"
    )
    disk = vim.vm.device.VirtualDisk(
        key=-100,
        controllerKey=controller_key,
        unitNumber=unit,
        backing=backing,
        capacityInKB=capacity_kb,
    )
    change: Any = vim.vm.device.VirtualDeviceSpec(operation="add", device=disk)
    if file_operation:
        change.fileOperation = file_operation
    return change


def remove_disk_change(disk: Any, file_operation: str | None = None) -> Any:
    """A deviceChange entry removing ``disk`` (a device read from the VM)."""
    change: Any = vim.vm.device.VirtualDeviceSpec(operation="remove", device=disk)
    if file_operation:
        change.fileOperation = file_operation
    return change
