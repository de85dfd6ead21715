"""The session: trust, login, re-login, retries of transient failures only, call counts."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from tests.conftest import Target
from vmdk_snap.errors import (
    AuthenticationFailed,
    CertificateError,
    ConnectionFailed,
    NotFound,
    TaskFailed,
    TransientError,
    VsphereFault,
    fault_name,
)
from vmdk_snap.types import Moref
from vmdk_snap.vsphere.session import RetryPolicy, Session
from vmdk_snap.vsphere.volumeops import VolumeOps

FAST = RetryPolicy(initial_delay=0.01, max_delay=0.05)


def vm(value: str) -> Moref:
    return Moref("VirtualMachine", value)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


# -- connecting ----------------------------------------------------------------


@pytest.mark.cassette
def test_connect_verifies_with_the_ca_file_and_counts_calls(vc: Target) -> None:
    with Session(
        vc.url, vc.username, vc.password, ca_file=vc.ca_file, prepare_tasks=False
    ) as session:
        assert session.calls == {"RetrieveServiceContent": 1, "Login": 1}
        assert session.content.about.apiType == "VirtualCenter"
        assert session.url == vc.url
    with pytest.raises(ConnectionFailed, match="closed"):
        session.invoke(session.content.searchIndex, "FindByUuid", None, "x", True, True)


@pytest.mark.live
def test_a_pinned_thumbprint_replaces_the_ca(vc: Target) -> None:
    with Session(f"{vc.host}:{vc.port}", vc.username, vc.password, thumbprint=vc.thumbprint) as s:
        assert s.calls["Login"] == 1


@pytest.mark.live
def test_a_wrong_thumbprint_is_refused(vc: Target) -> None:
    wrong = "00" * 32
    with pytest.raises(CertificateError) as err:
        Session(vc.url, vc.username, vc.password, thumbprint=wrong).connect()
    text = one_line(err.value)
    assert "not trusted" in text
    assert "--ca-file/VMDK_SNAP_CA_FILE" in text


@pytest.mark.live
def test_a_certificate_that_does_not_verify_says_what_to_do(vc: Target) -> None:
    with pytest.raises(CertificateError) as err:
        Session(vc.url, vc.username, vc.password).connect()  # system CAs only
    text = one_line(err.value)
    assert f"the certificate of {vc.url} is not trusted" in text
    assert "pass --ca-file/VMDK_SNAP_CA_FILE" in text
    assert "--thumbprint/VMDK_SNAP_THUMBPRINT" in text
    # The digest offered for checking is the server's real one.
    assert vc.thumbprint.replace(":", "").upper() in text.replace(":", "").upper()


@pytest.mark.live
def test_wrong_password_says_which_settings_to_check(vc: Target) -> None:
    vc.ctl.reset_calls()
    with pytest.raises(AuthenticationFailed) as err:
        Session(vc.url, vc.username, "not-the-password", ca_file=vc.ca_file).connect()
    text = one_line(err.value)
    assert "rejected the user name or password" in text
    assert text.endswith("check VMDK_SNAP_USERNAME/VMDK_SNAP_PASSWORD")
    assert "not-the-password" not in text
    assert fault_name(err.value.fault) == "InvalidLogin"
    assert vc.ctl.calls()["Login"] == 1  # never retried


@pytest.mark.live
def test_a_closed_port_says_what_to_do(vc: Target) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"https://127.0.0.1:{port}/sdk"
    with pytest.raises(ConnectionFailed) as err:
        Session(url, vc.username, vc.password, ca_file=vc.ca_file, retry=FAST).connect()
    assert one_line(err.value) == (
        f"cannot reach {url}: connection refused; check the URL/port and that vCenter is up"
    )


@pytest.mark.live
def test_insecure_is_explicit_and_warned_about(
    vc: Target, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="vmdk_snap.vsphere.session"),
        Session(vc.url, vc.username, vc.password, insecure=True) as s,
    ):
        assert s.calls["Login"] == 1
    assert "certificate verification is OFF" in caplog.text
    assert vc.password not in caplog.text


def test_plain_http_and_bad_thumbprints_are_refused_before_connecting() -> None:
    with pytest.raises(ConnectionFailed, match="https"):
        Session("http://vc.example.com/sdk", "u", "p")
    with pytest.raises(CertificateError, match="SHA-256"):
        Session("vc.example.com", "u", "p", thumbprint="ab:cd")


# -- re-login and retries ----------------------------------------------------------


@pytest.mark.cassette
def test_an_expired_session_is_logged_in_again_once(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.inject_fault("RetrievePropertiesEx", kind="expire_sessions")
    session.reset_calls()
    info = ops.get_vm(vm(vol["moref"]))
    assert info.name == vol["name"]
    assert session.calls == {"RetrievePropertiesEx": 2, "Login": 1}


@pytest.mark.live
def test_a_session_refused_after_login_is_an_authentication_error(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.inject_fault("RetrievePropertiesEx", kind="soap", fault="NotAuthenticated", count=2)
    session.reset_calls()
    with pytest.raises(AuthenticationFailed) as err:
        ops.get_vm(vm(vol["moref"]))
    one_line(err.value)
    assert session.calls == {"RetrievePropertiesEx": 2, "Login": 1}


@pytest.mark.live
@pytest.mark.parametrize("kind", ["drop", "http503"])
def test_a_lost_read_is_retried_and_succeeds(
    clean_sim: Target, session: Session, ops: VolumeOps, kind: str
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.inject_fault("RetrievePropertiesEx", kind=kind)
    vc.ctl.reset_calls()
    assert ops.get_vm(vm(vol["moref"])).name == vol["name"]
    assert vc.ctl.calls()["RetrievePropertiesEx"] == 2


@pytest.mark.cassette
def test_host_communication_is_retried(clean_sim: Target, session: Session, ops: VolumeOps) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.inject_fault("CreateSnapshot_Task", kind="soap", fault="HostCommunication")
    vc.ctl.reset_calls()
    ops.create_snapshot(vm(vol["moref"]), "after-retry")
    assert vc.ctl.calls()["CreateSnapshot_Task"] == 2
    assert [n.name for n in ops.get_vm(vm(vol["moref"])).all_snapshots()] == ["after-retry"]


@pytest.mark.cassette
def test_permanent_faults_are_not_retried(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.inject_fault("RetrievePropertiesEx", kind="soap", fault="ManagedObjectNotFound")
    vc.ctl.reset_calls()
    with pytest.raises(NotFound) as err:
        ops.get_vm(vm(vol["moref"]))
    assert fault_name(err.value.fault) == "ManagedObjectNotFound"
    assert vc.ctl.calls() == {"RetrievePropertiesEx": 1}


@pytest.mark.live
def test_retries_are_bounded(clean_sim: Target, session: Session, ops: VolumeOps) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.inject_fault("RetrievePropertiesEx", kind="drop", count=-1)
    vc.ctl.reset_calls()
    with pytest.raises(TransientError) as err:
        ops.get_vm(vm(vol["moref"]))
    assert "gave up after 4 attempts" in one_line(err.value)
    assert vc.ctl.calls() == {"RetrievePropertiesEx": 4}


@pytest.mark.live
def test_a_dropped_task_call_that_never_ran_is_sent_again(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.inject_fault("CreateSnapshot_Task", kind="drop")
    vc.ctl.reset_calls()
    snap = ops.create_snapshot(vm(vol["moref"]), "once")
    assert vc.ctl.calls()["CreateSnapshot_Task"] == 2
    tree = ops.get_vm(vm(vol["moref"]))
    assert [(n.name, n.ref) for n in tree.all_snapshots()] == [("once", snap)]


@pytest.mark.live
def test_a_dropped_task_call_that_ran_is_not_repeated(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.inject_fault("CreateSnapshot_Task", kind="drop_after")
    vc.ctl.reset_calls()
    snap = ops.create_snapshot(vm(vol["moref"]), "once")
    assert vc.ctl.calls()["CreateSnapshot_Task"] == 1
    tree = ops.get_vm(vm(vol["moref"]))
    assert [(n.name, n.ref) for n in tree.all_snapshots()] == [("once", snap)]


@pytest.mark.live
def test_a_lost_task_call_is_never_matched_to_our_own_earlier_task(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    """Our previous call's task looks just like the lost one (same VM, kind, name)."""
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.set_default_task_time(0)
    first = ops.create_snapshot(vm(vol["moref"]), "same-name")
    vc.ctl.inject_fault("CreateSnapshot_Task", kind="drop")
    vc.ctl.reset_calls()
    second = ops.create_snapshot(vm(vol["moref"]), "same-name")
    assert vc.ctl.calls()["CreateSnapshot_Task"] == 2
    tree = ops.get_vm(vm(vol["moref"]))
    assert [n.ref for n in tree.all_snapshots()] == [first, second]
    assert first != second


