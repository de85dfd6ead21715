"""The driver's main paths, live and replayed from cassettes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import make_driver, tree
from vmdk_snap.driver import Volume


@pytest.mark.cassette
def test_snapshot_and_delete_of_an_available_volume(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    volume = Volume(vol["id"], "available")
    node = driver.create_snapshot(volume, "snapshot-c1")
    assert tree(driver.describe(volume).snapshots) == (("snapshot-c1", ()),)
    assert vc.ctl.read_snapshot(node.ref.value, 2000)["tokens"] == [f"seed:{vol['id']}"]
    assert driver.delete_snapshot(volume, "snapshot-c1") is True
    assert driver.delete_snapshot(volume, "snapshot-c1") is False
    state = driver.describe(volume)
    assert state.snapshots == ()
    assert state.backing_disk.chain == (vol["vmdk"],)


@pytest.mark.cassette
def test_forced_snapshot_of_an_attached_volume(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    node = driver.create_snapshot(Volume(vol["id"]), "snapshot-c2", force=True)
    state = driver.describe(vol["id"])
    assert state.status == "in-use"
    assert state.instance is not None
    assert state.instance.instance_uuid == inst["uuid"]
    assert state.instance.snapshots == ()
    assert tree(state.snapshots) == (("snapshot-c2", ()),)
    assert state.volume_disk is not None
    assert state.backing_disk.path == state.volume_disk.path
    assert state.backing_disk.chain[1:] == (vol["vmdk"],)
    assert not state.duplicated
    assert vc.ctl.read_snapshot(node.ref.value, 2000)["tokens"] == [f"seed:{vol['id']}"]


@pytest.mark.cassette
def test_work_flow_2_consolidates_and_snapshots_one_volume(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("workflow2")
    inst = seeded["instances"][0]
    vol_a, vol_b = seeded["volumes"]
    before_b = vc.ctl.chain(vol_b["moref"])
    vc.ctl.reset_bytes_copied()
    driver.create_snapshot(Volume(vol_a["id"], "in-use", inst["uuid"]), "snapshot-c3", force=True)
    assert vc.ctl.bytes_copied()["total"] == 0
    state = driver.describe(vol_a["id"])
    assert not state.duplicated
    assert state.backing_datastore == state.instance_datastore == "ds-shared-2"
    assert state.backing_host == state.instance_host
    assert vol_a["vmdk"] not in vc.ctl.files("ds-shared-1")
    assert vc.ctl.chain(vol_b["moref"]) == before_b
