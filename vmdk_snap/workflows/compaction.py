"""Compaction: give an instance back the chains it had before its forced snapshots.

Every forced snapshot leaves one delta on every non-independent disk of the
instance (its temporary snapshot is removed with ``consolidate=False``, so
that nothing is merged into files the backings' snapshots hold), and vCenter
then reports ``consolidationNeeded``. Once no snapshot holds a file of the
instance's chains any more (the volume snapshots were deleted), those deltas
are redundant: vSphere merges them through the instance's own live
consolidation, ``ConsolidateVMDisks_Task``, which merges every redundant
delta of every disk into the file below it and deletes the delta files.

That is run when, and only when, it is harmless (:func:`plan_compaction`):

- the instance has no snapshot, and reports ``consolidationNeeded``;
- no snapshot of any VM that may share its files (the backings of its
  volumes, found by Nova's keys, and every VM whose current chains use one of
  its files) holds a file the merge writes into or deletes;
- no VM but the backings uses such a file, and each backing uses one only as
  its current top (a backing follows the instance's newest delta after a
  forced snapshot).

The steps, so that every backing points at files that exist at every moment
a crash could stop the workflow:

1. ``repoint_backing_<n>``: each backing on one of the deltas the merge
   deletes is given the file the merge writes into (its chain's base, which
   exists before and after; the backing is powered off and only a pointer to
   the volume while attached). Undo: give it its delta back.
2. ``enable_instance_consolidation``: forced snapshots disable vSphere's
   Consolidate on the instance while backing snapshots hold its files
   (:func:`~vmdk_snap.workflows.snapshot_steps.disable_instance_consolidation`);
   none does now, so it is enabled again (undo: disabled again).
3. ``consolidate_instance``: ``ConsolidateVMDisks_Task`` on the instance.
   vSphere's merge of a running VM either happens or leaves the disks as they
   were; a failure is rolled back (the backings get their deltas back), a
   crash is settled by ``recover`` from vCenter's state. No undo: it is the
   last step, and merged data cannot be split again.

Afterwards each disk of the instance is on its base, ``consolidationNeeded``
is false, the backings share the instance's files again, and the delta
files are gone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vmdk_snap.types import Disk, Moref, VmInfo
from vmdk_snap.vsphere.volumeops import Attachments, VolumeOps
from vmdk_snap.workflows.engine import Changes, Step
from vmdk_snap.workflows.merge_guard import snapshots_to_read
from vmdk_snap.workflows.snapshot_steps import CONSOLIDATE, GUARD_SOURCE, guard_instance
from vmdk_snap.workflows.stepctx import (
    OpsContext,
    disk_json,
    ref_json,
    ref_of,
    replace_disk,
)

__all__ = ["CompactionPlan", "compaction_steps", "plan_compaction"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompactionPlan:
    """What compacting the instance would do; ``refusal`` says why it would not."""

    instance: VmInfo
    # disk key -> (the file the merge writes into, the deltas it deletes)
    merges: dict[int, tuple[str, tuple[str, ...]]]
    # (backing, its disk now, the file it gets)
    repoints: tuple[tuple[VmInfo, Disk, str], ...]
    refusal: str | None = None

    @property
    def deltas(self) -> int:
        return sum(len(d) for _, d in self.merges.values())

    def params(self) -> dict[str, Any]:
        """The compact workflow's journaled parameters."""
        return {
            "instance": ref_json(self.instance.ref),
            "instance_name": self.instance.name,
            "merges": {str(k): {"base": b, "deltas": list(d)} for k, (b, d) in self.merges.items()},
            "repoints": [
                {
                    "backing": ref_json(vm.ref),
                    "backing_name": vm.name,
                    "disk": disk_json(disk),
                    "to": target,
                }
                for vm, disk, target in self.repoints
            ],
        }


