"""Did a task-starting call whose answer was lost start its task?

The session asks this before it repeats such a call (see
:meth:`vmdk_snap.vsphere.session.Session.invoke`): repeating a ``CreateSnapshot_Task``
that did run would make a second snapshot.

How it decides, in one ``RetrievePropertiesEx``: among vCenter's recent tasks
(``TaskManager.recentTask`` and the VM's own ``recentTask``) it looks for a
task of the same kind (``info.descriptionId``) on the same object (or the
snapshot's VM), queued no earlier than 2 s before our send time as estimated
from vCenter's clock. The same read takes the VM's properties that show the
call's effect, and a candidate that already succeeded counts only if the
effect is there:

- ``CreateSnapshot_Task``: its result is a snapshot in the VM's tree with our
  name;
- ``RelocateVM_Task``: the VM is on the requested host and datastore;
- ``ReconfigVM_Task``: every disk file we added is attached, every one we
  removed is gone, every ``extraConfig`` value we set is there.

Residual risk: a task of the same kind on the same VM that another client
started within those 2 s, still running (or failed) when we look, is taken
for ours: we then wait for that task and do not send ours again, so the
caller sees its outcome instead of ours. Tasks that vCenter already dropped
from ``recentTask`` (it keeps them for minutes) are not seen, so the call
would be repeated; the window between sending a call and checking it is
seconds. A task that one of this session's own calls got back is never a
candidate: it belongs to that call (a workflow's previous step, say).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pyVmomi import vim

from vmdk_snap.errors import NotFound
from vmdk_snap.types import Moref
from vmdk_snap.vsphere.session import Session, StartedCheck
from vmdk_snap.vsphere.volumeops.collect import Found, Obj, Traverse, moref_of, retrieve
from vmdk_snap.vsphere.volumeops.convert import disks_of, snapshot_tree

__all__ = ["Effect", "started_check"]

# A task queued this long before our (estimated) send time is not ours: the
# estimate comes from the login time vCenter reported, to the second.
_STARTED_SLACK = timedelta(seconds=2)

_TASK_PATHS = ("info.entity", "info.queueTime", "info.descriptionId", "info.state", "info.result")


@dataclass(frozen=True)
class Effect:
    """What a task-starting call changes on its VM, to recognise it once it succeeded."""

    snapshot_name: str | None = None
    host: Moref | None = None
    datastore: Moref | None = None
    added_paths: tuple[str, ...] = ()
    removed_paths: tuple[str, ...] = ()
    extra_config: Mapping[str, str] = field(default_factory=dict)

    def vm_paths(self) -> list[str]:
        paths = []
        if self.snapshot_name is not None:
            paths.append("snapshot")
        if self.host is not None:
            paths.append("runtime.host")
        if self.datastore is not None:
            paths.append("datastore")
        if self.added_paths or self.removed_paths:
            paths.append("config.hardware.device")
        if self.extra_config:
            paths.append("config.extraConfig")
        return paths

    def shown_by(self, vm: Mapping[str, Any], result: Any) -> bool:
        """Whether the VM's properties (read after the task succeeded) show this effect."""
        return (
            self._snapshot_made(vm, result)
            and self._placed(vm)
            and self._disks_changed(vm)
            and self._config_set(vm)
        )

    def _snapshot_made(self, vm: Mapping[str, Any], result: Any) -> bool:
        if self.snapshot_name is None:
            return True
        snapshot = vm.get("snapshot")
        nodes = snapshot_tree(snapshot.rootSnapshotList if snapshot else None)
        made = moref_of(result) if result is not None else None
        return any(
            n.ref == made and n.name == self.snapshot_name for root in nodes for n in root.walk()
        )

    def _placed(self, vm: Mapping[str, Any]) -> bool:
        if self.host is not None and _ref(vm.get("runtime.host")) != self.host:
            return False
        return self.datastore is None or self.datastore in {
            moref_of(d) for d in vm.get("datastore") or ()
        }

    def _disks_changed(self, vm: Mapping[str, Any]) -> bool:
        if not self.added_paths and not self.removed_paths:
            return True
        files = {p for d in disks_of(vm.get("config.hardware.device")) for p in d.chain}
        gone = set(self.removed_paths) - set(self.added_paths)
        return set(self.added_paths) <= files and not files.intersection(gone)

    def _config_set(self, vm: Mapping[str, Any]) -> bool:
        have = {str(o.key): str(o.value) for o in vm.get("config.extraConfig") or ()}
        return all(have.get(k, "") == v for k, v in self.extra_config.items())


