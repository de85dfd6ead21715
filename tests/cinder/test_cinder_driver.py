"""Cinder's own VMwareVcVmdkDriver against the simulator (issue 13).

Installed from PyPI and unpatched, it runs in a process of its own patched by
eventlet as cinder-volume is (:mod:`tests.cinder.cinder_child`), on Cinder's
real objects; only its configuration is ours. Each test checks what an
operator would see in vCenter: backings, files, snapshot trees, and the
tokens a guest wrote.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.cinder.support import (
    COW,
    EAGER,
    CinderVolume,
    backing,
    cinder,
    cinder_ok,
    disk_of,
    files,
    nova_attach,
    snapshot_names,
    tokens,
)
from tests.conftest import Target

pytest.importorskip("cinder")

# Each test runs Cinder (or several processes) for tens of seconds: handed out
# first, so that a parallel run does not end waiting on them.
pytestmark = pytest.mark.slow


def created(vc: Target, volume: CinderVolume, **options: Any) -> str:
    """Cinder creates ``volume``'s backing (not lazily); its moref."""
    cinder_ok(vc, ["create_volume", volume.json()], **{**EAGER, **options})
    moref = backing(vc, volume.name)
    assert moref is not None
    return moref


def attached(vc: Target, instance: dict[str, Any], volume: CinderVolume) -> int:
    """Cinder's initialize_connection, then Nova's attach; the instance's disk key."""
    (connection,) = cinder_ok(
        vc, ["initialize_connection", volume.json(), {"instance": instance["moref"]}]
    )
    return nova_attach(vc, instance["moref"], volume, connection)


@pytest.mark.live
def test_do_setup_and_stats(vc: Target) -> None:
    """do_setup logs in, finds or registers Cinder's extension, reads the API version."""
    setup, stats = cinder(vc, ["stats"])
    assert setup["result"]["vc_version"] == "6.5.0"  # what the simulator reports
    assert stats["result"]["storage_protocol"] == "vmdk"
    assert stats["result"]["vendor_name"] == "VMware"
    # A second service (another cinder-volume) finds the extension registered.
    (again,) = cinder(vc)
    assert again["result"]["vc_version"] == "6.5.0"


@pytest.mark.live
def test_create_volume_lazily_then_on_attach_and_delete_it(vc: Target) -> None:
    inst = vc.ctl.scenario("instance")["instances"][0]
    before = files(vc)
    volume = CinderVolume(size=2)
    cinder_ok(vc, ["create_volume", volume.json()])  # vmware_lazy_create: no backing yet
    assert backing(vc, volume.name) is None

    key = attached(vc, inst, volume)  # initialize_connection makes it on the instance's host
    moref = backing(vc, volume.name)
    assert moref is not None
    disk = disk_of(vc, moref)
    assert disk.backing.uuid == volume.id  # Cinder sets the disk's uuid to the volume's id
    assert disk.capacityInKB == 2 * 1024 * 1024
    vc.ctl.write(inst["moref"], key, "through-the-instance")
    assert tokens(vc, moref) == ["through-the-instance"]

    new = files(vc) - before
    assert any(f.endswith(f"{volume.name}/{volume.name}.vmdk") for f in new), new


@pytest.mark.live
def test_delete_volume_removes_every_file_of_its_backing(vc: Target) -> None:
    before = files(vc)
    volume = CinderVolume()
    created(vc, volume)
    assert files(vc) - before
    cinder_ok(vc, ["delete_volume", volume.json()])
    assert backing(vc, volume.name) is None
    assert files(vc) == before
    # A volume without a backing is a logged no-op, as Cinder documents.
    cinder_ok(vc, ["delete_volume", volume.json()])


