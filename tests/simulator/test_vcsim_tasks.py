"""The simulator's tasks behave like vCenter's (issue 3, points 6 and 7).

Tasks run asynchronously for the time set through ``/_ctl/timing``, report
``info.progress`` while running, carry the VM as ``info.entity`` (whole
``info`` readable by pyVmomi 9), and the control API counts calls exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from tests.conftest import Target
from tests.vsphere import connect, moref, props, watch_task
from vmdk_snap.testing import SimulatorError


@pytest.fixture
def timing(vc: Target) -> Iterator[None]:
    """Leave the simulator's default timing behind, whatever the test set."""
    yield
    vc.ctl.reset_timing()


@pytest.fixture
def faults(vc: Target) -> Iterator[None]:
    """Clear every fault rule afterwards, so none leaks into other tests."""
    yield
    vc.ctl.clear_faults()


def _instance(si: Any, seeded: dict[str, Any]) -> Any:
    return moref(si, "VirtualMachine", seeded["instances"][0]["moref"])


def _reconfig_spec(key: str, value: str) -> Any:
    return vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=key, value=value)])


@pytest.mark.cassette
def test_task_runs_asynchronously_for_the_time_set(vc: Target, timing: None) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    # Long enough that the first progress step (a quarter of it) cannot
    # pass before the first read, even on a loaded machine.
    vc.ctl.set_task_time("ReconfigVM_Task", 1000)
    with connect(vc) as si:
        vm = _instance(si, seeded)
        task = vm.ReconfigVM_Task(_reconfig_spec("vmdk-snap.test", "async"))
        # The call returns before the change is made.
        right_after = props(si, task, "info.state", "info.progress")
        assert right_after == {"info.state": "running", "info.progress": 0}
        extra = props(si, vm, "config.extraConfig")["config.extraConfig"]
        assert "vmdk-snap.test" not in {o.key for o in extra}

        info, seen = watch_task(si, task)

        assert info.state == "success"
        assert info.entity == vm
        assert seen[0] == ("running", 0)
        assert seen[-1] == ("success", 100)
        # Progress moves while the task runs, observed through WaitForUpdatesEx.
        running = [p for state, p in seen if state == "running"]
        assert any(0 < p < 100 for p in running), seen
        assert running == sorted(running)
        assert (info.completeTime - info.startTime).total_seconds() >= 1.0
        assert info.queueTime <= info.startTime
        extra = props(si, vm, "config.extraConfig")["config.extraConfig"]
        assert {o.key: o.value for o in extra}["vmdk-snap.test"] == "async"


@pytest.mark.live
def test_timing_control_sets_and_resets_durations(vc: Target, timing: None) -> None:
    vc.ctl.set_task_time("RelocateVM_Task", 250)
    vc.ctl.set_default_task_time(5)
    vc.ctl.set_copy_rate(1 << 20)
    vc.ctl.set_update_interval(10)
    got = vc.ctl.request("GET", "/timing")
    assert got == {
        "default_ms": 5,
        "methods": {"RelocateVM_Task": 250},
        "bytes_per_second": 1 << 20,
        "update_ms": 10,
    }
    vc.ctl.reset_timing()
    got = vc.ctl.request("GET", "/timing")
    assert got == {
        "default_ms": 20,
        "methods": {},
        "bytes_per_second": 64 << 20,
        "update_ms": 250,
    }
    for bad, reason in [
        ({"ms": 5}, "go together"),
        ({"default_ms": -1}, "negative"),
        ({"bytes_per_second": 0}, "positive"),
        ({"method": "RelocateVM_Task", "seconds": 1}, "unknown field"),
    ]:
        with pytest.raises(SimulatorError, match=reason):
            vc.ctl.request("POST", "/timing", bad)
    assert vc.ctl.request("GET", "/timing")["methods"] == {}


@pytest.mark.live
def test_default_task_time_applies_to_methods_without_their_own(vc: Target, timing: None) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    vc.ctl.set_default_task_time(300)
    with connect(vc) as si:
        vm = _instance(si, seeded)
        info, _ = watch_task(si, vm.ReconfigVM_Task(_reconfig_spec("k", "v")))
    assert info.state == "success"
    assert (info.completeTime - info.startTime).total_seconds() >= 0.3


