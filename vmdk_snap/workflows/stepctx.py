"""What the workflow steps share: the context and JSON forms of vSphere values.

Steps of :mod:`vmdk_snap.workflows.table` get an :class:`OpsContext`: the workflow's
journaled parameters (JSON, so that ``recover`` can rebuild the steps in
another process), what earlier steps changed, and the vSphere operations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vmdk_snap.errors import InvalidState, NotFound, TaskTimeout, VmdkSnapError
from vmdk_snap.types import Disk, DiskSpec, Moref, TaskRef, VmInfo
from vmdk_snap.vsphere.volumeops import VolumeOps
from vmdk_snap.vsphere.volumeops.lookups import tasks_in_flight
from vmdk_snap.workflows.engine import Context

__all__ = [
    "HOLD_SNAPSHOT",
    "HOLD_UNDO_SNAPSHOT",
    "OTHER_BACKINGS_STEPS",
    "OpsContext",
    "delete_disk_files",
    "directory",
    "disk_json",
    "disk_of",
    "drop_own_delta",
    "hold_disk",
    "only_disk",
    "ref_json",
    "ref_of",
    "release_hold",
    "replace_disk",
    "repoint_backing_disk",
    "spec_for",
    "workflow_volumes",
]

log = logging.getLogger(__name__)

# Steps that reconfigure VMs besides the workflow's backing and instance: the
# backings of the instance's other volumes (snapshot_steps.follow_other_volumes).
OTHER_BACKINGS_STEPS = frozenset({"follow_other_volumes"})

# The temporary snapshot that lets a VM's disk be replaced while its own
# snapshots hold the disk's chain (see :func:`repoint_backing_disk`), and the
# one an undo of such a replacement takes while the first is still there.
HOLD_SNAPSHOT = "vmdk-snap-hold"
HOLD_UNDO_SNAPSHOT = "vmdk-snap-hold-undo"


@dataclass
class OpsContext(Context):
    """Steps' context: the journaled params plus the vSphere operations."""

    ops: VolumeOps = field(kw_only=True)
    # The latest read of each VM (not journaled): lets the driver answer
    # without reading again.
    seen: dict[str, VmInfo] = field(default_factory=dict, kw_only=True)
    settle_timeout: float = field(default=600.0, kw_only=True)
    settled: bool | None = field(default=None, kw_only=True)  # outcome of the task settled

    def run(self, task: TaskRef) -> Any:
        """Journal a started task, wait for it (feeding progress), return its result."""
        self.task_started(task)
        if self.on_progress is None:
            # Without a listener the wait needs no progress filter (fewer calls).
            return self.ops.wait(task)
        return self.ops.wait(task, None, lambda _t, pct: self.progress(pct))

    def run_for_ref(self, task: TaskRef) -> Moref:
        """:meth:`run` for a task whose result is a managed object (a snapshot)."""
        result = self.run(task)
        if not isinstance(result, Moref):
            raise NotFound(f"{task.description} returned no object", task=task)
        return result

    def vm(self, key: str) -> Moref:
        return ref_of(self.params[key])

    def read(self, key: str) -> VmInfo:
        info = self.ops.get_vm(self.vm(key))
        self.seen[key] = info
        return info

    def settle(self, tasks: Sequence[str]) -> None:
        """Before a check: let every task the step (or a dead process) started end.

        ``tasks`` are the step's task ids known to this process or journaled.
        The process that started them may not have lived (or heard the
        answer) long enough to know them all: a call sent whose answer was
        lost leaves its task unknown, still running. So this also waits for
        every task still queued or running on the workflow's VMs (one read),
        so that the step's check, which reads vCenter, sees the final state.
        For a step in :data:`OTHER_BACKINGS_STEPS` those VMs include the
        backings of the instance's other volumes (:meth:`_other_backings`).

        Raises:
            VmdkSnapError: a task's end could not be seen (vCenter did not
                answer, or the task was still running after
                ``settle_timeout``): the check must not run.
        """
        self.settled = None
        for task in dict.fromkeys(tasks):
            ref = TaskRef(Moref("Task", task), f"task {task} of step {self.step_name}")
            self.settled = self._wait_for_end(ref)
        vms = [self.vm(k) for k in ("backing", "instance") if self.params.get(k)]
        # A group snapshot's members' backings (vmdk_snap.workflows.group).
        vms += [ref_of(m["backing"]) for m in self.params.get("members", ()) if m.get("backing")]
        vms = list(dict.fromkeys(vms))
        if self.step_name in OTHER_BACKINGS_STEPS and self.params.get("others"):
            vms += self._other_backings()
        for running in tasks_in_flight(self.ops.session, vms):
            log.info("waiting for %s before checking step %s", running, self.step_name)
            self._wait_for_end(running)

    def _other_backings(self) -> list[Moref]:
        """The backings of the instance's other volumes, which a step may reconfigure.

        Read from vCenter, not the journal: the dead process may have sent a
        ReconfigVM to one of them without living to journal its task id. One
        read of the instance (its ``volume-<id>`` keys), then one lookup per
        other volume, the same lookups the step itself makes; only when
        recovering such a step.
        """
        try:
            instance = self.read("instance")
        except NotFound as exc:
            log.warning("cannot list the other volumes to wait for: %s", exc)
            return []
        found = self.ops.find_volume_backings(instance, skip=self.params.get("volume_id"))
        return [ref for ref in found.values() if ref is not None]

    def _wait_for_end(self, task: TaskRef) -> bool:
        """Wait until ``task`` ended; True if it succeeded, False if it failed.

        A task vCenter no longer knows ended long ago. Anything else that
        keeps its end unseen (a timeout, vCenter unreachable) is raised.
        """
        try:
            self.ops.wait(task, self.settle_timeout)
        except TaskTimeout:
            raise
        except VmdkSnapError as exc:
            if exc.task is not None and exc.task.ref == task.ref:
                # The task's own error (info.error): it ended.
                log.info("%s ended with: %s", task, exc)
                return False
            if isinstance(exc, NotFound) and exc.task is None and exc.fault is not None:
                log.info("%s is gone from vCenter (it ended): %s", task, exc)
                return False
            raise
        return True


