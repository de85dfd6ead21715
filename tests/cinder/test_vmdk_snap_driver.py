"""vmdk_snap.cinder_driver.VmdkSnapDriver on Cinder's real objects, against the
simulator (issue 16, tier 1).

The driver runs as cinder-volume would run it: in a process of its own,
eventlet-patched, configured through a backend section, with Cinder's own
coordination (file locks under ``state_path``) and our journal under
``state_path``. Volumes are made by Cinder's own code (the subclass keeps it)
and attached as Nova does.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.cinder.children import child_results, run_child, start_child
from tests.cinder.support import (
    EAGER,
    CinderVolume,
    backing,
    cinder_attached,
    cinder_ok,
    disk_of,
    files,
    nova_detach,
    snapdriver,
    snapdriver_ok,
    snapshot_names,
    tokens,
)
from tests.conftest import Target, child_env
from tests.library.test_workflow_faults import _CHILD
from tests.vsphere import connect, virtual_disks
from tests.vsphere import moref as moref_of
from tests.workflow_checks import snapshot_trees, vm
from vmdk_snap.errors import Busy
from vmdk_snap.workflows.coordination import ToozLocks
from vmdk_snap.workflows.journal import Journal

pytest.importorskip("cinder")

# Each test runs Cinder (or several processes) for tens of seconds: handed out
# first, so that a parallel run does not end waiting on them.
pytestmark = pytest.mark.slow


@pytest.mark.live
def test_stats_report_consistent_group_snapshots(vc: Target, tmp_path: Path) -> None:
    (stats,) = snapdriver_ok(vc, tmp_path, ["stats"])
    assert stats["consistent_group_snapshot_enabled"] is True
    assert stats["storage_protocol"] == "vmdk"  # the rest is Cinder's own


@pytest.mark.live
def test_an_in_use_volume_is_snapshotted_attached_and_cinder_builds_a_volume_from_it(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    inst = vc.ctl.scenario("instance")["instances"][0]
    everything = files(vc)
    volume = CinderVolume()
    moref, key = cinder_attached(vc, inst, volume)
    vc.ctl.write(inst["moref"], key, "before")
    (inst_tree,) = snapshot_trees(ops, inst["moref"])
    snap = volume.snapshot()
    vc.ctl.reset_bytes_copied()
    (update,) = snapdriver_ok(vc, tmp_path, ["create_snapshot", snap])
    assert update is None  # the stock COW shape: no provider_location
    assert snapshot_names(vc, moref) == [f"snapshot-{snap['id']}"]
    assert vc.ctl.bytes_copied()["total"] == 0
    assert snapshot_trees(ops, inst["moref"]) == [inst_tree]
    vc.ctl.write(inst["moref"], key, "after")

    # Cinder's own create_volume_from_snapshot (kept by the subclass) uses it.
    new = CinderVolume()
    snapdriver_ok(vc, tmp_path, ["create_volume_from_snapshot", new.json(), snap])
    new_vm = backing(vc, new.name)
    assert new_vm is not None
    assert tokens(vc, new_vm) == ["before"]

    # Deleting it while attached works (the stock driver refuses).
    snapdriver_ok(vc, tmp_path, ["delete_snapshot", snap])
    assert snapshot_names(vc, moref) == []
    assert vc.ctl.read_disk(inst["moref"], key)["tokens"] == ["before", "after"]

    # End to end: Nova detaches, Cinder deletes both volumes: nothing is left
    # behind, the instance's own disk as it was.
    nova_detach(vc, inst["moref"], volume, key)
    snapdriver_ok(vc, tmp_path, ["delete_volume", new.json()], ["delete_volume", volume.json()])
    assert files(vc) == everything
    assert vc.ctl.read_disk(inst["moref"], 2000)["tokens"] == [f"seed:{inst['uuid']}"]


@pytest.mark.live
def test_in_transition_and_multi_attached_volumes_are_refused_saying_why(
    vc: Target, tmp_path: Path
) -> None:
    inst = vc.ctl.scenario("instance")["instances"][0]
    volume = CinderVolume()
    moref, _key = cinder_attached(vc, inst, volume)
    before = files(vc)
    moving = {**volume.json(), "attach_status": "attaching"}
    multi = {**volume.json(), "attached_to": [*volume.attached_to, str(uuid.uuid4())]}
    results = snapdriver(
        vc,
        tmp_path,
        ["create_snapshot", {"id": str(uuid.uuid4()), "volume": moving}],
        ["create_snapshot", {"id": str(uuid.uuid4()), "volume": multi}],
    )[1:]
    assert [r["error"] for r in results] == ["InvalidVolume", "InvalidVolume"]
    assert "attachment attaching" in results[0]["message"]
    assert "several instances" in results[1]["message"]
    assert snapshot_names(vc, moref) == []
    assert files(vc) == before


@pytest.mark.live
def test_an_available_volume_snapshot_and_revert(vc: Target, tmp_path: Path) -> None:
    volume = CinderVolume()
    cinder_ok(vc, ["create_volume", volume.json()], **EAGER)
    moref = backing(vc, volume.name)
    assert moref is not None
    key = int(disk_of(vc, moref).key)
    vc.ctl.write(moref, key, "kept")
    snap = volume.snapshot()
    snapdriver_ok(vc, tmp_path, ["create_snapshot", snap])
    vc.ctl.write(moref, key, "undone")
    snapdriver_ok(vc, tmp_path, ["revert_to_snapshot", volume.json(), snap])
    assert tokens(vc, moref) == ["kept"]
    # A template snapshot (made earlier by the stock format) cannot be reverted to.
    template = {**snap, "provider_location": "/DC0/vm/Snapshots/x"}
    (refused,) = snapdriver(vc, tmp_path, ["revert_to_snapshot", volume.json(), template])[1:]
    assert refused["error"] == "InvalidSnapshot"


@pytest.mark.live
def test_a_consistent_group_snapshot_takes_the_instances_members_at_one_moment(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    inst = vc.ctl.scenario("instance")["instances"][0]
    volumes = [CinderVolume(), CinderVolume()]
    placed = [cinder_attached(vc, inst, v) for v in volumes]
    for v, (_moref, key) in zip(volumes, placed, strict=True):
        vc.ctl.write(inst["moref"], key, f"at-{v.id[:8]}")
    snaps = [v.snapshot() for v in volumes]
    group = {"id": str(uuid.uuid4()), "group_type": "consistent", "snapshots": snaps}
    vc.ctl.reset_calls()
    ((model, members),) = snapdriver_ok(vc, tmp_path, ["create_group_snapshot", group])
    calls = vc.ctl.calls()
    assert model == {"status": "available"}
    assert members == [{"id": s["id"], "status": "available"} for s in snaps]
    # One instance snapshot and one per backing: one moment.
    assert calls.get("CreateSnapshot_Task") == 3
    for v, s, (moref, _key) in zip(volumes, snaps, placed, strict=True):
        assert snapshot_names(vc, moref) == [f"snapshot-{s['id']}"]
        node = ops.get_vm(vm(moref)).snapshot_named(f"snapshot-{s['id']}")
        with connect(vc) as si:
            (disk,) = virtual_disks(si, moref_of(si, "VirtualMachineSnapshot", node.ref.value))
        assert vc.ctl.read_snapshot(node.ref.value, disk.key)["tokens"][-1] == f"at-{v.id[:8]}"
    ((model, members),) = snapdriver_ok(vc, tmp_path, ["delete_group_snapshot", group])
    assert model == {"status": "deleted"}
    assert [m["status"] for m in members] == ["deleted", "deleted"]
    for moref, _key in placed:
        assert snapshot_names(vc, moref) == []
    # A group type without the spec: Cinder snapshots the members one by one.
    plain = {**group, "group_type": "plain"}
    (fallback,) = snapdriver(vc, tmp_path, ["create_group_snapshot", plain])[1:]
    assert fallback["error"] == "NotImplementedError"


@pytest.mark.live
def test_bad_input_through_cinder(vc: Target, tmp_path: Path) -> None:
    # A volume without a backing (lazily created, never attached): a logged no-op.
    lazy = CinderVolume()
    assert snapdriver_ok(vc, tmp_path, ["create_snapshot", lazy.snapshot()]) == [None]
    # A volume attached to an instance vCenter does not know.
    volume = CinderVolume(attached_to=[str(uuid.uuid4())])
    cinder_ok(vc, ["create_volume", {**volume.json(), "attached_to": []}], **EAGER)
    moref = backing(vc, volume.name)
    assert moref is not None
    before = files(vc)
    (unknown,) = snapdriver(vc, tmp_path, ["create_snapshot", volume.snapshot()])[1:]
    assert unknown["error"] in {"InvalidVolume", "VolumeBackendAPIException"}, unknown
    assert snapshot_names(vc, moref) == []
    assert files(vc) == before


@pytest.mark.live
def test_wrong_credentials_at_do_setup_name_the_options(vc: Target, tmp_path: Path) -> None:
    (setup,) = snapdriver(vc, tmp_path, vmware_host_password="wrong")
    assert setup["error"] == "VolumeBackendAPIException", setup
    assert "vmware_host_username and vmware_host_password" in setup["message"]


_MARKER_STRATEGY = '''
import os
from pathlib import Path

from vmdk_snap.strategies import DetachedStrategy


class MarkerStrategy(DetachedStrategy):
    """A vendor's strategy: the detached one, leaving a mark of each use."""

    def take(self, state, name, *, quiesce):
        with Path(os.environ["MARKER_FILE"]).open("a") as f:
            f.write(f"{state.volume_id} {name}\\n")
        return super().take(state, name, quiesce=quiesce)
