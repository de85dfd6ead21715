"""Did a task-starting call whose answer was lost start its task?

The session asks this before it repeats such a call (see
:meth:`vmdk_snap.session.Session.invoke`): repeating a ``CreateSnapshot_Task``
that did run would make a second snapshot.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pyVmomi import vim

from vmdk_snap.session import Session, StartedCheck
from vmdk_snap.volumeops.collect import Obj, Traverse, moref_of, retrieve

__all__ = ["started_check"]

# A task queued this long before our (estimated) send time is not ours: the
# estimate comes from the login time vCenter reported, to the second.
_STARTED_SLACK = timedelta(seconds=2)

_TASK_PATHS = ("info.entity", "info.queueTime", "info.descriptionId")


def started_check(session: Session, method: str, entities: list[Any]) -> StartedCheck:
    """How to tell, after a lost answer, whether ``method`` started a task.

    Looks for a task of the same kind on the same object (or its VM),
    queued since the call was sent, among vCenter's recent tasks.
    """
    kind = method.lower()[:6]  # createSnapshot, remove..., relocate, reconfig..., consolidate...

    def check(sent_at: datetime) -> Any:
        targets = {moref_of(e) for e in entities}
        snapshots = [e for e in entities if isinstance(e, vim.vm.Snapshot)]
        if snapshots:
            for f in retrieve(session, [Obj(s) for s in snapshots], {vim.vm.Snapshot: ["vm"]}):
                if f.props.get("vm") is not None:
                    targets.add(moref_of(f.props["vm"]))
        starts = [
            Obj(session.content.taskManager, (Traverse(vim.TaskManager, "recentTask"),), True)
        ]
        starts += [
            Obj(session.mo(t), (Traverse(vim.ManagedEntity, "recentTask"),), True)
            for t in targets
            if t.type == "VirtualMachine"
        ]
        for f in retrieve(session, starts, {vim.Task: _TASK_PATHS}):
            entity = f.props.get("info.entity")
            queued = f.props.get("info.queueTime")
            described = str(f.props.get("info.descriptionId", "")).rsplit(".", 1)[-1]
            if (
                entity is not None
                and moref_of(entity) in targets
                and described.lower().startswith(kind)
                and queued is not None
                and queued >= sent_at - _STARTED_SLACK
            ):
                return f.obj
        return None

    return check
