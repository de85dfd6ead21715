"""Snapshot steps: the forced snapshot through the instance, delete and revert.

Each step's ``check`` looks only at vCenter's state (snapshot trees by name,
disk paths, the current snapshot), never only at a journaled task id: after a
crash the journal may lack the id of the last call the process sent, and
recovery first waits for any task still running on the workflow's VMs (see
:meth:`vmdk_snap.workflows.stepctx.OpsContext.settle`). Why each undo is what it is, and
why some steps have none, is in :mod:`vmdk_snap.workflows.table`.
"""

from __future__ import annotations

import logging

from vmdk_snap.errors import NotFound, TaskFailed, TaskTimeout
from vmdk_snap.types import Disk, Moref, VmInfo
from vmdk_snap.workflows.engine import Changes, Step
from vmdk_snap.workflows.merge_guard import merge_refusal, sharing_vms, snapshots_to_read
from vmdk_snap.workflows.stepctx import (
    HOLD_SNAPSHOT,
    OpsContext,
    drop_own_delta,
    only_disk,
    ref_json,
    ref_of,
    repoint_backing_disk,
    spec_for,
    workflow_volumes,
)

__all__ = [
    "CONSOLIDATE",
    "GUARD_SOURCE",
    "disable_instance_consolidation",
    "discard_temporary",
    "follow_other_volumes",
    "guard_instance",
    "hand_over_top",
    "release_temporary",
    "remove_backing_snapshot",
    "remove_instance_snapshot",
    "remove_temporary",
    "revert_backing",
    "snapshot_backing",
    "snapshot_instance",
]

log = logging.getLogger(__name__)


def snapshot_instance() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        q = " quiesced" if ctx.params["quiesce"] else ""
        return (
            f"create{q} temporary snapshot {ctx.params['temp_name']} of instance "
            f"{ctx.params['instance_name']}: each of its non-independent disks gets a delta"
        )

    def do(ctx: OpsContext) -> Changes:
        # The name is in the journal (params, and this step's intent) before
        # the call: recovery finds the snapshot by it whatever happened next.
        snap = ctx.run_for_ref(
            ctx.ops.start_create_snapshot(
                ctx.vm("instance"),
                ctx.params["temp_name"],
                ctx.params.get("temp_description")
                or f"vmdk-snap: temporary, for volume snapshot {ctx.params['name']}",
                memory=False,
                quiesce=bool(ctx.params["quiesce"]),
            )
        )
        return {"snapshot": ref_json(snap)}

    def undo(ctx: OpsContext, changes: Changes) -> None:
        remove_temporary(ctx, ref_of(changes["snapshot"]))

    def check(ctx: OpsContext) -> Changes | None:
        node = ctx.read("instance").snapshot_named(ctx.params["temp_name"])
        return {"snapshot": ref_json(node.ref)} if node is not None else None

    return Step(
        "snapshot_instance",
        describe,
        do,
        undo,
        check,
        undo_text=(
            "remove the temporary snapshot, merging its deltas back when no snapshot or other "
            "chain holds those files (else consolidate=False: one delta kept, data unchanged)"
        ),
    )


def remove_temporary(ctx: OpsContext, snap: Moref) -> None:
    """Remove the instance's temporary snapshot, merging back only when that is harmless."""
    # Merge back only when no snapshot or other chain holds the files the
    # merge writes into or deletes (vmdk_snap.workflows.merge_guard): then the
    # instance's disks are on exactly their old files again.
    instance = ctx.read("instance")
    backings, missing = sharing_vms(ctx.ops, instance, ctx.params["volume_id"], ctx.vm("backing"))
    disks = ctx.ops.snapshots_disks(snapshots_to_read(instance, backings))
    why = merge_refusal(instance, snap, backings, disks)
    if why is None and missing:
        why = f"no backing found for {missing[0]}: who else uses its file is unknown"
    if why is None:
        try:
            ctx.run(ctx.ops.start_remove_snapshot(snap, False, True))
            return
        except TaskFailed as exc:
            if isinstance(exc, TaskTimeout):
                raise
            why = f"the merge failed: {exc}"
            if _temp_gone(ctx):
                log.warning("temporary snapshot removed, its deltas not merged: %s", why)
                return
    log.warning(
        "removing the temporary snapshot of %s without merging (its disks keep one "
        "delta, data unchanged): %s",
        ctx.params["instance_name"],
        why,
    )
    ctx.run(ctx.ops.start_remove_snapshot(snap, False, False))