@pytest.mark.cassette
def test_snapshot_tasks_carry_the_vm_as_entity(vc: Target) -> None:
    """vcsim 0.24.2 puts the snapshot in info.entity, which pyVmomi 9 cannot read."""
    seeded = vc.ctl.scenario("available-volume")
    with connect(vc) as si:
        vm = moref(si, "VirtualMachine", seeded["volumes"][0]["moref"])
        name = seeded["volumes"][0]["name"]
        create, _ = watch_task(si, vm.CreateSnapshot_Task("s1", "", False, False))
        assert create.state == "success"
        snapshot = create.result
        assert isinstance(snapshot, vim.vm.Snapshot)

        revert, _ = watch_task(si, snapshot.RevertToSnapshot_Task())
        remove, _ = watch_task(si, snapshot.RemoveSnapshot_Task(False, True))

        for info, method, description in [
            (create, "CreateSnapshot_Task", "VirtualMachine.createSnapshot"),
            (revert, "RevertToSnapshot_Task", "vm.Snapshot.revert"),
            (remove, "RemoveSnapshot_Task", "vm.Snapshot.remove"),
        ]:
            # `info` was read whole through the property collector: pyVmomi
            # decoded it, entity included.
            assert info.state == "success", (method, info.error)
            assert info.entity == vm
            assert info.entityName == name
            assert (info.name.info.wsdlName, info.descriptionId) == (method, description)
            assert info.progress == 100


@pytest.mark.cassette
def test_calls_are_counted_per_method(vc: Target, faults: None) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    with connect(vc) as si:
        vm = _instance(si, seeded)
        vc.ctl.reset_calls()
        si.CurrentTime()
        si.CurrentTime()
        props(si, vm, "name")
        vc.ctl.inject_fault("CurrentTime", "soap", "HostCommunication")
        with pytest.raises(vmodl.fault.HostCommunication):
            si.CurrentTime()
        # props() asks for the service content, then the properties; a call
        # answered with an injected fault was still received and counts.
        assert vc.ctl.calls() == {
            "CurrentTime": 3,
            "RetrieveServiceContent": 1,
            "RetrievePropertiesEx": 1,
        }


@pytest.mark.cassette
def test_tools_state_is_visible_and_gates_quiesced_snapshots(vc: Target) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    paths = ("guest.toolsRunningStatus", "guest.toolsStatus", "summary.guest.toolsStatus")
    with connect(vc) as si:
        vm = _instance(si, seeded)
        assert props(si, vm, *paths)["guest.toolsRunningStatus"] == "guestToolsNotRunning"
        info, _ = watch_task(si, vm.CreateSnapshot_Task("q1", "", False, True))
        assert info.state == "error"
        assert isinstance(info.error, vim.fault.ToolsUnavailable)
        assert props(si, vm, "snapshot")["snapshot"] is None

        vc.ctl.set_tools(seeded["instances"][0]["moref"], running=True)
        assert props(si, vm, *paths) == {
            "guest.toolsRunningStatus": "guestToolsRunning",
            "guest.toolsStatus": "toolsOk",
            "summary.guest.toolsStatus": "toolsOk",
        }
        info, _ = watch_task(si, vm.CreateSnapshot_Task("q2", "", False, True))
        assert info.state == "success", info.error
        tree = props(si, vm, "snapshot.rootSnapshotList")["snapshot.rootSnapshotList"]
        assert [(n.name, n.quiesced) for n in tree] == [("q2", True)]

        vc.ctl.set_tools(seeded["instances"][0]["moref"], running=False)
        assert props(si, vm, *paths) == {
            "guest.toolsRunningStatus": "guestToolsNotRunning",
            "guest.toolsStatus": "toolsNotRunning",
            "summary.guest.toolsStatus": "toolsNotRunning",
        }


@pytest.mark.live
def test_tools_control_refuses_unknown_vms(vc: Target) -> None:
    with pytest.raises(SimulatorError, match="no VM vm-nosuch"):
        vc.ctl.set_tools("vm-nosuch", running=True)


@pytest.mark.live
@pytest.mark.parametrize("case", [(250, 100, 1), (10, 1500, 2)], ids=["250ms", "10ms"])
def test_updates_within_one_interval_come_in_one_answer(
    vc: Target, ops: Any, timing: None, case: tuple[int, int, int]
) -> None:
    """Within govmomi's 250 ms interval, a 100 ms task's entering the
    watcher's view and its end come in one answer (the interval starts with
    the wait, after the task); looked for every 10 ms, a 1.5 s task's come in
    two (as a vCenter answering at once would)."""
    update_ms, task_ms, waits = case
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.set_update_interval(update_ms)
    vc.ctl.set_task_time("CreateSnapshot_Task", task_ms)
    assert vc.ctl.request("GET", "/timing")["update_ms"] == update_ms
    backing = ops.find_backing(vol["id"])
    vc.ctl.reset_calls()
    ops.create_snapshot(backing, "s")
    assert vc.ctl.calls() == {
        "CreateSnapshot_Task": 1,
        "ModifyListView": 1,
        "WaitForUpdatesEx": waits,
    }


@pytest.mark.live
def test_an_update_interval_out_of_range_is_refused(vc: Target, timing: None) -> None:
    with pytest.raises(SimulatorError, match="update_ms must be between 1 and 1000"):
        vc.ctl.set_update_interval(0)
    assert vc.ctl.request("GET", "/timing")["update_ms"] == 250
