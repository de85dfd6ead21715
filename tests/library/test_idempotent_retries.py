"""An idempotent retry returns only a finished snapshot, never a half-made one.

Cinder calls ``create_snapshot`` again with the same snapshot to retry it;
"already exists" (``created=False``) is the right answer only when that
snapshot is complete. The half-made ones here are the states the issue met:
a snapshot whose file the instance still writes into (the false rollback of
an older release), one whose temporary instance snapshot is still there, and
one whose workflow was interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import make_driver, powered_off, vm, volume_disk_key, world
from vmdk_snap.driver import Volume
from vmdk_snap.errors import InvalidState
from vmdk_snap.workflows.engine import Incomplete
from vmdk_snap.workflows.table import temp_snapshot_name


def _attached(vc: Target) -> tuple[dict[str, Any], Volume, tuple[str, str]]:
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    return seeded, Volume(vol["id"], "in-use", inst["uuid"]), (inst["moref"], vol["moref"])


@pytest.mark.live
def test_a_snapshot_holding_the_file_the_instance_writes_into_is_not_returned(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """The issue's case: its content would change with the next guest write."""
    _, volume, morefs = _attached(vc)
    # The backing shares the instance's file: a snapshot of the backing alone
    # (taken while the instance was off: running, it locks the file) freezes
    # the file the instance goes on writing into.
    with powered_off(vc, morefs[0]):
        ops.create_snapshot(vm(morefs[1]), "snap-1")
    before = world(vc, ops, *morefs)
    driver = make_driver(ops, tmp_path)
    with pytest.raises(InvalidState) as err:
        driver.take_snapshot(volume, "snap-1", force=True)
    assert "not a finished one" in str(err.value)
    assert "the file the volume is written into now" in str(err.value)
    assert f"vmdk-snap delete {volume.id} snap-1" in (err.value.hint or "")
    assert world(vc, ops, *morefs) == before
    assert driver.journal.workflows() == []


@pytest.mark.live
def test_a_snapshot_whose_temporary_instance_snapshot_is_still_there_is_not_returned(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    _, volume, morefs = _attached(vc)
    driver = make_driver(ops, tmp_path / "other-journal")
    vc.ctl.inject_fault("RemoveSnapshot_Task", "task", "FileLocked")
    try:
        with pytest.raises(Incomplete):  # after the point of no return (the hand-over)
            driver.create_snapshot(volume, "snap-1", force=True)
    finally:
        vc.ctl.clear_faults()
    before = world(vc, ops, *morefs)
    # Retried through this journal: its workflow is unfinished.
    with pytest.raises(InvalidState, match="interrupted snapshot_attached workflow"):
        driver.take_snapshot(volume, "snap-1", force=True)
    # Retried by a process with another journal: what vCenter shows.
    with pytest.raises(InvalidState, match=temp_snapshot_name(volume.id, "snap-1")):
        make_driver(ops, tmp_path / "here").take_snapshot(volume, "snap-1", force=True)
    assert world(vc, ops, *morefs) == before
    # The remedy the error gives settles it; the retry then gets the snapshot.
    (result,) = driver.recover()
    assert result.outcome == "finished"
    made = make_driver(ops, tmp_path / "here").take_snapshot(volume, "snap-1", force=True)
    assert not made.created  # the one the recovered workflow made
    assert made.node.name == "snap-1"


@pytest.mark.live
def test_a_finished_snapshot_is_returned_to_a_retry_with_or_without_its_record(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    seeded, volume, morefs = _attached(vc)
    driver = make_driver(ops, tmp_path)
    first = driver.take_snapshot(volume, "snap-1", force=True)
    assert first.created
    vc.ctl.write(morefs[0], volume_disk_key(ops, seeded["volumes"][0], morefs[0]), "later")
    session = ops.session
    session.reset_calls()
    again = driver.take_snapshot(volume, "snap-1", force=True)
    assert (again.created, again.node.ref) == (False, first.node.ref)
    assert not any(m.endswith("_Task") for m in session.calls)
    elsewhere = make_driver(ops, tmp_path / "other").take_snapshot(volume, "snap-1", force=True)
    assert (elsewhere.created, elsewhere.node.ref) == (False, first.node.ref)
