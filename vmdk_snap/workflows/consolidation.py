"""Consolidation steps: re-join a volume whose instance was moved, copying nothing.

After a storage vMotion of the instance the backing still holds the old copy
of the volume's chain while the instance writes to its newer copy. These
steps (see :mod:`vmdk_snap.workflows.table` for the whole design) give the backing
the instance's file:

1. ``relocate_backing`` (only when host, pool or datastore differ): the
   backing's home moves, a disk locator keeping its old disk where it is;
2. ``swap_backing_disk``: one ReconfigVM detaches the old disk (files kept,
   so the step can be undone) and attaches the instance's current VMDK.
   vSphere refuses to detach a disk whose chain one of the VM's snapshots
   holds, so a backing with snapshots gets there in three steps:
   ``hold_old_disk`` (a temporary snapshot holds the old disk, the backing
   gets a fresh delta of its own), ``swap_backing_disk`` (destroy that delta,
   attach the instance's file: destroying is allowed) and
   ``release_old_disk`` (remove the temporary snapshot, consolidate=False;
   clean-up at the end, with ``delete_stale_copy``);
3. ``delete_stale_copy``, last of the whole workflow: the old copy's files.
"""

from __future__ import annotations

import logging
from typing import Any

from vmdk_snap.errors import InvalidInput, InvalidState, VmdkSnapError
from vmdk_snap.types import DiskLocator, datastore_of
from vmdk_snap.vsphere.volumeops.lookups import names_of
from vmdk_snap.workflows.engine import Changes, Step
from vmdk_snap.workflows.stepctx import (
    HOLD_SNAPSHOT,
    HOLD_UNDO_SNAPSHOT,
    OpsContext,
    delete_disk_files,
    disk_of,
    drop_own_delta,
    hold_disk,
    only_disk,
    ref_json,
    ref_of,
    release_hold,
    replace_disk,
    repoint_backing_disk,
)

__all__ = [
    "ALLOW_SHARING",
    "CHILD_MOST",
    "cleanup_steps",
    "consolidation_steps",
    "delete_stale_copy",
    "relocate_backing",
    "swap_backing_disk",
    "unseen_datastore_remedy",
]

log = logging.getLogger(__name__)

ALLOW_SHARING = "moveAllDiskBackingsAndAllowSharing"
CHILD_MOST = "moveChildMostDiskBacking"


def _named(where: dict[str, Any], key: str) -> str:
    """The name recorded for ``where[key]`` (plans look names up), else its moref."""
    name = where.get(f"{key}_name")
    return str(name) if name else str(where[key][1])


def unseen_datastore_remedy(host: str, datastore: str, instance: str) -> str:
    """What to do when the instance's host cannot see the backing's old datastore."""
    return (
        f"mount {datastore} on {host}, or vMotion instance {instance} to a host that sees "
        "both, then retry"
    )


def _names(ctx: OpsContext, where: dict[str, Any]) -> tuple[str, str]:
    """Host and pool names for an error message (one read), else their morefs."""
    refs = [ref_of(where["host"]), ref_of(where["pool"])]
    try:
        names = names_of(ctx.ops.session, refs)
    except VmdkSnapError as exc:
        log.info("could not read the names of %s: %s", refs, exc)
        names = {}
    return names.get(refs[0]) or _named(where, "host"), names.get(refs[1]) or _named(where, "pool")


def hold_old_disk() -> Step[OpsContext]:
    """With backing snapshots: a temporary snapshot holds the old disk (see swap_backing_disk)."""

    def describe(ctx: OpsContext) -> str:
        p = ctx.params
        return (
            f"temporary snapshot {HOLD_SNAPSHOT} of backing {p['backing_name']}: it holds "
            f"{p['disk']['path']} and the backing gets a fresh delta of its own (vSphere refuses "
            "to detach a disk whose chain one of the VM's snapshots holds)"
        )

    def do(ctx: OpsContext) -> Changes:
        return {"snapshot": ref_json(hold_disk(ctx, ctx.vm("backing")))}

    def undo(ctx: OpsContext, changes: Changes) -> None:
        # As snapshot_backing's undo: destroy the fresh delta while giving the
        # backing back the file the snapshot holds, then removing the snapshot
        # merges nothing (no flag left on the backing: exactly as before).
        backing = ctx.read("backing")
        drop_own_delta(ctx, backing, ctx.params["disk"]["path"])
        node = backing.snapshot_named(HOLD_SNAPSHOT)
        if node is not None:
            ctx.run(ctx.ops.start_remove_snapshot(node.ref, False, True))

    def check(ctx: OpsContext) -> Changes | None:
        node = ctx.read("backing").snapshot_named(HOLD_SNAPSHOT)
        return None if node is None else {"snapshot": ref_json(node.ref)}

    return Step(
        "hold_old_disk",
        describe,
        do,
        undo,
        check,
        undo_text=(
            "destroy the fresh delta, re-attach the old disk, remove the temporary snapshot"
        ),
    )


