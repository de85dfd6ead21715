"""The test bed: the simulator starts with a Cinder-shaped inventory."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyVmomi import vim

from tests.conftest import Target
from tests.vsphere import connect, disk_paths, props
from vmdk_snap.testing import Simulator


@pytest.mark.cassette
def test_attached_volume_scenario_is_cinder_shaped(vc: Target) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    with connect(vc) as si:
        index = si.RetrieveContent().searchIndex
        instance = index.FindByUuid(None, inst["uuid"], True, True)
        backing = index.FindByUuid(None, vol["id"], True, True)
        assert instance is not None
        assert backing is not None

        got = props(si, backing, "name", "config.instanceUuid", "runtime.powerState")
        assert got["name"] == f"volume-{vol['id']}"
        assert got["config.instanceUuid"] == vol["id"]
        assert disk_paths(si, backing) == [vol["vmdk"]]

        extra = props(si, instance, "config.extraConfig")["config.extraConfig"]
        keys = {o.key: o.value for o in extra}
        assert keys[f"volume-{vol['id']}"] == vol["disk_uuid"]
        # The instance holds the very same VMDK as the backing.
        assert vol["vmdk"] in disk_paths(si, instance)
        assert props(si, instance, "runtime.powerState")["runtime.powerState"] == "poweredOn"


@pytest.mark.live
def test_inventory_has_shared_and_single_host_datastores(vc: Target) -> None:
    with connect(vc) as si:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
        try:
            hosts = props(si, view, "view")["view"]
        finally:
            view.DestroyView()
        assert len(hosts) >= 2
        mounted = {}
        for host in hosts:
            got = props(si, host, "name", "datastore")
            names = [props(si, ds, "name")["name"] for ds in got["datastore"]]
            mounted[got["name"]] = set(names)
    shared = set.intersection(*mounted.values())
    assert {"ds-shared-1", "ds-shared-2"} <= shared
    assert sum("ds-local-h0" in names for names in mounted.values()) == 1


@pytest.mark.live
def test_attach_writes_real_files(vc: Target, simulator: Simulator) -> None:
    seeded = vc.ctl.scenario("instance-two-volumes")
    assert simulator.info is not None
    root = Path(simulator.info.root)
    for vol in seeded["volumes"]:
        rel = vol["vmdk"].split("] ", 1)[1]
        assert (root / "ds-shared-1" / rel).exists()
        assert (root / "ds-shared-1" / rel.replace(".vmdk", "-flat.vmdk")).exists()
    assert len(seeded["instances"][0]["root_vmdk"]) > 0