@pytest.mark.live
def test_without_a_check_a_lost_task_call_is_not_repeated(
    clean_sim: Target, session: Session
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.inject_fault("CreateSnapshot_Task", kind="drop")
    vc.ctl.reset_calls()
    with pytest.raises(TransientError) as err:
        session.invoke(
            session.mo(vm(vol["moref"])),
            "CreateSnapshot_Task",
            name="unchecked",
            description="",
            memory=False,
            quiesce=False,
        )
    assert "check the recent tasks in vCenter" in one_line(err.value)
    assert vc.ctl.calls()["CreateSnapshot_Task"] == 1


@pytest.mark.live
def test_threads_share_one_session_and_one_re_login(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    seeded = vc.ctl.scenario("instance-two-volumes")
    refs = [vm(v["moref"]) for v in seeded["volumes"]] + [vm(seeded["instances"][0]["moref"])]
    vc.ctl.inject_fault("RetrievePropertiesEx", kind="expire_sessions")
    session.reset_calls()
    names: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(ref: Moref) -> None:
        try:
            name = ops.get_vm(ref).name
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            with lock:
                errors.append(exc)
            return
        with lock:
            names.append(name)

    threads = [threading.Thread(target=work, args=(refs[i % 3],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(names) == 12
    # Every thread whose call met the expired session repeats it once, after
    # the one new login.
    assert session.calls["Login"] == 1
    assert 13 <= session.calls["RetrievePropertiesEx"] <= 24


@pytest.mark.cassette
def test_task_in_progress_is_retried_after_a_wait(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.inject_fault("CreateSnapshot_Task", kind="soap", fault="TaskInProgress", count=2)
    vc.ctl.reset_calls()
    ops.create_snapshot(vm(vol["moref"]), "third-time")
    assert vc.ctl.calls()["CreateSnapshot_Task"] == 3
    assert [n.name for n in ops.get_vm(vm(vol["moref"])).all_snapshots()] == ["third-time"]


@pytest.mark.live
@pytest.mark.parametrize("task_ms", [20, 0], ids=["running", "already-done"])
def test_a_lost_remove_that_ran_is_not_repeated(
    clean_sim: Target, session: Session, ops: VolumeOps, task_ms: int
) -> None:
    """Also when the removal is over before the check looks (the snapshot is
    gone, so its VM cannot be read from it: a CI run failed that way)."""
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = vm(vol["moref"])
    keep = ops.create_snapshot(backing, "keep")
    drop = ops.create_snapshot(backing, "drop")
    vc.ctl.set_task_time("RemoveSnapshot_Task", task_ms)
    vc.ctl.inject_fault("RemoveSnapshot_Task", kind="drop_after")
    vc.ctl.reset_calls()
    ops.remove_snapshot(drop)
    assert vc.ctl.calls()["RemoveSnapshot_Task"] == 1
    assert [n.ref for n in ops.get_vm(backing).all_snapshots()] == [keep]


@pytest.mark.cassette
def test_unknown_faults_keep_the_original(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.inject_fault("CreateSnapshot_Task", kind="task", fault="DuplicateName")
    with pytest.raises(TaskFailed) as err:
        ops.create_snapshot(vm(vol["moref"]), "dup")
    assert type(err.value) is TaskFailed
    assert fault_name(err.value.fault) == "DuplicateName"
    assert err.value.task is not None
    vc.ctl.inject_fault("RetrievePropertiesEx", kind="soap", fault="InvalidProperty")
    with pytest.raises(VsphereFault) as read_err:
        ops.get_vm(vm(vol["moref"]))
    assert fault_name(read_err.value.fault) == "InvalidProperty"
    assert read_err.value.task is None
    assert "RetrievePropertiesEx" in one_line(read_err.value)


@pytest.mark.live
def test_a_session_expiring_during_a_task_wait_is_logged_in_again_once(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = vm(vol["moref"])
    ops.create_snapshot(backing, "before")  # the watcher's view and filter exist
    vc.ctl.set_default_task_time(0)  # ended before the new filter's first answer
    vc.ctl.inject_fault("WaitForUpdatesEx", kind="expire_sessions")
    session.reset_calls()
    snap = ops.create_snapshot(backing, "across-the-expiry")
    # The collector and view died with the old session: the wait is not
    # repeated on a collector that is gone; they are made again instead.
    assert session.calls == {
        "CreateSnapshot_Task": 1,
        "ModifyListView": 1,
        "WaitForUpdatesEx": 2,
        "Login": 1,
        "CreatePropertyCollector": 1,
        "CreateListView": 1,
        "CreateFilter": 1,
    }
    node = ops.get_vm(backing).snapshot_named("across-the-expiry")
    assert node is not None
    assert node.ref == snap


@pytest.mark.live
def test_a_lost_create_is_sent_again_when_the_recent_task_is_someone_elses(
    clean_sim: Target, session: Session, ops: VolumeOps
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    backing = vm(vol["moref"])
    # Another client's snapshot of the same VM, a moment before ours: same
    # kind, same VM, within the time window; only its name tells it apart.
    theirs = ops.create_snapshot(backing, "theirs")
    vc.ctl.inject_fault("CreateSnapshot_Task", kind="drop", match="mine")
    vc.ctl.reset_calls()
    mine = ops.create_snapshot(backing, "mine")
    assert vc.ctl.calls()["CreateSnapshot_Task"] == 2
    tree = ops.get_vm(backing)
    assert [(n.name, n.ref) for n in tree.all_snapshots()] == [("theirs", theirs), ("mine", mine)]


@pytest.mark.live
@pytest.mark.parametrize("kind", ["drop", "drop_after"])
def test_a_lost_reconfigure_is_sent_again_only_if_it_did_not_run(
    clean_sim: Target, session: Session, ops: VolumeOps, kind: str
) -> None:
    vc = clean_sim
    seeded = vc.ctl.scenario("attached-volume")
    inst = vm(seeded["instances"][0]["moref"])
    # A reconfiguration of the same VM just before, as another client's would be.
    ops.set_extra_config(inst, {"vmdk-snap-test": "earlier"})
    vc.ctl.inject_fault("ReconfigVM_Task", kind=kind, match="later")
    vc.ctl.reset_calls()
    ops.set_extra_config(inst, {"vmdk-snap-test": "later"})
    assert vc.ctl.calls()["ReconfigVM_Task"] == (2 if kind == "drop" else 1)
    keys = {k: v for k, v in _extra_config(session, inst).items() if k.startswith("vmdk-snap-test")}
    assert keys == {"vmdk-snap-test": "later"}


def _extra_config(session: Session, ref: Moref) -> dict[str, str]:
    from pyVmomi import vim  # noqa: PLC0415 - tests read with the property collector only

    from vmdk_snap.vsphere.volumeops.collect import Obj, retrieve  # noqa: PLC0415

    found = retrieve(session, [Obj(session.mo(ref))], {vim.VirtualMachine: ["config.extraConfig"]})
    return {str(o.key): str(o.value) for o in found[0].props.get("config.extraConfig") or ()}
