"""A Cinder volume as the driver is given it, and as vCenter shows it.

:func:`read_state` reads the backing (and the instance the volume is attached
to) and says where the volume's current file is; :func:`check_status` applies
Cinder's status rules before anything changes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from vmdk_snap.errors import InvalidInput, InvalidState
from vmdk_snap.strategies import VolumeState, stale_files, volume_disk_of
from vmdk_snap.types import SnapshotNode, VmInfo, datastore_of
from vmdk_snap.vsphere.volumeops import VolumeOps
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.journal import WorkflowRecord
from vmdk_snap.workflows.table import temp_snapshot_name

__all__ = [
    "AVAILABLE",
    "IN_USE",
    "Volume",
    "check_status",
    "incomplete_snapshot",
    "read_state",
    "refuse_stale_available",
    "state_of",
]

log = logging.getLogger(__name__)

AVAILABLE = "available"
IN_USE = "in-use"


@dataclass(frozen=True)
class Volume:
    """A Cinder volume as the driver is given it.

    Args:
        id: the volume id; ``volume-<id>`` is accepted too.
        status: Cinder's status; ``None`` derives it from vCenter (``in-use``
            when an instance records the volume in its ``extraConfig``).
        instance_uuid: the instance it is attached to, if Cinder knows it.
    """

    id: str
    status: str | None = None
    instance_uuid: str | None = None

    def __post_init__(self) -> None:
        vid = self.id.strip()
        if vid.startswith("volume-"):
            vid = vid[len("volume-") :]
        if not vid:
            raise InvalidInput("the volume id is empty", hint="pass the Cinder volume id")
        object.__setattr__(self, "id", vid)


def read_state(ops: VolumeOps, volume: Volume, *, verify: bool = False) -> VolumeState:
    """The volume as vCenter shows it.

    ``verify``: also look for an instance when Cinder says ``available``
    (one read of every VM), for calls that change vCenter.
    """
    find = volume.instance_uuid is None and (verify or volume.status != AVAILABLE)
    backing, instance = ops.resolve(volume.id, volume.instance_uuid, find_attached=find)
    return state_of(volume, backing, instance, searched=find)


def state_of(
    volume: Volume, backing: VmInfo, instance: VmInfo | None, *, searched: bool
) -> VolumeState:
    """The volume's state from its backing and the instance found for it (no read).

    ``searched``: the instance was looked up in vCenter (not given by Cinder).
    """
    if len(backing.disks) != 1:
        raise InvalidState(
            f"backing {backing.name} of volume {volume.id} has {len(backing.disks)} disks",
            hint="a Cinder backing has exactly one; check it in vCenter",
        )
    bdisk = backing.disks[0]
    vdisk = volume_disk_of(volume.id, bdisk, instance) if instance is not None else None
    if instance is not None and vdisk is None and searched and volume.status == AVAILABLE:
        # Only a stale ``volume-<id>`` key (detached by hand, the key left
        # behind): no disk of the instance uses the volume's files.
        log.warning(
            "instance %s records volume %s but has no disk of it: taking it as available",
            instance.name,
            volume.id,
        )
        instance = None
    if instance is not None and vdisk is None:
        raise InvalidState(
            f"instance {instance.name} has no disk for volume {volume.id}",
            hint="the volume is not attached there; check the instance and Cinder's record",
        )
    status = volume.status or (IN_USE if instance is not None else AVAILABLE)
    top = vdisk or bdisk
    return VolumeState(
        volume_id=volume.id,
        backing=backing,
        instance=instance,
        status=status,
        backing_disk=bdisk,
        volume_disk=vdisk,
        duplicated=vdisk is not None and vdisk.path != bdisk.path,
        consolidation_needed=backing.consolidation_needed
        or (instance is not None and instance.consolidation_needed),
        chain_depth=top.depth,
        backing_datastore=datastore_of(backing.vm_path_name),
        instance_datastore=datastore_of(vdisk.path) if vdisk is not None else None,
        stale_files=stale_files(backing, bdisk, vdisk) if vdisk is not None else (),
    )


def refuse_stale_available(state: VolumeState) -> None:
    """Cinder says ``available`` but an instance in vCenter has the volume."""
    inst = state.instance
    if state.status != AVAILABLE or inst is None:
        return
    raise InvalidState(
        f"volume {state.volume_id} is 'available' in Cinder's record, but instance "
        f"{inst.instance_uuid} ({inst.name}) has it attached in vCenter; nothing was changed",
        hint="Cinder's record is stale: check the volume's attachment (`openstack volume "
        "show`, `nova volume-attachments`), then pass status 'in-use' with that instance "
        "(a snapshot then needs --force), or detach the volume first",
    )


def check_status(state: VolumeState) -> None:
    refuse_stale_available(state)
    if state.status not in (AVAILABLE, IN_USE):
        raise InvalidState(
            f"volume {state.volume_id} is {state.status!r}; "
            "snapshots need it 'available' or 'in-use'",
            hint="wait until Cinder shows it available or in-use",
        )
    if state.status == IN_USE and state.instance is None:
        raise InvalidState(
            f"volume {state.volume_id} is in-use but no instance in vCenter has it attached",
            hint="pass the instance UUID, or check the attachment in Nova",
        )


def incomplete_snapshot(
    ops: VolumeOps, records: Sequence[WorkflowRecord], state: VolumeState, node: SnapshotNode
) -> str | None:
    """Why the volume's existing snapshot ``node`` is not a finished one, or None.

    An idempotent retry returns a snapshot of the requested name only if it
    is complete: the journal's latest workflow that made a snapshot of that
    name on this volume finished (``done``) with this very snapshot, or,
    without such a record (another journal, an older release, made by hand),
    what vCenter shows is what a finished snapshot leaves: no temporary
    snapshot of it still on the instance, and the file it froze is not the
    one the volume is written into now (else its content would change).
    """
    made = [
        r
        for r in records
        if r.kind in ("snapshot", "snapshot_attached") and r.params.get("name") == node.name
    ]
    if made:
        latest = made[-1]
        if latest.state in (jn.RUNNING, jn.ROLLBACK_FAILED):
            return f"the workflow that makes it ({latest.id}) was interrupted"
        step = latest.step("snapshot_backing")
        changes = step.changes if step is not None and step.changes else {}
        if latest.state == jn.DONE and list(changes.get("snapshot") or []) == [
            node.ref.type,
            node.ref.value,
        ]:
            return None
    inst = state.instance
    if inst is not None:
        temp = temp_snapshot_name(state.volume_id, node.name)
        if inst.snapshot_named(temp) is not None:
            return f"the temporary snapshot {temp} it was made through is still on {inst.name}"
    top = (state.volume_disk or state.backing_disk).path
    frozen = {d.path for d in ops.snapshot_disks(node.ref)}
    if top in frozen:
        return f"it holds {top}, the file the volume is written into now: its content would change"
    return None
