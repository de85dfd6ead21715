"""``vmdk-snap`` subcommands, run in-process on the simulator (live) and from cassettes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cli.support import Cli, tasks_started
from tests.conftest import Target
from vmdk_snap.cli.main import build_parser
from vmdk_snap.cli.views import NOTHING_TO_RECOVER
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.types import Moref


@pytest.fixture
def cli(vc: Target, tmp_path: Path) -> Cli:
    return Cli(vc, tmp_path)


COMMANDS = [
    "snapshot",
    "delete",
    "revert",
    "list",
    "check",
    "consolidate",
    "compact",
    "recover",
    "batch",
]


def test_every_subcommand_has_examples_in_its_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    choices = getattr(sub, "choices", {})
    assert sorted(choices) == sorted(COMMANDS)
    for name in COMMANDS:
        text = choices[name].format_help()
        assert "\nExamples:\n  vmdk-snap " + name in text, name


@pytest.mark.cassette
def test_check_shows_where_a_moved_volume_is_and_that_its_chain_is_duplicated(cli: Cli) -> None:
    seeded = cli.target.ctl.scenario("workflow2")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]

    r = cli("check", vol["id"])
    assert r.code == 0, r.err
    fields = dict(line.split(":", 1) for line in r.out.splitlines())
    assert fields["Volume"].strip() == f"volume-{vol['id']}"
    assert fields["Status"].strip() == "in-use"
    assert fields["Attached to"].strip() == f"{inst['name']} ({inst['uuid']})"
    assert fields["Backing on"].strip() == f"host {inst['host']}, datastore ds-shared-1"
    assert fields["Instance on"].strip() == f"host {inst['host']}, datastore ds-shared-2"
    assert fields["Duplicated chain"].strip() == "yes"
    assert f"vmdk-snap consolidate {vol['id']}" in fields["Advice"]

    doc = cli("check", f"volume-{vol['id']}", "--json").json()
    assert doc["schema"] == 1
    assert doc["command"] == "check"
    (v,) = doc["volumes"]
    assert v["volume"] == vol["id"]
    assert v["status"] == "in-use"
    assert v["attached_to"] == inst["uuid"]
    assert (v["host"], v["datastore"]) == (inst["host"], "ds-shared-2")
    assert v["duplicated"] is True
    assert v["backing"]["disk"]["path"] == vol["vmdk"]
    assert v["backing"]["datastore"] == "ds-shared-1"
    assert v["instance"]["disk"]["datastore"] == "ds-shared-2"
    assert v["instance"]["uuid"] == inst["uuid"]
    assert v["stale_files"] == [vol["vmdk"]]
    assert v["advice"].startswith("duplicated chain")


@pytest.mark.cassette
def test_list_draws_both_copies_of_a_moved_volume_then_one_shared_chain(cli: Cli) -> None:
    seeded = cli.target.ctl.scenario("attached-volume-moved")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]

    before = cli("list", vol["id"])
    assert before.code == 0, before.err
    tree = before.out.split("Disk chain (base first):\n", 1)[1].splitlines()
    assert tree[0] == f"├─ {vol['vmdk']}  <- backing volume-{vol['id']}"
    assert tree[1].startswith(f"└─ [ds-shared-2] {inst['name']}/")
    assert tree[1].endswith(f"<- instance {inst['name']} (disk 2001)")
    assert "Snapshots:\n  (none)" in before.out

    snap = cli("snapshot", vol["id"], "--name", "cli-snap-1", "--force", "--json")
    assert snap.code == 0, snap.err

    after = cli("list", vol["id"])
    assert after.code == 0, after.err
    assert "└─ cli-snap-1  " in after.out
    tree = after.out.split("Disk chain (base first):\n", 1)[1].splitlines()
    # One chain now: the top file is shared by the backing and the instance.
    assert tree[0].startswith("└─ [ds-shared-2] ")
    assert tree[-1].endswith(f"<- backing volume-{vol['id']}, instance {inst['name']} (disk 2001)")

    doc = cli("list", vol["id"], "--json").json()
    assert doc["command"] == "list"
    assert [s["name"] for s in doc["snapshots"]] == ["cli-snap-1"]
    assert doc["snapshots"][0]["moref"] == snap.json()["snapshot"]["moref"]
    assert doc["backing"]["disk"]["path"] == doc["instance"]["disk"]["path"]
    assert doc["duplicated"] is False
    assert set(doc) >= {
        "schema", "command", "volume", "name", "status", "attached_to", "host", "datastore",
        "duplicated", "consolidation_needed", "depth", "backing", "instance", "snapshots",
        "stale_files", "notes", "advice",
    }  # fmt: skip


@pytest.mark.cassette
def test_snapshot_dry_run_prints_the_plan_and_starts_no_task(cli: Cli) -> None:
    ctl = cli.target.ctl
    seeded = ctl.scenario("workflow2")
    vol = seeded["volumes"][0]
    files = {ds: ctl.files(ds) for ds in ("ds-shared-1", "ds-shared-2")}
    ctl.reset_calls()

    text = cli("snapshot", vol["id"], "--name", "dry-1", "--force", "--dry-run")
    doc = cli("snapshot", vol["id"], "--name", "dry-1", "--force", "--dry-run", "--json")

    calls = ctl.calls()
    assert tasks_started(calls) == {}
    assert calls.get("RetrievePropertiesEx", 0) > 0  # it did look at vCenter
    # A plan waits for no task, so its sessions set no task watcher up.
    assert "CreatePropertyCollector" not in calls
    assert {ds: ctl.files(ds) for ds in files} == files
    assert text.code == doc.code == 0
    assert "dry run: nothing was changed" in text.out
    plan = doc.json()
    assert plan["dry_run"] is True
    assert plan["volume"] == vol["id"]
    steps = [s["step"] for s in plan["plan"]]
    assert steps[:2] == ["relocate_backing", "swap_backing_disk"] or steps[:2] == [
        "swap_backing_disk",
        "relocate_backing",
    ]
    assert steps[2:7] == [
        "snapshot_instance",
        "snapshot_backing",
        "hand_over_top",
        "disable_instance_consolidation",
        "remove_instance_snapshot",
    ]
    for i, step in enumerate(plan["plan"], 1):
        assert set(step) == {"step", "description", "undo", "reversible"}
        assert f"{i:2d}. {step['step']}" in text.out


@pytest.mark.cassette
def test_forced_snapshot_keeps_the_volume_content_and_consolidates_only_that_volume(
    cli: Cli,
) -> None:
    ctl = cli.target.ctl
    seeded = ctl.scenario("workflow2")
    inst = seeded["instances"][0]
    vol, other = seeded["volumes"]
    content = ctl.read_disk(inst["moref"], 2001)["tokens"]

    r = cli("snapshot", vol["id"], "--name", "wf2-snap", "--force", "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["command"] == "snapshot"
    assert doc["volume"] == vol["id"]
    snap = doc["snapshot"]
    assert snap["name"] == "wf2-snap"
    assert set(snap) == {
        "name",
        "description",
        "moref",
        "created",
        "quiesced",
        "taken_with",
        "children",
    }

    backing = cli("list", vol["id"], "--json").json()["backing"]
    assert ctl.read_snapshot(snap["moref"], backing["disk"]["key"])["tokens"] == content

    checked = {v["volume"]: v for v in cli("check", "--all", "--json").json()["volumes"]}
    assert checked[vol["id"]]["duplicated"] is False
    assert checked[other["id"]]["duplicated"] is True  # left as it was
    assert checked[other["id"]]["snapshots"] == []


@pytest.mark.cassette
def test_detached_volume_snapshot_revert_delete_and_delete_again(cli: Cli) -> None:
    ctl = cli.target.ctl
    vol = ctl.scenario("available-volume")["volumes"][0]
    backing = vol["moref"]

    made = cli("snapshot", vol["id"], "--name", "s1")
    assert made.code == 0, made.err
    assert made.out.startswith(f"volume-{vol['id']}: snapshot s1 (snapshot-")
    assert ", created 20" in made.out
    key = _disk_key(cli, vol["id"])
    ctl.write(backing, key, "after-s1")
    assert "after-s1" in ctl.read_disk(backing, key)["tokens"]

    reverted = cli("revert", vol["id"], "s1", "--json")
    assert reverted.code == 0, reverted.err
    assert reverted.json() == {
        "schema": 1, "command": "revert", "volume": vol["id"], "snapshot": "s1", "reverted": True
    }  # fmt: skip
    assert "after-s1" not in ctl.read_disk(backing, key)["tokens"]

    deleted = cli("delete", f"volume-{vol['id']}", "s1")
    assert (deleted.code, deleted.out) == (0, f"deleted snapshot s1 of volume-{vol['id']}\n")
    again = cli("delete", vol["id"], "s1", "--json")
    assert again.code == 0
    assert again.json()["deleted"] is False
    assert cli("list", vol["id"], "--json").json()["snapshots"] == []


def _disk_key(cli: Cli, volume_id: str) -> int:
    key: int = cli("list", volume_id, "--json").json()["backing"]["disk"]["key"]
    return key


@pytest.mark.cassette
def test_consolidate_dry_run_then_consolidate(cli: Cli) -> None:
    ctl = cli.target.ctl
    seeded = ctl.scenario("attached-volume-moved")
    vol = seeded["volumes"][0]
    ctl.reset_calls()
    plan = cli("consolidate", vol["id"], "--dry-run", "--json")
    assert plan.code == 0, plan.err
    assert tasks_started(ctl.calls()) == {}
    assert {s["step"] for s in plan.json()["plan"]} >= {"relocate_backing", "swap_backing_disk"}

    done = cli("consolidate", vol["id"])
    assert done.code == 0, done.err
    assert done.out.startswith(f"consolidated volume-{vol['id']}\n")
    after = cli("check", vol["id"], "--json").json()["volumes"][0]
    assert after["duplicated"] is False
    assert after["backing"]["disk"]["path"] == after["instance"]["disk"]["path"]
    assert vol["vmdk"] not in ctl.files("ds-shared-1")  # the stale copy is gone

    nothing = cli("consolidate", vol["id"], "--dry-run")
    assert nothing.code == 0
    assert "note: nothing to consolidate" in nothing.out


@pytest.mark.cassette
def test_recover_with_nothing_interrupted(cli: Cli) -> None:
    text = cli("recover")
    assert (text.code, text.out) == (
        0,
        f"{NOTHING_TO_RECOVER}\n",
    )
    doc = cli("recover", "--json").json()
    assert doc == {"schema": 1, "command": "recover", "workflows": []}


@pytest.mark.live
def test_progress_bars_on_a_terminal_fed_by_task_progress(cli: Cli) -> None:
    ctl = cli.target.ctl
    vol = ctl.scenario("available-volume")["volumes"][0]
    ctl.set_task_time("CreateSnapshot_Task", 400)
    try:
        ctl.reset_calls()
        shown = cli("snapshot", vol["id"], "--name", "p1", tty=True)
        shown_calls = ctl.calls()
        ctl.reset_calls()
        quiet = cli("snapshot", vol["id"], "--name", "p2")
        quiet_calls = ctl.calls()
    finally:
        ctl.reset_timing()
    assert shown.code == quiet.code == 0
    # Bars need a progress filter per task (created and destroyed: 2 round
    # trips); with nobody to see them, the run creates only its task
    # watcher's filter. (Waits are not compared: they depend on timing.)
    assert (shown_calls["CreateFilter"], shown_calls["DestroyPropertyFilter"]) == (2, 1)
    assert (quiet_calls["CreateFilter"], quiet_calls.get("DestroyPropertyFilter", 0)) == (1, 0)
    assert "[" in shown.err
    assert "100%" in shown.err
    percentages = [int(chunk.rsplit("]", 1)[1].strip(" %\n")) for chunk in
                   shown.err.split("\r") if "]" in chunk]  # fmt: skip
    assert percentages == sorted(percentages)
    assert len(set(percentages)) >= 2
    assert quiet.err == ""


@pytest.mark.cassette
def test_repeated_snapshot_says_already_exists_and_changes_nothing(cli: Cli) -> None:
    ctl = cli.target.ctl
    seeded = ctl.scenario("attached-volume")
    vol = seeded["volumes"][0]
    first = cli("snapshot", vol["id"], "--name", "r1", "--force", "--json")
    assert first.code == 0, first.err
    assert first.json()["created"] is True
    ctl.reset_calls()
    # A retry, even without --force on the in-use volume, gets the first snapshot.
    again = cli("snapshot", vol["id"], "--name", "r1")
    again_doc = cli("snapshot", vol["id"], "--name", "r1", "--json").json()
    assert tasks_started(ctl.calls()) == {}
    assert again.code == 0, again.err
    moref = first.json()["snapshot"]["moref"]
    assert again.out.startswith(f"volume-{vol['id']}: snapshot r1 ({moref}) already exists (")
    assert again.out.endswith("): nothing was changed\n")
    assert again_doc["created"] is False
    assert again_doc["snapshot"]["moref"] == moref
    assert [s["name"] for s in cli("list", vol["id"], "--json").json()["snapshots"]] == ["r1"]


@pytest.mark.live
def test_consolidate_draws_progress_bars_fed_by_its_tasks(cli: Cli) -> None:
    ctl = cli.target.ctl
    vol = ctl.scenario("attached-volume-moved")["volumes"][0]
    ctl.set_task_time("RelocateVM_Task", 400)
    try:
        shown = cli("consolidate", vol["id"], tty=True)
    finally:
        ctl.reset_timing()
    assert shown.code == 0, shown.err
    bars = [chunk for chunk in shown.err.split("\r") if chunk.startswith("relocate_backing [")]
    assert bars, shown.err
    assert bars[-1].rstrip().endswith("100%")
    steps = {chunk.split(" ", 1)[0].strip() for chunk in shown.err.split("\r") if chunk.strip()}
    assert steps >= {"relocate_backing", "swap_backing_disk", "delete_stale_copy"}
    again = cli("consolidate", vol["id"], "--json")
    assert again.json()["consolidated"] is False


@pytest.mark.live
def test_a_whole_forced_snapshot_run_costs_26_round_trips(cli: Cli) -> None:
    """Everything one `vmdk-snap snapshot --force` sends, connect to logout:
    the 17 of the snapshot itself (tests/library/test_driver_cost.py), 2 to connect
    (RetrieveServiceContent, Login), 4 to set the task watcher up, 3 to close
    (its collector and view, Logout). No terminal, so no progress filters."""
    ctl = cli.target.ctl
    seeded = ctl.scenario("attached-volume")
    ctl.set_default_task_time(0)  # every task ends within one wait
    try:
        ctl.reset_calls()
        run = cli("snapshot", seeded["volumes"][0]["id"], "--name", "s1", "--force")
        calls = ctl.calls()
    finally:
        ctl.reset_timing()
    assert run.code == 0, run.err
    assert sum(calls.values()) == 26, calls
    assert {m: calls[m] for m in ("RetrieveServiceContent", "Login", "Logout")} == {
        "RetrieveServiceContent": 1,
        "Login": 1,
        "Logout": 1,
    }


@pytest.mark.live
def test_compact_dry_run_then_compact(cli: Cli, vc: Target, ops: Any, tmp_path: Path) -> None:
    """What the forced snapshots left is merged once no snapshot holds it."""
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    setup = Driver(ops, journal_path=tmp_path / "setup.sqlite", compact=False)
    setup.create_snapshot(volume, "nightly", force=True)
    held = cli("compact", vol["id"], "--dry-run", "--json").json()
    assert held["plan"] == []
    assert "snapshot nightly of" in held["notes"][0]
    setup.delete_snapshot(volume, "nightly")
    plan = cli("compact", vol["id"], "--dry-run")
    assert plan.code == 0
    assert "repoint_backing_0" in plan.out
    assert "consolidate_instance" in plan.out
    assert ops.get_vm(Moref("VirtualMachine", inst["moref"])).consolidation_needed
    done = cli("compact", vol["id"], "--json")
    assert done.code == 0
    assert done.json()["compacted"] is True
    assert done.json()["instance"]["consolidation_needed"] is False
    again = cli("compact", vol["id"])
    assert again.code == 0
    assert "nothing to compact" in again.out
