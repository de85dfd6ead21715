"""Pluggable snapshot strategies: how to take, revert and delete a snapshot.

A coarse-grained interface, as CloudStack's pluggable VM snapshot proposal
chose: the driver keeps the volume's state and the sanity checks (status,
``--force``, names, idempotency), then hands over to a strategy, which turns
the request into a journaled workflow: a kind and the JSON parameters from
which :func:`vmdk_snap.workflows.table.build_steps` rebuilds its steps (in this
process, or in ``recover`` after a crash).

- :class:`DetachedStrategy` for ``available`` volumes: snapshot the backing;
  delete with ``consolidate=True``; revert.
- :class:`AttachedStrategy` for ``in-use`` volumes: consolidate the volume's
  duplicated chain if the instance moved, then snapshot through a temporary
  instance snapshot (see :mod:`vmdk_snap.workflows.table`); delete with
  ``consolidate=False`` (nothing is merged into a file the instance uses; the
  files stay as long as the chain needs them); revert is refused.

Another strategy (say, a storage array's own snapshots) implements
:class:`SnapshotStrategy` and is passed to :class:`vmdk_snap.driver.Driver`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from vmdk_snap.errors import InvalidState, NotFound
from vmdk_snap.types import Disk, SnapshotNode, VmInfo, datastore_of
from vmdk_snap.workflows.stepctx import disk_json, ref_json
from vmdk_snap.workflows.table import ALLOW_SHARING, CHILD_MOST, temp_snapshot_name

__all__ = [
    "DEEP_CHAIN_REMEDY",
    "MAX_DELTAS",
    "AttachedStrategy",
    "ChainHeadroom",
    "DetachedStrategy",
    "SnapshotStrategy",
    "VolumeState",
    "WorkflowSpec",
    "chain_headroom",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumeState:
    """A volume as vCenter shows it: its backing, its instance, how they relate.

    ``duplicated``: the backing's disk file differs from the instance's file
    for this volume (after a storage vMotion, or when the backing lags behind
    the instance's newest delta); a forced snapshot consolidates first.
    ``volume_disk`` is the instance's disk for this volume (``extraConfig``
    ``volume-<id>`` = disk uuid, else the backing's file path).
    """

    volume_id: str
    backing: VmInfo
    instance: VmInfo | None
    status: str  # available | in-use (or what Cinder said)
    backing_disk: Disk
    volume_disk: Disk | None
    duplicated: bool
    consolidation_needed: bool
    chain_depth: int
    backing_host: str = ""
    backing_datastore: str = ""
    instance_host: str | None = None
    instance_datastore: str | None = None
    stale_files: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    # vmdk-snap's temporary snapshots on the instance that no workflow running
    # on this host owns (filled in by ``Driver.describe``): recover's to settle.
    leftovers: tuple[str, ...] = ()
    # What compaction would merge now (deltas) or why it would not (filled in
    # by ``Driver.describe`` when the instance reports consolidationNeeded).
    compaction: tuple[int, str | None] | None = None
    # When a forced snapshot copies the backing's snapshots out and what that
    # copies: (the depth that triggers it, the cost in words); filled in by
    # ``Driver.describe`` for an attached volume whose backing has snapshots.
    copy_out: tuple[int, str] | None = None

    @property
    def snapshots(self) -> tuple[SnapshotNode, ...]:
        """The backing's snapshot tree (roots)."""
        return self.backing.snapshots

    @property
    def attached(self) -> bool:
        return self.instance is not None


@dataclass(frozen=True)
class WorkflowSpec:
    """What a strategy asks the driver to run: a workflow kind and its params."""

    kind: str
    params: dict[str, Any]
    notes: tuple[str, ...] = ()


class SnapshotStrategy(Protocol):
    """Take, revert and delete snapshots of one kind of volume."""

    def take(self, state: VolumeState, name: str, *, quiesce: bool) -> WorkflowSpec: ...

    def revert(self, state: VolumeState, snapshot: SnapshotNode) -> WorkflowSpec: ...

    def delete(self, state: VolumeState, snapshot: SnapshotNode) -> WorkflowSpec: ...


def _base_params(state: VolumeState, name: str) -> dict[str, Any]:
    return {
        "volume_id": state.volume_id,
        "name": name,
        "backing": ref_json(state.backing.ref),
        "backing_name": state.backing.name,
        "disk": disk_json(state.backing_disk),
    }


class DetachedStrategy:
    """An ``available`` volume: everything happens on its backing alone."""

    def take(self, state: VolumeState, name: str, *, quiesce: bool) -> WorkflowSpec:
        notes: tuple[str, ...] = ()
        if quiesce:
            notes = ("the volume is detached: there is no guest to quiesce",)
        params = _base_params(state, name)
        params["description"] = f"Cinder snapshot {name} of volume {state.volume_id}"
        return WorkflowSpec("snapshot", params, notes)

    def revert(self, state: VolumeState, snapshot: SnapshotNode) -> WorkflowSpec:
        params = _base_params(state, snapshot.name)
        params["snapshot"] = ref_json(snapshot.ref)
        return WorkflowSpec("revert", params)

    def delete(self, state: VolumeState, snapshot: SnapshotNode) -> WorkflowSpec:
        params = _base_params(state, snapshot.name)
        params.update(snapshot=ref_json(snapshot.ref), consolidate=True)
        return WorkflowSpec("delete", params)


class AttachedStrategy:
    """An ``in-use`` volume: consolidate, then snapshot through the instance."""

    def take(self, state: VolumeState, name: str, *, quiesce: bool) -> WorkflowSpec:
        if state.volume_disk is not None and state.volume_disk.independent:
            raise InvalidState(
                f"volume {state.volume_id} is attached to instance {_who(state)} as an "
                f"{state.volume_disk.mode} disk, which vSphere leaves out of instance "
                "snapshots: its data cannot be frozen while attached",
                hint="detach the volume and snapshot it as an available volume",
            )
        _refuse_deep_chains(state)
        params = self._params(state, name)
        params.update(
            quiesce=quiesce,
            temp_name=temp_snapshot_name(state.volume_id, name),
            # Other volumes attached: their backings follow the new deltas.
            others=any(
                k != f"volume-{state.volume_id}"
                for k in (state.instance.volume_keys if state.instance else {})
            ),
            description=f"Cinder snapshot {name} of volume {state.volume_id} (attached)",
        )
        return WorkflowSpec("snapshot_attached", params)

    def consolidate(self, state: VolumeState) -> WorkflowSpec:
        """Re-join the backing with the instance's newer chain, without a snapshot."""
        return WorkflowSpec("consolidate", self._params(state, ""))

    def revert(self, state: VolumeState, snapshot: SnapshotNode) -> WorkflowSpec:
        raise InvalidState(
            f"volume {state.volume_id} is attached to instance {_who(state)}; "
            "a snapshot can only be reverted while the volume is available, as Cinder does",
            hint="detach the volume first, then revert",
        )

    def delete(self, state: VolumeState, snapshot: SnapshotNode) -> WorkflowSpec:
        params = _base_params(state, snapshot.name)
        params.update(snapshot=ref_json(snapshot.ref), consolidate=False)
        note = (
            "the volume is attached: the snapshot is removed with consolidate=False, so nothing "
            "is merged into a file the instance uses; its files stay in the disk chain"
        )
        return WorkflowSpec("delete", params, (note,))

    def _params(self, state: VolumeState, name: str) -> dict[str, Any]:
        instance, disk = state.instance, state.volume_disk
        if instance is None or disk is None:
            raise InvalidState(
                f"volume {state.volume_id} is not attached to any instance in vCenter",
                hint="snapshot it as an available volume (without --force)",
            )
        backing, bdisk = state.backing, state.backing_disk
        params = _base_params(state, name)
        params.update(
            instance=ref_json(instance.ref),
            instance_name=instance.name,
            instance_top=disk.path,
            frozen=disk.path,
            swap=state.duplicated,
            # vSphere refuses to detach a disk that the VM's snapshots hold:
            # with snapshots the swap goes through a temporary one.
            hold=state.duplicated and bool(backing.snapshots),
            stale=list(state.stale_files),
            relocate=None,
            origin={
                "host": ref_json(backing.host),
                "pool": ref_json(backing.resource_pool),
                "datastore_name": datastore_of(backing.vm_path_name),
            },
        )
        # The backing joins the instance's host and pool, and after a storage
        # vMotion (the chain is duplicated) the datastore of the instance's
        # file too. Not duplicated (a vMotion or a pool move alone), its home
        # stays on its datastore: after a forced snapshot the shared file is
        # the instance's delta in the instance's folder, which may be on
        # another datastore than the backing's home, and is no reason to move.
        home = datastore_of(backing.vm_path_name)
        target = datastore_of(disk.path) if state.duplicated else home
        if (
            backing.host != instance.host
            or backing.resource_pool != instance.resource_pool
            or home != target
        ):
            params["relocate"] = {
                "host": ref_json(instance.host),
                "pool": ref_json(instance.resource_pool),
                "datastore": ref_json(disk.datastore) if state.duplicated else None,
                "datastore_name": target,
                # With snapshots, their files stay where they are (no copy).
                "move_type": CHILD_MOST if backing.snapshots else ALLOW_SHARING,
                # The backing moves before it swaps disks, its old disk kept
                # in place by a locator: nothing is copied, and the old copy
                # never becomes a loose file in the home that moves.
                "keep_disk": {
                    "key": bdisk.key,
                    "datastore": ref_json(bdisk.datastore),
                    "datastore_name": datastore_of(bdisk.path),
                },
            }
        return params


# vSphere refuses a snapshot that would put a 33rd delta on a disk
# (TooManySnapshotLevels). A forced snapshot adds one delta to every
# non-independent disk of the instance (kept, see vmdk_snap.workflows.table) and one
# to the backing's: refuse before changing anything when that would fail.
MAX_DELTAS = 32

DEEP_CHAIN_REMEDY = (
    "delete the volume snapshots you no longer need (their deltas are then merged, or run "
    "`vmdk-snap compact VOLUME`), or detach the volume and snapshot it as an available volume"
)
"""What to do about a chain too deep for a forced snapshot (the refusal's hint, check's advice)."""


@dataclass(frozen=True)
class ChainHeadroom:
    """The deepest chain a forced snapshot of a volume would add a delta to.

    ``forced_snapshots_left``: how many forced snapshots the driver still
    takes before it refuses one (0: the next one is refused).
    """

    path: str  # the deepest disk's top file
    depth: int  # its deltas
    forced_snapshots_left: int


def chain_headroom(state: VolumeState) -> ChainHeadroom:
    """The deepest of the instance's non-independent disks and the backing's disk.

    The instance's root disk counts: every forced snapshot keeps a delta on
    it, so it is usually the first to run out. Of disks equally deep, the
    instance's first one (in device order) is named.
    """
    disks = [d for d in (state.instance.disks if state.instance else ()) if not d.independent]
    deepest = max((*disks, state.backing_disk), key=lambda d: d.depth)
    left = max(0, MAX_DELTAS - 1 - deepest.depth)
    return ChainHeadroom(deepest.path, deepest.depth, left)


def _refuse_deep_chains(state: VolumeState) -> None:
    room = chain_headroom(state)
    if room.forced_snapshots_left > 0:
        return
    raise InvalidState(
        f"instance {_who(state)}'s disk chain is {room.depth} deltas deep ({room.path}); a "
        f"forced snapshot adds one more, and vSphere allows at most {MAX_DELTAS}",
        hint=f"{DEEP_CHAIN_REMEDY}, then retry",
    )


def _who(state: VolumeState) -> str:
    if state.instance is None:
        return "(unknown)"
    return state.instance.instance_uuid or state.instance.name


def volume_disk_of(volume_id: str, backing_disk: Disk, instance: VmInfo) -> Disk | None:
    """The instance's disk for this volume: extraConfig's uuid, else the file path."""
    uuid = instance.volume_keys.get(f"volume-{volume_id}")
    if uuid:
        disk = instance.disk_by_uuid(uuid)
        if disk is not None:
            return disk
        log.warning(
            "instance %s records disk uuid %s for volume %s but has no such disk",
            instance.name,
            uuid,
            volume_id,
        )
    for path in backing_disk.chain:
        disk = instance.disk_by_path(path)
        if disk is not None:
            return disk
    return None


def stale_files(backing: VmInfo, backing_disk: Disk, volume_disk: Disk) -> tuple[str, ...]:
    """Files of the backing's chain a consolidation leaves unused.

    Files the instance's chain uses are kept; with backing snapshots, only
    the backing's top file can go (the others hold the snapshots' data).
    """
    if backing_disk.path == volume_disk.path:
        return ()
    keep = set(volume_disk.chain)
    candidates = backing_disk.chain[:1] if backing.snapshots else backing_disk.chain
    return tuple(p for p in candidates if p not in keep)


def missing_snapshot(volume_id: str, name: str) -> NotFound:
    return NotFound(
        f"volume {volume_id} has no snapshot named {name!r}",
        hint="list its snapshots with `vmdk-snap list`",
    )
