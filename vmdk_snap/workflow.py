"""The snapshot workflows of the blueprint, as named steps each with its undo.

Snapshot of an **attached** volume (blueprint "Support forceful snapshot of an
attached volume", Work Flow 1)::

    consolidate (only when the backing does not hold the instance's current file):
      1. relocate_backing       (if needed) the backing's home moves to the instance's
                                host, pool and datastore; its disk stays: nothing is copied
      2. swap_backing_disk      the backing drops its stale disk (files kept) and
                                attaches the instance's current VMDK
    snapshot:
      3. snapshot_instance      temporary snapshot of the instance (optionally quiesced):
                                the volume's current file is frozen, writes go to a new delta
      4. snapshot_backing       the backing's snapshot, named for the Cinder snapshot,
                                holds the frozen file
      5. hand_over_top          one ReconfigVM of the backing: destroy its fresh delta, attach
                                the instance's new delta (backing and instance share it)
      6. remove_instance_snapshot  consolidate=False: the instance's tree is as before,
                                every file stays where it is (the point of no return)
      7. delete_stale_copy      (after a consolidation) delete the old copy's files

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
  ``consolidate=False``. Merging the instance's deltas back would write into
  base files that backing VMs reference (this volume's, and in Work Flow 2
  every other attached volume's) and, if such a file holds a backing snapshot,
  destroy that snapshot's data; vSphere's merge does not know about backings.
  So a rollback leaves the instance's disks on a delta in its own directory
  whose parent chain is exactly the old one; data, snapshot trees and the
  backing's disk are exactly as before.
- ``hand_over_top`` and ``snapshot_backing`` are undone by giving the backing
  back the file the new snapshot holds and removing that snapshot (nothing to
  merge then, so nothing is written into a shared file).

Work Flow 2 (several volumes and a root disk, the instance storage-vMotioned):
only the named volume is consolidated and snapshotted. The temporary instance
snapshot gives *every* non-independent disk of the instance a delta in the
instance's directory, and removing it with ``consolidate=False`` keeps those
deltas (``runtime.consolidationNeeded`` becomes true on the instance). The
backing of another volume then points at the delta's parent, an older file of
the same chain: its data is what the volume held at that moment and nothing
is ever merged into it, so it is safe; the next consolidate (or forced
snapshot) of that volume hands it the instance's current file. Kept deltas,
by design: one per non-independent instance disk per forced snapshot, and the
backing's previous top after each snapshot (it becomes the parent of the
shared file). Never run vSphere's "Consolidate" on such an instance: it would
merge into files that backing snapshots hold.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any

from vmdk_snap.engine import Changes, Step
from vmdk_snap.errors import InvalidInput, NotFound
from vmdk_snap.stepctx import (
    OpsContext,
    directory,
    disk_of,
    only_disk,
    ref_json,
    ref_of,
    set_backing_disk,
    spec_for,
)
from vmdk_snap.types import DiskLocator, datastore_of

__all__ = [
    "ALLOW_SHARING",
    "CHILD_MOST",
    "MAX_NAME_LENGTH",
    "OpsContext",
    "build_steps",
    "temp_snapshot_name",
    "validate_snapshot_name",
]

log = logging.getLogger(__name__)

ALLOW_SHARING = "moveAllDiskBackingsAndAllowSharing"
CHILD_MOST = "moveChildMostDiskBacking"
MAX_NAME_LENGTH = 80
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
TEMP_PREFIX = "vmdk-snap-tmp-"


def validate_snapshot_name(name: str) -> str:
    """Return ``name`` if it is a valid snapshot name, else raise InvalidInput.

    Allowed: ASCII letters, digits, ``-``, ``_`` and ``.``; 1 to 80 characters.
    Checked before any change in vCenter.
    """
    allowed = "ASCII letters, digits, '-', '_' and '.', at most 80 characters"
    if not name:
        raise InvalidInput("the snapshot name is empty", hint=f"use {allowed}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"the snapshot name is {len(name)} characters long", hint=f"use {allowed}"
        )
    if not _NAME_RE.match(name):
        bad = sorted({c for c in name if not re.match(r"[A-Za-z0-9._-]", c)})
        shown = " ".join(repr(c) for c in bad)
        raise InvalidInput(
            f"the snapshot name {name!r} contains characters that are not allowed: {shown}",
            hint=f"use {allowed}",
        )
    return name


def temp_snapshot_name(name: str) -> str:
    """The instance's temporary snapshot for Cinder snapshot ``name`` (at most 80 characters).

    Deterministic, so that recovery (and a replayed cassette) finds the same name.
    """
    temp = TEMP_PREFIX + name
    if len(temp) <= MAX_NAME_LENGTH:
        return temp
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return temp[: MAX_NAME_LENGTH - len(digest) - 1] + "-" + digest


# -- consolidation: 1. swap_backing_disk ----------------------------------------


def swap_backing_disk() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        p = ctx.params
        return (
            f"backing {p['backing_name']}: detach {p['disk']['path']} (files kept) and attach "
            f"the instance's current {p['instance_top']}"
        )

    def do(ctx: OpsContext) -> Changes:
        old = disk_of(ctx.params["disk"])
        ctx.run(
            ctx.ops.start_reconfigure_disks(
                ctx.vm("backing"),
                remove=[(old, False)],
                add=[spec_for(old, ctx.params["instance_top"])],
            )
        )
        return {"old": old.path, "new": ctx.params["instance_top"]}

    def undo(ctx: OpsContext, changes: Changes) -> None:
        set_backing_disk(ctx, changes["old"])

    def check(ctx: OpsContext) -> Changes | None:
        disk = only_disk(ctx.read("backing"))
        if disk.path == ctx.params["instance_top"]:
            return {"old": ctx.params["disk"]["path"], "new": disk.path}
        return None

    return Step(
        "swap_backing_disk",
        describe,
        do,
        undo,
        check,
        undo_text="re-attach the old disk in place of the instance's file (files were kept)",
    )


# -- consolidation: 2. relocate_backing -----------------------------------------


def relocate_backing() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        r = ctx.params["relocate"]
        return (
            f"relocate backing {ctx.params['backing_name']} to host {r['host'][1]}, pool "
            f"{r['pool'][1]}, datastore {r['datastore_name']} ({r['move_type']}); "
            "its disk stays where it is: no data is copied"
        )

    def do(ctx: OpsContext) -> Changes:
        r = ctx.params["relocate"]
        k = r["keep_disk"]
        try:
            ctx.run(
                ctx.ops.start_relocate(
                    ctx.vm("backing"),
                    host=ref_of(r["host"]),
                    pool=ref_of(r["pool"]),
                    datastore=ref_of(r["datastore"]),
                    disk_move_type=r["move_type"],
                    disks=[DiskLocator(int(k["key"]), ref_of(k["datastore"]))],
                )
            )
        except InvalidInput as exc:
            raise InvalidInput(
                f"cannot move backing {ctx.params['backing_name']} to host {r['host'][1]} "
                f"while its old disk is on {k['datastore_name']}: {exc.message}",
                hint="the instance's host must see both datastores; mount "
                f"{k['datastore_name']} there or move the instance back",
                fault=exc.fault,
                task=exc.task,
            ) from exc
        return {"from": ctx.params["origin"]}

    def undo(ctx: OpsContext, changes: Changes) -> None:
        origin = changes["from"]
        backing = ctx.read("backing")
        disk = only_disk(backing)
        # Home back where it was; the disk stays on its datastore (no copy).
        here = ctx.ops.datastore_named(datastore_of(disk.path))
        ctx.run(
            ctx.ops.start_relocate(
                backing.ref,
                host=ref_of(origin["host"]),
                pool=ref_of(origin["pool"]),
                datastore=ctx.ops.datastore_named(origin["datastore_name"]),
                disk_move_type=CHILD_MOST,
                disks=[DiskLocator(disk.key, here, CHILD_MOST)],
            )
        )

    def check(ctx: OpsContext) -> Changes | None:
        r = ctx.params["relocate"]
        backing = ctx.read("backing")
        moved = backing.host == ref_of(r["host"]) and (
            datastore_of(backing.vm_path_name) == r["datastore_name"]
        )
        return {"from": ctx.params["origin"]} if moved else None

    return Step(
        "relocate_backing",
        describe,
        do,
        undo,
        check,
        undo_text="relocate the backing back to its host, pool and datastore (disk stays)",
    )


# -- 3. snapshot_instance -------------------------------------------------------


def snapshot_instance() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        q = " quiesced" if ctx.params["quiesce"] else ""
        return (
            f"create{q} temporary snapshot {ctx.params['temp_name']} of instance "
            f"{ctx.params['instance_name']}: each of its non-independent disks gets a delta"
        )

    def do(ctx: OpsContext) -> Changes:
        snap = ctx.run_for_ref(
            ctx.ops.start_create_snapshot(
                ctx.vm("instance"),
                ctx.params["temp_name"],
                f"vmdk-snap: temporary, for volume snapshot {ctx.params['name']}",
                memory=False,
                quiesce=bool(ctx.params["quiesce"]),
            )
        )
        return {"snapshot": ref_json(snap)}

    def undo(ctx: OpsContext, changes: Changes) -> None:
        # consolidate=False: never merge into files backings reference (module doc).
        ctx.run(ctx.ops.start_remove_snapshot(ref_of(changes["snapshot"]), False, False))

    def check(ctx: OpsContext) -> Changes | None:
        node = ctx.read("instance").snapshot_named(ctx.params["temp_name"])
        return {"snapshot": ref_json(node.ref)} if node is not None else None

    return Step(
        "snapshot_instance",
        describe,
        do,
        undo,
        check,
        undo_text="remove the temporary snapshot with consolidate=False (deltas kept)",
    )


# -- 4. snapshot_backing ----------------------------------------------------------


def snapshot_backing(*, attached: bool) -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        held = "the instance's frozen file" if attached else "the volume's current file"
        return (
            f"create snapshot {ctx.params['name']} of backing {ctx.params['backing_name']}: "
            f"it holds {held}"
        )

    def do(ctx: OpsContext) -> Changes:
        base = ctx.params["frozen"] if attached else ctx.params["disk"]["path"]
        snap = ctx.run_for_ref(
            ctx.ops.start_create_snapshot(
                ctx.vm("backing"),
                ctx.params["name"],
                ctx.params.get("description", ""),
                memory=False,
                quiesce=False,
            )
        )
        return {"snapshot": ref_json(snap), "base": base}

    def undo(ctx: OpsContext, changes: Changes) -> None:
        # Give the backing back the file the snapshot holds (destroying its
        # own fresh delta, keeping a file the instance uses), then removing the
        # snapshot merges nothing.
        backing = ctx.read("backing")
        current = only_disk(backing)
        if current.path != changes["base"]:
            own = directory(current.path) == directory(backing.vm_path_name)
            ctx.run(
                ctx.ops.start_reconfigure_disks(
                    backing.ref,
                    remove=[(current, own)],
                    add=[spec_for(current, changes["base"])],
                )
            )
        ctx.run(ctx.ops.start_remove_snapshot(ref_of(changes["snapshot"]), False, True))

    def check(ctx: OpsContext) -> Changes | None:
        node = ctx.read("backing").snapshot_named(ctx.params["name"])
        if node is None:
            return None
        base = ctx.params["frozen"] if attached else ctx.params["disk"]["path"]
        return {"snapshot": ref_json(node.ref), "base": base}

    return Step(
        "snapshot_backing",
        describe,
        do,
        undo,
        check,
        undo_text="give the backing back the snapshot's file, then remove the snapshot",
    )


# -- 5. hand_over_top ---------------------------------------------------------------


def hand_over_top() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        return (
            f"one ReconfigVM of backing {ctx.params['backing_name']}: destroy its fresh delta "
            "and attach the instance's new delta (both then share the volume's current file)"
        )

    def do(ctx: OpsContext) -> Changes:
        backing, instance = ctx.ops.get_vms([ctx.vm("backing"), ctx.vm("instance")])
        ctx.seen.update(backing=backing, instance=instance)
        current = only_disk(backing)
        disk = instance.disk_by_path(ctx.params["frozen"])
        if disk is None:
            raise NotFound(
                f"instance {instance.name} no longer has the volume's file {ctx.params['frozen']}",
                hint="the volume was detached meanwhile; run `vmdk-snap recover`",
            )
        ctx.run(
            ctx.ops.start_reconfigure_disks(
                backing.ref, remove=[(current, True)], add=[spec_for(current, disk.path)]
            )
        )
        return {"destroyed": current.path, "top": disk.path}

    def undo(ctx: OpsContext, changes: Changes) -> None:
        # The instance keeps writing to the shared file: detach it, keep it.
        set_backing_disk(ctx, ctx.params["frozen"])

    def check(ctx: OpsContext) -> Changes | None:
        backing, instance = ctx.ops.get_vms([ctx.vm("backing"), ctx.vm("instance")])
        disk = instance.disk_by_path(ctx.params["frozen"])
        current = only_disk(backing)
        if disk is not None and current.path == disk.path:
            return {"destroyed": None, "top": disk.path}
        return None

    return Step(
        "hand_over_top",
        describe,
        do,
        undo,
        check,
        undo_text="detach the instance's file from the backing (kept) and re-attach the frozen one",
    )


# -- 6. remove_instance_snapshot --------------------------------------------------------


def remove_instance_snapshot() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        return (
            f"remove the temporary snapshot {ctx.params['temp_name']} of instance "
            f"{ctx.params['instance_name']} with consolidate=False: its tree is as before, "
            "no file is merged or deleted"
        )

    def do(ctx: OpsContext) -> Changes:
        snap = ctx.results["snapshot_instance"]["snapshot"]
        ctx.run(ctx.ops.start_remove_snapshot(ref_of(snap), False, False))
        return {"removed": snap}

    def check(ctx: OpsContext) -> Changes | None:
        gone = ctx.read("instance").snapshot_named(ctx.params["temp_name"]) is None
        return {"removed": ctx.results["snapshot_instance"]["snapshot"]} if gone else None

    return Step(
        "remove_instance_snapshot",
        describe,
        do,
        None,
        check,
        undo_text="none: the point of no return; after it recover finishes the workflow",
    )


# -- 7. delete_stale_copy ----------------------------------------------------------------


def delete_stale_copy() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        return "delete the old copy, which no VM uses any more: " + ", ".join(ctx.params["stale"])

    def do(ctx: OpsContext) -> Changes:
        deleted = []
        for path in ctx.params["stale"]:
            try:
                ctx.run(ctx.ops.start_delete_disk_file(path))
            except NotFound as exc:
                # Expected when recovery runs the step again; otherwise worth a look.
                log.warning("could not delete stale copy %s (already gone?): %s", path, exc)
            deleted.append(path)
        return {"deleted": deleted}

    def check(ctx: OpsContext) -> Changes | None:
        return None  # deleting again is harmless: recovery simply runs the step

    return Step(
        "delete_stale_copy",
        describe,
        do,
        None,
        check,
        undo_text="none: after the point of no return; recover retries it",
    )


# -- detached volumes: delete and revert ------------------------------------------------


def remove_backing_snapshot() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        if ctx.params["consolidate"]:
            how = "consolidate=True: its delta is merged into its parent"
        else:
            how = (
                "consolidate=False: the volume is attached, so nothing is merged into a file "
                "the instance uses; every file is kept"
            )
        return (
            f"remove snapshot {ctx.params['name']} of backing {ctx.params['backing_name']} ({how})"
        )

    def do(ctx: OpsContext) -> Changes:
        snap = ref_of(ctx.params["snapshot"])
        ctx.run(ctx.ops.start_remove_snapshot(snap, False, bool(ctx.params["consolidate"])))
        return {"removed": ctx.params["snapshot"]}

    def check(ctx: OpsContext) -> Changes | None:
        gone = ctx.read("backing").snapshot_named(ctx.params["name"]) is None
        return {"removed": ctx.params["snapshot"]} if gone else None

    return Step("remove_snapshot", describe, do, None, check)


def revert_backing() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        return (
            f"revert backing {ctx.params['backing_name']} to snapshot {ctx.params['name']}: "
            "its current data is discarded"
        )

    def do(ctx: OpsContext) -> Changes:
        ctx.run(ctx.ops.start_revert_to_snapshot(ref_of(ctx.params["snapshot"])))
        return {"reverted_to": ctx.params["snapshot"]}

    def check(ctx: OpsContext) -> Changes | None:
        # Only the task can tell (a revert to the latest snapshot changes no
        # name or tree): the interrupted task's outcome, settled by recovery.
        return {"reverted_to": ctx.params["snapshot"]} if ctx.settled else None

    return Step("revert_to_snapshot", describe, do, None, check)


# -- assembling workflows from their journaled params -------------------------------------


def consolidation_steps(params: dict[str, Any]) -> list[Step[OpsContext]]:
    if not params.get("swap"):
        return []
    if params.get("relocate") is None:
        return [swap_backing_disk()]
    return [relocate_backing(), swap_backing_disk()]


_BUILDERS: dict[str, Callable[[dict[str, Any]], list[Step[OpsContext]]]] = {
    "snapshot": lambda p: [snapshot_backing(attached=False)],
    "snapshot_attached": lambda p: [
        *consolidation_steps(p),
        snapshot_instance(),
        snapshot_backing(attached=True),
        hand_over_top(),
        remove_instance_snapshot(),
        *([delete_stale_copy()] if p.get("stale") else []),
    ],
    "consolidate": lambda p: [
        *consolidation_steps(p),
        *([delete_stale_copy()] if p.get("stale") else []),
    ],
    "delete": lambda p: [remove_backing_snapshot()],
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