@pytest.mark.live
def test_cow_snapshot_then_volumes_from_it_full_and_linked(vc: Target) -> None:
    source = CinderVolume()
    moref = created(vc, source)
    key = int(disk_of(vc, moref).key)
    vc.ctl.write(moref, key, "t1")
    snap = source.snapshot()
    assert cinder_ok(vc, ["create_snapshot", snap], **COW) == [None]  # no provider_location
    assert snapshot_names(vc, moref) == [f"snapshot-{snap['id']}"]
    vc.ctl.write(moref, key, "t2")

    full = CinderVolume()
    linked = CinderVolume(volume_type="linked")
    vc.ctl.reset_bytes_copied()
    cinder_ok(
        vc,
        ["create_volume_from_snapshot", full.json(), snap],
        ["create_volume_from_snapshot", linked.json(), snap],
        **COW,
    )
    full_vm, linked_vm = backing(vc, full.name), backing(vc, linked.name)
    assert full_vm
    assert linked_vm
    assert tokens(vc, full_vm) == ["t1"]
    assert tokens(vc, linked_vm) == ["t1"]
    full_chain = vc.ctl.chain(full_vm)["disks"][0]["chain"]
    linked_chain = vc.ctl.chain(linked_vm)["disks"][0]["chain"]
    assert len(full_chain) == 1
    assert full.name in full_chain[0]
    # A linked clone is a delta in its own directory on the snapshot's disk.
    assert len(linked_chain) == 2
    assert linked.name in linked_chain[0]
    assert linked_chain[1] == vc.ctl.chain(moref)["disks"][0]["chain"][1]
    copied = vc.ctl.bytes_copied()["files"]
    assert [f for f in copied if full.name in f]
    assert not [f for f in copied if linked.name in f]
    # The source is as it was.
    assert tokens(vc, moref) == ["t1", "t2"]
    assert snapshot_names(vc, moref) == [f"snapshot-{snap['id']}"]

    # Writes to the new volumes stay theirs.
    vc.ctl.write(linked_vm, int(disk_of(vc, linked_vm).key), "linked-only")
    assert tokens(vc, moref) == ["t1", "t2"]
    assert tokens(vc, full_vm) == ["t1"]

    cinder_ok(vc, ["delete_volume", linked.json()], ["delete_volume", full.json()])
    cinder_ok(vc, ["delete_snapshot", snap], **COW)
    assert snapshot_names(vc, moref) == []
    assert tokens(vc, moref) == ["t1", "t2"]


@pytest.mark.live
def test_cow_revert_to_snapshot(vc: Target) -> None:
    volume = CinderVolume()
    moref = created(vc, volume)
    key = int(disk_of(vc, moref).key)
    vc.ctl.write(moref, key, "kept")
    snap = volume.snapshot()
    cinder_ok(vc, ["create_snapshot", snap], **COW)
    vc.ctl.write(moref, key, "undone")
    cinder_ok(vc, ["revert_to_snapshot", volume.json(), snap], **COW)
    assert tokens(vc, moref) == ["kept"]


@pytest.mark.live
def test_cow_snapshot_of_an_in_use_volume_is_refused_and_changes_nothing(vc: Target) -> None:
    inst = vc.ctl.scenario("instance")["instances"][0]
    volume = CinderVolume()
    moref = created(vc, volume)
    attached(vc, inst, volume)
    before = files(vc)
    calls = vc.ctl.calls()
    (result,) = cinder(vc, ["create_snapshot", volume.snapshot()], **COW)[1:]
    assert result["error"] == "InvalidVolume"
    assert "Snapshot of volume not supported in state: in-use." in result["message"]
    assert snapshot_names(vc, moref) == []
    assert files(vc) == before
    after = vc.ctl.calls()
    assert after.get("CreateSnapshot_Task", 0) == calls.get("CreateSnapshot_Task", 0)


