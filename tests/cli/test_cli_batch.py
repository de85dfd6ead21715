"""``vmdk-snap batch``: many volumes at once; one failure never stops the others.

With ``--concurrency`` above 1 batch runs worker threads, whose calls
interleave differently on every run: cassettes cannot replay them, so those
tests are live only. With ``--concurrency 1`` the one worker's calls come in a
fixed order, and that test runs in both tiers.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests.cli.support import Cli
from tests.conftest import Target
from tests.vsphere import connect, moref, props, remove_disk_change, watch_task
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.vsphere.session import Session


@pytest.fixture
def cli(vc: Target, tmp_path: Path) -> Cli:
    return Cli(vc, tmp_path)


def snapshot_names(cli: Cli, volume: str) -> list[str]:
    doc = cli("list", volume, "--json").json()
    return [s["name"] for s in doc["snapshots"]]


@pytest.mark.live
def test_one_failing_volume_among_many_does_not_stop_the_others(cli: Cli) -> None:
    ctl = cli.target.ctl
    good = [ctl.scenario("available-volume")["volumes"][0]["id"] for _ in range(4)]
    attached = ctl.scenario("attached-volume")["volumes"][0]["id"]
    unknown = "00000000-dead-beef-0000-000000000000"
    listing = cli.home / "volumes.txt"
    listing.write_text(
        "# tonight's volumes\n"
        + f"{good[0]}\n{good[1]}  # db\n\n{unknown}\n"
        + f"volume-{good[2]}\n{attached}\n{good[3]}\n"
    )

    ctl.reset_calls()
    r = cli("batch", "snapshot", "--name", "nightly", "--file", str(listing), "--concurrency", "3")
    assert r.code == 8, r.err
    # One session per worker (and one for the inventory read), not one per volume.
    logins = ctl.calls()["Login"]
    assert 2 <= logins <= 4
    assert ctl.calls().get("Logout", 0) == logins
    lines = r.out.splitlines()
    assert lines[-1] == "6 volumes: 4 ok, 2 failed"
    rows = {cols[0]: cols[1:] for cols in (re.split(r"\s{2,}", x, maxsplit=2) for x in lines[1:-1])}
    assert rows[unknown][0] == "FAILED (3)"
    assert rows[attached][0] == "FAILED (4)"
    assert rows[attached][1].endswith("pass --force to snapshot it while attached")
    assert rows[good[1]][0] == "ok"
    assert rows[good[1]][1].startswith("snapshot nightly (snapshot-")
    for vid in good:
        assert snapshot_names(cli, vid) == ["nightly"]
    assert snapshot_names(cli, attached) == []

    doc = cli("batch", "delete", "--name", "nightly", "--file", str(listing), "--json").json()
    assert doc["command"] == "batch"
    assert doc["operation"] == "delete"
    assert [x["volume"] for x in doc["results"]] == [
        good[0], good[1], unknown, f"volume-{good[2]}", attached, good[3]
    ]  # fmt: skip
    assert [x["exit_code"] for x in doc["results"]] == [0, 0, 3, 0, 0, 0]
    assert doc["results"][2]["kind"] == "not_found"
    assert doc["results"][4]["message"] == "already gone"
    assert doc["summary"] == {"total": 6, "ok": 5, "failed": 1}
    for vid in good:
        assert snapshot_names(cli, vid) == []


@pytest.mark.cassette
def test_batch_with_one_worker_replays(cli: Cli) -> None:
    ctl = cli.target.ctl
    good = [ctl.scenario("available-volume")["volumes"][0]["id"] for _ in range(2)]
    unknown = "00000000-dead-beef-0000-000000000001"
    listing = cli.home / "volumes.txt"
    listing.write_text(f"{good[0]}\n{unknown}\n{good[1]}\n")

    r = cli("batch", "snapshot", "--name", "b1", "--file", str(listing), "--concurrency", "1")
    assert r.code == 8, r.err
    assert r.out.splitlines()[-1] == "3 volumes: 2 ok, 1 failed"
    for vid in good:
        assert snapshot_names(cli, vid) == ["b1"]


@pytest.mark.live
def test_all_attached_snapshots_every_attached_volume_and_nothing_else(
    own_vc: Target, tmp_path: Path
) -> None:
    cli = Cli(own_vc, tmp_path)  # --all-attached: only this test's volumes
    ctl, target = cli.target.ctl, cli.target
    wf2 = ctl.scenario("workflow2")
    moved = ctl.scenario("attached-volume-moved")
    detached = ctl.scenario("available-volume")["volumes"][0]["id"]
    attached = [v["id"] for v in wf2["volumes"] + moved["volumes"]]

    checked = cli("check", "--all", "--json").json()["volumes"]
    assert sorted(v["volume"] for v in checked) == sorted([*attached, detached])
    assert all(v["duplicated"] for v in checked if v["volume"] in attached)

    r = cli("batch", "snapshot", "--name", "n1", "--force", "--all-attached", "--concurrency", "2")
    assert r.code == 0, r.out + r.err
    assert r.out.splitlines()[-1] == "3 volumes: 3 ok, 0 failed"
    for vid in attached:
        assert snapshot_names(cli, vid) == ["n1"]
    assert snapshot_names(cli, detached) == []

    # A volume Nova still records on an instance that no longer has its disk:
    # check --all reports it and still checks every other volume.
    broken = ctl.scenario("attached-volume")
    detach_keeping_files(target, broken["instances"][0]["moref"], broken["volumes"][0]["vmdk"])
    bad = broken["volumes"][0]["id"]
    r = cli("check", "--all")
    assert r.code == 8
    assert f"volume-{bad}: cannot check: instance " in r.out
    # Work Flow 2's first volume follows the instance's new delta when the
    # second is snapshotted (step follow_other_volumes), so none lags behind.
    assert r.out.splitlines()[-1] == "5 volumes: 0 need attention, 1 could not be checked"
    doc = cli("check", "--all", "--json").json()
    assert [e["volume"] for e in doc["errors"]] == [bad]
    assert doc["errors"][0]["kind"] == "wrong_state"
    assert sorted(v["volume"] for v in doc["volumes"]) == sorted([*attached, detached])


@pytest.mark.live
def test_batch_finds_each_instance_once_for_every_volume(own_vc: Target, tmp_path: Path) -> None:
    """The batch's one inventory read gives each volume its instance: per
    volume, the calls of a forced snapshot with the instance known (no
    search of the whole inventory per volume)."""
    cli = Cli(own_vc, tmp_path)  # --all-attached: only this test's volumes
    ctl = cli.target.ctl
    ctl.set_default_task_time(0)  # every task ends within one wait: exact counts

    def batch(volumes: list[str], name: str) -> Counter[str]:
        listing = tmp_path / f"{name}.txt"
        listing.write_text("".join(f"{v}\n" for v in volumes))
        ctl.reset_calls()
        r = cli("batch", "snapshot", "--name", name, "--force", "--file", str(listing),
                "--concurrency", "1")  # fmt: skip
        assert r.code == 0, r.out + r.err
        return Counter(ctl.calls())

    def fresh() -> dict[str, Any]:
        seeded = ctl.scenario("attached-volume")
        return {"id": seeded["volumes"][0]["id"], "uuid": seeded["instances"][0]["uuid"]}

    one = batch([fresh()["id"]], "one")
    three = batch([fresh()["id"] for _ in range(3)], "three")
    two_more = three - one  # two volumes' calls: the rest is the batch's own

    alone = fresh()
    t = cli.target
    with Session(t.url, t.username, t.password, ca_file=t.ca_file) as session:
        driver = Driver(session, journal_path=tmp_path / "alone.sqlite")
        ctl.reset_calls()
        driver.create_snapshot(Volume(alone["id"], "in-use", alone["uuid"]), "x", force=True)
        alone_calls = Counter(ctl.calls())
    assert alone_calls + alone_calls == two_more, (alone_calls, two_more)
    ctl.reset_timing()


def detach_keeping_files(target: Target, instance: str, vmdk: str) -> None:
    with connect(target) as si:
        vm = moref(si, "VirtualMachine", instance)
        devices = props(si, vm, "config.hardware.device")["config.hardware.device"]
        disk = next(
            d
            for d in devices
            if isinstance(d, vim.vm.device.VirtualDisk)
            and getattr(d.backing, "fileName", None) == vmdk
        )
        task = vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[remove_disk_change(disk)]))
        info, _ = watch_task(si, task)
        assert info.state == "success"


@pytest.mark.live
def test_consistent_batch_takes_each_instances_volumes_at_one_moment(
    own_vc: Target, tmp_path: Path
) -> None:
    cli = Cli(own_vc, tmp_path)  # --all-attached: only this test's volumes
    ctl = cli.target.ctl
    three = ctl.scenario("instance-three-volumes")
    one = ctl.scenario("attached-volume")
    detached = ctl.scenario("available-volume")["volumes"][0]["id"]
    listed = [v["id"] for v in three["volumes"] + one["volumes"]] + [detached]
    (tmp_path / "volumes.txt").write_text("\n".join(listed) + "\n")
    ctl.reset_calls()
    r = cli("batch", "snapshot", "--name", "c1", "--force", "--consistent",
            "--file", str(tmp_path / "volumes.txt"), "--json")  # fmt: skip
    assert r.code == 0, r.out + r.err
    doc = r.json()
    assert [x["volume"] for x in doc["results"]] == listed
    assert all(x["ok"] for x in doc["results"])
    # One temporary snapshot per instance (two), plus one per volume (five).
    assert ctl.calls()["CreateSnapshot_Task"] == 2 + 5
    for vid in listed:
        assert snapshot_names(cli, vid) == ["c1"]
    together = cli("list", three["volumes"][0]["id"], "--json").json()["snapshots"][0]
    assert sorted(together["taken_with"]) == sorted(v["id"] for v in three["volumes"][1:])
    r = cli("batch", "delete", "--name", "c1", "--consistent", "--file", "-")
    assert r.code == 2
    assert "--consistent applies to batch snapshot only" in r.err
