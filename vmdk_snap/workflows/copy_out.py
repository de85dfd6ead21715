"""Copy-out: release the instance's files from a backing's snapshots, keeping them.

A forced snapshot leaves the volume's snapshot on a file of the instance's
chain (the file the instance's temporary snapshot froze), and the instance
keeps writing on top of it. While any backing snapshot holds such a file the
instance cannot be consolidated (:mod:`vmdk_snap.workflows.compaction`): its
merge writes into the files the snapshots hold. With snapshots retained (a
nightly rotation) that is always so, and the chains would only grow.

vSphere rewrites a snapshot's disk references in one operation only:
relocating the VM. Relocating the backing copies each of its snapshots'
chains to the target datastore keeping their delta structure (the volume's
base once, then each delta), points the snapshots at the copies, and leaves
the source files, which the running instance has open, where they are.
Afterwards no snapshot of that backing holds a file of the instance, and
once no backing's does, the instance can be compacted.

When: inside a forced snapshot (step ``copy_snapshots_out``, between
``snapshot_backing`` and ``hand_over_top``), when the driver finds the
instance's chains deep (:data:`vmdk_snap.driver.COPY_DEPTH`). At that moment the
backing's current disk is its own fresh delta on the frozen file: no file of
the relocation is one the running instance writes to (that one is locked,
and could not be read), and vSphere does not have to detach a disk a
snapshot holds (it refuses that). The new snapshot is copied too.

No undo: the copies hold exactly what the originals held, so from here the
forced snapshot is finished forward (by ``recover`` after a crash); a
relocation that fails changes nothing, and the steps before it are undone.
"""

from __future__ import annotations

import logging
from typing import Any

from vmdk_snap.types import DatastoreInfo, Moref, VmInfo, datastore_of
from vmdk_snap.vsphere.volumeops import VolumeOps
from vmdk_snap.workflows.engine import Changes, Step
from vmdk_snap.workflows.stepctx import OpsContext, delete_disk_files, ref_json, ref_of

__all__ = [
    "copies_merge_safely",
    "copy_cost",
    "copy_params",
    "copy_snapshots_out",
    "copy_target",
    "delete_unused_copies",
]

log = logging.getLogger(__name__)


def copy_cost(held: tuple[str, ...] | list[str], capacity_kb: int) -> str:
    """What copying ``held`` costs, in words: the base once, then the deltas."""
    deltas = len(held) - 1
    gib = capacity_kb / (1024 * 1024)
    return (
        f"one copy of the volume's base (at most its capacity, {gib:.3g} GiB, as allocated) "
        f"and {deltas} delta{'s' if deltas != 1 else ''}"
    )


def copy_target(
    backing: VmInfo,
    held: set[str],
    datastores: tuple[DatastoreInfo, ...],
    shared: set[Moref],
    wanted: str | None = None,
) -> DatastoreInfo | str:
    """Where the backing's snapshots are copied to, or why nowhere.

    A relocation copies only what is not on the target datastore already, so
    the target holds none of the ``held`` files. ``wanted`` (the operator's
    choice) wins; else the backing's own home datastore when it qualifies
    (nothing else of the backing moves), else the first datastore by name of
    those its host sees that other hosts mount too (``shared``: the backing
    can still follow its instance to another host), else of the others.
    """
    busy = {datastore_of(p) for p in held}
    usable = [d for d in datastores if d.accessible and d.name not in busy]
    if wanted is not None:
        found = next((d for d in usable if d.name == wanted), None)
        if found is None:
            return (
                f"datastore {wanted} is not usable for the copies (it is not mounted on "
                f"{backing.name}'s host, not accessible, or holds the files themselves: "
                f"{', '.join(sorted(busy))})"
            )
        return found
    home = datastore_of(backing.vm_path_name)
    ranked = sorted(usable, key=lambda d: (d.name != home, d.ref not in shared, d.name))
    if ranked:
        return ranked[0]
    return (
        f"no datastore to copy {backing.name}'s snapshots to: its host sees only "
        f"{', '.join(sorted(d.name for d in datastores)) or 'none'}, which hold the files"
    )


def copy_params(
    held: tuple[str, ...], snapshots: tuple[str, ...], target: DatastoreInfo
) -> dict[str, Any]:
    """The forced snapshot's ``copy`` parameter: what is copied where."""
    return {
        "held": list(held),
        "snapshots": list(snapshots),
        "target": ref_json(target.ref),
        "target_name": target.name,
    }


