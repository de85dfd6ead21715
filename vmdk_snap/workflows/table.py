"""The snapshot workflows of the blueprint, as named steps each with its undo.

Snapshot of an **attached** volume (blueprint "Support forceful snapshot of an
attached volume", Work Flow 1)::

    consolidate:
      1. relocate_backing       (when the backing is not on the instance's host, pool and
                                datastore: a storage vMotion, a vMotion or a pool move)
                                the backing's home moves there; its disk stays: no copy
      2. swap_backing_disk      (when the backing does not hold the instance's current
                                file) it drops its stale disk (files kept) and attaches
                                the instance's current VMDK; with backing snapshots
                                between hold_old_disk and release_old_disk (a temporary
                                snapshot: vSphere refuses to detach a disk its VM's
                                snapshots hold)
    snapshot:
      3. snapshot_instance      temporary snapshot of the instance (optionally quiesced):
                                the volume's current file is frozen, writes go to a new delta
      4. snapshot_backing       the backing's snapshot, named for the Cinder snapshot,
                                holds the frozen file
      4a. copy_snapshots_out    (when the chains are deep and the backing's snapshots hold
                                the instance's files) relocate the backing: its snapshots'
                                chains are copied to another datastore, keeping their deltas
                                (vmdk_snap.workflows.copy_out); compaction can then merge
      5. hand_over_top          one ReconfigVM of the backing: destroy its fresh delta, attach
                                the instance's new delta (backing and instance share it);
                                the point of no return
      6. disable_instance_consolidation  vSphere's Consolidate on the instance would
                                now merge into the file the backing's snapshot holds: it
                                is disabled (DisableMethods, source vmdk-snap) until
                                compaction finds no snapshot holding its files
      7. remove_instance_snapshot  consolidate=False: the instance's tree is as before,
                                every file stays where it is
      8. follow_other_volumes   (other volumes attached) each other backing that shared
                                the instance's file gets its new delta (one ReconfigVM each)
      9. release_old_disk       (after hold_old_disk) remove its temporary snapshot
     10. delete_stale_copy      (after a consolidation) delete the old copy's files

Consolidation order, chosen so that no volume data is copied: the backing's
home moves first (``moveAllDiskBackingsAndAllowSharing``, with a disk locator
that keeps its old disk where it is, so the relocation copies no disk data),
then it swaps its old disk for the instance's file, and the old copy is
deleted only at the very end, after the snapshot is complete. The
blueprint's order (relocate the backing *with* its old disk) would copy the
whole stale volume only to delete it. Visibility: the instance's host must see
the old disk's datastore while the backing moves (shared datastores, as SDRS
needs); if it does not, vCenter refuses the relocation and nothing changes.
When the backing has snapshots we use ``moveChildMostDiskBacking`` so that
their files are not moved either.

Why each undo is what it is:

- ``snapshot_instance`` is undone by removing the temporary snapshot with
  ``consolidate=True`` when that is harmless, so that every disk of the
  instance is back on exactly its old files. vSphere's merge does not know
  about backings (a powered-off backing holds no lock): it would as well
  write into a file a backing snapshot holds and destroy that snapshot's
  data. So the undo first reads the snapshots and chains of the instance and
  of its volumes' backings and merges only when none holds a file the merge
  writes into or deletes (:mod:`vmdk_snap.workflows.merge_guard`); otherwise, or if
  the merge fails, it removes the snapshot with ``consolidate=False``: the
  instance's disks keep one delta whose parent chain is the old one, data
  and trees unchanged, and the log says why.
- ``snapshot_backing`` is undone by destroying the backing's fresh delta
  while giving it back the file the new snapshot holds (destroying is
  allowed where detaching is not), then removing that snapshot (nothing to
  merge then, so nothing is written into a shared file).

Work Flow 2 (several volumes and a root disk, the instance storage-vMotioned):
only the named volume is consolidated and snapshotted. The temporary instance
snapshot gives *every* non-independent disk of the instance a delta in the
instance's directory, and removing it with ``consolidate=False`` keeps those
deltas (``runtime.consolidationNeeded`` becomes true on the instance). The
backing of another volume would then point at the delta's parent, so a Nova
detach or a Cinder clone of it would read stale data: ``follow_other_volumes``
(after the point of no return, finished forward by ``recover``; its check
reads vCenter) gives each backing that shared the instance's file before its
new delta, in one ReconfigVM (old file kept), or, when that backing's
snapshots hold the file, through a temporary snapshot
(:func:`~vmdk_snap.workflows.stepctx.repoint_backing_disk`: three tasks). A volume that was already
duplicated before is left as it was (its backing's file is not the delta's
parent); the next consolidate (or forced snapshot) of that volume hands it
the instance's current file. Kept deltas,
by design: one per non-independent instance disk per forced snapshot, and the
backing's previous top after each snapshot (it becomes the parent of the
shared file). Never run vSphere's "Consolidate" on such an instance: it would
merge into files that backing snapshots hold.

Steps without an undo, and why (plans print this as the step's "undo"):

- ``hand_over_top`` is the point of no return. Undoing it would detach the
  instance's file from the backing, whose new snapshot holds that file's
  parent, and vSphere refuses to detach a disk whose chain one of its VM's
  snapshots holds (``tests/vcsim/README.md``); nor can a temporary snapshot
  of the backing take the file over, since the instance writes to it (it is
  locked). Everything the volume's snapshot needs is in place once it ran:
  from then on a failure or a crash is finished *forward* by ``recover``
  (``disable_instance_consolidation``, ``remove_instance_snapshot``), never
  rolled back.
- ``remove_instance_snapshot``: a removed snapshot cannot be re-created (a
  new one would freeze a later moment); it runs after the point of no return.
- ``follow_other_volumes`` runs after the point of no return: the instance
  already writes those volumes to the new deltas, so going back is no option.
- ``delete_stale_copy`` deletes files, which cannot come back; it runs only
  after the point of no return, when no VM and no undo needs the old copy.
- ``remove_snapshot`` (delete) and ``revert_to_snapshot`` are one-step
  workflows on the backing: vSphere merges (or discards) data that cannot be
  split out again. Being the only step, a failure changes nothing; after a
  crash ``recover`` reads vCenter (the snapshot tree, the backing's disk) to
  tell whether it happened.

Crash safety: the journal records each step's intent before its call and
every parameter a step needs (the temporary instance snapshot's name, derived
from the volume id and the snapshot name, is among them). Each step's
``check`` reads vCenter's state; ``recover`` first waits for every task still
running on the workflow's VMs (for ``follow_other_volumes`` also the other
volumes' backings), so a process killed after sending a call but before
journaling its task id is settled like any other.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from vmdk_snap.errors import InvalidInput
from vmdk_snap.workflows.compaction import compaction_steps
from vmdk_snap.workflows.consolidation import (
    ALLOW_SHARING,
    CHILD_MOST,
    cleanup_steps,
    consolidation_steps,
)
from vmdk_snap.workflows.copy_out import copy_snapshots_out, delete_unused_copies
from vmdk_snap.workflows.engine import Step
from vmdk_snap.workflows.group import GROUP_KIND, group_steps
from vmdk_snap.workflows.snapshot_steps import (
    disable_instance_consolidation,
    discard_temporary,
    follow_other_volumes,
    hand_over_top,
    release_temporary,
    remove_backing_snapshot,
    remove_instance_snapshot,
    revert_backing,
    snapshot_backing,
    snapshot_instance,
)
from vmdk_snap.workflows.stepctx import OpsContext

__all__ = [
    "ALLOW_SHARING",
    "CHILD_MOST",
    "MAX_NAME_LENGTH",
    "TEMP_PREFIX",
    "OpsContext",
    "build_steps",
    "temp_snapshot_name",
    "validate_snapshot_name",
]

MAX_NAME_LENGTH = 80
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
TEMP_PREFIX = "vmdk-snap-tmp-"
RESERVED_PREFIX = "vmdk-snap-"  # temporary snapshots: TEMP_PREFIX, stepctx.HOLD_SNAPSHOT


def validate_snapshot_name(name: str) -> str:
    """Return ``name`` if it is a valid snapshot name, else raise InvalidInput.

    Allowed: ASCII letters, digits, ``-``, ``_`` and ``.``; 1 to 80 characters;
    not starting with ``vmdk-snap-`` (kept for temporary snapshots).
    Checked before any change in vCenter.
    """
    allowed = "ASCII letters, digits, '-', '_' and '.', at most 80 characters"
    if not name:
        raise InvalidInput("the snapshot name is empty", hint=f"use {allowed}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"the snapshot name is {len(name)} characters long", hint=f"use {allowed}"
        )
    if name.startswith(RESERVED_PREFIX):
        raise InvalidInput(
            f"the snapshot name {name!r} starts with {RESERVED_PREFIX!r}, which vmdk-snap keeps "
            "for its temporary snapshots",
            hint="choose another name",
        )
    if not _NAME_RE.match(name):
        bad = sorted({c for c in name if not re.match(r"[A-Za-z0-9._-]", c)})
        shown = " ".join(repr(c) for c in bad)
        raise InvalidInput(
            f"the snapshot name {name!r} contains characters that are not allowed: {shown}",
            hint=f"use {allowed}",
        )
    return name


def temp_snapshot_name(volume_id: str, name: str) -> str:
    """The instance's temporary snapshot for snapshot ``name`` of volume ``volume_id``.

    At most 80 characters. Deterministic, so that recovery finds it by name in
    the instance's tree whatever happened (and a replayed cassette sends the
    same request); unique per volume, so that two volumes of one instance
    snapshotted at once under the same name never mistake each other's.
    """
    temp = f"{TEMP_PREFIX}{volume_id}-{name}"
    if len(temp) <= MAX_NAME_LENGTH:
        return temp
    digest = hashlib.sha256(f"{volume_id}/{name}".encode()).hexdigest()[:12]
    return temp[: MAX_NAME_LENGTH - len(digest) - 1] + "-" + digest


_BUILDERS: dict[str, Callable[[dict[str, Any]], list[Step[OpsContext]]]] = {
    "snapshot": lambda p: [snapshot_backing(attached=False)],
    "snapshot_attached": lambda p: [
        *consolidation_steps(p),
        snapshot_instance(),
        snapshot_backing(attached=True),
        *([copy_snapshots_out()] if p.get("copy") else []),
        hand_over_top(),
        disable_instance_consolidation(),
        remove_instance_snapshot(),
        *([follow_other_volumes()] if p.get("others") else []),
        *cleanup_steps(p),
    ],
    "compact": compaction_steps,
    GROUP_KIND: group_steps,
    "consolidate": lambda p: [*consolidation_steps(p), *cleanup_steps(p)],
    "delete": lambda p: [
        remove_backing_snapshot(),
        *([delete_unused_copies()] if p.get("cleanup") else []),
    ],
    # Leftover temporary snapshots (vmdk_snap.workflows.leftovers).
    "release_temporary": lambda p: [release_temporary()],
    "discard_temporary": lambda p: [discard_temporary()],
    "revert": lambda p: [revert_backing()],
}


def build_steps(kind: str, params: dict[str, Any]) -> list[Step[OpsContext]]:
    """The steps of a workflow of ``kind``, from its journaled parameters."""
    try:
        builder = _BUILDERS[kind]
    except KeyError:
        raise InvalidInput(
            f"unknown workflow kind {kind!r} in the journal",
            hint="was the journal written by a newer vmdk-snap?",
        ) from None
    return builder(params)
