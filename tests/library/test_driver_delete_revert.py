"""The driver on the simulator: deleting and reverting snapshots, and a
repeated create (issue 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import (
    assert_files_consistent,
    forced_snapshot,
    make_driver,
    tree,
    vm,
    world,
)
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.errors import InvalidState, NotFound


@pytest.mark.live
def test_revert_after_a_consolidation(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    seeded, got = forced_snapshot(vc, ops, driver, "attached-volume-moved")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    with pytest.raises(InvalidState, match="only be reverted while the volume is available"):
        driver.revert_to_snapshot(volume, "snapshot-1")
    # Detach the volume as Nova does (the files stay), then revert.
    key = got["key"]
    disk = next(d for d in ops.get_vm(vm(inst["moref"])).disks if d.key == key)
    ops.reconfigure_disks(vm(inst["moref"]), remove=[(disk, False)])
    assert vc.ctl.read_disk(vol["moref"], 2000)["tokens"][-1] == "after-snapshot"
    driver.revert_to_snapshot(Volume(vol["id"], "available"), "snapshot-1")
    assert vc.ctl.read_disk(vol["moref"], 2000)["tokens"] == got["tokens"]
    assert tree(ops.get_vm(vm(vol["moref"])).snapshots) == (("snapshot-1", ()),)


@pytest.mark.live
def test_revert_of_a_missing_snapshot(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    with pytest.raises(NotFound, match="has no snapshot named 'nope'"):
        driver.revert_to_snapshot(Volume(vol["id"]), "nope")


@pytest.mark.live
def test_delete_snapshot_of_detached_volume_consolidates(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("available-volume")
    vol = seeded["volumes"][0]
    volume = Volume(vol["id"], "available")
    driver.create_snapshot(volume, "snapshot-1")
    vc.ctl.write(vol["moref"], 2000, "after")
    assert driver.delete_snapshot(volume, "snapshot-1") is True
    backing = ops.get_vm(vm(vol["moref"]))
    assert backing.snapshots == ()
    assert backing.disks[0].chain == (vol["vmdk"],)  # merged back into the base
    assert vc.ctl.read_disk(vol["moref"], 2000)["tokens"] == [f"seed:{vol['id']}", "after"]
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_delete_snapshot_of_attached_volume_keeps_files(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """The deletion itself merges nothing (compaction, which then merges what no
    snapshot holds any more, is tests/library/test_compaction.py)."""
    driver = Driver(ops, journal_path=tmp_path / "journal.sqlite", compact=False)
    seeded, got = forced_snapshot(vc, ops, driver, "attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    chain_before = vc.ctl.read_disk(inst["moref"], got["key"])
    assert driver.delete_snapshot(Volume(vol["id"], "in-use", inst["uuid"]), "snapshot-1")
    backing, _instance = ops.get_vms([vm(vol["moref"]), vm(inst["moref"])])
    assert backing.snapshots == ()
    # Nothing was merged into a file the instance uses: same chain, same data.
    assert vc.ctl.read_disk(inst["moref"], got["key"]) == chain_before
    assert backing.disks[0].chain == tuple(chain_before["chain"])
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_delete_of_a_missing_snapshot_is_a_no_op(
    vc: Target, ops: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    driver = make_driver(ops, tmp_path)
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.reset_calls()
    with caplog.at_level("INFO", logger="vmdk_snap.driver"):
        assert driver.delete_snapshot(Volume(vol["id"]), "snapshot-gone") is False
    assert "no snapshot snapshot-gone: nothing to delete" in caplog.text
    assert not [m for m in vc.ctl.calls() if m.endswith("_Task")]


@pytest.mark.live
def test_create_is_idempotent(vc: Target, ops: Any, tmp_path: Path) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    first = driver.create_snapshot(volume, "snapshot-1", force=True)
    before = world(vc, ops, inst["moref"], vol["moref"])
    vc.ctl.reset_calls()
    again = driver.create_snapshot(volume, "snapshot-1", force=True)
    assert again.ref == first.ref
    assert not [m for m in vc.ctl.calls() if m.endswith("_Task")]
    assert world(vc, ops, inst["moref"], vol["moref"]) == before
    plan = driver.plan_snapshot(volume, "snapshot-1", force=True)
    assert plan.steps == ()