def ref_json(ref: Moref | None) -> list[str] | None:
    return [ref.type, ref.value] if ref is not None else None


def ref_of(value: Any) -> Moref:
    return Moref(str(value[0]), str(value[1]))


def disk_json(disk: Disk) -> dict[str, Any]:
    return {
        "key": disk.key,
        "controller_key": disk.controller_key,
        "unit": disk.unit,
        "path": disk.path,
        "chain": list(disk.chain),
        "uuid": disk.uuid,
        "capacity_kb": disk.capacity_kb,
        "mode": disk.mode,
    }


def disk_of(d: dict[str, Any]) -> Disk:
    return Disk(
        key=int(d["key"]),
        controller_key=int(d["controller_key"]),
        unit=d["unit"],
        path=str(d["path"]),
        chain=tuple(d.get("chain") or (d["path"],)),
        uuid=d.get("uuid"),
        capacity_kb=int(d["capacity_kb"]),
        mode=str(d["mode"]),
    )


def only_disk(vm: VmInfo) -> Disk:
    """A backing's one disk."""
    if len(vm.disks) != 1:
        raise NotFound(
            f"backing {vm.name} has {len(vm.disks)} disks, expected one",
            hint="check the backing VM in vCenter",
        )
    return vm.disks[0]


def directory(path: str) -> str:
    """``[ds] dir`` of ``[ds] dir/file``: a VM's own deltas live in its directory."""
    return path.rsplit("/", 1)[0]


def spec_for(disk: Disk, path: str) -> DiskSpec:
    """Attach ``path`` where ``disk`` is: same controller, unit, size, mode, uuid."""
    return DiskSpec(
        path=path,
        controller_key=disk.controller_key,
        unit=disk.unit if disk.unit is not None else 0,
        capacity_kb=disk.capacity_kb,
        uuid=disk.uuid,
        mode=disk.mode or "persistent",
    )


def replace_disk(
    ctx: OpsContext, vm: Moref, current: Disk, path: str, *, destroy_current: bool = False
) -> None:
    """Attach ``path`` in place of the VM's disk ``current`` (one ReconfigVM), unless it is it."""
    if current.path == path:
        return
    ctx.run(
        ctx.ops.start_reconfigure_disks(
            vm, remove=[(current, destroy_current)], add=[spec_for(current, path)]
        )
    )


def workflow_volumes(params: dict[str, Any], volume: str) -> list[str]:
    """The volumes a workflow works on: a group snapshot's members, else ``volume``."""
    members = params.get("members")
    return [str(m["volume_id"]) for m in members] if members else [volume]


