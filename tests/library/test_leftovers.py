"""A temporary instance snapshot never outlives its workflow unseen.

``recover`` looks for ``vmdk-snap-tmp-*`` snapshots across the inventory
after settling the journal's workflows (vmdk_snap.workflows.leftovers). The
leftovers here are made the ways they happen: a workflow stopped past its
point of no return whose journal is elsewhere (another host, another
``--journal``), a crash right after the temporary snapshot was taken with
the journal lost, a record an older release finished falsely.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import (
    assert_files_consistent,
    assert_nothing_running,
    make_driver,
    snapshot_trees,
    vm,
    volume_disk_key,
    world,
)
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.engine import Incomplete
from vmdk_snap.workflows.locks import VolumeLock
from vmdk_snap.workflows.table import temp_snapshot_name


def _stopped_before_the_temporary_snapshot_is_removed(
    vc: Target, ops: Any, driver: Driver
) -> tuple[dict[str, Any], list[str]]:
    """A forced snapshot stopped after its hand-over: the volume snapshot is complete.

    Its removal of the temporary snapshot fails after the point of no return
    (the hand-over): the workflow stops, left for recover, with the backing's
    snapshot made and on the instance's current file.
    """
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    key = volume_disk_key(ops, vol, inst["moref"])
    tokens = list(vc.ctl.read_disk(inst["moref"], key)["tokens"])
    # The instance's RemoveSnapshot_Task is the workflow's only one.
    vc.ctl.inject_fault("RemoveSnapshot_Task", "task", "FileLocked")
    with pytest.raises(Incomplete):
        driver.create_snapshot(Volume(vol["id"], "in-use", inst["uuid"]), "snap-1", force=True)
    vc.ctl.clear_faults()
    (inst_tree,) = snapshot_trees(ops, inst["moref"])
    assert [n[0] for n in inst_tree] == [temp_snapshot_name(vol["id"], "snap-1")]
    return seeded, tokens


def _assert_complete(vc: Target, ops: Any, seeded: dict[str, Any], tokens: list[str]) -> None:
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    backing, instance = ops.get_vms([vm(vol["moref"]), vm(inst["moref"])])
    assert instance.snapshots == ()
    # The volume snapshot holds the instance's files: vSphere's Consolidate is off.
    assert ops.disabled_methods(vm(inst["moref"])) == ("ConsolidateVMDisks_Task",)
    node = backing.snapshot_named("snap-1")
    assert node is not None
    (bdisk,) = backing.disks
    assert vc.ctl.read_snapshot(node.ref.value, bdisk.key)["tokens"] == tokens
    key = volume_disk_key(ops, vol, inst["moref"])
    vc.ctl.write(inst["moref"], key, "after")
    assert vc.ctl.read_snapshot(node.ref.value, bdisk.key)["tokens"] == tokens
    assert_files_consistent(vc, seeded)
    assert_nothing_running(ops, inst["moref"], vol["moref"])


@pytest.mark.live
def test_a_leftover_no_journal_here_knows_is_reported_then_adopted(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    other_host = make_driver(ops, tmp_path / "other-host")
    seeded, tokens = _stopped_before_the_temporary_snapshot_is_removed(vc, ops, other_host)
    vol = seeded["volumes"][0]
    here = make_driver(ops, tmp_path / "here")
    before = world(vc, ops, seeded["instances"][0]["moref"], vol["moref"])
    (left,) = here.recover()
    assert (left.kind, left.volume_id, left.outcome) == ("temporary_snapshot", vol["id"], "left")
    assert "recover --adopt" in left.detail
    assert "run `vmdk-snap recover` there" in left.detail
    assert "volume snapshot snap-1 is complete" in left.detail
    assert world(vc, ops, seeded["instances"][0]["moref"], vol["moref"]) == before
    (adopted,) = here.recover(adopt=True)
    assert adopted.outcome == "finished", adopted
    _assert_complete(vc, ops, seeded, tokens)
    (settled,) = here.journal.workflows()
    assert (settled.kind, settled.state) == ("release_temporary", jn.DONE)


@pytest.mark.live
def test_a_leftover_whose_record_was_falsely_finished_is_settled_by_recover(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded, tokens = _stopped_before_the_temporary_snapshot_is_removed(vc, ops, driver)
    (record,) = driver.journal.unfinished()
    # What an older release's false ending left: the record says it is over.
    driver.journal.finish(record.id, jn.ROLLED_BACK, "rolled back (falsely)")
    (result,) = driver.recover()
    assert (result.workflow_id, result.outcome) == (record.id, "finished")
    _assert_complete(vc, ops, seeded, tokens)


@pytest.mark.live
def test_a_leftover_nothing_was_made_from_is_discarded_exactly(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """A crash right after the temporary snapshot, the journal lost: merged back."""
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    morefs = (inst["moref"], vol["moref"])
    before = world(vc, ops, *morefs)
    ops.create_snapshot(
        vm(inst["moref"]),
        temp_snapshot_name(vol["id"], "snap-1"),
        "vmdk-snap: temporary, for volume snapshot snap-1",
    )
    driver = make_driver(ops, tmp_path)
    (left,) = driver.recover()
    assert left.outcome == "left"
    assert "discard" in left.detail
    (result,) = driver.recover(adopt=True)
    assert result.outcome == "rolled_back", result
    after = world(vc, ops, *morefs)
    assert (after.trees, after.chains, after.files) == (before.trees, before.chains, before.files)
    assert_nothing_running(ops, *morefs)


@pytest.mark.live
def test_a_leftover_whose_volume_is_locked_by_a_live_process_is_left_alone(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    name = temp_snapshot_name(vol["id"], "snap-1")
    ops.create_snapshot(vm(inst["moref"]), name, "vmdk-snap: temporary, for volume snapshot x")
    driver = make_driver(ops, tmp_path)
    with VolumeLock(driver.lock_dir, vol["id"]):  # a workflow running on this host
        (result,) = driver.recover(adopt=True)
    assert result.outcome == "busy"
    assert [n[0] for n in snapshot_trees(ops, inst["moref"])[0]] == [name]
    # Once that process is gone, it is settled.
    (result,) = driver.recover(adopt=True)
    assert result.outcome == "rolled_back"
    assert snapshot_trees(ops, inst["moref"])[0] == ()


@pytest.mark.live
def test_a_half_made_volume_snapshot_is_reported_with_its_remedy(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """A backing snapshot that does not hold the instance's file: not for recover to guess."""
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    ops.create_snapshot(
        vm(inst["moref"]),
        temp_snapshot_name(vol["id"], "snap-1"),
        "vmdk-snap: temporary, for volume snapshot snap-1",
    )
    ops.create_snapshot(vm(vol["moref"]), "snap-1")
    morefs = (inst["moref"], vol["moref"])
    before = world(vc, ops, *morefs)
    driver = make_driver(ops, tmp_path)
    (result,) = driver.recover(adopt=True)
    assert result.outcome == "left"
    assert f"vmdk-snap delete {vol['id']} snap-1" in result.detail
    assert world(vc, ops, *morefs) == before
    # The remedy it gives works.
    driver.delete_snapshot(Volume(vol["id"], "in-use", inst["uuid"]), "snap-1")
    (result,) = driver.recover(adopt=True)
    assert result.outcome == "rolled_back"
    assert snapshot_trees(ops, *morefs) == [(), ()]
