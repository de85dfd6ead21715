"""Reads the workflows need besides VMs: object names, tasks still running.

Additive module of the workflow owners (kept out of :mod:`.ops`): each
function is one property-collector read.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyVmomi import vim

from vmdk_snap.types import Moref, TaskRef
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.volumeops.collect import Obj, Traverse, moref_of, retrieve

__all__ = ["names_of", "tasks_in_flight"]

_NAMED = {
    vim.HostSystem: ["name"],
    vim.ResourcePool: ["name"],
    vim.Datastore: ["name"],
    vim.VirtualMachine: ["name"],
    vim.ComputeResource: ["name"],
    vim.ClusterComputeResource: ["name"],
}

# Tasks whose entity is not a VM but which change a volume's files.
_FILE_TASKS = (".deleteVirtualDisk",)


def names_of(session: Session, refs: Sequence[Moref]) -> dict[Moref, str]:
    """The ``name`` of each object (hosts, pools, datastores, VMs), in one read.

    Objects that no longer exist are left out.
    """
    unique = sorted(set(refs))
    found = retrieve(session, [Obj(session.mo(r)) for r in unique], _NAMED)
    return {f.ref: str(f.props["name"]) for f in found if "name" in f.props}


def tasks_in_flight(session: Session, vms: Sequence[Moref]) -> list[TaskRef]:
    """Tasks still queued or running on these VMs (or deleting disk files), in one read.

    After a crash the journal may lack the task id of the call the dead
    process sent last (it died before writing it): recovery waits for these
    before it looks at what a step changed, so that it never decides while
    such a task can still change things.
    """
    paths = {vim.Task: ["info.state", "info.entity", "info.descriptionId"]}
    starts = [Obj(session.content.taskManager, (Traverse(vim.TaskManager, "recentTask"),), True)]
    starts += [
        Obj(session.mo(vm), (Traverse(vim.ManagedEntity, "recentTask"),), True)
        for vm in sorted(set(vms))
    ]
    targets = set(vms)
    out: dict[Moref, TaskRef] = {}
    for f in retrieve(session, starts, paths):
        if str(f.props.get("info.state")) not in ("queued", "running"):
            continue
        entity = f.props.get("info.entity")
        described = str(f.props.get("info.descriptionId", ""))
        ours = entity is not None and moref_of(entity) in targets
        if ours or described.endswith(_FILE_TASKS):
            out[f.ref] = TaskRef(f.ref, f"{described or 'task'} still running ({f.ref.value})")
    return [out[k] for k in sorted(out)]