def _temp_gone(ctx: OpsContext) -> bool:
    """The workflow's temporary snapshot is no longer in the instance's tree (one read)."""
    return ctx.read("instance").snapshot_named(ctx.params["temp_name"]) is None


def snapshot_backing(*, attached: bool) -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        held = "the instance's frozen file" if attached else "the volume's current file"
        return (
            f"create snapshot {ctx.params['name']} of backing {ctx.params['backing_name']}: "
            f"it holds {held}"
        )

    def base(ctx: OpsContext) -> str:
        return str(ctx.params["frozen"] if attached else ctx.params["disk"]["path"])

    def do(ctx: OpsContext) -> Changes:
        snap = ctx.run_for_ref(
            ctx.ops.start_create_snapshot(
                ctx.vm("backing"),
                ctx.params["name"],
                ctx.params.get("description", ""),
                memory=False,
                quiesce=False,
            )
        )
        return {"snapshot": ref_json(snap), "base": base(ctx)}

    def undo(ctx: OpsContext, changes: Changes) -> None:
        # Give the backing back the file the snapshot holds (destroying its
        # own fresh delta: allowed although the snapshot holds its parent),
        # then removing the snapshot merges nothing. (The hand-over, which
        # replaces that delta, is past the point of no return: this never
        # finds the instance's file here.)
        backing = ctx.read("backing")
        drop_own_delta(ctx, backing, changes["base"])
        ctx.run(ctx.ops.start_remove_snapshot(ref_of(changes["snapshot"]), False, True))

    def check(ctx: OpsContext) -> Changes | None:
        node = ctx.read("backing").snapshot_named(ctx.params["name"])
        if node is None:
            return None
        return {"snapshot": ref_json(node.ref), "base": base(ctx)}

    return Step(
        "snapshot_backing",
        describe,
        do,
        undo,
        check,
        undo_text="destroy the backing's fresh delta, give it back its file, remove the snapshot",
    )


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
                hint=(
                    "the volume was detached while it was being snapshotted; the snapshot was "
                    "rolled back: take it again as an available volume (without --force)"
                ),
            )
        ctx.run(
            ctx.ops.start_reconfigure_disks(
                backing.ref, remove=[(current, True)], add=[spec_for(current, disk.path)]
            )
        )
        return {"destroyed": current.path, "top": disk.path}

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
        None,
        check,
        undo_text=(
            "none: the point of no return. The backing's snapshot holds the frozen file, a "
            "parent of the instance's file it now has, and vSphere refuses to detach a disk "
            "whose chain one of the VM's snapshots holds; its fresh delta is destroyed. What "
            "is left (the instance's temporary snapshot) is finished forward by recover"
        ),
    )


# vSphere's own Consolidate, which vCenter's consolidationNeeded alarm invites
# operators to run, would merge the instance's deltas into files the backings'
# snapshots hold (destroying them): disabled under our source id while that
# is so (vmdk_snap.vsphere.internal), enabled again by compaction.
CONSOLIDATE = "ConsolidateVMDisks_Task"
GUARD_SOURCE = "vmdk-snap"


def guard_instance(ctx: OpsContext) -> None:
    """Disable vSphere's Consolidate on the workflow's instance (source vmdk-snap)."""
    ids = [m["volume_id"] for m in ctx.params.get("members", ())] or [ctx.params["volume_id"]]
    which = f"volume {ids[0]}" if len(ids) == 1 else "volumes " + ", ".join(ids)
    reason = (
        f"vmdk-snap: snapshots of {which} hold this VM's disk files, "
        "which a consolidation would overwrite; delete them with vmdk-snap, which then merges "
        "(vmdk-snap compact)"
    )
    ctx.ops.disable_methods(ctx.vm("instance"), [CONSOLIDATE], GUARD_SOURCE, reason)


