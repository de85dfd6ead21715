"""Our workflows and Cinder's own driver on the same volumes (issue 13).

Cinder creates the volumes, Nova-style attach, ``vmdk-snap`` (the operator's
CLI) snapshots and consolidates them, and Cinder's unpatched driver consumes
the results: a volume from our snapshot, a clone after our consolidation, a
delete after our snapshots. What is checked is what users see: tokens in the
volumes, files on the datastores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests.cinder.support import (
    CinderVolume,
    backing,
    cinder,
    cinder_attached,
    cinder_ok,
    files,
    nova_detach,
    snapshot_names,
    tokens,
)
from tests.cli.support import Cli
from tests.conftest import Target
from tests.vsphere import connect, moref, props, task_ok

pytest.importorskip("cinder")

# Each test runs Cinder (or several processes) for tens of seconds: handed out
# first, so that a parallel run does not end waiting on them.
pytestmark = pytest.mark.slow


def attached_volume(vc: Target, instance: str) -> tuple[CinderVolume, str, int]:
    """A volume Cinder creates and Nova attaches to ``instance``: (volume, backing, disk key)."""
    volume = CinderVolume()
    moref_, key = cinder_attached(vc, {"moref": instance}, volume)
    return volume, moref_, key


@pytest.mark.live
def test_a_volume_from_our_forced_snapshot_holds_the_tokens_of_its_moment(
    vc: Target, tmp_path: Path
) -> None:
    inst = vc.ctl.scenario("instance")["instances"][0]
    volume, moref_, key = attached_volume(vc, inst["moref"])
    vc.ctl.write(inst["moref"], key, "before")
    snap = volume.snapshot()
    cli = Cli(vc, tmp_path)
    made = cli("snapshot", volume.id, "--force", "--name", f"snapshot-{snap['id']}")
    assert made.code == 0, made.err
    assert snapshot_names(vc, moref_) == [f"snapshot-{snap['id']}"]
    vc.ctl.write(inst["moref"], key, "after")

    # Cinder finds the snapshot by name on the backing (provider_location
    # empty, the COW shape), full and linked.
    full, linked = CinderVolume(), CinderVolume(volume_type="linked")
    cinder_ok(
        vc,
        ["create_volume_from_snapshot", full.json(), snap],
        ["create_volume_from_snapshot", linked.json(), snap],
    )
    for new in (full, linked):
        new_vm = backing(vc, new.name)
        assert new_vm is not None, new.name
        assert tokens(vc, new_vm) == ["before"], new.name
    # The instance kept writing through all of it.
    assert vc.ctl.read_disk(inst["moref"], key)["tokens"] == ["before", "after"]


@pytest.mark.live
def test_cinder_clones_an_attached_volume_after_our_consolidation_of_a_moved_instance(
    vc: Target, tmp_path: Path
) -> None:
    inst = vc.ctl.scenario("instance")["instances"][0]
    volume, moref_, key = attached_volume(vc, inst["moref"])
    vc.ctl.write(inst["moref"], key, "pre-move")
    with connect(vc) as si:  # storage vMotion: the instance's disks, the volume's with them
        instance = moref(si, "VirtualMachine", inst["moref"])
        dc = props(si, si.RetrieveContent().rootFolder, "childEntity")["childEntity"][0]
        here = props(si, moref(si, "VirtualMachine", moref_), "config.files.vmPathName")
        elsewhere = (
            "ds-shared-1" if "[ds-shared-2]" in here["config.files.vmPathName"] else "ds-shared-2"
        )
        target = next(
            d
            for d in props(si, dc, "datastore")["datastore"]
            if props(si, d, "name")["name"] == elsewhere
        )
        task_ok(si, instance.RelocateVM_Task(vim.vm.RelocateSpec(datastore=target)))
    vc.ctl.write(inst["moref"], key, "post-move")
    assert tokens(vc, moref_) == ["pre-move"]  # the backing's copy diverged

    cli = Cli(vc, tmp_path)
    done = cli("consolidate", volume.id)
    assert done.code == 0, done.err
    assert tokens(vc, moref_) == ["pre-move", "post-move"]

    clone = CinderVolume()
    cinder_ok(vc, ["create_cloned_volume", clone.json(), volume.json()])
    clone_vm = backing(vc, clone.name)
    assert clone_vm is not None
    assert tokens(vc, clone_vm) == ["pre-move", "post-move"]


def forced_snapshots(
    vc: Target, cli: Cli, inst: str, volume: CinderVolume, key: int
) -> list[dict[str, Any]]:
    """Two forced snapshots of an attached volume by ``vmdk-snap``, tokens t0 and t1
    before them and "last" after."""
    snaps = [volume.snapshot() for _ in range(2)]
    for i, snap in enumerate(snaps):
        vc.ctl.write(inst, key, f"t{i}")
        made = cli("snapshot", volume.id, "--force", "--name", f"snapshot-{snap['id']}")
        assert made.code == 0, made.err
    vc.ctl.write(inst, key, "last")
    return snaps


def consolidate_disabled(vc: Target, instance: str) -> bool:
    with connect(vc) as si:
        disabled = props(si, moref(si, "VirtualMachine", instance), "disabledMethod")[
            "disabledMethod"
        ]
    return "ConsolidateVMDisks_Task" in (disabled or [])


@pytest.mark.live
def test_cinder_deletes_a_volume_after_our_snapshots_and_leaves_no_orphan_file(
    vc: Target, tmp_path: Path
) -> None:
    """The way through: our snapshots deleted by vmdk-snap while attached, then
    Nova's detach and Cinder's delete. Not one file is left, the instance is
    as it was."""
    inst = vc.ctl.scenario("instance")["instances"][0]
    before = files(vc)
    volume, moref_, key = attached_volume(vc, inst["moref"])
    cli = Cli(vc, tmp_path)
    snaps = forced_snapshots(vc, cli, inst["moref"], volume, key)
    assert consolidate_disabled(vc, inst["moref"])  # our snapshots hold the instance's files
    for snap in snaps:
        deleted = cli("delete", volume.id, f"snapshot-{snap['id']}")
        assert deleted.code == 0, deleted.err
    assert snapshot_names(vc, moref_) == []
    assert not consolidate_disabled(vc, inst["moref"])  # compacted, Consolidate given back

    nova_detach(vc, inst["moref"], volume, key)
    assert tokens(vc, moref_) == ["t0", "t1", "last"]
    cinder_ok(vc, ["delete_volume", volume.json()])
    assert backing(vc, volume.name) is None
    assert files(vc) == before
    assert vc.ctl.read_disk(inst["moref"], 2000)["tokens"] == [f"seed:{inst['uuid']}"]


@pytest.mark.live
def test_our_snapshots_deleted_by_stock_cinder_after_detach_leave_no_orphan_but_the_instance_deltas(
    vc: Target, tmp_path: Path
) -> None:
    """What does not interoperate fully (README): the stock driver refuses to
    delete a COW-shaped snapshot of an in-use volume, so Cinder deletes ours
    after the detach, without our compaction. Nothing of the volume is left;
    the instance keeps the deltas the forced snapshots left on its disks (in
    use, not orphans) and vSphere's Consolidate stays disabled on it by
    vmdk-snap, saying why."""
    inst = vc.ctl.scenario("instance")["instances"][0]
    before = files(vc)
    volume, moref_, key = attached_volume(vc, inst["moref"])
    snaps = forced_snapshots(vc, Cli(vc, tmp_path), inst["moref"], volume, key)
    (refused,) = cinder(vc, ["delete_snapshot", snaps[0]])[1:]
    assert refused["error"] == "InvalidSnapshot"  # the stock driver, while attached

    nova_detach(vc, inst["moref"], volume, key)
    for snap in snaps:
        snap["volume"] = volume.json()
        cinder_ok(vc, ["delete_snapshot", snap])
    assert snapshot_names(vc, moref_) == []
    assert tokens(vc, moref_) == ["t0", "t1", "last"]
    cinder_ok(vc, ["delete_volume", volume.json()])

    in_use = {
        f
        for p in vc.ctl.chain(inst["moref"])["disks"][0]["chain"]
        for f in (p, p.replace(".vmdk", "-delta.vmdk"), p.replace(".vmdk", "-flat.vmdk"))
    }
    left = files(vc) - before
    assert not [f for f in left if volume.id in f], left
    assert left, "the forced snapshots left deltas on the instance's root disk"
    assert left <= in_use, left - in_use
    assert consolidate_disabled(vc, inst["moref"])
    assert vc.ctl.read_disk(inst["moref"], 2000)["tokens"] == [f"seed:{inst['uuid']}"]