@pytest.mark.live
def test_template_snapshot_of_an_in_use_volume_is_a_full_clone_of_the_instance(vc: Target) -> None:
    """Cinder's default format: the instance is cloned with every other disk removed."""
    inst = vc.ctl.scenario("instance")["instances"][0]
    volume = CinderVolume()
    moref = created(vc, volume)
    key = attached(vc, inst, volume)
    vc.ctl.write(inst["moref"], key, "w1")
    root_before = tokens(vc, inst["moref"], 2000)
    inst_chain = vc.ctl.chain(inst["moref"])

    vc.ctl.reset_bytes_copied()
    snap = volume.snapshot()
    (update,) = cinder_ok(vc, ["create_snapshot", snap])
    location = update["provider_location"]
    assert location.endswith(f"/Volumes/Snapshots/snapshot-{snap['id']}")
    template = backing(vc, f"snapshot-{snap['id']}")
    assert template is not None
    assert tokens(vc, template) == ["w1"]  # only the volume's disk, not the root disk
    copied = vc.ctl.bytes_copied()
    assert copied["total"] > 0
    assert all(f"snapshot-{snap['id']}" in f for f in copied["files"])
    # The instance and the backing are untouched.
    assert vc.ctl.chain(inst["moref"]) == inst_chain
    assert tokens(vc, inst["moref"], 2000) == root_before
    assert snapshot_names(vc, moref) == []

    vc.ctl.write(inst["moref"], key, "w2")
    snap["provider_location"] = location
    from_template = CinderVolume()
    cinder_ok(vc, ["create_volume_from_snapshot", from_template.json(), snap])
    new_vm = backing(vc, from_template.name)
    assert new_vm is not None
    assert tokens(vc, new_vm) == ["w1"]
    assert disk_of(vc, new_vm).backing.uuid == from_template.id

    before = files(vc)
    cinder_ok(vc, ["delete_snapshot", snap])
    assert backing(vc, f"snapshot-{snap['id']}") is None
    assert not [f for f in before - files(vc) if f"snapshot-{snap['id']}" not in f]


@pytest.mark.live
def test_template_snapshot_of_an_available_volume(vc: Target) -> None:
    volume = CinderVolume()
    moref = created(vc, volume)
    vc.ctl.write(moref, int(disk_of(vc, moref).key), "a1")
    snap = volume.snapshot()
    (update,) = cinder_ok(vc, ["create_snapshot", snap])
    template = backing(vc, f"snapshot-{snap['id']}")
    assert template is not None
    assert tokens(vc, template) == ["a1"]
    assert update["provider_location"].endswith(f"snapshot-{snap['id']}")
    assert snapshot_names(vc, moref) == []


@pytest.mark.live
def test_create_cloned_volume_full_linked_and_attached(vc: Target) -> None:
    inst = vc.ctl.scenario("instance")["instances"][0]
    source = CinderVolume()
    moref = created(vc, source)
    vc.ctl.write(moref, int(disk_of(vc, moref).key), "c1")

    full, linked = CinderVolume(), CinderVolume(volume_type="linked")
    cinder_ok(vc, ["create_cloned_volume", full.json(), source.json()])
    cinder_ok(vc, ["create_cloned_volume", linked.json(), source.json()])
    full_vm, linked_vm = backing(vc, full.name), backing(vc, linked.name)
    assert full_vm
    assert linked_vm
    assert tokens(vc, full_vm) == ["c1"]
    assert tokens(vc, linked_vm) == ["c1"]
    # The linked clone's temporary snapshot is gone from the source; the
    # clone's delta sits on the source's disk.
    assert snapshot_names(vc, moref) == []
    linked_chain = vc.ctl.chain(linked_vm)["disks"][0]["chain"]
    assert len(linked_chain) == 2

    key = attached(vc, inst, source)
    vc.ctl.write(inst["moref"], key, "c2")
    of_attached = CinderVolume()
    cinder_ok(vc, ["create_cloned_volume", of_attached.json(), source.json()])
    clone_vm = backing(vc, of_attached.name)
    assert clone_vm is not None
    assert tokens(vc, clone_vm) == ["c1", "c2"]  # read through the instance, as it runs

    # A linked clone of an attached volume is refused by Cinder itself.
    (refused,) = cinder(
        vc, ["create_cloned_volume", CinderVolume(volume_type="linked").json(), source.json()]
    )[1:]
    assert refused["error"] == "InvalidVolume"


@pytest.mark.live
def test_extend_volume(vc: Target) -> None:
    volume = CinderVolume(size=1)
    moref = created(vc, volume)
    vc.ctl.write(moref, int(disk_of(vc, moref).key), "e1")
    cinder_ok(vc, ["extend_volume", volume.json(), 3])
    assert disk_of(vc, moref).capacityInKB == 3 * 1024 * 1024
    assert tokens(vc, moref) == ["e1"]
