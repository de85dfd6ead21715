"""Issue 11's reproductions: a step's outcome comes from its task's end.

Each test is a case a careful operator met on the simulator: a fault at a
call between step boundaries (the hand-over of a task to the watcher, the
wait while a task runs, the last read after the journal says done). Before,
each ended in a false rollback, a temporary snapshot left behind, or an error
for a snapshot that was made. The enumerated version of these is
tests/library/test_fault_matrix.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import (
    assert_nothing_running,
    calls_made,
    make_driver,
    snapshot_checked,
    vm,
    world,
)
from vmdk_snap.driver import Volume
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.engine import OutcomeUnknown


@pytest.mark.live
def test_a_failed_hand_over_of_the_backing_snapshot_task_is_no_false_rollback(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """The snapshot is made and stays what it was at the snapshot, whatever the guest writes.

    Before: the step's check ran at once, saw no snapshot yet, the workflow
    "rolled back" and the task then completed; the retry answered "already
    exists" and the snapshot's content changed with the next guest write.
    """
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    vc.ctl.inject_fault("ModifyListView", "soap", "SystemError", skip=1)
    with calls_made(vc, ops) as calls:
        # Checks the tree, the shared top file, and that a guest write after
        # the snapshot does not reach it.
        snapshot_checked(vc, ops, driver, seeded, volume=seeded["volumes"][0], name="snap-1")
    # The fault hit the call that put the backing snapshot's task in the view.
    handovers = [i for i, m in enumerate(calls) if m == "ModifyListView"]
    starts = [i for i, m in enumerate(calls) if m == "CreateSnapshot_Task"]
    assert starts[1] < handovers[1] < starts[1] + 3, calls
    assert [w.state for w in driver.journal.workflows()] == [jn.DONE]


@pytest.mark.live
def test_a_few_seconds_of_outage_while_the_instance_snapshot_runs_ends_in_success(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """503 four times in a row on the wait: the session's retries run out, the watcher goes on.

    Before: exit 6 after 7 s, ``recover`` found nothing, and the temporary
    instance snapshot stayed, a delta on every disk.
    """
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    vc.ctl.set_task_time("CreateSnapshot_Task", 2000)
    vc.ctl.inject_fault("WaitForUpdatesEx", "http503", count=4)
    snapshot_checked(vc, ops, driver, seeded, volume=seeded["volumes"][0], name="snap-1")
    assert [w.state for w in driver.journal.workflows()] == [jn.DONE]
    assert driver.recover() == []


@pytest.mark.live
def test_an_outage_longer_than_every_retry_needs_recovery_and_recover_finishes(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """The task's end cannot be seen: neither rolled back nor done, exit 9, tasks journaled."""
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    before = world(vc, ops, inst["moref"], vol["moref"])
    vc.ctl.set_task_time("CreateSnapshot_Task", 2000)
    vc.ctl.inject_fault("WaitForUpdatesEx", "http503", count=1000)
    with pytest.raises(OutcomeUnknown) as err:
        driver.create_snapshot(Volume(vol["id"], "in-use", inst["uuid"]), "snap-1", force=True)
    vc.ctl.clear_faults()
    assert "recover" in str(err.value) + (err.value.hint or "")
    (record,) = driver.journal.workflows()
    assert record.state == jn.RUNNING
    # The instance snapshot's task, still running: recover waits for its end.
    assert [s.task for s in record.steps if s.task], record.steps
    # The step had not reached the point of no return: recover waits for the
    # task's end and undoes it exactly.
    (result,) = driver.recover()
    assert result.outcome == "rolled_back"
    after = world(vc, ops, inst["moref"], vol["moref"])
    assert (after.trees, after.chains, after.files, after.homes) == (
        before.trees,
        before.chains,
        before.files,
        before.homes,
    )
    assert_nothing_running(ops, inst["moref"], vol["moref"])


@pytest.mark.live
def test_a_failed_read_after_the_journal_says_done_returns_the_snapshot(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """vCenter unavailable on the last read (four calls): the snapshot exists, say so.

    Before: an error raised after the journal already said ``done``.
    """
    driver = make_driver(ops, tmp_path)
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    volume = Volume(vol["id"], "available")
    with calls_made(vc, ops) as calls:
        driver.create_snapshot(volume, "dry")
    driver.delete_snapshot(volume, "dry")
    last = len(calls) - 1
    assert calls[last] == "RetrievePropertiesEx", calls
    vc.ctl.inject_fault("*", "http503", count=4, skip=last)
    result = driver.take_snapshot(volume, "snap-1")
    vc.ctl.clear_faults()
    assert result.created
    assert result.node.name == "snap-1"
    made = ops.get_vm(vm(vol["moref"])).snapshot_named("snap-1")
    assert made is not None
    assert made.ref == result.node.ref
    assert [w.state for w in driver.journal.workflows()][-1] == jn.DONE
