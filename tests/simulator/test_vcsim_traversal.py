"""RetrieveProperties with traversal specs, as vCenter walks them (issue 13).

A TraversalSpec applies only to objects of its type, and specs may name each
other in cycles (oslo.vmware's recursive traversal, which Cinder's driver
sends for every lookup): the stock simulator followed every path on every
object and died of a stack overflow on such specs.
"""

from __future__ import annotations

from typing import Any

import pytest
from pyVmomi import vmodl

from tests.conftest import Target
from tests.vsphere import connect

PC = vmodl.query.PropertyCollector


def _traversal(name: str, kind: Any, path: str, *selects: str) -> Any:
    return PC.TraversalSpec(
        name=name,
        type=kind,
        path=path,
        skip=False,
        selectSet=[PC.SelectionSpec(name=s) for s in selects],
    )


def _recursive() -> list[Any]:
    """oslo.vmware's build_recursive_traversal_spec, written again with pyVmomi."""
    from pyVmomi import vim  # noqa: PLC0415

    return [
        _traversal("visitFolders", vim.Folder, "childEntity", "visitFolders", "dcToHf",
                   "dcToVmf", "dcToDs", "crToH", "crToRp", "hToVm", "rpToVm"),
        _traversal("dcToVmf", vim.Datacenter, "vmFolder", "visitFolders"),
        _traversal("dcToHf", vim.Datacenter, "hostFolder", "visitFolders"),
        _traversal("dcToDs", vim.Datacenter, "datastore", "visitFolders"),
        _traversal("crToH", vim.ComputeResource, "host"),
        _traversal("crToRp", vim.ComputeResource, "resourcePool", "rpToRp", "rpToVm"),
        _traversal("rpToRp", vim.ResourcePool, "resourcePool", "rpToRp", "rpToVm"),
        _traversal("hToVm", vim.HostSystem, "vm", "visitFolders"),
        _traversal("rpToVm", vim.ResourcePool, "vm"),
    ]  # fmt: skip


def _names(si: Any, kind: Any, select: list[Any]) -> set[str]:
    content = si.RetrieveContent()
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=content.rootFolder, skip=False, selectSet=select)],
        propSet=[PC.PropertySpec(type=kind, pathSet=["name"])],
    )
    result = content.propertyCollector.RetrievePropertiesEx([spec], PC.RetrieveOptions())
    return {o.propSet[0].val for o in (result.objects if result else [])}


@pytest.mark.live
def test_cyclic_specs_reach_every_object_once_and_honour_types(vc: Target) -> None:
    from pyVmomi import vim  # noqa: PLC0415

    seeded = vc.ctl.scenario("attached-volume")
    with connect(vc) as si:
        hosts = _names(si, vim.HostSystem, _recursive())
        vms = _names(si, vim.VirtualMachine, _recursive())
        datastores = _names(si, vim.Datastore, _recursive())
        # A spec of another type than the object it starts from is not applied.
        wrong = [_traversal("hostsOfAFolder", vim.ComputeResource, "childEntity")]
        only_root = _names(si, vim.Folder, wrong)
    assert hosts == {"DC0_C0_H0", "DC0_C0_H1"}
    assert {seeded["instances"][0]["name"], f"volume-{seeded['volumes'][0]['id']}"} <= vms
    assert {"ds-shared-1", "ds-shared-2", "ds-local-h0"} <= datastores
    assert len(only_root) == 1  # the root folder itself, nothing below it


@pytest.mark.live
def test_a_keyed_path_returns_one_option_beside_ordinary_paths(vc: Target) -> None:
    from pyVmomi import vim  # noqa: PLC0415

    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    key = f"volume-{vol['id']}"
    with connect(vc) as si:
        content = si.RetrieveContent()
        vm = vim.VirtualMachine(inst["moref"], si._stub)
        paths = ["name", "config.extraConfig", f'config.extraConfig["{key}"]']
        spec = PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=vm)],
            propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=paths)],
        )
        collector = content.propertyCollector
        (obj,) = collector.RetrievePropertiesEx([spec], PC.RetrieveOptions()).objects
        props = {p.name: p.val for p in obj.propSet}
    extra = {o.key: o.value for o in props["config.extraConfig"]}
    assert props["name"] == inst["name"]
    option = props[f'config.extraConfig["{key}"]']
    assert (option.key, option.value) == (key, extra[key])