def disable_instance_consolidation() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        return (
            f"disable vSphere's Consolidate ({CONSOLIDATE}) on instance "
            f"{ctx.params['instance_name']} (source {GUARD_SOURCE}): snapshot "
            f"{ctx.params['name']} of the backing{'s' if ctx.params.get('members') else ''} "
            "holds files of its chains"
        )

    def do(ctx: OpsContext) -> Changes:
        guard_instance(ctx)
        return {"disabled": CONSOLIDATE}

    def undo(ctx: OpsContext, changes: Changes) -> None:
        # Left disabled: an earlier snapshot may hold the instance's files too,
        # and only compaction knows that none does (it enables it again).
        log.info("vSphere's Consolidate stays disabled on %s", ctx.params["instance_name"])

    def check(ctx: OpsContext) -> Changes | None:
        disabled = CONSOLIDATE in ctx.ops.disabled_methods(ctx.vm("instance"))
        return {"disabled": CONSOLIDATE} if disabled else None

    return Step(
        "disable_instance_consolidation",
        describe,
        do,
        undo,
        check,
        undo_text=(
            "none needed: it stays disabled (an earlier snapshot may hold the instance's files "
            "too); compaction enables it again once no snapshot does"
        ),
    )


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
        return (
            {"removed": ctx.results["snapshot_instance"]["snapshot"]} if _temp_gone(ctx) else None
        )

    return Step(
        "remove_instance_snapshot",
        describe,
        do,
        None,
        check,
        undo_text=(
            "none: a removed snapshot cannot be re-created (a new one would freeze a later "
            "moment); it runs after the point of no return (the hand-over), so a failure or "
            "crash is finished forward by `vmdk-snap recover`"
        ),
    )


def _lagging_backings(ctx: OpsContext, instance: VmInfo) -> list[tuple[VmInfo, Disk]]:
    """Other volumes' backings left on the parent of the instance's new delta.

    A backing whose file is the parent of the instance's current file for
    that volume shared the instance's file before the temporary snapshot
    (not duplicated). A backing that was already duplicated before points
    elsewhere and is left as it was. Independent disks got no delta.
    """
    candidates: list[tuple[Moref, Disk]] = []
    found = ctx.ops.find_volume_backings(instance, skip=ctx.params["volume_id"])
    members = _member_ids(ctx)
    for volume_id, ref in found.items():
        if volume_id in members:
            continue  # a group snapshot's member: handed its own delta
        disk = instance.disk_by_uuid(instance.volume_keys[f"volume-{volume_id}"])
        if disk is None or disk.independent:
            continue
        if ref is None:
            log.warning(
                "no backing found for volume %s of %s: left as it is", volume_id, instance.name
            )
        elif len(disk.chain) >= 2:
            candidates.append((ref, disk))
    backings = ctx.ops.get_vms([ref for ref, _ in candidates]) if candidates else []
    return [
        (backing, disk)
        for backing, (_, disk) in zip(backings, candidates, strict=True)
        if len(backing.disks) == 1 and _lags(backing, backing.disks[0], disk)
    ]


def _lags(backing: VmInfo, current: Disk, disk: Disk) -> bool:
    """Whether the backing is on the parent of the instance's ``disk``, or on its way from it.

    On its way: the temporary snapshot of :func:`repoint_backing_disk` is
    there, and the backing is on its fresh delta over that parent, or already
    on the instance's file (the snapshot is yet to be removed).
    """
    if current.path == disk.chain[1]:
        return True
    if backing.snapshot_named(HOLD_SNAPSHOT) is None:
        return False
    return current.path == disk.path or current.chain[1:2] == (disk.chain[1],)


def _member_ids(ctx: OpsContext) -> set[str]:
    """The volumes the workflow snapshots: the group's members, or its one volume."""
    return set(workflow_volumes(ctx.params, str(ctx.params["volume_id"])))