def plan_compaction(
    ops: VolumeOps,
    instance: VmInfo,
    volume_id: str,
    backing: Moref,
    inventory: Attachments | None = None,
) -> CompactionPlan:
    """Whether (and how) the instance's redundant deltas can be merged now.

    ``backing`` is volume ``volume_id``'s. What is refused on the instance's
    own state costs no read; otherwise it looks up the backings of the
    instance's other volumes (by Nova's keys), reads every VM that uses one of
    the instance's files (one read across the inventory), those VMs, and their
    snapshots' disks. ``inventory``: a read of every VM made already, which
    answers the first two lookups without a call.
    """
    merges = {
        d.key: (d.chain[-1], tuple(d.chain[:-1]))
        for d in instance.disks
        if not d.independent and len(d.chain) > 1
    }
    plan = CompactionPlan(instance, merges, ())
    why = _not_now(instance, merges)
    if why is not None:
        return _refused(plan, why)
    deltas = {p: b for b, ds in merges.values() for p in ds}
    touched = set(deltas) | {b for b, _ in merges.values()}
    if inventory is None:
        others = list(ops.find_volume_backings(instance, skip=volume_id).values())
        users = ops.find_vms_using(touched)
    else:  # one read of every VM made already (describing every volume)
        ids = (k.removeprefix("volume-") for k in sorted(instance.volume_keys))
        others = [inventory.backing_of(v) for v in ids if v != volume_id]
        users = inventory.vms_using(touched)
    backings = [backing, *(r for r in others if r is not None)]
    refs = [*backings, *users]
    vms = ops.get_vms([r for r in dict.fromkeys(refs) if r != instance.ref])
    snaps = ops.snapshots_disks(snapshots_to_read(instance, vms))
    for vm in vms:
        for node in vm.all_snapshots():
            held = {p for d in snaps.get(node.ref, ()) for p in d.chain} & touched
            if held:
                return _refused(plan, f"snapshot {node.name} of {vm.name} holds {min(held)}")
    repoints = _repoints(instance, vms, set(backings), deltas, touched)
    if isinstance(repoints, str):
        return _refused(plan, repoints)
    for vm, disk, _ in repoints:
        # vSphere refuses to detach a disk whose chain one of the VM's
        # snapshots holds, and this disk is the instance's current file
        # (locked: no temporary snapshot of the backing can take it over).
        for node in vm.all_snapshots():
            held = {p for d in snaps.get(node.ref, ()) for p in d.chain} & set(disk.chain)
            if held:
                return _refused(
                    plan,
                    f"snapshot {node.name} of {vm.name} holds {min(held)}, below the delta the "
                    f"backing would be moved off (vSphere refuses to detach a disk whose chain a "
                    f"snapshot of its VM holds)",
                )
    return CompactionPlan(instance, merges, tuple(repoints))


def _not_now(instance: VmInfo, merges: dict[int, tuple[str, tuple[str, ...]]]) -> str | None:
    if instance.snapshots:
        names = ", ".join(n.name for n in instance.all_snapshots())
        return f"instance {instance.name} has snapshots ({names})"
    if not merges:
        return f"instance {instance.name}'s disks have no deltas"
    if not instance.consolidation_needed:
        return f"vCenter reports no redundant deltas on {instance.name}"
    return None


def _repoints(
    instance: VmInfo,
    vms: Sequence[VmInfo],
    backings: set[Moref],
    deltas: dict[str, str],
    touched: set[str],
) -> list[tuple[VmInfo, Disk, str]] | str:
    """The backings to give the merge's target, or who else uses the files."""
    chains = [d.chain for d in instance.disks]
    repoints = []
    for vm in vms:
        for disk in vm.disks:
            used = set(disk.chain) & touched
            if not used:
                continue
            if vm.ref not in backings:
                return f"VM {vm.name} uses {min(used)}"
            if disk.path in deltas:
                # A backing that followed the instance's newest delta: its
                # chain is the instance's from there down.
                if not any(c[c.index(disk.path) :] == disk.chain for c in chains if disk.path in c):
                    return f"{vm.name}'s chain is not the instance's"
                repoints.append((vm, disk, deltas[disk.path]))
            elif set(disk.chain[1:]) & touched:
                return f"{vm.name}'s disk has {min(used)} below its top"
    return repoints


def _refused(plan: CompactionPlan, why: str) -> CompactionPlan:
    return CompactionPlan(plan.instance, plan.merges, (), why)


