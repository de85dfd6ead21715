"""Reading vSphere objects with the property collector, several at once.

Every read is one ``RetrievePropertiesEx`` (plus ``ContinueRetrievePropertiesEx``
only when vCenter pages a very large answer) with explicit property paths,
never pyVmomi's lazy accessors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim, vmodl

from vmdk_snap.types import Moref
from vmdk_snap.vsphere.session import Session

__all__ = [
    "VM_PATHS",
    "Obj",
    "Traverse",
    "datastores_by_name",
    "moref_of",
    "retrieve",
    "vms_under_root",
]

PC = vmodl.query.PropertyCollector

# Everything the workflows need about a VM, in one read.
VM_PATHS = (
    "name",
    "config.instanceUuid",
    "config.files.vmPathName",
    "config.hardware.device",
    "config.extraConfig",
    "runtime.powerState",
    "runtime.host",
    "runtime.consolidationNeeded",
    "resourcePool",
    "datastore",
    "snapshot",
    "guest.toolsRunningStatus",
)


def moref_of(obj: Any) -> Moref:
    """The :class:`Moref` of a pyVmomi managed object."""
    return Moref(str(type(obj)._wsdlName), str(obj._moId))


@dataclass(frozen=True)
class Traverse:
    """Follow property ``path`` of objects of ``type`` (then ``then``) in the same read."""

    type: Any
    path: str
    then: tuple[Traverse, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class Obj:
    """An object to start from; ``skip`` leaves its own properties out."""

    obj: Any
    traverse: tuple[Traverse, ...] = ()
    skip: bool = False


@dataclass
class Found:
    """One object in an answer: its reference and the paths that were set."""

    obj: Any
    props: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> Moref:
        return moref_of(self.obj)


def _select(t: Traverse) -> Any:
    select = [
        PC.SelectionSpec(name=n.name) if n.name and not n.path else _select(n) for n in t.then
    ]
    return PC.TraversalSpec(
        name=t.name or None, type=t.type, path=t.path, skip=False, selectSet=select
    )


def retrieve(
    session: Session, objects: Sequence[Obj], paths: Mapping[Any, Iterable[str]]
) -> list[Found]:
    """Read ``paths`` (per managed object type) of ``objects`` and what they lead to.

    Unset properties are simply absent from ``Found.props``.
    """
    if not objects:
        return []
    spec = PC.FilterSpec(
        objectSet=[
            PC.ObjectSpec(obj=o.obj, skip=o.skip, selectSet=[_select(t) for t in o.traverse])
            for o in objects
        ],
        propSet=[PC.PropertySpec(type=t, pathSet=list(p), all=False) for t, p in paths.items()],
    )
    collector = session.content.propertyCollector
    result = session.invoke(collector, "RetrievePropertiesEx", [spec], PC.RetrieveOptions())
    found: list[Found] = []
    while result is not None:
        for oc in result.objects or []:
            found.append(Found(oc.obj, {p.name: p.val for p in oc.propSet or []}))
        if not result.token:
            break
        result = session.invoke(collector, "ContinueRetrievePropertiesEx", result.token)
    return found


def vms_under_root(session: Session) -> Obj:
    """Every VM in the inventory, reached from the root folder in the same read.

    A traversal spec instead of a container view: no view to create and
    destroy, so a scan of the whole inventory is one round trip.
    """
    folder = Traverse(
        vim.Folder,
        "childEntity",
        name="folder",
        then=(
            Traverse(vim.Folder, "", name="folder"),
            Traverse(vim.Datacenter, "vmFolder", then=(Traverse(vim.Folder, "", name="folder"),)),
            Traverse(vim.VirtualApp, "vm"),
        ),
    )
    return Obj(session.content.rootFolder, (folder,), skip=True)


def datastores_by_name(session: Session) -> dict[str, tuple[Moref, Moref]]:
    """Every datastore by name, with its datacenter (one read)."""
    folder = Traverse(
        vim.Folder,
        "childEntity",
        name="dcfolder",
        then=(Traverse(vim.Folder, "", name="dcfolder"), Traverse(vim.Datacenter, "datastore")),
    )
    found = retrieve(
        session,
        [Obj(session.content.rootFolder, (folder,), skip=True)],
        {vim.Datacenter: ["datastore"], vim.Datastore: ["name"]},
    )
    names = {f.ref: str(f.props.get("name", "")) for f in found if f.ref.type == "Datastore"}
    out: dict[str, tuple[Moref, Moref]] = {}
    for f in found:
        if f.ref.type == "Datacenter":
            for ds in f.props.get("datastore") or ():
                ref = moref_of(ds)
                out[names.get(ref, ref.value)] = (ref, f.ref)
    return out
