"""Cinder's real VolumeManager drives our driver, on a Cinder database (issue 16, tier 2).

The statuses are the ones Cinder's database ends with; vCenter is checked on
the simulator.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.cinder.children import run_child
from tests.cinder.support import (
    EAGER,
    CinderVolume,
    backing,
    cinder_attached,
    cinder_ok,
    files,
    snapshot_names,
)
from tests.conftest import Target

pytest.importorskip("cinder")

# Each test runs Cinder (or several processes) for tens of seconds: handed out
# first, so that a parallel run does not end waiting on them.
pytestmark = pytest.mark.slow


def manager(vc: Target, state: Path, *calls: list[Any]) -> list[dict[str, Any]]:
    """Run ``calls`` through Cinder's VolumeManager with our driver; their results."""
    results = run_child(
        "tests.cinder.manager_child", vc, list(calls), timeout=300, extra={"state_path": str(state)}
    )
    for call, result in zip(calls, results, strict=True):
        assert "error" not in result, (call[0], result)
    return [r["result"] for r in results]


@pytest.mark.live
def test_the_manager_snapshots_an_in_use_volume_deletes_it_attached_and_reverts(
    vc: Target, tmp_path: Path
) -> None:
    inst = vc.ctl.scenario("instance")["instances"][0]
    volume = CinderVolume()
    moref, key = cinder_attached(vc, inst, volume)
    vc.ctl.write(inst["moref"], key, "t1")
    snap = volume.snapshot()
    (made,) = manager(vc, tmp_path, ["create_snapshot", snap])
    assert made == {"status": "available"}
    assert snapshot_names(vc, moref) == [f"snapshot-{snap['id']}"]
    (gone,) = manager(vc, tmp_path, ["create_snapshot", snap], ["delete_snapshot", snap])[1:]
    assert gone == {"status": "deleted"}
    assert snapshot_names(vc, moref) == []


@pytest.mark.live
def test_a_failing_snapshot_ends_error_with_nothing_changed(
    clean_sim: Target, tmp_path: Path
) -> None:
    vc = clean_sim
    inst = vc.ctl.scenario("instance")["instances"][0]
    volume = CinderVolume()
    moref, _key = cinder_attached(vc, inst, volume)
    before = files(vc)
    vc.ctl.inject_fault("CreateSnapshot_Task", "task", "SystemError", match=f">{moref}<")
    (failed,) = manager(vc, tmp_path, ["create_snapshot", volume.snapshot()])
    assert failed["status"] == "error", failed
    assert snapshot_names(vc, moref) == []
    assert files(vc) == before


@pytest.mark.live
def test_the_manager_reverts_an_available_volume(vc: Target, tmp_path: Path) -> None:
    volume = CinderVolume()
    cinder_ok(vc, ["create_volume", volume.json()], **EAGER)
    moref = backing(vc, volume.name)
    assert moref is not None
    key = int(vc.ctl.chain(moref)["disks"][0]["disk"])
    vc.ctl.write(moref, key, "kept")
    snap = volume.snapshot()
    manager(vc, tmp_path, ["create_snapshot", snap])
    vc.ctl.write(moref, key, "undone")
    (reverted,) = manager(vc, tmp_path, ["create_snapshot", snap], ["revert_to_snapshot", snap])[1:]
    assert reverted == {"volume": "available"}
    assert vc.ctl.read_disk(moref, key)["tokens"] == ["kept"]


@pytest.mark.live
def test_the_managers_consistent_group_snapshot_members_end_available(
    vc: Target, tmp_path: Path
) -> None:
    inst = vc.ctl.scenario("instance")["instances"][0]
    volumes = [CinderVolume(), CinderVolume()]
    morefs = [cinder_attached(vc, inst, v)[0] for v in volumes]
    snaps = [v.snapshot() for v in volumes]
    group = {"id": str(uuid.uuid4()), "group_type": "consistent", "snapshots": snaps}
    vc.ctl.reset_calls()
    (result,) = manager(vc, tmp_path, ["create_group_snapshot", group])
    assert result == {
        "group_snapshot": "available",
        "members": ["available", "available"],
        "error": None,
    }
    assert vc.ctl.calls().get("CreateSnapshot_Task") == 3  # one moment: one instance snapshot
    for moref, s in zip(morefs, snaps, strict=True):
        assert snapshot_names(vc, moref) == [f"snapshot-{s['id']}"]