def repoint_backing(index: int) -> Step[OpsContext]:
    def item(ctx: OpsContext) -> dict[str, Any]:
        return dict(ctx.params["repoints"][index])

    def describe(ctx: OpsContext) -> str:
        r = item(ctx)
        return (
            f"backing {r['backing_name']}: detach {r['disk']['path']} (files kept) and attach "
            f"{r['to']}, the file the instance's consolidation merges it into"
        )

    def current(ctx: OpsContext) -> Disk:
        r = item(ctx)
        backing = ctx.ops.get_vm(ref_of(r["backing"]))
        key = int(r["disk"]["key"])
        return next(d for d in backing.disks if d.key == key)

    def attach(ctx: OpsContext, path: str) -> None:
        replace_disk(ctx, ref_of(item(ctx)["backing"]), current(ctx), path)

    def do(ctx: OpsContext) -> Changes:
        r = item(ctx)
        attach(ctx, r["to"])
        return {"old": r["disk"]["path"], "new": r["to"]}

    def undo(ctx: OpsContext, changes: Changes) -> None:
        attach(ctx, changes["old"])

    def check(ctx: OpsContext) -> Changes | None:
        r = item(ctx)
        if current(ctx).path == r["to"]:
            return {"old": r["disk"]["path"], "new": r["to"]}
        return None

    return Step(
        f"repoint_backing_{index}",
        describe,
        do,
        undo,
        check,
        undo_text="re-attach the delta it had (files were kept)",
    )


def enable_instance_consolidation() -> Step[OpsContext]:
    """No snapshot holds the instance's files any more: vSphere's Consolidate is safe again."""

    def describe(ctx: OpsContext) -> str:
        return (
            f"enable vSphere's Consolidate ({CONSOLIDATE}) on instance "
            f"{ctx.params['instance_name']} again (source {GUARD_SOURCE}): no snapshot holds "
            "files of its chains any more"
        )

    def do(ctx: OpsContext) -> Changes:
        ctx.ops.enable_methods(ctx.vm("instance"), [CONSOLIDATE], GUARD_SOURCE)
        return {"enabled": CONSOLIDATE}

    def undo(ctx: OpsContext, changes: Changes) -> None:
        guard_instance(ctx)

    def check(ctx: OpsContext) -> Changes | None:
        # Enabling again is harmless: "not done" when in doubt, so it is redone.
        enabled = CONSOLIDATE not in ctx.ops.disabled_methods(ctx.vm("instance"))
        return {"enabled": CONSOLIDATE} if enabled else None

    return Step(
        "enable_instance_consolidation",
        describe,
        do,
        undo,
        check,
        undo_text="disable it again (source vmdk-snap)",
    )


def consolidate_instance() -> Step[OpsContext]:
    def describe(ctx: OpsContext) -> str:
        merges = ctx.params["merges"]
        n = sum(len(m["deltas"]) for m in merges.values())
        return (
            f"consolidate instance {ctx.params['instance_name']} (ConsolidateVMDisks_Task): "
            f"{n} redundant deltas of {len(merges)} disks merged into their bases and deleted"
        )

    def do(ctx: OpsContext) -> Changes:
        ctx.run(ctx.ops.start_consolidate_disks(ctx.vm("instance")))
        return {"consolidated": True}

    def check(ctx: OpsContext) -> Changes | None:
        instance = ctx.read("instance")
        bases = {int(k): m["base"] for k, m in ctx.params["merges"].items()}
        on_bases = all(d.path == bases[d.key] for d in instance.disks if d.key in bases)
        if on_bases and not instance.consolidation_needed:
            return {"consolidated": True}
        return None

    return Step(
        "consolidate_instance",
        describe,
        do,
        None,
        check,
        undo_text=(
            "none: merged data cannot be split again, and it is the last step; a failed "
            "consolidation changes nothing (the backings then get their deltas back)"
        ),
    )


def compaction_steps(params: dict[str, Any]) -> list[Step[OpsContext]]:
    return [
        *(repoint_backing(i) for i in range(len(params.get("repoints") or ()))),
        enable_instance_consolidation(),
        consolidate_instance(),
    ]
