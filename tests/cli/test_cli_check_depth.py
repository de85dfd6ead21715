"""``vmdk-snap check`` sees a forced snapshot's refusal coming: the deepest chain it would grow.

Every forced snapshot keeps one delta on every non-independent disk of the
instance, the root disk included, and the driver refuses one when a disk is
31 deltas deep. A volume attached after earlier forced snapshots has a
shallow chain of its own while the instance's root disk is deep: these tests
build exactly that on the simulator (Nova's detach, grown root chain, Nova's
attach) and read what ``check`` tells the operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cli.support import Cli, Result, tasks_started
from tests.conftest import Target
from tests.workflow_checks import vm, volume_disk_key, world
from vmdk_snap.strategies import DEEP_CHAIN_REMEDY
from vmdk_snap.types import DiskSpec

REMEDY = DEEP_CHAIN_REMEDY


@pytest.fixture
def cli(vc: Target, tmp_path: Path) -> Cli:
    return Cli(vc, tmp_path)


def _grow_instance(vc: Target, ops: Any, instance: str, deltas: int) -> None:
    """``deltas`` snapshots of the instance, all but the first removed without
    consolidation: every disk attached now keeps one more delta each, as after
    forced snapshots. The first one stays, so that nothing can compact them
    (an instance snapshot someone took and keeps)."""
    vc.ctl.set_default_task_time(0)
    try:
        ops.create_snapshot(vm(instance), "kept-by-someone")
        for i in range(deltas - 1):
            snap = ops.create_snapshot(vm(instance), f"grow-{i}")
            ops.remove_snapshot(snap, False, False)
    finally:
        vc.ctl.reset_timing()


def _deep_root(vc: Target, ops: Any, deltas: int) -> tuple[dict[str, Any], dict[str, Any], str]:
    """An attached volume with a chain of its own 0 deltas deep, on an instance
    whose root chain is ``deltas`` deep: it was attached after the root grew.

    Returns the instance, the volume and the root disk's current (top) file.
    """
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    key = volume_disk_key(ops, vol, inst["moref"])
    disk = next(d for d in ops.get_vm(vm(inst["moref"])).disks if d.key == key)
    ops.reconfigure_disks(vm(inst["moref"]), remove=[(disk, False)])  # detach, files kept
    _grow_instance(vc, ops, inst["moref"], deltas)
    again = DiskSpec(disk.path, disk.controller_key, disk.unit or 0, disk.capacity_kb, disk.uuid)
    ops.reconfigure_disks(vm(inst["moref"]), add=[again])  # attach it again
    root = next(d for d in ops.get_vm(vm(inst["moref"])).disks if d.base == inst["root_vmdk"])
    assert root.depth == deltas
    return inst, vol, root.path


def _check(cli: Cli, volume_id: str) -> tuple[dict[str, str], dict[str, Any]]:
    """``check VOLUME`` as text fields (continuation lines kept) and its --json volume,
    asserting that it started no task in vCenter."""
    ctl = cli.target.ctl
    ctl.reset_calls()
    text, doc = cli("check", volume_id), cli("check", volume_id, "--json")
    calls = ctl.calls()
    assert tasks_started(calls) == {}
    assert calls.get("RetrievePropertiesEx", 0) > 0  # it did read vCenter
    assert text.code == doc.code == 0, text.err + doc.err
    return _fields(text), doc.json()["volumes"][0]


def _fields(r: Result) -> dict[str, str]:
    fields: dict[str, str] = {}
    name = ""
    for line in r.out.splitlines():
        if line.startswith(" "):
            fields[name] += "\n" + line.strip()
        else:
            name, value = line.split(":", 1)
            fields[name] = value.strip()
    return fields


@pytest.mark.cassette
def test_check_gives_no_depth_advice_on_a_shallow_chain(cli: Cli) -> None:
    seeded = cli.target.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]

    fields, doc = _check(cli, vol["id"])

    assert fields["Chain depth"] == "0"
    # All disks are base disks: the root disk, the instance's first, is named.
    assert fields["Deepest chain"] == f"0 deltas: {inst['root_vmdk']}"
    assert fields["Forced snapshots left"] == "31"
    assert fields["Advice"] == "none: ready for snapshots"
    assert doc["deepest_chain"] == {"path": inst["root_vmdk"], "depth": 0}
    assert doc["forced_snapshots_left"] == 31
    assert doc["advice"] is None


@pytest.mark.live
def test_check_warns_how_many_forced_snapshots_are_left_on_a_deep_root_chain(
    cli: Cli, ops: Any
) -> None:
    vc = cli.target
    inst, vol, root = _deep_root(vc, ops, 28)
    before = world(vc, ops, inst["moref"], vol["moref"])

    fields, doc = _check(cli, vol["id"])

    assert world(vc, ops, inst["moref"], vol["moref"]) == before
    # The volume's own chain says nothing is wrong; the root disk is the limit.
    assert fields["Chain depth"] == "0"
    assert fields["Deepest chain"] == f"28 deltas: {root}"
    assert fields["Forced snapshots left"] == "3"
    expected = (
        f"3 forced snapshots left before they are refused: {root} is 28 deltas deep and "
        "vSphere allows 32 (each adds a delta to every disk of the instance); to make room, "
        + REMEDY
    )
    assert fields["Advice"] == expected
    assert doc["depth"] == 0
    assert doc["deepest_chain"] == {"path": root, "depth": 28}
    assert doc["forced_snapshots_left"] == 3
    assert doc["advice"] == expected

    # A forced snapshot uses one up: check counts down with the root chain.
    snap = cli("snapshot", vol["id"], "--name", "snap-1", "--force")
    assert snap.code == 0, snap.err
    fields, doc = _check(cli, vol["id"])
    assert doc["deepest_chain"]["depth"] == 29
    assert doc["forced_snapshots_left"] == 2
    assert fields["Advice"].startswith(
        f"2 forced snapshots left before they are refused: {doc['deepest_chain']['path']} "
        "is 29 deltas deep"
    )


@pytest.mark.live
def test_check_says_the_next_forced_snapshot_will_be_refused_and_what_to_do(
    cli: Cli, ops: Any
) -> None:
    vc = cli.target
    inst, vol, root = _deep_root(vc, ops, 31)
    before = world(vc, ops, inst["moref"], vol["moref"])

    fields, doc = _check(cli, vol["id"])

    assert world(vc, ops, inst["moref"], vol["moref"]) == before
    expected = (
        f"the next forced snapshot will be refused: {root} is 31 deltas deep and "
        f"vSphere allows 32; {REMEDY}"
    )
    assert fields["Chain depth"] == "0"
    assert fields["Forced snapshots left"] == "0"
    assert fields["Advice"] == expected
    assert doc["forced_snapshots_left"] == 0
    assert doc["deepest_chain"] == {"path": root, "depth": 31}
    assert doc["advice"] == expected

    # check was right: the driver refuses, with the same remedy, and changes nothing.
    refused = cli("snapshot", vol["id"], "--name", "snap-1", "--force")
    assert refused.code == 4
    assert f"31 deltas deep ({root})" in refused.line
    assert REMEDY in refused.line
    assert world(vc, ops, inst["moref"], vol["moref"]) == before


@pytest.mark.live
def test_duplicated_chain_advice_comes_before_the_refusal_ahead(cli: Cli, ops: Any) -> None:
    vc = cli.target
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    # Attached all along: the volume's disk on the instance grew too, and
    # its backing still points at the base file (a duplicated chain).
    _grow_instance(vc, ops, inst["moref"], 31)
    root = next(d for d in ops.get_vm(vm(inst["moref"])).disks if d.base == inst["root_vmdk"])

    fields, doc = _check(cli, vol["id"])

    consolidate = f"duplicated chain: run 'vmdk-snap consolidate {vol['id']}'"
    refusal = (
        f"the next forced snapshot will be refused: {root.path} is 31 deltas deep and "
        f"vSphere allows 32; {REMEDY}"
    )
    assert fields["Duplicated chain"] == "yes"
    assert fields["Chain depth"] == "31"
    assert fields["Advice"] == f"{consolidate}\n{refusal}"
    assert doc["advice"] == f"{consolidate}\n{refusal}"
    assert doc["forced_snapshots_left"] == 0

    every = cli("check", "--all")
    assert f"volume-{vol['id']}: {consolidate}\nvolume-{vol['id']}: {refusal}\n" in every.out


@pytest.mark.live
def test_check_advises_deleting_snapshots_of_an_available_volume_with_a_deep_chain(
    cli: Cli, ops: Any
) -> None:
    vc = cli.target
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.set_default_task_time(0)
    try:
        for i in range(28):  # as the driver snapshots an available volume
            ops.create_snapshot(vm(vol["moref"]), f"s{i}")
    finally:
        vc.ctl.reset_timing()
    (disk,) = ops.get_vm(vm(vol["moref"])).disks

    fields, doc = _check(cli, vol["id"])

    expected = (
        f"{disk.path} is 28 deltas deep and vSphere allows 32: delete old snapshots of this volume"
    )
    assert fields["Forced snapshots left"] == "-"  # no forced snapshot: it is not attached
    assert fields["Advice"] == expected
    assert doc["forced_snapshots_left"] is None
    assert doc["deepest_chain"] == {"path": disk.path, "depth": 28}
    assert doc["advice"] == expected

    # Deleting one merges its delta (consolidate=True): the advice goes.
    assert cli("delete", vol["id"], "s0").code == 0
    fields, doc = _check(cli, vol["id"])
    assert doc["deepest_chain"]["depth"] == 27
    assert doc["advice"] is None
    assert fields["Advice"] == "none: ready for snapshots"


@pytest.mark.live
def test_check_says_when_snapshots_are_copied_out_and_what_that_copies(cli: Cli) -> None:
    seeded = cli.target.ctl.scenario("attached-volume")
    vol = seeded["volumes"][0]
    fields, doc = _check(cli, vol["id"])
    assert "Copy-out" not in fields  # no snapshot to copy
    assert doc["copy_out"] is None

    made = cli("snapshot", vol["id"], "--name", "kept", "--force")
    assert made.code == 0, made.err
    fields, doc = _check(cli, vol["id"])
    # The forced snapshot left one delta on the volume's chain: the volume's
    # base and that delta are what a copy-out would copy.
    assert fields["Copy-out"] == (
        "at 14 deltas (now 1) copies this volume's snapshots out: one copy of the volume's "
        "base (at most its capacity, 0.000977 GiB, as allocated) and 1 delta"
    )
    assert doc["copy_out"] == {
        "at_depth": 14,
        "depth": 1,
        "copies": fields["Copy-out"].split(": ", 1)[1],
    }
