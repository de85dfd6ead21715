"""Bad input and failures: one line on stderr saying what to do, its exit code, nothing changed."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.cli.support import Cli, tasks_started
from tests.conftest import Target
from vmdk_snap.cli.views import NOTHING_TO_RECOVER
from vmdk_snap.types import Moref
from vmdk_snap.workflows.locks import VolumeLock
from vmdk_snap.workflows.table import temp_snapshot_name


@pytest.fixture
def cli(vc: Target, tmp_path: Path) -> Cli:
    return Cli(vc, tmp_path)


UNKNOWN = "00000000-dead-beef-0000-000000000000"


@pytest.mark.cassette
def test_unknown_volume_is_exit_3_and_starts_nothing(cli: Cli) -> None:
    cli.target.ctl.reset_calls()
    for argv in (
        ["list", UNKNOWN],
        ["check", f"volume-{UNKNOWN}"],
        ["snapshot", UNKNOWN, "--name", "s1", "--force"],
        ["delete", UNKNOWN, "s1"],
        ["revert", UNKNOWN, "s1"],
        ["consolidate", UNKNOWN],
    ):
        r = cli(*argv)
        assert r.code == 3, (argv, r.err)
        assert r.out == ""
        assert f"vmdk-snap: volume {UNKNOWN} has no backing VM in vCenter; " in r.line
        assert "check the volume id" in r.line
    assert tasks_started(cli.target.ctl.calls()) == {}


@pytest.mark.cassette
def test_wrong_state_is_exit_4_says_what_to_do_and_starts_nothing(cli: Cli) -> None:
    ctl = cli.target.ctl
    seeded = ctl.scenario("attached-volume")
    vol, inst = seeded["volumes"][0], seeded["instances"][0]
    ctl.reset_calls()

    r = cli("snapshot", vol["id"], "--name", "s1")
    assert r.code == 4
    assert r.line == (
        f"vmdk-snap: volume {vol['id']} is in-use by instance {inst['uuid']}; "
        "pass --force to snapshot it while attached"
    )
    r = cli("revert", vol["id"], "s1")
    assert r.code == 4
    assert "detach the volume first" in r.line
    r = cli("snapshot", vol["id"], "--name", "s1", "--json")
    assert r.json()["error"] == {
        "kind": "wrong_state",
        "exit_code": 4,
        "message": r.line.removeprefix("vmdk-snap: "),
    }
    assert tasks_started(ctl.calls()) == {}


@pytest.mark.live
@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ('it\'s "quoted"', "'\"'"),
        ("<b>bold</b>", "'<'"),
        ("café-snapshot", "'é'"),
        ("x" * 81, "81 characters long"),
    ],
)
def test_bad_snapshot_names_are_refused_before_connecting(cli: Cli, name: str, shown: str) -> None:
    ctl = cli.target.ctl
    vol = ctl.scenario("available-volume")["volumes"][0]
    ctl.reset_calls()
    for argv in (
        ["snapshot", vol["id"], "--name", name],
        ["delete", vol["id"], name],
        ["revert", vol["id"], name],
        ["batch", "snapshot", "--name", name, "--file", "/dev/null"],
    ):
        r = cli(*argv)
        assert r.code == 2, (argv, r.err)
        assert shown in r.line
        assert "use ASCII letters, digits" in r.line
    assert ctl.calls() == {}  # not even a login


@pytest.mark.cassette
def test_wrong_password_is_exit_6_one_line(cli: Cli) -> None:
    cli.target.ctl.reset_calls()
    r = cli("list", UNKNOWN, env=cli.env | {"VMDK_SNAP_PASSWORD": "not-the-password"})
    assert r.code == 6
    assert "rejected the user name or password" in r.line
    assert "not-the-password" not in r.err
    assert tasks_started(cli.target.ctl.calls()) == {}


def test_closed_port_is_exit_6_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = Target("live", f"https://127.0.0.1:{port}/sdk", "127.0.0.1", port, "u", "p",
                    "", "", None)  # type: ignore[arg-type]  # fmt: skip
    cli = Cli(target, tmp_path)
    env = {k: v for k, v in cli.env.items() if k != "VMDK_SNAP_CA_FILE"}
    r = cli("check", UNKNOWN, env=env)
    assert r.code == 6
    assert f"cannot reach https://127.0.0.1:{port}/sdk: connection refused" in r.line


@pytest.mark.live
def test_untrusted_certificate_is_exit_6_and_says_how_to_trust_it(cli: Cli) -> None:
    env = {k: v for k, v in cli.env.items() if k != "VMDK_SNAP_CA_FILE"}
    r = cli("list", UNKNOWN, env=env)
    assert r.code == 6
    assert "certificate" in r.line
    assert "--ca-file" in r.line or "VMDK_SNAP_CA_FILE" in r.line or "thumbprint" in r.line


@pytest.mark.cassette
def test_busy_volume_is_exit_5(cli: Cli, lock_dir: Path) -> None:
    ctl = cli.target.ctl
    vol = ctl.scenario("available-volume")["volumes"][0]
    ctl.reset_calls()
    with VolumeLock(lock_dir, vol["id"]):  # another workflow on the volume, any journal
        r = cli("snapshot", vol["id"], "--name", "s1")
    assert r.code == 5, r.err
    assert "busy" in r.line or "another" in r.line
    assert tasks_started(ctl.calls()) == {}


@pytest.mark.live
def test_lock_dir_flag_says_where_volumes_are_locked(cli: Cli, tmp_path: Path) -> None:
    ctl = cli.target.ctl
    vol = ctl.scenario("available-volume")["volumes"][0]
    other = tmp_path / "other-locks"
    with VolumeLock(other, vol["id"]):  # a workflow of processes given --lock-dir other
        r = cli("snapshot", vol["id"], "--name", "s1", "--lock-dir", str(other))
        assert r.code == 5, r.err
        assert f"volume {vol['id']} is busy" in r.line
        r = cli("snapshot", vol["id"], "--name", "s1")  # the default lock directory: free
        assert r.code == 0, r.err


@pytest.mark.cassette
def test_failed_task_is_exit_7_and_leaves_the_volume_as_it_was(cli: Cli) -> None:
    ctl = cli.target.ctl
    vol = ctl.scenario("available-volume")["volumes"][0]
    ctl.inject_fault("CreateSnapshot_Task", "task", "NoDiskSpace", match=vol["moref"])
    try:
        r = cli("snapshot", vol["id"], "--name", "s1")
    finally:
        ctl.clear_faults()
    assert r.code == 7, r.err
    assert "NoDiskSpace" in r.line
    assert "free space on the datastore" in r.line
    assert cli("list", vol["id"], "--json").json()["snapshots"] == []


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["snapshot", UNKNOWN], "the following arguments are required: --name"),
        (["check"], "one of the arguments VOLUME --all is required"),
        (["list", "vol<1>"], "is not a Cinder volume: give its id or volume-<id>"),
        (["batch", "snapshot", "--file", "x"], "batch snapshot needs --name NAME"),
    ],
)
def test_usage_errors_are_one_line_exit_2(tmp_path: Path, argv: list[str], says: str) -> None:
    target = Target("live", "https://vc.invalid/sdk", "vc.invalid", 443, "u", "p", "", "",
                    None)  # type: ignore[arg-type]  # fmt: skip
    r = Cli(target, tmp_path)(*argv)
    assert r.code == 2
    assert says in r.line


@pytest.mark.cassette
def test_traceback_only_with_verbose(cli: Cli) -> None:
    quiet = cli("list", UNKNOWN)
    loud = cli("list", UNKNOWN, "-v")
    assert quiet.code == loud.code == 3
    assert "Traceback" not in quiet.err
    assert "Traceback (most recent call last)" in loud.err
    assert "vmdk_snap.vsphere.session" in loud.err  # -v also turns the library's logs on
    assert loud.err.rstrip().splitlines()[-1] == quiet.line


@pytest.mark.live
def test_insecure_works_and_warns_in_one_line(cli: Cli) -> None:
    vol = cli.target.ctl.scenario("available-volume")["volumes"][0]
    env = {k: v for k, v in cli.env.items() if k != "VMDK_SNAP_CA_FILE"}
    r = cli("list", vol["id"], env=env | {"GOVC_INSECURE": "1"})
    assert r.code == 0
    assert r.line.startswith("vmdk-snap: warning: not verifying the certificate of https://")
    assert "--ca-file or --thumbprint" in r.line


@pytest.mark.cassette
def test_failure_past_the_point_of_no_return_is_exit_9_and_recover_finishes_it(cli: Cli) -> None:
    ctl = cli.target.ctl
    vol = ctl.scenario("attached-volume-moved")["volumes"][0]
    # The last step (deleting the stale copy) fails after the instance
    # snapshot is gone: the workflow can only go forward, later.
    ctl.inject_fault("DeleteVirtualDisk_Task", "task", "CannotDeleteFile", match=vol["id"])
    try:
        r = cli("snapshot", vol["id"], "--name", "s9", "--force")
    finally:
        ctl.clear_faults()
    assert r.code == 9, r.err
    assert "vmdk-snap recover" in r.line

    again = cli("snapshot", vol["id"], "--name", "s10", "--force")
    assert again.code == 4
    assert "run `vmdk-snap recover` first" in again.line

    doc = cli("recover", "--json").json()
    assert [(w["kind"], w["volume"], w["outcome"]) for w in doc["workflows"]] == [
        ("snapshot_attached", vol["id"], "finished")
    ]
    assert vol["vmdk"] not in ctl.files("ds-shared-1")
    after = cli("list", vol["id"], "--json").json()
    assert [s["name"] for s in after["snapshots"]] == ["s9"]
    assert after["duplicated"] is False
    assert cli("recover").out == f"{NOTHING_TO_RECOVER}\n"


@pytest.mark.cassette
def test_missing_config_file_refused_before_connecting(cli: Cli) -> None:
    cli.target.ctl.reset_calls()
    missing = cli.home / "nope.ini"
    r = cli("list", UNKNOWN, "--config", str(missing))
    assert r.code == 2
    assert r.line == (
        f"vmdk-snap: config file {missing} does not exist: create it with a [vcenter] "
        "section or leave out --config/VMDK_SNAP_CONFIG"
    )
    assert cli.target.ctl.calls() == {}  # the URL was known, yet nothing was sent


@pytest.mark.cassette
def test_quiesce_needs_tools_in_the_guest(cli: Cli) -> None:
    ctl = cli.target.ctl
    seeded = ctl.scenario("attached-volume")
    vol, inst = seeded["volumes"][0], seeded["instances"][0]
    ctl.set_tools(inst["moref"], False)
    r = cli("snapshot", vol["id"], "--name", "q1", "--force", "--quiesce")
    assert r.code == 4, r.err
    assert "Tools" in r.line
    assert cli("list", vol["id"], "--json").json()["snapshots"] == []

    ctl.set_tools(inst["moref"], True)
    ok = cli("snapshot", vol["id"], "--name", "q1", "--force", "--quiesce", "--json")
    assert ok.code == 0, ok.err
    assert ok.json()["snapshot"]["name"] == "q1"


@pytest.mark.live
def test_recover_exits_9_on_a_leftover_it_did_not_settle_and_0_once_adopted(
    cli: Cli, ops: Any
) -> None:
    """A temporary snapshot no journal knows: reported with what to run, then adopted."""
    seeded = cli.target.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    ops.create_snapshot(
        Moref("VirtualMachine", inst["moref"]),
        temp_snapshot_name(vol["id"], "nightly"),
        "vmdk-snap: temporary, for volume snapshot nightly",
    )
    left = cli("recover")
    assert left.code == 9
    assert "left" in left.out
    assert "vmdk-snap recover --adopt" in left.out
    doc = cli("recover", "--json").json()
    (row,) = doc["workflows"]
    assert (row["kind"], row["volume"], row["outcome"]) == ("temporary_snapshot", vol["id"], "left")
    adopted = cli("recover", "--adopt", "--json")
    assert adopted.code == 0
    assert [r["outcome"] for r in adopted.json()["workflows"]] == ["rolled_back"]
    assert ops.get_vm(Moref("VirtualMachine", inst["moref"])).snapshots == ()
    assert cli("recover").code == 0


@pytest.mark.live
def test_check_shows_a_leftover_temporary_snapshot_unless_its_workflow_runs(
    cli: Cli, ops: Any, lock_dir: Path
) -> None:
    seeded = cli.target.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    name = temp_snapshot_name(vol["id"], "nightly")
    snap = ops.create_snapshot(Moref("VirtualMachine", inst["moref"]), name)
    doc = cli("check", vol["id"], "--json").json()
    (shown,) = doc["volumes"]
    assert shown["temporary_snapshots_left"] == [name]
    assert "run 'vmdk-snap recover'" in shown["advice"]
    assert f"temporary snapshot {name}" in cli("check", vol["id"]).out
    with VolumeLock(lock_dir, vol["id"]):  # a workflow on the volume runs on this host
        (running,) = cli("check", vol["id"], "--json").json()["volumes"]
    assert running["temporary_snapshots_left"] == []
    ops.remove_snapshot(snap, consolidate=True)