def _backing_files(ctx: OpsContext, *, current: bool) -> set[str]:
    """Every file the backing's snapshots (and, if ``current``, its disk) use: two reads."""
    backing = ctx.read("backing")
    snaps = ctx.ops.snapshots_disks([n.ref for n in backing.all_snapshots()])
    disks = [d for found in snaps.values() for d in found]
    if current:
        disks += backing.disks
    return {p for d in disks for p in d.chain}


def _still_held(ctx: OpsContext) -> set[str]:
    """The instance's files the backing's snapshots still hold."""
    return _backing_files(ctx, current=False) & set(ctx.params["copy"]["held"])


def copy_snapshots_out() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        p, c = ctx.params, ctx.params["copy"]
        names = [*c["snapshots"], p["name"]]
        return (
            f"relocate backing {p['backing_name']} to datastore {c['target_name']}: the chains "
            f"of its snapshots {', '.join(names)} are copied there keeping their deltas "
            f"({copy_cost(c['held'], int(p['disk']['capacity_kb']))}); the instance's files "
            "stay where they are, and no snapshot holds one of them any more"
        )

    def do(ctx: OpsContext) -> Changes:
        target = ref_of(ctx.params["copy"]["target"])
        ctx.run(ctx.ops.start_relocate(ctx.vm("backing"), datastore=target))
        return {"datastore": ctx.params["copy"]["target_name"]}

    def check(ctx: OpsContext) -> Changes | None:
        return None if _still_held(ctx) else {"datastore": ctx.params["copy"]["target_name"]}

    return Step(
        "copy_snapshots_out",
        describe,
        do,
        None,
        check,
        undo_text=(
            "none: the point of no return. The copies hold exactly what the originals held, "
            "so the workflow is finished forward (a relocation that fails changes nothing, "
            "and the steps before it are undone)"
        ),
    )


def copies_merge_safely(
    ops: VolumeOps, backing: VmInfo, instance: VmInfo, snapshot: Moref
) -> tuple[str, ...] | None:
    """The files of a backing snapshot that are copies, if removing it may merge.

    Removing a snapshot with ``consolidate=True`` merges the file it holds
    with that file's child (in the backing's chains). That is harmless when
    neither is a file of the instance nor used by any VM's current chain:
    then the snapshot's files (top first) are returned, else ``None``. Two
    reads: the backing's snapshots' disks, and the VMs using those files.
    """
    snaps = ops.snapshots_disks([n.ref for n in backing.all_snapshots()])
    own = snaps.get(snapshot)
    if not own:
        return None
    tops = {d.path for d in own}
    chains = [d.chain for disks in snaps.values() for d in disks]
    chains += [d.chain for d in backing.disks]
    children = {c[i - 1] for c in chains for i in range(1, len(c)) if c[i] in tops}
    touched = tops | children
    mine = {p for d in instance.disks for p in d.chain}
    if touched & mine or ops.find_vms_using(touched):
        return None
    return tuple(dict.fromkeys(p for d in own for p in d.chain))


def delete_unused_copies() -> Step[OpsContext]:
    """After removing a copied-out snapshot: its files that nothing uses any more."""

    def describe(ctx: OpsContext) -> str:
        return (
            f"delete the files of snapshot {ctx.params['name']} (copies, outside the "
            "instance's chains) that no snapshot or VM uses any more"
        )

    def do(ctx: OpsContext) -> Changes:
        used = _backing_files(ctx, current=True)
        left = [p for p in ctx.params["cleanup"] if p not in used]
        others = set(ctx.ops.find_vms_using(left)) if left else set()
        if others:
            log.info("files of %s are used by %s: kept", ctx.params["name"], sorted(others))
            return {"deleted": []}
        # Top first (the order of the snapshot's chain): no parent before its child.
        return {"deleted": delete_disk_files(ctx, left)}

    def check(ctx: OpsContext) -> Changes | None:
        # Whether files exist is not in any VM's state; deleting again is
        # harmless (a file gone is only logged), so recover runs it again.
        return None

    return Step(
        "delete_unused_copies",
        describe,
        do,
        None,
        check,
        undo_text=(
            "none: deleted files cannot come back; it runs after the snapshot is removed, "
            "only on files no snapshot or VM uses, and recover runs it again"
        ),
    )
