"""Task waits: one long-lived filter, exact round trips, kept faults, timeouts naming the task."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import pytest

from tests.conftest import Target
from vmdk_snap.errors import FileLocked, TaskTimeout, VsphereFault, fault_name
from vmdk_snap.types import Moref, TaskRef
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.tasks import wait_for_tasks
from vmdk_snap.vsphere.volumeops import VolumeOps


def vm(value: str) -> Moref:
    return Moref("VirtualMachine", value)


def _assert_task_op(vc: Target, calls: Mapping[str, int], start: str) -> None:
    """One task operation: its start, ModifyListView and one WaitForUpdatesEx.

    Exact in the replay tier (the cassette holds the recorded calls). Live, a
    simulator starved of CPU by the parallel test run may not have ended even
    a 0 ms task by its first report (every 250 ms): the task is then still
    running when it enters the view, which costs the one more wait the
    watcher's docstring counts, and nothing else.
    """
    waits = 2 if vc.tier == "live" and calls.get("WaitForUpdatesEx") == 2 else 1
    assert calls == {start: 1, "ModifyListView": 1, "WaitForUpdatesEx": waits}


def _two_backings(vc: Target) -> list[Moref]:
    """Two available volumes' backings (snapshotting an attached one's would
    need its instance off: a running instance locks the file it writes)."""
    return [vm(vc.ctl.scenario("available-volume")["volumes"][0]["moref"]) for _ in range(2)]


@pytest.mark.cassette
def test_a_task_op_costs_three_round_trips_from_login(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = vm(vol["moref"])
    # The session set its task watcher up at login, so its very first task
    # costs what every other does.
    assert session.calls["CreatePropertyCollector"] == 1
    assert session.calls["CreateFilter"] == 1
    vc.ctl.set_default_task_time(0)
    session.reset_calls()
    first = ops.create_snapshot(backing, "cold")
    _assert_task_op(vc, session.calls, "CreateSnapshot_Task")

    session.reset_calls()
    second = ops.create_snapshot(backing, "counted")
    _assert_task_op(vc, session.calls, "CreateSnapshot_Task")

    # The next change drops the finished task from the view in the same call.
    session.reset_calls()
    ops.set_extra_config(backing, {"vmdk-snap-test": "x"})
    _assert_task_op(vc, session.calls, "ReconfigVM_Task")

    tree = ops.get_vm(backing)
    names = [n.name for n in tree.all_snapshots()]
    assert names == ["cold", "counted"]
    assert [first, second] == [n.ref for n in tree.all_snapshots()]


@pytest.mark.live
def test_budget_counted_by_the_simulator(vc: Target) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = vm(vol["moref"])
    vc.ctl.reset_calls()
    with Session(vc.url, vc.username, vc.password, ca_file=vc.ca_file) as session:
        # Login sets the task watcher up: collector, empty view, filter and
        # the first wait (version "", answered at once).
        assert vc.ctl.calls() == {
            "RetrieveServiceContent": 1,
            "Login": 1,
            "CreatePropertyCollector": 1,
            "CreateListView": 1,
            "CreateFilter": 1,
            "WaitForUpdatesEx": 1,
        }
        ops = VolumeOps(session)
        vc.ctl.reset_calls()
        for i in range(5):
            ops.create_snapshot(backing, f"s{i}")
        assert vc.ctl.calls() == {
            "CreateSnapshot_Task": 5,
            "ModifyListView": 5,
            "WaitForUpdatesEx": 5,
        }


@pytest.mark.live
def test_a_task_longer_than_the_old_5_s_wait_costs_four_round_trips(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = vm(vol["moref"])
    ops.create_snapshot(backing, "warm-up")
    vc.ctl.set_task_time("CreateSnapshot_Task", 6000)
    vc.ctl.reset_calls()
    ops.create_snapshot(backing, "six-seconds")
    # maxWaitSeconds is 30: the wait that sees it enter the view, the one that
    # sees it end (the OpenStack driver polls 4 times in 6 s).
    assert vc.ctl.calls() == {"CreateSnapshot_Task": 1, "ModifyListView": 1, "WaitForUpdatesEx": 2}
    assert ops.get_vm(backing).snapshot_named("six-seconds") is not None


@pytest.mark.live
def test_threads_sharing_the_watcher_do_not_wait_on_each_other(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    slow_vm, quick_vm = _two_backings(vc)
    ops.create_snapshot(quick_vm, "warm-up")
    vc.ctl.set_task_time("CreateSnapshot_Task", 4000)
    slow = ops.start_create_snapshot(slow_vm, "slow")
    vc.ctl.reset_timing()
    outcome: dict[str, object] = {}

    def wait_slow() -> None:
        try:
            outcome["slow"] = ops.wait(slow, timeout=60)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["slow"] = exc

    session.reset_calls()
    thread = threading.Thread(target=wait_slow)
    thread.start()
    try:
        # The slow wait sits in WaitForUpdatesEx (its second: the first saw
        # the task enter the view, running), for up to 30 s ...
        while session.calls["WaitForUpdatesEx"] < 2:
            time.sleep(0.01)
        # ... yet a quick task on the same session ends long before it does:
        # adding it to the view wakes the waiting thread.
        quick = ops.create_snapshot(quick_vm, "quick", timeout=60)
        assert thread.is_alive()
        assert "slow" not in outcome
    finally:
        thread.join(60)
    assert ops.get_vm(quick_vm).snapshot_named("quick") is not None
    node = ops.get_vm(slow_vm).snapshot_named("slow")
    assert node is not None
    assert outcome["slow"] == node.ref
    assert quick != node.ref


@pytest.mark.cassette
def test_one_filter_waits_for_several_tasks(vc: Target, session: Session, ops: VolumeOps) -> None:
    backings = _two_backings(vc)
    tasks = [ops.start_create_snapshot(b, "together") for b in backings]
    results = wait_for_tasks(session, tasks, timeout=30)
    assert len(results) == 2
    assert ops.wait_all(tasks) == [ops.get_vm(b).current_snapshot for b in backings]
    assert session.calls["CreateFilter"] == 1
    for backing in backings:
        node = ops.get_vm(backing).snapshot_named("together")
        assert node is not None


@pytest.mark.cassette
def test_task_fault_is_translated_and_kept(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.inject_fault("CreateSnapshot_Task", kind="task", fault="FileLocked", match=vol["moref"])
    with pytest.raises(FileLocked) as err:
        ops.create_snapshot(vm(vol["moref"]), "locked")
    assert fault_name(err.value.fault) == "FileLocked"
    assert err.value.task is not None
    assert err.value.task.description == f"CreateSnapshot_Task on {vol['moref']}"
    assert "CreateSnapshot_Task" in str(err.value)
    assert err.value.hint
    # The model is unchanged: no snapshot.
    assert ops.get_vm(vm(vol["moref"])).snapshots == ()


@pytest.mark.cassette
def test_soap_fault_file_locked_is_not_retried(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.inject_fault("CreateSnapshot_Task", kind="soap", fault="FileLocked")
    session.reset_calls()
    with pytest.raises(FileLocked) as err:
        ops.create_snapshot(vm(vol["moref"]), "locked")
    assert fault_name(err.value.fault) == "FileLocked"
    assert session.calls["CreateSnapshot_Task"] == 1


@pytest.mark.live
def test_task_exceeding_its_timeout_names_it(clean_sim: Target) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.set_task_time("CreateSnapshot_Task", 3000)
    # A timeout shorter than maxWaitSeconds (30 s) waits ceil(timeout) per call.
    with Session(vc.url, vc.username, vc.password, ca_file=vc.ca_file) as session:
        ops = VolumeOps(session)
        vc.ctl.reset_calls()
        with pytest.raises(TaskTimeout) as err:
            ops.create_snapshot(vm(vol["moref"]), "slow", timeout=0.5)
        # The task entered the view running (one wait), then one wait of 1 s.
        assert vc.ctl.calls()["WaitForUpdatesEx"] == 2
        task = err.value.task
        assert task is not None
        assert task.description == f"CreateSnapshot_Task on {vol['moref']}"
        assert task.ref.value in str(err.value)
        assert "CreateSnapshot_Task" in str(err.value)
        assert "0.5 s" in str(err.value)
        assert "\n" not in str(err.value)
        # It is still running in vCenter; waiting longer sees it through.
        snap = ops.wait(task, timeout=30)
        node = ops.get_vm(vm(vol["moref"])).snapshot_named("slow")
        assert node is not None
        assert node.ref == snap


@pytest.mark.cassette
def test_a_timeout_names_the_task_still_running(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.set_task_time("CreateSnapshot_Task", 1000)
    # A zero timeout is over before the first wait: the same requests live and
    # replayed (a longer one is measured against the clock, see the live test).
    with pytest.raises(TaskTimeout) as err:
        ops.create_snapshot(vm(vol["moref"]), "late", timeout=0)
    task = err.value.task
    assert task is not None
    assert str(err.value) == (
        f"CreateSnapshot_Task on {vol['moref']} (task {task.ref.value}) did not finish "
        "within 0 s; it may still be running: check the task in vCenter before retrying"
    )
    assert ops.wait(task, timeout=30) == ops.get_vm(vm(vol["moref"])).current_snapshot


@pytest.mark.live
def test_a_failed_wait_is_watched_anew_on_a_new_collector(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = vm(vol["moref"])
    ops.create_snapshot(backing, "first")
    vc.ctl.inject_fault("WaitForUpdatesEx", kind="soap", fault="InvalidCollectorVersion")
    session.reset_calls()
    ops.create_snapshot(backing, "second")
    # The collector whose version went out of step is destroyed, and a new
    # one reports the task as it is now.
    assert session.calls["DestroyPropertyCollector"] == 1
    assert session.calls["DestroyView"] == 1
    assert session.calls["CreatePropertyCollector"] == 1
    assert session.calls["CreateListView"] == 1
    assert session.calls["CreateFilter"] == 1
    names = [n.name for n in ops.get_vm(backing).all_snapshots()]
    assert names == ["first", "second"]


@pytest.mark.live
def test_a_lost_wait_answer_is_not_asked_again_but_watched_anew(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    """vcsim moved on to the version it answered: a repeat would wait for the next change.

    The answer carried the task's end; asked again with the same version the
    collector reports nothing more, and the wait would sit out its timeout.
    """
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = vm(vol["moref"])
    vc.ctl.inject_fault("WaitForUpdatesEx", kind="drop_after")
    session.reset_calls()
    ops.create_snapshot(backing, "kept", timeout=30)
    assert session.calls["CreatePropertyCollector"] == 1
    assert [n.name for n in ops.get_vm(backing).all_snapshots()] == ["kept"]
    # One lost wait, then the new collector's first wait saw the task's end.
    assert session.calls["WaitForUpdatesEx"] == 2


@pytest.mark.live
def test_a_wait_that_keeps_failing_gives_up_with_the_fault(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = vm(vol["moref"])
    vc.ctl.inject_fault("WaitForUpdatesEx", kind="soap", fault="InvalidCollectorVersion", count=3)
    session.reset_calls()
    with pytest.raises(VsphereFault) as err:
        ops.create_snapshot(backing, "second")
    assert fault_name(err.value.fault) == "InvalidCollectorVersion"
    assert session.calls["WaitForUpdatesEx"] == 3
    # Every collector it made is gone again.
    assert session.calls["DestroyPropertyCollector"] == 3


@pytest.mark.live
def test_progress_is_reported_while_a_task_runs(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.set_task_time("CreateSnapshot_Task", 1200)
    seen: list[tuple[TaskRef, int]] = []
    ops.create_snapshot(vm(vol["moref"]), "watched", on_progress=lambda t, p: seen.append((t, p)))
    values = [p for _, p in seen]
    assert values
    assert values == sorted(values)
    assert any(0 < p < 100 for p in values)
    assert all(t.description.startswith("CreateSnapshot_Task") for t, _ in seen)


@pytest.mark.live
def test_progress_does_not_wake_a_wait_that_does_not_report_it(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    ops.create_snapshot(vm(vol["moref"]), "warm-up")
    vc.ctl.set_task_time("CreateSnapshot_Task", 1500)  # reports progress 3 times meanwhile
    vc.ctl.reset_calls()
    ops.create_snapshot(vm(vol["moref"]), "long")
    # Still running when it enters the view: one wait sees it enter, the next
    # one its end; progress changes in between do not wake us.
    assert vc.ctl.calls() == {"CreateSnapshot_Task": 1, "ModifyListView": 1, "WaitForUpdatesEx": 2}


@pytest.mark.live
def test_closing_the_session_destroys_the_filters(vc: Target) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.reset_calls()
    with Session(vc.url, vc.username, vc.password, ca_file=vc.ca_file) as session:
        ops = VolumeOps(session)
        ops.create_snapshot(vm(vol["moref"]), "s1")
        ops.create_snapshot(vm(vol["moref"]), "s2", on_progress=lambda t, p: None)
        # The progress filter lives as long as its wait.
        assert session.calls["CreateFilter"] == 2
        assert session.calls["DestroyPropertyFilter"] == 1
    calls = vc.ctl.calls()
    assert calls["CreatePropertyCollector"] == 1
    assert calls["DestroyPropertyCollector"] == 1
    assert calls["CreateListView"] == 1
    assert calls["DestroyView"] == 1
    assert calls["Logout"] == 1


@pytest.mark.live
def test_two_sessions_wait_at_the_same_time(clean_sim: Target) -> None:
    """Each session's watcher has a collector of its own (see vmdk_snap.vsphere.tasks)."""
    vc = clean_sim
    backings = _two_backings(vc)
    vc.ctl.set_task_time("CreateSnapshot_Task", 1500)
    made: dict[Moref, object] = {}

    def snapshot(backing: Moref) -> None:
        try:
            with Session(vc.url, vc.username, vc.password, ca_file=vc.ca_file) as session:
                made[backing] = VolumeOps(session).create_snapshot(backing, "both", timeout=20)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            made[backing] = exc

    threads = [threading.Thread(target=snapshot, args=(b,)) for b in backings]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with Session(vc.url, vc.username, vc.password, ca_file=vc.ca_file) as session:
        ops = VolumeOps(session)
        assert made == {b: ops.get_vm(b).current_snapshot for b in backings}


@pytest.mark.live
def test_waiting_again_for_a_task_that_left_the_view_answers_at_once(
    vc: Target, session: Session, ops: VolumeOps
) -> None:
    """Recovery waits again for tasks its session already saw end (the one a
    failed undo journaled, say). Put back into the view, a finished task may
    never be reported again, so the watcher remembers how it ended: the same
    outcome, no round trip."""
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = vm(vol["moref"])
    vc.ctl.set_default_task_time(0)
    try:
        done = ops.start_create_snapshot(backing, "s1", "", memory=False, quiesce=False)
        snap = ops.wait(done)
        vc.ctl.inject_fault("CreateSnapshot_Task", "task", "FileLocked")
        failed = ops.start_create_snapshot(backing, "s2", "", memory=False, quiesce=False)
        with pytest.raises(FileLocked):
            ops.wait(failed)
        ops.set_extra_config(backing, {"vmdk-snap-test": "x"})  # both leave the view
    finally:
        vc.ctl.clear_faults()
        vc.ctl.reset_timing()

    session.reset_calls()
    assert ops.wait(done, 5) == snap
    with pytest.raises(FileLocked):
        ops.wait(failed, 5)
    assert session.calls == {}