'''


@pytest.mark.live
def test_a_strategy_installed_through_an_entry_point_is_used(vc: Target, tmp_path: Path) -> None:
    """A package adds a strategy without touching this code: an entry point in
    the group vmdk_snap.strategies, named in the backend's options."""
    site = tmp_path / "site"
    (site / "marker_strategy-1.0.dist-info").mkdir(parents=True)
    (site / "marker_strategy.py").write_text(_MARKER_STRATEGY)
    (site / "marker_strategy-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: marker-strategy\nVersion: 1.0\n"
    )
    (site / "marker_strategy-1.0.dist-info" / "entry_points.txt").write_text(
        "[vmdk_snap.strategies]\nmarker = marker_strategy:MarkerStrategy\n"
    )
    marks = tmp_path / "marks.txt"
    volume = CinderVolume()
    cinder_ok(vc, ["create_volume", volume.json()], **EAGER)
    snap = volume.snapshot()
    results = run_child(
        "tests.cinder.cinder_child",
        vc,
        [["create_snapshot", snap]],
        timeout=300,
        options={"vmdk_snap_strategy_available": "marker"},
        extra={"driver": "vmdk_snap", "state_path": str(tmp_path / "state")},
        env={"PYTHONPATH": str(site), "MARKER_FILE": str(marks)},
    )
    assert "error" not in results[1], results
    assert marks.read_text().split() == [volume.id, f"snapshot-{snap['id']}"]
    moref = backing(vc, volume.name)
    assert moref is not None
    assert snapshot_names(vc, moref) == [f"snapshot-{snap['id']}"]
    # An unknown name is a configuration error at setup, naming what is known.
    (setup,) = snapdriver(vc, tmp_path / "state", vmdk_snap_strategy_in_use="nope")
    assert setup["error"] == "InvalidConfigurationValue", setup
    assert "attached" in setup["message"]


@pytest.mark.live
def test_a_vcenter_task_failure_leaves_the_snapshot_error_and_vcenter_as_before(
    clean_sim: Target, ops: Any, tmp_path: Path
) -> None:
    vc = clean_sim
    inst = vc.ctl.scenario("instance")["instances"][0]
    volume = CinderVolume()
    moref, _key = cinder_attached(vc, inst, volume)
    trees = snapshot_trees(ops, inst["moref"], moref)
    before = files(vc)
    vc.ctl.inject_fault("CreateSnapshot_Task", "task", "SystemError", match=f">{moref}<")
    (failed,) = snapdriver(vc, tmp_path, ["create_snapshot", volume.snapshot()])[1:]
    assert failed["error"] == "VolumeBackendAPIException", failed
    assert snapshot_trees(ops, inst["moref"], moref) == trees
    assert files(vc) == before


@pytest.mark.live
def test_a_snapshot_a_linked_clone_depends_on_is_busy(vc: Target, tmp_path: Path) -> None:
    """Cinder puts a snapshot back to available on SnapshotIsBusy."""
    volume = CinderVolume()
    cinder_ok(vc, ["create_volume", volume.json()], **EAGER)
    moref = backing(vc, volume.name)
    assert moref is not None
    snap = volume.snapshot()
    linked = CinderVolume(volume_type="linked")
    (_, _, refused) = snapdriver(
        vc,
        tmp_path,
        ["create_snapshot", snap],
        ["create_volume_from_snapshot", linked.json(), snap],
        ["delete_snapshot", snap],
    )[1:]
    assert refused.get("error") == "SnapshotIsBusy", refused
    assert snapshot_names(vc, moref) == [f"snapshot-{snap['id']}"]
    linked_vm = backing(vc, linked.name)
    assert linked_vm is not None
    # Once the clone is gone, the snapshot deletes.
    snapdriver_ok(vc, tmp_path, ["delete_volume", linked.json()], ["delete_snapshot", snap])
    assert snapshot_names(vc, moref) == []


@pytest.mark.live
def test_a_group_on_two_instances_is_one_moment_per_instance(vc: Target, tmp_path: Path) -> None:
    """What is guaranteed across instances: each instance's members at one
    moment (one instance snapshot each), the instances one after the other."""
    volumes = [CinderVolume(), CinderVolume()]
    morefs = []
    for v in volumes:
        inst = vc.ctl.scenario("instance")["instances"][0]
        moref, key = cinder_attached(vc, inst, v)
        vc.ctl.write(inst["moref"], key, f"at-{v.id[:8]}")
        morefs.append(moref)
    snaps = [v.snapshot() for v in volumes]
    group = {"id": str(uuid.uuid4()), "group_type": "consistent", "snapshots": snaps}
    vc.ctl.reset_calls()
    ((model, members),) = snapdriver_ok(vc, tmp_path, ["create_group_snapshot", group])
    assert model == {"status": "available"}
    assert [m["status"] for m in members] == ["available", "available"]
    assert vc.ctl.calls().get("CreateSnapshot_Task") == 4  # two instances, two backings
    for moref, s in zip(morefs, snaps, strict=True):
        assert snapshot_names(vc, moref) == [f"snapshot-{s['id']}"]


@pytest.mark.live
@pytest.mark.parametrize(
    ("die_at", "ends"), [("snapshot_backing", "rolled_back"), ("hand_over_top", "done")]
)
def test_an_interrupted_workflow_is_recovered_when_the_service_starts(
    vc: Target, ops: Any, tmp_path: Path, die_at: str, ends: str
) -> None:
    """cinder-volume killed in a forced snapshot: do_setup, at the next start,
    rolls it back or finishes it from the journal under state_path."""
    inst = vc.ctl.scenario("instance")["instances"][0]
    volume = CinderVolume()
    moref, _key = cinder_attached(vc, inst, volume)
    (inst_tree,) = snapshot_trees(ops, inst["moref"])
    journal = tmp_path / "vmdk-snap" / "vmdk-sim.sqlite"  # $state_path/vmdk-snap/<backend>.sqlite
    journal.parent.mkdir(parents=True)
    args = [
        vc.url,
        vc.username,
        vc.ca_file,
        str(journal),
        "snapshot",
        volume.id,
        volume.attached_to[0],
        die_at,
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *args],
        env=child_env(VMDK_SNAP_TEST_PASSWORD=vc.password),
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL
    (record,) = Journal(journal).workflows()
    assert record.state == "running"

    (stats,) = snapdriver_ok(vc, tmp_path, ["stats"])  # the service starts again
    assert stats["consistent_group_snapshot_enabled"] is True
    (record,) = Journal(journal).workflows()
    assert record.state == ends
    assert snapshot_trees(ops, inst["moref"]) == [inst_tree]  # no temporary snapshot left
    assert snapshot_names(vc, moref) == (["snapshot-1"] if ends == "done" else [])


@pytest.mark.live
def test_two_backends_with_volumes_on_one_instance_take_turns_through_cinders_coordination(
    clean_sim: Target, ops: Any, etcd: str, tmp_path: Path
) -> None:
    """Two cinder-volume services (own state_path each, as on two hosts), one
    ``[coordination] backend_url`` (a real etcd): the instance's lock is held
    in etcd through Cinder's own coordinator, so the second service waits."""
    vc = clean_sim
    inst = vc.ctl.scenario("instance")["instances"][0]
    volumes = [CinderVolume(), CinderVolume()]
    morefs = [cinder_attached(vc, inst, v)[0] for v in volumes]
    (inst_tree,) = snapshot_trees(ops, inst["moref"])
    snaps = [v.snapshot() for v in volumes]
    vc.ctl.set_task_time("RemoveSnapshot_Task", 8000)  # the first holds the instance a while

    def service(i: int) -> subprocess.Popen[str]:
        extra = {
            "driver": "vmdk_snap",
            "state_path": str(tmp_path / f"host-{i}"),
            "coordination_url": etcd,
        }
        return start_child(
            "tests.cinder.cinder_child", vc, [["create_snapshot", snaps[i]]], extra=extra
        )

    first = service(0)
    locks = ToozLocks(etcd)
    try:
        deadline = time.monotonic() + 120
        while True:  # until the first service holds the instance, in etcd
            probe = locks.instance(inst["uuid"], timeout=0)
            try:
                probe.acquire()
            except Busy as exc:
                held = str(exc)
                break
            probe.release()
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first service never held the instance"
            time.sleep(0.2)
    finally:
        locks.close()
    assert "on host" in held  # the holder named, through the tooz group vmdk-snap
    second = service(1)
    results = [child_results(p, timeout=300) for p in (first, second)]
    for r in results:
        assert "error" not in r[1], r
    # The second waited for the first: both snapshots taken, no temporary
    # snapshot left on the instance, each backing with its own.
    assert results[1][1]["seconds"] > 4, results
    assert snapshot_trees(ops, inst["moref"]) == [inst_tree]
    for moref, s in zip(morefs, snaps, strict=True):
        assert snapshot_names(vc, moref) == [f"snapshot-{s['id']}"]