def swap_backing_disk(*, held: bool = False) -> Step[OpsContext]:
    """One ReconfigVM gives the backing the instance's file; ``held``: after hold_old_disk."""

    def describe(ctx: OpsContext) -> str:
        p = ctx.params
        if held:
            return (
                f"backing {p['backing_name']}: destroy its fresh delta and attach the "
                f"instance's current {p['instance_top']} ({p['disk']['path']} is kept)"
            )
        return (
            f"backing {p['backing_name']}: detach {p['disk']['path']} (files kept) and attach "
            f"the instance's current {p['instance_top']}"
        )

    def do(ctx: OpsContext) -> Changes:
        old = disk_of(ctx.params["disk"])
        if held:
            drop_own_delta(ctx, ctx.read("backing"), ctx.params["instance_top"])
        else:
            replace_disk(ctx, ctx.vm("backing"), old, ctx.params["instance_top"])
        return {"old": old.path, "new": ctx.params["instance_top"]}

    def undo(ctx: OpsContext, changes: Changes) -> None:
        # Usually no snapshot holds the instance's file (they hold the old
        # copy's): one ReconfigVM. One the user took while the instance was
        # off may: then through a second temporary snapshot (the instance's
        # rollback kept its delta then, so the file is only read, not locked).
        backing = ctx.read("backing")
        repoint_backing_disk(ctx, backing, changes["old"], hold_name=HOLD_UNDO_SNAPSHOT)

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


def release_old_disk() -> Step[OpsContext]:
    """Remove hold_old_disk's temporary snapshot: nothing merged, the old disk's files kept.

    Clean-up after the change is complete, like delete_stale_copy (which then
    deletes the old top, no longer used): removing a snapshot with
    consolidate=False leaves vCenter's consolidationNeeded on the backing,
    which a rollback could not clear.
    """

    def describe(ctx: OpsContext) -> str:
        return (
            f"remove the temporary snapshot {HOLD_SNAPSHOT} of backing "
            f"{ctx.params['backing_name']} (consolidate=False: nothing merged, files kept)"
        )

    def do(ctx: OpsContext) -> Changes:
        node = ctx.read("backing").snapshot_named(HOLD_SNAPSHOT)
        if node is not None:
            release_hold(ctx, node.ref)
        return {"released": True}

    def check(ctx: OpsContext) -> Changes | None:
        node = ctx.read("backing").snapshot_named(HOLD_SNAPSHOT)
        return {"released": True} if node is None else None

    return Step(
        "release_old_disk",
        describe,
        do,
        None,
        check,
        undo_text=(
            "none: clean-up once the change is complete (the swap is not undone after it); "
            "if it fails, `vmdk-snap recover` removes the snapshot"
        ),
        forward_only=True,
    )


def relocate_backing() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        r, o = ctx.params["relocate"], ctx.params["origin"]
        return (
            f"relocate backing {ctx.params['backing_name']} from host {_named(o, 'host')}, "
            f"pool {_named(o, 'pool')}, datastore {o['datastore_name']} to host "
            f"{_named(r, 'host')}, pool {_named(r, 'pool')}, datastore {r['datastore_name']} "
            f"({r['move_type']}); its disk stays on {r['keep_disk']['datastore_name']}: "
            "no data is copied"
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
                    datastore=ref_of(r["datastore"]) if r.get("datastore") else None,
                    disk_move_type=r["move_type"],
                    disks=[DiskLocator(int(k["key"]), ref_of(k["datastore"]))],
                )
            )
        except InvalidInput as exc:
            # vCenter checks that the host sees every datastore the VM would
            # use before it moves anything (the call's fault or the task's
            # error): nothing changed. Not the user's input but where the
            # instance is: a wrong state (exit 4), with what to do.
            host, pool = _names(ctx, r)
            old, new = k["datastore_name"], r["datastore_name"]
            why = exc.message.rstrip(".")
            raise InvalidState(
                f"vCenter refused to move backing {ctx.params['backing_name']} to instance "
                f"{ctx.params['instance_name']}'s host {host} (pool {pool}, datastore {new}) "
                f"while its old disk stays on {old}: {why}; nothing was changed",
                hint=f"host {host} must see datastore {old} as well as {new}: "
                + unseen_datastore_remedy(host, old, ctx.params["instance_name"]),
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
        # All three: a move may change only the pool (same host and datastore).
        moved = (
            backing.host == ref_of(r["host"])
            and backing.resource_pool == ref_of(r["pool"])
            and datastore_of(backing.vm_path_name) == r["datastore_name"]
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


def delete_stale_copy() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        return "delete the old copy, which no VM uses any more: " + ", ".join(ctx.params["stale"])

    def do(ctx: OpsContext) -> Changes:
        return {"deleted": delete_disk_files(ctx, ctx.params["stale"])}

    def check(ctx: OpsContext) -> Changes | None:
        # Whether the files are gone is not in any VM's state; deleting again
        # is harmless (a file already gone is only logged), so recover simply
        # runs the step again, after waiting for a delete still in flight.
        return None

    return Step(
        "delete_stale_copy",
        describe,
        do,
        None,
        check,
        undo_text=(
            "none, by design: deleted files cannot come back. It runs only after the point "
            "of no return, when neither a VM nor any undo needs the old copy; if it fails, "
            "`vmdk-snap recover` deletes the files"
        ),
        # Once it starts the consolidation is final: undoing the swap would
        # re-attach files this step may already have deleted.
        forward_only=True,
    )


def cleanup_steps(params: dict[str, Any]) -> list[Step[OpsContext]]:
    """Last, once the change is complete: the temporary snapshot, then the old copy."""
    return [
        *([release_old_disk()] if params.get("swap") and params.get("hold") else []),
        *([delete_stale_copy()] if params.get("stale") else []),
    ]


def consolidation_steps(params: dict[str, Any]) -> list[Step[OpsContext]]:
    """Relocate when the backing is elsewhere; swap when its disk lags behind the instance."""
    steps: list[Step[OpsContext]] = []
    if params.get("relocate") is not None:
        steps.append(relocate_backing())
    if params.get("swap") and params.get("hold"):
        steps += [hold_old_disk(), swap_backing_disk(held=True)]
    elif params.get("swap"):
        steps.append(swap_backing_disk())
    return steps
