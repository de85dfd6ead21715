"""``vmdk-snap snapshot A B C`` and ``--instance``: several volumes at one moment (issue 14)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cli.support import Cli, tasks_started
from tests.conftest import Target
from tests.workflow_checks import vm, volume_disk_key, world


@pytest.fixture
def cli(vc: Target, tmp_path: Path) -> Cli:
    return Cli(vc, tmp_path)


@pytest.mark.live
def test_named_volumes_at_one_moment_text_and_json(cli: Cli, ops: Any) -> None:
    ctl = cli.target.ctl
    seeded = ctl.scenario("instance-three-volumes")
    inst, vols = seeded["instances"][0], seeded["volumes"]
    a, b, _ = (v["id"] for v in vols)
    keys = [volume_disk_key(ops, v, inst["moref"]) for v in vols]
    before = [ctl.read_disk(inst["moref"], k)["tokens"] for k in keys]

    ctl.reset_calls()
    r = cli("snapshot", a, b, "--name", "db-1", "--force", "--json")
    assert r.code == 0, r.err
    assert tasks_started(ctl.calls())["CreateSnapshot_Task"] == 3  # the instance, a, b
    doc = r.json()
    assert doc["instance"] == inst["uuid"]
    assert [m["volume"] for m in doc["members"]] == [a, b]
    assert {m["state"] for m in doc["members"]} == {"available"}
    assert all(m["created"] and m["snapshot"]["name"] == "db-1" for m in doc["members"])
    assert doc["members"][0]["snapshot"]["taken_with"] == [b]
    # c was not named: untouched, no snapshot.
    assert ops.get_vm(vm(vols[2]["moref"])).snapshots == ()
    for v, want in zip(vols[:2], before[:2], strict=True):
        backing = ops.get_vm(vm(v["moref"]))
        node = backing.snapshot_named("db-1")
        assert node is not None
        assert ctl.read_snapshot(node.ref.value, backing.disks[0].key)["tokens"] == want

    # list and check show which snapshots were taken together.
    listed = cli("list", a)
    assert listed.code == 0, listed.err
    assert f"with volume-{b}" in listed.out
    checked = cli("check", b)
    assert checked.code == 0, checked.err
    assert f"Taken together:         db-1 with volume-{a}" in checked.out
    assert cli("check", b, "--json").json()["volumes"][0]["snapshots"][0]["taken_with"] == [a]

    # Text, and a retry: nothing changes.
    ctl.reset_calls()
    again = cli("snapshot", a, b, "--name", "db-1", "--force")
    assert again.code == 0, again.err
    assert tasks_started(ctl.calls()) == {}
    assert again.out.splitlines()[0].startswith(f"volume-{a}: available: snapshot db-1 (")
    assert "already exists" in again.out


@pytest.mark.live
def test_instance_takes_every_attached_volume_and_dry_run_changes_nothing(
    cli: Cli, ops: Any
) -> None:
    ctl = cli.target.ctl
    seeded = ctl.scenario("instance-three-volumes")
    inst, vols = seeded["instances"][0], seeded["volumes"]
    morefs = [inst["moref"], *(v["moref"] for v in vols)]
    before = world(cli.target, ops, *morefs)
    ctl.reset_calls()
    plan = cli("snapshot", "--instance", inst["uuid"], "--name", "all", "--force", "--dry-run")
    assert plan.code == 0, plan.err
    assert tasks_started(ctl.calls()) == {}
    assert world(cli.target, ops, *morefs) == before
    ids = sorted(v["id"] for v in vols)
    assert plan.out.splitlines()[0].startswith(
        "plan: snapshot " + ", ".join(f"volume-{v}" for v in ids)
    )
    assert plan.out.count(" snapshot_instance\n") == 1
    assert plan.out.count(" snapshot_backing_") == 3
    r = cli("snapshot", "--instance", inst["uuid"], "--name", "all", "--force", "--json")
    assert r.code == 0, r.err
    assert sorted(m["volume"] for m in r.json()["members"]) == ids
    for v in vols:
        assert ops.get_vm(vm(v["moref"])).snapshot_named("all") is not None


@pytest.mark.live
def test_a_failed_group_lists_every_member_as_error(cli: Cli, ops: Any) -> None:
    ctl = cli.target.ctl
    seeded = ctl.scenario("instance-two-volumes")
    inst, vols = seeded["instances"][0], seeded["volumes"]
    ctl.set_tools(inst["moref"], False)
    ids = [v["id"] for v in vols]
    r = cli("snapshot", *ids, "--name", "q", "--force", "--quiesce", "--json")
    assert r.code == 4, r.err  # wrong state: Tools do not run (as for one volume)
    doc = r.json()
    assert "ToolsUnavailable" in doc["error"]["message"]
    assert [(m["volume"], m["state"]) for m in doc["members"]] == [(v, "error") for v in ids]
    assert f"volume-{ids[0]}: error" in r.err
    for v in vols:
        assert ops.get_vm(vm(v["moref"])).snapshots == ()


@pytest.mark.live
def test_volumes_of_two_instances_are_refused(cli: Cli) -> None:
    ctl = cli.target.ctl
    one = ctl.scenario("attached-volume")
    two = ctl.scenario("attached-volume")
    ctl.reset_calls()
    r = cli("snapshot", one["volumes"][0]["id"], two["volumes"][0]["id"], "--name", "x", "--force")
    assert r.code == 2, r.err
    assert "several instances" in r.err
    assert tasks_started(ctl.calls()) == {}
    r = cli("snapshot", "--name", "x")
    assert r.code == 2
    assert "--instance" in r.err
