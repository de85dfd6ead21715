"""pyVmomi data objects -> vmdk_snap.types values (nothing above sees pyVmomi)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pyVmomi import vim

from vmdk_snap.types import Disk, Moref, SnapshotNode, VmInfo
from vmdk_snap.vsphere.volumeops.collect import moref_of

__all__ = ["disks_of", "snapshot_tree", "vm_info", "volume_keys"]

VOLUME_KEY_PREFIX = "volume-"


def _ref(obj: Any) -> Moref | None:
    return moref_of(obj) if obj is not None else None


def disk_of(device: Any) -> Disk:
    """A VirtualDisk device with its chain of backings, top first."""
    backing = device.backing
    chain: list[str] = []
    link = backing
    while link is not None:
        chain.append(str(link.fileName))
        link = getattr(link, "parent", None)
    capacity_kb = getattr(device, "capacityInKB", 0) or 0
    if not capacity_kb:
        capacity_kb = (getattr(device, "capacityInBytes", 0) or 0) // 1024
    return Disk(
        key=int(device.key),
        controller_key=int(device.controllerKey or 0),
        unit=int(device.unitNumber) if device.unitNumber is not None else None,
        path=str(backing.fileName),
        chain=tuple(chain),
        uuid=getattr(backing, "uuid", None) or None,
        capacity_kb=int(capacity_kb),
        mode=str(getattr(backing, "diskMode", "") or ""),
        datastore=_ref(getattr(backing, "datastore", None)),
    )


def disks_of(devices: Iterable[Any] | None) -> tuple[Disk, ...]:
    """The file-backed virtual disks among a VM's (or a snapshot's) devices."""
    return tuple(
        disk_of(d)
        for d in devices or ()
        if isinstance(d, vim.vm.device.VirtualDisk) and hasattr(d.backing, "fileName")
    )


def snapshot_tree(nodes: Iterable[Any] | None) -> tuple[SnapshotNode, ...]:
    return tuple(
        SnapshotNode(
            ref=moref_of(n.snapshot),
            name=str(n.name),
            description=str(n.description or ""),
            created=n.createTime,
            quiesced=bool(n.quiesced),
            children=snapshot_tree(n.childSnapshotList),
        )
        for n in nodes or ()
    )


def volume_keys(extra_config: Iterable[Any] | None) -> dict[str, str]:
    """Nova's ``volume-<id>`` -> disk uuid entries of ``config.extraConfig``."""
    return {
        str(o.key): str(o.value)
        for o in extra_config or ()
        if str(o.key).startswith(VOLUME_KEY_PREFIX)
    }


def vm_info(ref: Moref, props: Mapping[str, Any]) -> VmInfo:
    """A VmInfo from the answer to a read of ``collect.VM_PATHS``."""
    snapshot = props.get("snapshot")
    return VmInfo(
        ref=ref,
        name=str(props.get("name", "")),
        instance_uuid=props.get("config.instanceUuid"),
        power_state=str(props.get("runtime.powerState", "")),
        host=_ref(props.get("runtime.host")),
        resource_pool=_ref(props.get("resourcePool")),
        datastores=tuple(moref_of(d) for d in props.get("datastore") or ()),
        vm_path_name=str(props.get("config.files.vmPathName", "") or ""),
        disks=disks_of(props.get("config.hardware.device")),
        volume_keys=volume_keys(props.get("config.extraConfig")),
        snapshots=snapshot_tree(snapshot.rootSnapshotList if snapshot else None),
        current_snapshot=_ref(snapshot.currentSnapshot) if snapshot else None,
        tools_running=props.get("guest.toolsRunningStatus") == "guestToolsRunning",
        consolidation_needed=bool(props.get("runtime.consolidationNeeded")),
    )