def delete_disk_files(ctx: OpsContext, paths: Sequence[str]) -> list[str]:
    """Delete each VMDK in order (one task each); a file already gone is only logged.

    Deleting again is harmless, so a step built on it can simply be run
    again by ``recover``.
    """
    for path in paths:
        try:
            ctx.run(ctx.ops.start_delete_disk_file(path))
        except NotFound as exc:
            log.warning("could not delete %s (already gone?): %s", path, exc)
    return list(paths)


# -- replacing a disk that the VM's own snapshots hold --------------------------
#
# vSphere refuses to detach (remove without fileOperation) a disk when it or
# one of its parents is part of a snapshot of the VM, and allows removing it
# with fileOperation=destroy, which deletes only the files nothing else uses
# (tests/vcsim/README.md, model table). A backing with snapshots therefore
# cannot simply swap its disk for another file. It can through a temporary
# snapshot: HOLD_SNAPSHOT holds the disk (its files stay), the backing's disk
# becomes a fresh, empty delta of its own, which is destroyed while the new
# file is attached (one ReconfigVM), and the temporary snapshot is removed
# with consolidate=False (nothing merged, every file kept). The old disk's
# files are then used by nothing this VM has, exactly as after a detach.
# The backing is powered off; the disk it holds must not be a file a
# running VM writes (that VM locks it): callers hold a file the instance
# only reads (its parent) or no longer uses.


def hold_disk(ctx: OpsContext, vm: Moref, name: str = HOLD_SNAPSHOT) -> Moref:
    """Take the temporary snapshot (the VM's disk becomes a fresh delta of its own)."""
    return ctx.run_for_ref(
        ctx.ops.start_create_snapshot(
            vm,
            name,
            "vmdk-snap: temporary, so that the disk can be replaced while snapshots hold its "
            "chain; removed with consolidate=False (no data merged)",
            memory=False,
            quiesce=False,
        )
    )


def drop_own_delta(ctx: OpsContext, info: VmInfo, path: str) -> None:
    """Destroy the VM's own fresh delta and attach ``path`` (one ReconfigVM), unless it is on it."""
    current = only_disk(info)
    if current.path == path:
        return
    if directory(current.path) != directory(info.vm_path_name):
        raise InvalidState(
            f"{info.name}'s disk {current.path} is not a delta in its own folder, so it is "
            f"not destroyed to attach {path}",
            hint="someone changed the VM's disk meanwhile: check it, then run `vmdk-snap recover`",
        )
    replace_disk(ctx, info.ref, current, path, destroy_current=True)


def release_hold(ctx: OpsContext, hold: Moref) -> None:
    """Remove the temporary snapshot with consolidate=False (nothing merged, files kept)."""
    ctx.run(ctx.ops.start_remove_snapshot(hold, False, False))


def snapshots_hold_chain(
    ctx: OpsContext, info: VmInfo, disk: Disk, hold_name: str = HOLD_SNAPSHOT
) -> bool:
    """Whether one of the VM's snapshots holds a file of ``disk``'s chain (a read if it has any)."""
    nodes = [n.ref for n in info.all_snapshots() if n.name != hold_name]
    if not nodes:
        return False
    chain = set(disk.chain)
    return any(chain & set(d.chain) for ds in ctx.ops.snapshots_disks(nodes).values() for d in ds)


def repoint_backing_disk(
    ctx: OpsContext, info: VmInfo, path: str, *, hold_name: str = HOLD_SNAPSHOT
) -> int:
    """Make ``path`` the backing's disk, its old files kept; return the tasks run.

    One ReconfigVM when none of its snapshots holds its disk's chain, else
    through the temporary snapshot (three tasks). Each state between those
    tasks is recognised from the backing as vCenter shows it, so running it
    again finishes it: for steps finished forward by ``recover``.
    ``hold_name`` names the temporary snapshot (another one may be there).
    """
    current = only_disk(info)
    node = info.snapshot_named(hold_name)
    hold = node.ref if node is not None else None
    tasks = 0
    if current.path != path:
        if hold is None:
            if not snapshots_hold_chain(ctx, info, current, hold_name):
                replace_disk(ctx, info.ref, current, path)
                return 1
            hold = hold_disk(ctx, info.ref, hold_name)
            info = ctx.ops.get_vm(info.ref)  # its fresh delta
            tasks += 1
        drop_own_delta(ctx, info, path)
        tasks += 1
    if hold is not None:
        release_hold(ctx, hold)
        tasks += 1
    return tasks
