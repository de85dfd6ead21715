"""Injected faults, as vCenter calls fail in the field (issue 3, point 7).

Every kind is shown against a stock method of the simulator and against one
we model: a SOAP fault of the named type (call not executed), a task that
ends in that fault (model unchanged), a dropped connection (call not
executed, or executed for ``drop_after``), expired sessions and HTTP 503.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from tests.conftest import Target
from tests.vsphere import connect, disk_paths, moref, props, watch_task
from vmdk_snap.testing import SimulatorError


@pytest.fixture
def faults(vc: Target) -> Iterator[None]:
    """Clear every fault rule afterwards, so none leaks into other tests."""
    yield
    vc.ctl.clear_faults()


def _vm(si: Any, seeded: dict[str, Any], kind: str = "instances") -> Any:
    return moref(si, "VirtualMachine", seeded[kind][0]["moref"])


def _extra(si: Any, vm: Any) -> dict[str, str]:
    return {o.key: o.value for o in props(si, vm, "config.extraConfig")["config.extraConfig"]}


def _reconfig_tasks(si: Any, vm: Any) -> list[Any]:
    """The VM's reconfiguration tasks among the task manager's recent tasks."""
    manager = si.RetrieveContent().taskManager
    out = []
    for task in props(si, manager, "recentTask")["recentTask"][-20:]:
        got = props(si, task, "info.entity", "info.descriptionId")
        if got["info.entity"] == vm and got["info.descriptionId"] == "VirtualMachine.reconfigure":
            out.append(task)
    return out


def _set_extra(key: str, value: str) -> Any:
    return vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=key, value=value)])


@pytest.mark.cassette
def test_soap_fault_is_decoded_with_its_type_and_nothing_happens(vc: Target, faults: None) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    with connect(vc) as si:
        vm = _vm(si, seeded)
        # A stock method of the simulator...
        vc.ctl.inject_fault("PowerOffVM_Task", "soap", "InvalidState")
        with pytest.raises(vim.fault.InvalidState):
            vm.PowerOffVM_Task()
        assert props(si, vm, "runtime.powerState")["runtime.powerState"] == "poweredOn"
        # ... and one we model.
        vc.ctl.inject_fault("ReconfigVM_Task", "soap", "FileLocked")
        with pytest.raises(vim.fault.FileLocked) as exc:
            vm.ReconfigVM_Task(_set_extra("vmdk-snap.k", "v"))
        fault: Any = exc.value
        assert "injected" in fault.msg
        assert "vmdk-snap.k" not in _extra(si, vm)
        # TaskInProgress carries a task reference clients can decode.
        vc.ctl.inject_fault("CreateSnapshot_Task", "soap", "TaskInProgress")
        with pytest.raises(vim.fault.TaskInProgress) as busy:
            vm.CreateSnapshot_Task("s", "", False, False)
        assert isinstance(busy.value.task, vim.Task)
        assert props(si, vm, "snapshot")["snapshot"] is None
        # Each rule failed its one call and is gone: the next call works.
        assert vc.ctl.faults() == []
        info, _ = watch_task(si, vm.ReconfigVM_Task(_set_extra("vmdk-snap.k", "v")))
        assert info.state == "success"
        assert _extra(si, vm)["vmdk-snap.k"] == "v"


@pytest.mark.cassette
def test_task_fault_ends_the_task_in_error_and_changes_nothing(vc: Target, faults: None) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    with connect(vc) as si:
        vm = _vm(si, seeded)
        disks_before = disk_paths(si, vm)
        vc.ctl.inject_fault("CreateSnapshot_Task", "task", "FileLocked")
        # Long enough to be seen running even on a busy machine.
        vc.ctl.set_task_time("CreateSnapshot_Task", 1500)
        try:
            info, seen = watch_task(si, vm.CreateSnapshot_Task("s", "", False, False))
        finally:
            vc.ctl.reset_timing()
        assert seen[0][0] == "running"
        assert info.state == "error"
        assert isinstance(info.error, vim.fault.FileLocked)
        assert info.entity == vm
        assert props(si, vm, "snapshot")["snapshot"] is None
        assert disk_paths(si, vm) == disks_before

        # A stock task method fails the same way, without running.
        vc.ctl.inject_fault("PowerOffVM_Task", "task", "HostCommunication")
        info, _ = watch_task(si, vm.PowerOffVM_Task())
        assert info.state == "error"
        assert isinstance(info.error, vmodl.fault.HostCommunication)
        assert info.descriptionId == "VirtualMachine.powerOff"
        assert props(si, vm, "runtime.powerState")["runtime.powerState"] == "poweredOn"

        # Called on a snapshot, the failing task still names the VM.
        created, _ = watch_task(si, vm.CreateSnapshot_Task("kept", "", False, False))
        assert created.state == "success", created.error
        vc.ctl.inject_fault("RemoveSnapshot_Task", "task", "TaskInProgress")
        info, _ = watch_task(si, created.result.RemoveSnapshot_Task(False, True))
        assert info.state == "error"
        assert isinstance(info.error, vim.fault.TaskInProgress)
        assert (info.entity, info.descriptionId) == (vm, "vm.Snapshot.remove")
        tree = props(si, vm, "snapshot.rootSnapshotList")["snapshot.rootSnapshotList"]
        assert [n.name for n in tree] == ["kept"]
        assert disk_paths(si, vm) != disks_before  # the snapshot's deltas are still there


@pytest.mark.cassette
def test_count_skip_and_match_select_the_calls_that_fail(vc: Target, faults: None) -> None:
    seeded = vc.ctl.scenario("instance-two-volumes")
    with connect(vc) as si:
        vm = _vm(si, seeded)
        other = _vm(si, seeded, "volumes")
        rule = vc.ctl.inject_fault(
            "ReconfigVM_Task",
            "soap",
            "HostCommunication",
            count=2,
            skip=1,
            # The body's text, delimited so that vm-4 does not match vm-42.
            match=f">{seeded['instances'][0]['moref']}<",
        )
        outcomes = []
        for i, target in enumerate([vm, other, vm, vm, other, vm]):
            try:
                info, _ = watch_task(si, target.ReconfigVM_Task(_set_extra("n", str(i))))
                outcomes.append(info.state)
            except vmodl.fault.HostCommunication:
                outcomes.append("fault")
            if i == 2:
                # One call skipped, one failed: one left.
                (left,) = vc.ctl.faults()
                assert (left["id"], left["count"], left["skip"], left["fired"]) == (rule, 1, 0, 1)
        # The instance's first call was skipped, its next two failed; the
        # other VM never matched.
        assert outcomes == ["success", "success", "fault", "fault", "success", "success"]
        assert vc.ctl.faults() == []
        assert _extra(si, vm)["n"] == "5"


@pytest.mark.live
def test_drop_closes_the_connection_and_the_call_does_not_happen(vc: Target, faults: None) -> None:
    """Live only: a dropped connection cannot be recorded in a cassette."""
    seeded = vc.ctl.scenario("attached-volume")
    with connect(vc) as si:
        vm = _vm(si, seeded)
        vc.ctl.reset_calls()
        vc.ctl.inject_fault("ReconfigVM_Task", "drop")
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            vm.ReconfigVM_Task(_set_extra("vmdk-snap.dropped", "yes"))
        # The call reached the simulator once, and was not executed.
        assert vc.ctl.calls()["ReconfigVM_Task"] == 1
        assert "vmdk-snap.dropped" not in _extra(si, vm)
        assert _reconfig_tasks(si, vm) == []


@pytest.mark.live
def test_drop_after_executes_the_call_then_closes_the_connection(vc: Target, faults: None) -> None:
    """Live only: a dropped connection cannot be recorded in a cassette.

    The client sees a connection error although the call happened: why a
    non-idempotent call must not be retried blindly.
    """
    seeded = vc.ctl.scenario("attached-volume")
    with connect(vc) as si:
        vm = _vm(si, seeded)
        vc.ctl.inject_fault("ReconfigVM_Task", "drop_after")
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            vm.ReconfigVM_Task(_set_extra("vmdk-snap.dropped", "after"))
        reconfigs = _reconfig_tasks(si, vm)
        assert len(reconfigs) == 1
        info, _ = watch_task(si, reconfigs[0])
        assert info.state == "success"
        assert _extra(si, vm)["vmdk-snap.dropped"] == "after"


@pytest.mark.cassette
def test_expired_sessions_get_not_authenticated_and_a_new_login_works(
    vc: Target, faults: None
) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    with connect(vc) as old, connect(vc) as other:
        vm = _vm(old, seeded)
        assert props(old, vm, "name")["name"] == seeded["instances"][0]["name"]
        vc.ctl.inject_fault("CurrentTime", "expire_sessions")
        with pytest.raises(vim.fault.NotAuthenticated):
            old.CurrentTime()
        # Every session is gone, not only the caller's, and stays gone,
        # property reads included.
        with pytest.raises(vim.fault.NotAuthenticated):
            other.CurrentTime()
        with pytest.raises(vim.fault.NotAuthenticated):
            props(old, vm, "name")
        with connect(vc) as fresh:
            vm = _vm(fresh, seeded)
            assert props(fresh, vm, "name")["name"] == seeded["instances"][0]["name"]
            fresh.CurrentTime()
    assert vc.ctl.faults() == []


@pytest.mark.cassette
def test_http_503_is_an_http_error_and_nothing_happens(vc: Target, faults: None) -> None:
    seeded = vc.ctl.scenario("attached-volume")
    with connect(vc) as si:
        vm = _vm(si, seeded)
        vc.ctl.inject_fault("ReconfigVM_Task", "http503")
        with pytest.raises(http.client.HTTPException, match="503"):
            vm.ReconfigVM_Task(_set_extra("vmdk-snap.k", "503"))
        assert "vmdk-snap.k" not in _extra(si, vm)
        info, _ = watch_task(si, vm.ReconfigVM_Task(_set_extra("vmdk-snap.k", "ok")))
        assert info.state == "success"


@pytest.mark.live
def test_bad_fault_rules_are_refused_with_a_reason(vc: Target, faults: None) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"method": "CreateSnapshot_Task", "kind": "soap", "fault": "NoSuchFault"}, "unknown"),
        ({"method": "CreateSnapshot_Task", "kind": "soap"}, "needs"),
        ({"method": "CurrentTime", "kind": "task", "fault": "FileLocked"}, "returns a task"),
        ({"method": "CurrentTime", "kind": "explode"}, "unknown kind"),
        ({"method": "CurrentTime", "kind": "drop", "count": 0}, "count"),
        ({"kind": "drop"}, "method"),
    ]
    for body, reason in bad:
        with pytest.raises(SimulatorError, match=reason):
            vc.ctl.request("POST", "/faults", body)
    assert vc.ctl.faults() == []