def follow_other_volumes() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        return (
            f"give every other volume of instance {ctx.params['instance_name']} that shared the "
            "instance's file its new delta (one ReconfigVM per backing, old file kept; a backing "
            "whose snapshots hold that file goes through a temporary snapshot: three tasks)"
        )

    def do(ctx: OpsContext) -> Changes:
        # The hand-over read the instance after its snapshot, and removing the
        # snapshot without consolidating moved no disk: that read is current.
        # (Recovery, or anything unexpected, reads again.)
        instance = ctx.seen.get("instance")
        top = ctx.results.get("hand_over_top", {}).get("top")
        if instance is None or top is None or instance.disk_by_path(top) is None:
            instance = ctx.read("instance")
        skip = {f"volume-{v}" for v in _member_ids(ctx)}
        others = [k for k in instance.volume_keys if k not in skip]
        if not others:
            return {"followed": []}
        done = []
        for backing, disk in _lagging_backings(ctx, instance):
            repoint_backing_disk(ctx, backing, disk.path)
            done.append([backing.name, disk.path])
        return {"followed": done}

    def check(ctx: OpsContext) -> Changes | None:
        lagging = _lagging_backings(ctx, ctx.read("instance"))
        return None if lagging else {"followed": None}

    return Step(
        "follow_other_volumes",
        describe,
        do,
        None,
        check,
        undo_text=(
            "none: it runs after the point of no return (the instance already writes these "
            "volumes to its new deltas); recover finishes it forward"
        ),
    )


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

    return Step(
        "remove_snapshot",
        describe,
        do,
        None,
        check,
        undo_text=(
            "none: a removed snapshot cannot be re-created as it was. It is the only step, so "
            "a failure changes nothing, and after a crash recover reads the snapshot tree to "
            "tell whether it happened"
        ),
    )


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
        # A revert puts a fresh delta on top of the snapshot's file, so the
        # backing's disk is no longer the one it had when the workflow began,
        # and the snapshot is current. (The settled task's outcome, when the
        # journal has its id, says the same.)
        backing = ctx.read("backing")
        target = ref_of(ctx.params["snapshot"])
        fresh = only_disk(backing).path != ctx.params["disk"]["path"]
        happened = ctx.settled or (backing.current_snapshot == target and fresh)
        return {"reverted_to": ctx.params["snapshot"]} if happened else None

    return Step(
        "revert_to_snapshot",
        describe,
        do,
        None,
        check,
        undo_text=(
            "none: the data written since the snapshot is discarded by vSphere. It is the "
            "only step, so a failure changes nothing, and after a crash recover reads the "
            "backing's disk to tell whether it happened"
        ),
    )


# -- temporary snapshots no workflow owns (vmdk_snap.workflows.leftovers) ---------


def _leftover_gone(ctx: OpsContext) -> Changes | None:
    return {"removed": ctx.params["temp_snapshot"]} if _temp_gone(ctx) else None


def release_temporary() -> Step[OpsContext]:
    """A leftover whose volume snapshot is complete: the forced snapshot's last removal."""

    def describe(ctx: OpsContext) -> str:
        return (
            f"remove the leftover temporary snapshot {ctx.params['temp_name']} of instance "
            f"{ctx.params['instance_name']} with consolidate=False: volume snapshot "
            f"{ctx.params['name']} is complete and holds its files"
        )

    def do(ctx: OpsContext) -> Changes:
        # As the forced snapshot's own steps do: from now on vSphere's
        # Consolidate would merge into the file the volume snapshot holds.
        guard_instance(ctx)
        ctx.run(ctx.ops.start_remove_snapshot(ref_of(ctx.params["temp_snapshot"]), False, False))
        return {"removed": ctx.params["temp_snapshot"]}

    return Step("release_temporary", describe, do, None, _leftover_gone, forward_only=True)


def discard_temporary() -> Step[OpsContext]:
    """A leftover no volume snapshot was made from: the forced snapshot's rollback."""

    def describe(ctx: OpsContext) -> str:
        return (
            f"remove the leftover temporary snapshot {ctx.params['temp_name']} of instance "
            f"{ctx.params['instance_name']}, merging its deltas back when no snapshot or other "
            "chain holds those files: no volume snapshot was made from it"
        )

    def do(ctx: OpsContext) -> Changes:
        remove_temporary(ctx, ref_of(ctx.params["temp_snapshot"]))
        return {"removed": ctx.params["temp_snapshot"]}

    return Step("discard_temporary", describe, do, None, _leftover_gone, forward_only=True)