def _ref(obj: Any) -> Moref | None:
    return moref_of(obj) if obj is not None else None


def started_check(
    session: Session, method: str, entities: list[Any], effect: Effect | None = None
) -> StartedCheck:
    """How to tell, after a lost answer, whether ``method`` started a task.

    Args:
        entities: the object the call was made on (and what it acts on).
        effect: what the call changes, checked for a candidate that succeeded.
    """
    kind = method.lower()[:6]  # createSnapshot, remove..., relocate, reconfig..., consolidate...
    confirm: Callable[[Mapping[str, Any], Any], bool] = (
        effect.shown_by if effect is not None else (lambda _vm, _result: True)
    )
    vm_paths = effect.vm_paths() if effect is not None else []

    def check(sent_at: datetime) -> Any:
        targets = {moref_of(e) for e in entities}
        snapshots = [e for e in entities if isinstance(e, vim.vm.Snapshot)]
        gone = False  # a snapshot the call named no longer exists
        if snapshots:
            try:
                found_vms = retrieve(
                    session, [Obj(s) for s in snapshots], {vim.vm.Snapshot: ["vm"]}
                )
            except NotFound:
                # The task ran and finished before this look (a removal is
                # quick): its VM cannot be read from the snapshot any more.
                gone, found_vms = True, []
            for f in found_vms:
                if f.props.get("vm") is not None:
                    targets.add(moref_of(f.props["vm"]))
        starts = [
            Obj(session.content.taskManager, (Traverse(vim.TaskManager, "recentTask"),), True)
        ]
        starts += [
            Obj(session.mo(t), (Traverse(vim.ManagedEntity, "recentTask"),), not vm_paths)
            for t in sorted(targets)
            if t.type == "VirtualMachine"
        ]
        paths: dict[Any, list[str]] = {vim.Task: list(_TASK_PATHS)}
        if vm_paths:
            paths[vim.VirtualMachine] = vm_paths
        found = retrieve(session, starts, paths)
        vms = {f.ref: f.props for f in found if f.ref.type == "VirtualMachine"}
        candidates = sorted(
            (
                f
                for f in found
                if f.ref.type == "Task"
                and not session.started_by_us(f.ref.value)
                and _ours(f, targets, kind, sent_at, any_vm=gone)
            ),
            key=lambda f: f.props["info.queueTime"],
        )
        for f in candidates:
            if str(f.props.get("info.state")) != "success":
                return f.obj  # queued/running: cannot tell more; error: it ran and failed
            vm = vms.get(_ref(f.props.get("info.entity")) or Moref("", ""), {})
            if confirm(vm, f.props.get("info.result")):
                return f.obj
        return None

    return check


def _ours(
    f: Found, targets: set[Moref], kind: str, sent_at: datetime, *, any_vm: bool = False
) -> bool:
    """Whether task ``f`` is the call's: its entity, its kind, queued after it was sent.

    ``any_vm``: the snapshot the call named is gone, so its VM is unknown; a
    task of that kind on any VM, queued since, is taken as the call's.
    """
    entity = f.props.get("info.entity")
    queued = f.props.get("info.queueTime")
    described = str(f.props.get("info.descriptionId", "")).rsplit(".", 1)[-1]
    return (
        entity is not None
        and (moref_of(entity) in targets or (any_vm and moref_of(entity).type == "VirtualMachine"))
        and described.lower().startswith(kind)
        and queued is not None
        and queued >= sent_at - _STARTED_SLACK
    )
