"""May the instance's temporary snapshot be merged back on rollback?

Rolling back a forced snapshot after ``snapshot_instance`` removes the
temporary snapshot. Removing it with ``consolidate=True`` merges each new
delta into the file the snapshot froze, which puts every disk of the
instance back on exactly the files it had: the rollback is exact. vSphere's
merge does not know about backings, though: a powered-off backing holds no
VMFS lock, so vSphere would just as well write into a file that a backing's
snapshot holds (destroying that snapshot's data) or delete a delta a
backing uses. So the merge is chosen only when it is known to be harmless:

- the temporary snapshot is the instance's current snapshot, with no
  children (nothing was stacked on it meanwhile);
- for each of its disks, the instance's current chain is exactly the frozen
  file's chain with one delta on top;
- no snapshot of the instance or of another VM that may share its files
  holds a frozen file or a delta, no such VM's current chain has one below
  its top, and none uses a delta (which the merge deletes). A backing whose
  top *is* a frozen file shares the volume with the instance: merging the
  instance's writes into it is what the volume's content was before.

The VMs looked at (:func:`sharing_vms`): the backings of the instance's
volumes, found by Nova's keys, and every VM whose current chains use one of
the instance's files (one read across the inventory: a volume attached by
hand without the key, a clone). Not seen: a VM whose *snapshot* alone holds
such a file while its current chain does not (a backing reverted to an older
snapshot and found by no key). Otherwise the snapshot is removed with
``consolidate=False``: every file stays, the instance's disks stay on one
more delta (data unchanged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from vmdk_snap.types import Disk, Moref, VmInfo
from vmdk_snap.vsphere.volumeops import VolumeOps

__all__ = ["merge_refusal", "sharing_vms", "snapshots_to_read"]

log = logging.getLogger(__name__)


def sharing_vms(
    ops: VolumeOps, instance: VmInfo, volume_id: str, backing: Moref
) -> tuple[list[VmInfo], list[str]]:
    """The VMs that may hold the instance's files, read in one call, and the
    volumes whose backing was not found.

    The backings of its volumes (``backing`` being that of ``volume_id``; the
    others by Nova's ``volume-<id>`` keys) and any other VM whose current
    chains use one of the instance's files (a volume attached by hand, without
    the key, or a clone: one read across the inventory).
    """
    refs: list[Moref] = [backing]
    missing: list[str] = []
    for other, ref in ops.find_volume_backings(instance, skip=volume_id).items():
        if ref is None:
            missing.append(f"volume-{other}")
        elif ref not in refs:
            refs.append(ref)
    files = {p for d in instance.disks for p in d.chain}
    for ref in ops.find_vms_using(files):
        if ref != instance.ref and ref not in refs:
            refs.append(ref)
    return ops.get_vms(refs), missing


def merge_refusal(
    instance: VmInfo,
    snapshot: Moref,
    backings: Sequence[VmInfo],
    snapshot_disks: Mapping[Moref, tuple[Disk, ...]],
) -> str | None:
    """Why merging ``snapshot`` of ``instance`` back is not safe; ``None`` if it is.

    ``snapshot_disks`` has the disks of every snapshot of the instance and of
    ``backings`` (see :func:`snapshots_to_read`).
    """
    node = next((n for n in instance.all_snapshots() if n.ref == snapshot), None)
    if node is None:
        return "the temporary snapshot is no longer in the instance's tree"
    if instance.current_snapshot != snapshot or node.children:
        return "the temporary snapshot is no longer the instance's latest"
    touched = _touched(instance, snapshot_disks.get(snapshot))
    if isinstance(touched, str):
        return touched
    merged, deltas = touched
    for vm in backings:
        used = sorted(d.path for d in vm.disks if d.path in deltas)
        if used:
            return f"backing {vm.name} uses the instance's delta {used[0]}"
    held = _held(instance, snapshot, backings, snapshot_disks)
    if isinstance(held, str):
        return held
    busy = sorted((merged | deltas) & held)
    return f"a snapshot or a deeper chain holds {busy[0]}" if busy else None


def _touched(instance: VmInfo, frozen: tuple[Disk, ...] | None) -> tuple[set[str], set[str]] | str:
    """The files a merge writes into and the deltas it deletes, or why not known."""
    if frozen is None:
        return "the temporary snapshot's disks could not be read"
    current = {d.key: d for d in instance.disks}
    merged: set[str] = set()
    deltas: set[str] = set()
    for disk in frozen:
        if disk.independent:
            continue
        now = current.get(disk.key)
        if now is None or now.chain[1:] != disk.chain:
            return f"the instance's disk {disk.key} is no longer on the snapshot's delta"
        merged.add(disk.path)
        deltas.add(now.path)
    return merged, deltas


def _held(
    instance: VmInfo,
    snapshot: Moref,
    backings: Sequence[VmInfo],
    snapshot_disks: Mapping[Moref, tuple[Disk, ...]],
) -> set[str] | str:
    """Files other snapshots hold or other chains have below their top."""
    held: set[str] = set()
    for vm in (instance, *backings):
        for other in vm.all_snapshots():
            if other.ref == snapshot:
                continue
            if other.ref not in snapshot_disks:
                return f"the disks of snapshot {other.name} of {vm.name} could not be read"
            held.update(_files(snapshot_disks[other.ref]))
    for vm in backings:
        for d in vm.disks:
            held.update(d.chain[1:])
    return held


def snapshots_to_read(instance: VmInfo, backings: Iterable[VmInfo]) -> list[Moref]:
    """Every snapshot of the instance and of the backings."""
    return [n.ref for vm in (instance, *backings) for n in vm.all_snapshots()]


def _files(disks: Iterable[Disk]) -> set[str]:
    return {p for d in disks for p in d.chain}
