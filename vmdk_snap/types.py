"""Plain, frozen values that describe vSphere objects above volumeops.

Nothing above :mod:`vmdk_snap.vsphere.volumeops` sees a pyVmomi object: volumeops
reads with explicit property paths and returns these.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "DatastoreInfo",
    "Disk",
    "DiskLocator",
    "DiskSpec",
    "HostInfo",
    "Moref",
    "SnapshotNode",
    "TaskRef",
    "VmInfo",
    "VolumeInventory",
    "datastore_of",
]

_DS_PATH_RE = re.compile(r"^\[(?P<ds>[^\]]+)\] ?(?P<path>.*)$")


def datastore_of(path: str) -> str:
    """Return the datastore name of a ``[ds] dir/file.vmdk`` path ('' if none)."""
    m = _DS_PATH_RE.match(path)
    return m.group("ds") if m else ""


@dataclass(frozen=True, order=True)
class Moref:
    """A managed object reference, e.g. ``Moref("VirtualMachine", "vm-42")``."""

    type: str
    value: str

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


@dataclass(frozen=True)
class Disk:
    """One virtual disk of a VM, with its whole chain of files.

    ``chain`` runs from the file the VM writes to (``path``) down to the base
    disk: ``(path, parent, grandparent, ...)``.
    """

    key: int
    controller_key: int
    unit: int | None
    path: str
    chain: tuple[str, ...]
    uuid: str | None
    capacity_kb: int
    mode: str  # persistent, independent_persistent, independent_nonpersistent, ...
    datastore: Moref | None = None

    @property
    def base(self) -> str:
        """The base (flat) disk at the bottom of the chain."""
        return self.chain[-1]

    @property
    def depth(self) -> int:
        """Number of delta files on top of the base disk."""
        return len(self.chain) - 1

    @property
    def independent(self) -> bool:
        return self.mode.startswith("independent")

    @property
    def datastore_name(self) -> str:
        return datastore_of(self.path)


@dataclass(frozen=True)
class DiskSpec:
    """A disk to add by reconfiguration: an existing VMDK attached by path."""

    path: str
    controller_key: int
    unit: int
    capacity_kb: int = 0
    uuid: str | None = None
    mode: str = "persistent"


@dataclass(frozen=True)
class SnapshotNode:
    """A node of a VM's snapshot tree."""

    ref: Moref
    name: str
    description: str
    created: datetime | None
    quiesced: bool
    children: tuple[SnapshotNode, ...] = ()

    def walk(self) -> Iterator[SnapshotNode]:
        """This node and its descendants, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class VmInfo:
    """Everything the workflows need about one VM, read in one call."""

    ref: Moref
    name: str
    instance_uuid: str | None
    power_state: str  # poweredOn, poweredOff, suspended
    host: Moref | None
    resource_pool: Moref | None
    datastores: tuple[Moref, ...]
    vm_path_name: str  # config.files.vmPathName, e.g. "[ds1] volume-x/volume-x.vmx"
    disks: tuple[Disk, ...]
    volume_keys: Mapping[str, str] = field(default_factory=dict)  # "volume-<id>" -> disk uuid
    snapshots: tuple[SnapshotNode, ...] = ()  # roots of the snapshot tree
    current_snapshot: Moref | None = None
    tools_running: bool = False
    consolidation_needed: bool = False

    def all_snapshots(self) -> Iterator[SnapshotNode]:
        for root in self.snapshots:
            yield from root.walk()

    def snapshot_named(self, name: str) -> SnapshotNode | None:
        return next((s for s in self.all_snapshots() if s.name == name), None)

    def disk_by_uuid(self, uuid: str) -> Disk | None:
        return next((d for d in self.disks if d.uuid == uuid), None)

    def disk_by_path(self, path: str) -> Disk | None:
        """The disk whose chain contains ``path`` (its top file or an ancestor)."""
        return next((d for d in self.disks if path in d.chain), None)


@dataclass(frozen=True)
class DatastoreInfo:
    ref: Moref
    name: str
    accessible: bool = True


@dataclass(frozen=True)
class HostInfo:
    """A host, the resource pool VMs on it use, and the datastores it sees."""

    ref: Moref
    name: str
    resource_pool: Moref
    datastores: tuple[DatastoreInfo, ...]

    def datastore_named(self, name: str) -> DatastoreInfo | None:
        return next((d for d in self.datastores if d.name == name), None)


@dataclass(frozen=True)
class TaskRef:
    """A vSphere task that was started, e.g. to wait for several at once.

    ``description`` names it for errors and logs: ``"CreateSnapshot_Task on vm-42"``.
    """

    ref: Moref
    description: str

    def __str__(self) -> str:
        return f"{self.description} ({self.ref.value})"


@dataclass(frozen=True)
class DiskLocator:
    """Where relocation puts one disk: its device key and target datastore.

    ``disk_move_type`` overrides the relocation's own for this disk
    (``moveAllDiskBackingsAndAllowSharing``, ``moveChildMostDiskBacking``, ...).
    """

    disk_key: int
    datastore: Moref
    disk_move_type: str | None = None


@dataclass(frozen=True)
class VolumeInventory:
    """Which Cinder volumes vCenter holds, by volume id (sorted).

    ``volumes``: every backing (VM named ``volume-<id>``); ``attached``: those
    some instance records with Nova's ``volume-<id>`` key. ``instance_of``
    maps an attached volume id to the moref value of the VM (instance)
    recording it, so that work on one instance can be serialized;
    ``instance_uuid_of`` to its ``config.instanceUuid`` (where exactly one VM
    records the volume), so that work on each volume need not search the
    inventory for its instance again.
    """

    volumes: tuple[str, ...]
    attached: tuple[str, ...]
    instance_of: Mapping[str, str] = field(default_factory=dict)
    instance_uuid_of: Mapping[str, str] = field(default_factory=dict)
