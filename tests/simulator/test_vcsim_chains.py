"""The simulator models disk chains like vCenter (issue 3, points 1-4, 7, 8).

Each test drives the simulator with plain pyVmomi and checks what a user of
vCenter would see: disk backings and their parents, snapshot configs, the
files on the datastores and the data (tokens) each disk or snapshot holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from tests.conftest import Target
from tests.vsphere import (
    add_disk_change,
    connect,
    moref,
    props,
    remove_disk_change,
    run_task,
    task_fault,
    task_ok,
    virtual_disks,
    watch_task,
)
from tests.workflow_checks import powered_off
from vmdk_snap.testing import Simulator


@pytest.fixture
def timing(vc: Target) -> Iterator[None]:
    """Leave the simulator's default timing behind, whatever the test set."""
    yield
    vc.ctl.reset_timing()


# -- helpers -----------------------------------------------------------------


def _vm(si: Any, value: str) -> Any:
    return moref(si, "VirtualMachine", value)


def _available(vc: Target) -> dict[str, Any]:
    """Seed an available volume: its backing VM with the volume's one disk."""
    volume: dict[str, Any] = vc.ctl.scenario("available-volume")["volumes"][0]
    return volume


def _attached(vc: Target) -> tuple[dict[str, Any], dict[str, Any]]:
    """Seed a running instance with one volume attached: (instance, volume)."""
    seeded = vc.ctl.scenario("attached-volume")
    return seeded["instances"][0], seeded["volumes"][0]


def _seed(volume: dict[str, Any]) -> str:
    """The token a seeded volume's disk holds from the start."""
    return f"seed:{volume['id']}"


def _delta(vmdk: str, n: int) -> str:
    """The n-th delta vSphere makes beside a disk: x.vmdk -> x-00000n.vmdk."""
    return vmdk.replace(".vmdk", f"-{n:06d}.vmdk")


def _disk(si: Any, obj: Any, key: int) -> Any:
    return next(d for d in virtual_disks(si, obj) if d.key == key)


def _chain(backing: Any) -> list[str]:
    """A backing's file names, top first."""
    out = []
    while backing is not None:
        out.append(str(backing.fileName))
        backing = backing.parent
    return out


def _key_of(si: Any, vm: Any, vmdk: str) -> int:
    """The device key of the VM's disk whose chain bottom is ``vmdk``."""
    return int(next(d.key for d in virtual_disks(si, vm) if _chain(d.backing)[-1] == vmdk))


def _dir(path: str) -> str:
    """ "[ds] a/b.vmdk" -> "[ds] a"."""
    return path.rsplit("/", 1)[0]


def _snapshot(si: Any, vm: Any, name: str, quiesce: bool = False) -> Any:
    return task_ok(si, vm.CreateSnapshot_Task(name, "", False, quiesce)).result


def _tokens(vc: Target, vm: str, key: int) -> list[str]:
    return vc.ctl.read_disk(vm, key)["tokens"]


# -- 1. snapshots make delta disks ---------------------------------------------


@pytest.mark.cassette
def test_snapshot_makes_delta_disks_in_the_vm_directory(vc: Target) -> None:
    inst, vol = _attached(vc)
    name = inst["name"]
    vol_name = vol["name"]
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        root_key = _key_of(si, vm, inst["root_vmdk"])
        vol_key = _key_of(si, vm, vol["vmdk"])
        before = {d.key: d.backing.fileName for d in virtual_disks(si, vm)}

        info = task_ok(si, vm.CreateSnapshot_Task("s1", "", False, False))
        # The task's entity is the VM (pyVmomi 9 could read the whole info).
        assert info.entity._moId == inst["moref"]
        snap = info.result

        after = {d.key: d for d in virtual_disks(si, vm)}
        root_delta = f"[ds-shared-1] {name}/{name}-000001.vmdk"
        # The volume's delta goes into the instance's directory, not beside
        # the volume's VMDK.
        vol_delta = f"[ds-shared-1] {name}/{vol_name}-000001.vmdk"
        assert _chain(after[root_key].backing) == [root_delta, inst["root_vmdk"]]
        assert _chain(after[vol_key].backing) == [vol_delta, vol["vmdk"]]
        assert after[vol_key].backing.uuid == vol["disk_uuid"]

        # The snapshot's config keeps the old backings.
        kept = {d.key: _chain(d.backing) for d in virtual_disks(si, snap)}
        assert kept == {k: [v] for k, v in before.items()}
        tree = props(si, vm, "snapshot")["snapshot"]
        assert tree.currentSnapshot._moId == snap._moId
        assert [n.name for n in tree.rootSnapshotList] == ["s1"]

    files = vc.ctl.files("ds-shared-1")
    for delta in (root_delta, vol_delta):
        assert delta in files
        assert delta.replace(".vmdk", "-delta.vmdk") in files
    # The guest writes into the delta; the snapshot and the backing keep
    # the volume as it was.
    assert vc.ctl.write(inst["moref"], vol_key, "after-s1") == vol_delta
    seed = _seed(vol)
    assert vc.ctl.read_disk(inst["moref"], vol_key) == {
        "chain": [vol_delta, vol["vmdk"]],
        "tokens": [seed, "after-s1"],
    }
    assert vc.ctl.read_snapshot(snap._moId, vol_key)["tokens"] == [seed]
    # A file read follows the descriptors' parent hints.
    assert vc.ctl.read_file(vol_delta)["chain"] == [vol_delta, vol["vmdk"]]
    assert vc.ctl.read_file(vol["vmdk"])["tokens"] == [seed]


@pytest.mark.live
def test_delta_files_are_self_describing(vc: Target, simulator: Simulator) -> None:
    vol = _available(vc)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        _snapshot(si, vm, "s1")
        _snapshot(si, vm, "s2")
        top = virtual_disks(si, vm)[0].backing
    assert simulator.info is not None
    root = Path(simulator.info.root)
    d2 = (root / "ds-shared-1" / top.fileName.split("] ", 1)[1]).read_text()
    assert 'createType="vmfsSparse"' in d2
    assert f'parentFileNameHint="{top.parent.fileName}"' in d2
    assert "-000002-delta.vmdk" in d2
    base = (root / "ds-shared-1" / vol["vmdk"].split("] ", 1)[1]).read_text()
    assert 'createType="vmfs"' in base
    assert "parentFileNameHint" not in base


@pytest.mark.live
def test_independent_disks_are_left_out_of_snapshots(vc: Target) -> None:
    vol = _available(vc)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        disk = virtual_disks(si, vm)[0]
        controller = disk.controllerKey
        extra = add_disk_change(
            controller, f"{_dir(vol['vmdk'])}/scratch.vmdk", unit=3, file_operation="create"
        )
        extra.device.backing.diskMode = "independent_persistent"
        extra.device.capacityInKB = 1024
        task_ok(si, vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[extra])))
        modes = {d.backing.fileName: d.backing.diskMode for d in virtual_disks(si, vm)}
        assert modes[f"{_dir(vol['vmdk'])}/scratch.vmdk"] == "independent_persistent"

        _snapshot(si, vm, "s1")

        chains = {d.backing.diskMode: _chain(d.backing) for d in virtual_disks(si, vm)}
    assert chains["independent_persistent"] == [f"{_dir(vol['vmdk'])}/scratch.vmdk"]
    assert len(chains["persistent"]) == 2
    assert not any("scratch-0000" in f for f in vc.ctl.files("ds-shared-1"))


@pytest.mark.live
def test_snapshot_depth_is_limited_to_32(vc: Target, timing: None) -> None:
    vol = _available(vc)
    vc.ctl.set_task_time("CreateSnapshot_Task", 1)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        for i in range(32):
            _snapshot(si, vm, f"s{i}")
        before = _chain(virtual_disks(si, vm)[0].backing)
        assert len(before) == 33

        fault = task_fault(si, vm.CreateSnapshot_Task("s32", "", False, False))

        assert isinstance(fault, vim.fault.TooManySnapshotLevels)
        assert _chain(virtual_disks(si, vm)[0].backing) == before


@pytest.mark.live
def test_delta_chain_depth_is_limited_too(vc: Target, timing: None) -> None:
    """Snapshots removed without consolidation leave deltas that still count."""
    vol = _available(vc)
    vc.ctl.set_task_time("CreateSnapshot_Task", 1)
    vc.ctl.set_task_time("RemoveSnapshot_Task", 1)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        for i in range(32):
            snap = _snapshot(si, vm, f"s{i}")
            task_ok(si, snap.RemoveSnapshot_Task(False, False))
        before = _chain(virtual_disks(si, vm)[0].backing)
        assert len(before) == 33
        assert props(si, vm, "snapshot")["snapshot"] is None

        fault = task_fault(si, vm.CreateSnapshot_Task("one-too-many", "", False, False))

        assert isinstance(fault, vim.fault.TooManySnapshotLevels)
        assert _chain(virtual_disks(si, vm)[0].backing) == before


@pytest.mark.cassette
def test_quiesced_snapshot_needs_running_tools(vc: Target) -> None:
    inst, _vol = _attached(vc)
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        fault = task_fault(si, vm.CreateSnapshot_Task("q", "", False, True))
        assert isinstance(fault, vim.fault.ToolsUnavailable)
        assert props(si, vm, "snapshot")["snapshot"] is None
        assert all(len(_chain(d.backing)) == 1 for d in virtual_disks(si, vm))

        vc.ctl.set_tools(inst["moref"], True)
        status = props(si, vm, "guest.toolsRunningStatus")["guest.toolsRunningStatus"]
        assert status == "guestToolsRunning"
        info = task_ok(si, vm.CreateSnapshot_Task("q", "", False, True))
        tree = props(si, vm, "snapshot")["snapshot"]
        assert tree.rootSnapshotList[0].quiesced is True
        assert tree.currentSnapshot._moId == info.result._moId


# -- 2. removing snapshots -------------------------------------------------------


@pytest.mark.cassette
def test_remove_snapshot_consolidates_deltas_into_their_parents(vc: Target) -> None:
    vol = _available(vc)
    vmdk, seed = vol["vmdk"], _seed(vol)
    d1, d2 = _delta(vmdk, 1), _delta(vmdk, 2)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        key = virtual_disks(si, vm)[0].key
        s1 = _snapshot(si, vm, "s1")
        vc.ctl.write(vol["moref"], key, "t1")
        s2 = _snapshot(si, vm, "s2")
        vc.ctl.write(vol["moref"], key, "t2")
        assert _chain(_disk(si, vm, key).backing) == [d2, d1, vmdk]

        info = task_ok(si, s2.RemoveSnapshot_Task(removeChildren=False, consolidate=True))
        assert info.entity._moId == vol["moref"]
        # The newest delta was merged into its parent, which is the top now.
        assert _chain(_disk(si, vm, key).backing) == [d1, vmdk]
        assert _tokens(vc, vol["moref"], key) == [seed, "t1", "t2"]
        assert vc.ctl.read_snapshot(s1._moId, key)["tokens"] == [seed]
        files = vc.ctl.files("ds-shared-1")
        assert d2 not in files
        assert d2.replace(".vmdk", "-delta.vmdk") not in files

        task_ok(si, s1.RemoveSnapshot_Task(removeChildren=False, consolidate=True))
        assert _chain(_disk(si, vm, key).backing) == [vmdk]
        got = props(si, vm, "snapshot", "runtime.consolidationNeeded")
        assert got == {"snapshot": None, "runtime.consolidationNeeded": False}
    assert _tokens(vc, vol["moref"], key) == [seed, "t1", "t2"]
    assert not any("-00000" in f for f in vc.ctl.files("ds-shared-1") if vol["name"] in f)


@pytest.mark.live
def test_remove_snapshot_with_children_merges_everything(vc: Target) -> None:
    vol = _available(vc)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        key = virtual_disks(si, vm)[0].key
        s1 = _snapshot(si, vm, "s1")
        vc.ctl.write(vol["moref"], key, "t1")
        _snapshot(si, vm, "s2")
        vc.ctl.write(vol["moref"], key, "t2")

        task_ok(si, s1.RemoveSnapshot_Task(removeChildren=True, consolidate=True))

        assert props(si, vm, "snapshot")["snapshot"] is None
        assert _chain(_disk(si, vm, key).backing) == [vol["vmdk"]]
    assert _tokens(vc, vol["moref"], key) == [_seed(vol), "t1", "t2"]


@pytest.mark.live
def test_remove_middle_snapshot_keeps_its_children(vc: Target) -> None:
    vol = _available(vc)
    vmdk, seed = vol["vmdk"], _seed(vol)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        key = virtual_disks(si, vm)[0].key
        s1 = _snapshot(si, vm, "s1")
        vc.ctl.write(vol["moref"], key, "t1")
        s2 = _snapshot(si, vm, "s2")
        vc.ctl.write(vol["moref"], key, "t2")

        task_ok(si, s1.RemoveSnapshot_Task(removeChildren=False, consolidate=True))

        tree = props(si, vm, "snapshot")["snapshot"]
        assert [n.snapshot._moId for n in tree.rootSnapshotList] == [s2._moId]
        # s2's delta (t1) was merged into the base; s2 now is the base.
        assert _chain(_disk(si, vm, key).backing) == [
            _delta(vmdk, 2),
            vmdk,
        ]
        assert vc.ctl.read_snapshot(s2._moId, key) == {"chain": [vmdk], "tokens": [seed, "t1"]}
    assert _tokens(vc, vol["moref"], key) == [seed, "t1", "t2"]


@pytest.mark.cassette
def test_remove_without_consolidate_then_consolidate_vm_disks(vc: Target) -> None:
    vol = _available(vc)
    vmdk, seed = vol["vmdk"], _seed(vol)
    d1 = _delta(vmdk, 1)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        key = virtual_disks(si, vm)[0].key
        s1 = _snapshot(si, vm, "s1")
        vc.ctl.write(vol["moref"], key, "t1")

        task_ok(si, s1.RemoveSnapshot_Task(removeChildren=False, consolidate=False))

        got = props(si, vm, "snapshot", "runtime.consolidationNeeded")
        assert got == {"snapshot": None, "runtime.consolidationNeeded": True}
        assert _chain(_disk(si, vm, key).backing) == [d1, vmdk]
        assert d1 in vc.ctl.files("ds-shared-1")

        info = task_ok(si, vm.ConsolidateVMDisks_Task())
        assert info.entity._moId == vol["moref"]
        assert props(si, vm, "runtime.consolidationNeeded") == {
            "runtime.consolidationNeeded": False
        }
        assert _chain(_disk(si, vm, key).backing) == [vmdk]
    files = vc.ctl.files("ds-shared-1")
    assert d1 not in files
    assert d1.replace(".vmdk", "-delta.vmdk") not in files
    assert _tokens(vc, vol["moref"], key) == [seed, "t1"]


@pytest.mark.cassette
def test_merge_into_a_file_a_powered_off_vm_uses_goes_ahead(vc: Target) -> None:
    """A powered-off VM holds no VMFS lock: vSphere merges into a file it
    uses without asking, and that VM then sees the merged data."""
    inst, vol = _attached(vc)
    seed = _seed(vol)
    with connect(vc) as si:
        vm, backing = _vm(si, inst["moref"]), _vm(si, vol["moref"])
        key = _key_of(si, vm, vol["vmdk"])
        snap = _snapshot(si, vm, "s1")
        vc.ctl.write(inst["moref"], key, "t1")
        delta = _disk(si, vm, key).backing.fileName

        # The instance's delta is merged into the volume's VMDK, which the
        # (powered-off) backing VM uses as its disk.
        task_ok(si, snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True))

        assert props(si, vm, "snapshot")["snapshot"] is None
        assert _chain(_disk(si, vm, key).backing) == [vol["vmdk"]]
        assert [d.backing.fileName for d in virtual_disks(si, backing)] == [vol["vmdk"]]
        bkey = virtual_disks(si, backing)[0].key
    assert delta not in vc.ctl.files("ds-shared-1")
    assert vc.ctl.read_file(vol["vmdk"])["tokens"] == [seed, "t1"]
    assert _tokens(vc, vol["moref"], bkey) == [seed, "t1"]


@pytest.mark.cassette
def test_merge_into_a_file_a_running_vm_has_open_is_file_locked(vc: Target) -> None:
    """The backing's delta cannot be merged into the volume's VMDK while the
    running instance has that file open: FileLocked, nothing changed."""
    inst, vol = _attached(vc)
    seed = _seed(vol)
    with connect(vc) as si:
        backing = _vm(si, vol["moref"])
        with powered_off(vc, inst["moref"]):  # running, it locks the file it writes
            snap = _snapshot(si, backing, "s1")
        key = virtual_disks(si, backing)[0].key
        vc.ctl.write(vol["moref"], key, "b1")
        chain = _chain(virtual_disks(si, backing)[0].backing)
        files = vc.ctl.files("ds-shared-1")

        info = run_task(si, snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True))

        assert info.state == "error"
        fault = info.error
        assert isinstance(fault, vim.fault.FileLocked)
        assert fault.file == vol["vmdk"]
        assert info.entity._moId == vol["moref"]
        tree = props(si, backing, "snapshot")["snapshot"]
        assert tree.currentSnapshot._moId == snap._moId
        assert _chain(virtual_disks(si, backing)[0].backing) == chain
    assert vc.ctl.files("ds-shared-1") == files
    assert vc.ctl.read_file(vol["vmdk"])["tokens"] == [seed]
    assert _tokens(vc, vol["moref"], key) == [seed, "b1"]


@pytest.mark.live
def test_consolidate_vm_disks_refuses_to_merge_into_a_file_a_running_vm_has_open(
    vc: Target,
) -> None:
    inst, vol = _attached(vc)
    with connect(vc) as si:
        backing = _vm(si, vol["moref"])
        with powered_off(vc, inst["moref"]):  # running, it locks the file it writes
            snap = _snapshot(si, backing, "s1")
        task_ok(si, snap.RemoveSnapshot_Task(removeChildren=False, consolidate=False))
        chain = _chain(virtual_disks(si, backing)[0].backing)

        fault = task_fault(si, backing.ConsolidateVMDisks_Task())

        assert isinstance(fault, vim.fault.FileLocked)
        assert fault.file == vol["vmdk"]
        assert _chain(virtual_disks(si, backing)[0].backing) == chain
        assert props(si, backing, "runtime.consolidationNeeded") == {
            "runtime.consolidationNeeded": True
        }


# -- 3. revert ---------------------------------------------------------------------


@pytest.mark.cassette
def test_revert_puts_a_fresh_delta_on_the_snapshot_and_deletes_the_old_one(vc: Target) -> None:
    vol = _available(vc)
    vmdk, seed = vol["vmdk"], _seed(vol)
    d1, d2 = _delta(vmdk, 1), _delta(vmdk, 2)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        key = virtual_disks(si, vm)[0].key
        s1 = _snapshot(si, vm, "s1")
        vc.ctl.write(vol["moref"], key, "lost")

        info = task_ok(si, s1.RevertToSnapshot_Task())

        assert info.entity._moId == vol["moref"]
        assert _chain(_disk(si, vm, key).backing) == [d2, vmdk]
        tree = props(si, vm, "snapshot")["snapshot"]
        assert tree.currentSnapshot._moId == s1._moId
    files = vc.ctl.files("ds-shared-1")
    assert d1 not in files
    assert d1.replace(".vmdk", "-delta.vmdk") not in files
    assert d2 in files
    assert _tokens(vc, vol["moref"], key) == [seed]


@pytest.mark.live
def test_revert_keeps_deltas_that_other_snapshots_use(vc: Target) -> None:
    vol = _available(vc)
    vmdk, seed = vol["vmdk"], _seed(vol)
    d1 = _delta(vmdk, 1)
    d2 = _delta(vmdk, 2)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        key = virtual_disks(si, vm)[0].key
        s1 = _snapshot(si, vm, "s1")
        vc.ctl.write(vol["moref"], key, "t1")
        s2 = _snapshot(si, vm, "s2")
        vc.ctl.write(vol["moref"], key, "t2")

        task_ok(si, s1.RevertToSnapshot_Task())

        top = _chain(_disk(si, vm, key).backing)
        assert top[1:] == [vmdk]
        files = vc.ctl.files("ds-shared-1")
        assert d1 in files  # s2 still needs it
        assert d2 not in files  # discarded
        assert vc.ctl.read_snapshot(s2._moId, key)["tokens"] == [seed, "t1"]
        assert _tokens(vc, vol["moref"], key) == [seed]

        task_ok(si, vm.RevertToCurrentSnapshot_Task())
        assert _tokens(vc, vol["moref"], key) == [seed]
        task_ok(si, vm.RemoveAllSnapshots_Task())
        assert props(si, vm, "snapshot")["snapshot"] is None
        assert _chain(_disk(si, vm, key).backing) == [vmdk]
    assert [f for f in vc.ctl.files("ds-shared-1") if "-00000" in f and vol["name"] in f] == []


# -- 4. relocation -------------------------------------------------------------------


@pytest.mark.cassette
def test_storage_vmotion_with_attached_volume_leaves_two_diverged_copies(vc: Target) -> None:
    inst, vol = _attached(vc)
    name, seed = inst["name"], _seed(vol)
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        backing = _vm(si, vol["moref"])
        key = _key_of(si, vm, vol["vmdk"])
        vc.ctl.write(inst["moref"], key, "before-move")
        vc.ctl.reset_bytes_copied()
        target = _datastore(si, "ds-shared-2")

        info = task_ok(si, vm.RelocateVM_Task(vim.vm.RelocateSpec(datastore=target)))

        assert info.entity._moId == inst["moref"]
        moved = f"[ds-shared-2] {name}/{vol['name']}.vmdk"
        assert _chain(_disk(si, vm, key).backing) == [moved]
        assert _disk(si, vm, key).backing.datastore._moId == target._moId
        got = props(si, vm, "config.files.vmPathName", "datastore")
        assert got["config.files.vmPathName"] == f"[ds-shared-2] {name}/{name}.vmx"
        assert [ds._moId for ds in got["datastore"]] == [target._moId]
        # The backing still points at the old copy.
        assert [d.backing.fileName for d in virtual_disks(si, backing)] == [vol["vmdk"]]

    ds1, ds2_files = vc.ctl.files("ds-shared-1"), vc.ctl.files("ds-shared-2")
    assert vol["vmdk"] in ds1
    assert not any(f.startswith(f"[ds-shared-1] {name}/") for f in ds1)
    assert moved in ds2_files
    assert f"[ds-shared-2] {name}/{name}.vmx" in ds2_files
    copied = vc.ctl.bytes_copied()
    data = moved.replace(".vmdk", "-flat.vmdk")
    assert copied["files"][data] == len(f"{seed}\nbefore-move\n")
    assert copied["total"] >= copied["files"][data]

    vc.ctl.write(inst["moref"], key, "after-move")
    assert vc.ctl.read_disk(inst["moref"], key) == {
        "chain": [moved],
        "tokens": [seed, "before-move", "after-move"],
    }
    assert vc.ctl.read_file(vol["vmdk"])["tokens"] == [seed, "before-move"]


def _datastore(si: Any, name: str) -> Any:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.Datastore], True)
    try:
        for ds in props(si, view, "view")["view"]:
            if props(si, ds, "name")["name"] == name:
                return ds
    finally:
        view.DestroyView()
    raise AssertionError(f"no datastore {name}")


def _host(si: Any, name: str) -> Any:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    try:
        for host in props(si, view, "view")["view"]:
            if props(si, host, "name")["name"] == name:
                return host
    finally:
        view.DestroyView()
    raise AssertionError(f"no host {name}")


@pytest.mark.live
def test_relocation_rewrites_every_path_of_a_chain_with_snapshots(
    vc: Target, simulator: Simulator
) -> None:
    vol = _available(vc)
    vmdk, seed = vol["vmdk"], _seed(vol)
    rel = vmdk.split("] ", 1)[1]
    new = f"[ds-shared-2] {rel}"
    new_d1 = _delta(new, 1)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        key = virtual_disks(si, vm)[0].key
        s1 = _snapshot(si, vm, "s1")
        vc.ctl.write(vol["moref"], key, "t1")

        spec = vim.vm.RelocateSpec(datastore=_datastore(si, "ds-shared-2"))
        task_ok(si, vm.RelocateVM_Task(spec))

        assert _chain(_disk(si, vm, key).backing) == [new_d1, new]
        assert _chain(_disk(si, s1, key).backing) == [new]
        assert props(si, s1, "config.files.vmPathName")["config.files.vmPathName"].startswith(
            "[ds-shared-2] "
        )
    assert simulator.info is not None
    root = Path(simulator.info.root)
    descriptor = (root / "ds-shared-2" / _delta(rel, 1)).read_text()
    assert f'parentFileNameHint="{new}"' in descriptor
    assert not (root / "ds-shared-1" / _dir(rel)).exists()
    assert vc.ctl.read_file(new_d1) == {"chain": [new_d1, new], "tokens": [seed, "t1"]}
    assert vc.ctl.read_snapshot(s1._moId, key)["tokens"] == [seed]


@pytest.mark.live
def test_move_child_most_disk_backing_moves_only_the_top(vc: Target) -> None:
    vol = _available(vc)
    vmdk, seed = vol["vmdk"], _seed(vol)
    top = _delta("[ds-shared-2] " + vmdk.split("] ", 1)[1], 1)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        key = virtual_disks(si, vm)[0].key
        _snapshot(si, vm, "s1")
        vc.ctl.write(vol["moref"], key, "t1")
        spec = vim.vm.RelocateSpec(
            datastore=_datastore(si, "ds-shared-2"), diskMoveType="moveChildMostDiskBacking"
        )

        task_ok(si, vm.RelocateVM_Task(spec))

        assert _chain(_disk(si, vm, key).backing) == [top, vmdk]
    assert vmdk in vc.ctl.files("ds-shared-1")
    assert vc.ctl.read_file(top) == {"chain": [top, vmdk], "tokens": [seed, "t1"]}


@pytest.mark.parametrize(
    ("move_type", "shared"),
    [
        ("moveAllDiskBackingsAndAllowSharing", True),
        ("moveAllDiskBackingsAndDisallowSharing", False),
    ],
)
@pytest.mark.live
def test_sharing_of_parents_already_on_the_target(vc: Target, move_type: str, shared: bool) -> None:
    """The instance's delta is on ds-shared-2, the volume it sits on is on
    ds-shared-1; moving the instance back to ds-shared-1 may keep sharing
    the volume's VMDK only when sharing is allowed."""
    inst, vol = _attached(vc)
    name = inst["name"]
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        key = _key_of(si, vm, vol["vmdk"])
        _snapshot(si, vm, "s1")
        child_most = vim.vm.RelocateSpec(
            datastore=_datastore(si, "ds-shared-2"), diskMoveType="moveChildMostDiskBacking"
        )
        task_ok(si, vm.RelocateVM_Task(child_most))
        assert _chain(_disk(si, vm, key).backing)[1] == vol["vmdk"]

        back = vim.vm.RelocateSpec(datastore=_datastore(si, "ds-shared-1"), diskMoveType=move_type)
        task_ok(si, vm.RelocateVM_Task(back))

        chain = _chain(_disk(si, vm, key).backing)
    assert chain[0] == f"[ds-shared-1] {name}/{vol['name']}-000001.vmdk"
    if shared:
        assert chain[1] == vol["vmdk"]
    else:
        assert chain[1] == f"[ds-shared-1] {name}/{vol['name']}.vmdk"
    assert vc.ctl.read_disk(inst["moref"], key)["tokens"] == [_seed(vol)]


@pytest.mark.live
def test_disk_locators_and_disks_already_on_their_target(vc: Target) -> None:
    inst, vol = _attached(vc)
    name = inst["name"]
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        root_key = _key_of(si, vm, inst["root_vmdk"])
        vol_key = _key_of(si, vm, vol["vmdk"])
        ds1, ds2 = _datastore(si, "ds-shared-1"), _datastore(si, "ds-shared-2")
        vc.ctl.reset_bytes_copied()
        spec = vim.vm.RelocateSpec(
            datastore=ds2,
            disk=[vim.vm.RelocateSpec.DiskLocator(diskId=vol_key, datastore=ds1)],
        )

        task_ok(si, vm.RelocateVM_Task(spec))

        assert _chain(_disk(si, vm, root_key).backing) == [f"[ds-shared-2] {name}/{name}.vmdk"]
        # The volume's disk was already on its target: not copied, still shared.
        assert _chain(_disk(si, vm, vol_key).backing) == [vol["vmdk"]]
        datastores = props(si, vm, "datastore")["datastore"]
        assert sorted(ds._moId for ds in datastores) == sorted([ds1._moId, ds2._moId])
    assert list(vc.ctl.bytes_copied()["files"]) == [f"[ds-shared-2] {name}/{name}-flat.vmdk"]


@pytest.mark.live
def test_host_that_cannot_see_the_datastore_is_refused(vc: Target) -> None:
    vol = _available(vc)
    before = vc.ctl.files("ds-shared-1")
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        host_before = props(si, vm, "runtime.host")["runtime.host"]
        spec = vim.vm.RelocateSpec(
            host=_host(si, "DC0_C0_H1"), datastore=_datastore(si, "ds-local-h0")
        )

        with pytest.raises(vmodl.fault.InvalidArgument) as exc:
            vm.RelocateVM_Task(spec)

        assert "ds-local-h0" in str(getattr(exc.value, "msg", ""))
        assert props(si, vm, "runtime.host")["runtime.host"]._moId == host_before._moId
        assert _chain(virtual_disks(si, vm)[0].backing) == [vol["vmdk"]]
    assert vc.ctl.files("ds-shared-1") == before
    assert vc.ctl.files("ds-local-h0") == []


@pytest.mark.live
def test_relocation_moves_host_and_pool(vc: Target) -> None:
    vol = _available(vc)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        host = _host(si, "DC0_C0_H1")
        pool = props(si, host, "parent")["parent"]
        pool = props(si, pool, "resourcePool")["resourcePool"]

        task_ok(si, vm.RelocateVM_Task(vim.vm.RelocateSpec(host=host, pool=pool)))

        got = props(si, vm, "runtime.host", "resourcePool")
        assert got["runtime.host"]._moId == host._moId
        assert got["resourcePool"]._moId == pool._moId
        assert vm._moId in [v._moId for v in props(si, host, "vm")["vm"]]
        assert _chain(virtual_disks(si, vm)[0].backing) == [vol["vmdk"]]


@pytest.mark.live
def test_relocation_time_is_proportional_to_the_bytes_copied(vc: Target, timing: None) -> None:
    vol = _available(vc)
    key = 2000
    for i in range(20):
        vc.ctl.write(vol["moref"], key, f"block-{i:04d}")
    size = len("\n".join([_seed(vol)] + [f"block-{i:04d}" for i in range(20)])) + 1
    vc.ctl.set_task_time("RelocateVM_Task", 0)
    # The copy takes about two seconds at this rate: long enough to be seen
    # running half way, asserted through progress, not wall time.
    vc.ctl.set_copy_rate(size / 2)
    vc.ctl.reset_bytes_copied()
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        task = vm.RelocateVM_Task(vim.vm.RelocateSpec(datastore=_datastore(si, "ds-shared-2")))
        info, seen = watch_task(si, task)
        assert info.state == "success"
        assert any(state == "running" and 0 < (progress or 0) < 100 for state, progress in seen)
    assert vc.ctl.bytes_copied()["total"] == size


# -- 7/8. scenarios and the blueprint, by hand ------------------------------------------


@pytest.mark.cassette
def test_workflow2_scenario_has_diverged_copies(vc: Target) -> None:
    seeded = vc.ctl.scenario("workflow2")
    inst = seeded["instances"][0]
    name = inst["name"]
    assert inst["root_vmdk"] == f"[ds-shared-2] {name}/{name}.vmdk"
    assert len(seeded["volumes"]) == 2
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        by_file = {_chain(d.backing)[-1]: d.key for d in virtual_disks(si, vm)}
        for vol in seeded["volumes"]:
            backing = _vm(si, vol["moref"])
            assert [d.backing.fileName for d in virtual_disks(si, backing)] == [vol["vmdk"]]
            assert vol["vmdk"].startswith("[ds-shared-1] ")
            copy = f"[ds-shared-2] {name}/{vol['name']}.vmdk"
            vid = vol["id"]
            assert vc.ctl.read_disk(inst["moref"], by_file[copy])["tokens"] == [
                f"seed:{vid}",
                f"pre-move:{vid}",
                f"post-move:{vid}",
            ]
            assert vc.ctl.read_file(vol["vmdk"])["tokens"] == [f"seed:{vid}", f"pre-move:{vid}"]
    assert not any(name in f for f in vc.ctl.files("ds-shared-1"))


@pytest.mark.cassette
def test_blueprint_steps_by_hand_keep_the_volume_content_in_the_backing_snapshot(
    vc: Target,
) -> None:
    """Snapshot the instance, snapshot the backing, give the backing the
    instance's delta, remove the instance snapshot without consolidating:
    the backing's snapshot must hold the volume as it was, whatever the
    instance writes afterwards. This is what the workflow relies on."""
    inst, vol = _attached(vc)
    seed = _seed(vol)
    with connect(vc) as si:
        instance, backing = _vm(si, inst["moref"]), _vm(si, vol["moref"])
        key = _key_of(si, instance, vol["vmdk"])
        vc.ctl.write(inst["moref"], key, "t0")
        content = _tokens(vc, inst["moref"], key)
        assert content == [seed, "t0"]

        inst_snap = _snapshot(si, instance, "snap-1")
        backing_snap = _snapshot(si, backing, "snap-1")
        inst_delta = _disk(si, instance, key).backing.fileName
        old = virtual_disks(si, backing)[0]
        add = add_disk_change(old.controllerKey, inst_delta, unit=old.unitNumber)
        add.device.capacityInKB = old.capacityInKB
        # Its fresh delta is destroyed: a disk whose parent a snapshot of the
        # VM holds cannot be detached.
        spec = vim.vm.ConfigSpec(deviceChange=[remove_disk_change(old, "destroy"), add])
        task_ok(si, backing.ReconfigVM_Task(spec))
        task_ok(si, inst_snap.RemoveSnapshot_Task(removeChildren=False, consolidate=False))

        assert [d.backing.fileName for d in virtual_disks(si, backing)] == [inst_delta]
        assert props(si, instance, "snapshot", "runtime.consolidationNeeded") == {
            "snapshot": None,
            "runtime.consolidationNeeded": True,
        }
        snap_key = virtual_disks(si, backing_snap)[0].key
        vc.ctl.write(inst["moref"], key, "t1")
        assert vc.ctl.read_snapshot(backing_snap._moId, snap_key) == {
            "chain": [vol["vmdk"]],
            "tokens": content,
        }
        assert _tokens(vc, inst["moref"], key) == [seed, "t0", "t1"]
        # vSphere's Consolidate on the instance is not refused (the backing
        # is powered off and holds no lock), and it would write the
        # instance's later data into the file the backing's snapshot holds
        # and delete the file the backing uses: why the workflow never
        # consolidates an instance that shares files with backings.
        task_ok(si, instance.ConsolidateVMDisks_Task())
        assert _chain(_disk(si, instance, key).backing) == [vol["vmdk"]]
    assert vc.ctl.read_snapshot(backing_snap._moId, snap_key)["tokens"] == [*content, "t1"]
    assert inst_delta not in vc.ctl.files("ds-shared-1")


@pytest.mark.live
def test_remove_snapshot_merges_only_its_own_deltas(vc: Target) -> None:
    """A merge left pending (it would write into the volume's VMDK) does not
    stop a later snapshot's removal from consolidating its own delta; the VM
    still needs consolidation afterwards."""
    inst, vol = _attached(vc)
    name = inst["name"]
    d1 = f"[ds-shared-1] {name}/{vol['name']}-000001.vmdk"
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        key = _key_of(si, vm, vol["vmdk"])
        s1 = _snapshot(si, vm, "s1")
        task_ok(si, s1.RemoveSnapshot_Task(removeChildren=False, consolidate=False))
        s2 = _snapshot(si, vm, "s2")
        vc.ctl.write(inst["moref"], key, "t2")

        task_ok(si, s2.RemoveSnapshot_Task(removeChildren=False, consolidate=True))

        assert _chain(_disk(si, vm, key).backing) == [d1, vol["vmdk"]]
        assert props(si, vm, "runtime.consolidationNeeded") == {"runtime.consolidationNeeded": True}
    assert vc.ctl.read_disk(inst["moref"], key)["tokens"] == [_seed(vol), "t2"]
    assert d1.replace("-000001", "-000002") not in vc.ctl.files("ds-shared-1")


@pytest.mark.live
def test_destroy_keeps_files_another_vm_uses(vc: Target) -> None:
    inst, vol = _attached(vc)
    name, seed = inst["name"], _seed(vol)
    with connect(vc) as si:
        instance, backing = _vm(si, inst["moref"]), _vm(si, vol["moref"])
        key = _key_of(si, instance, vol["vmdk"])
        _snapshot(si, instance, "s1")
        vc.ctl.write(inst["moref"], key, "t1")
        delta = _disk(si, instance, key).backing.fileName
        # The backing is given the instance's delta, as the blueprint does.
        old = virtual_disks(si, backing)[0]
        add = add_disk_change(old.controllerKey, delta, unit=old.unitNumber)
        add.device.capacityInKB = old.capacityInKB
        spec = vim.vm.ConfigSpec(deviceChange=[remove_disk_change(old), add])
        task_ok(si, backing.ReconfigVM_Task(spec))
        task_ok(si, instance.PowerOffVM_Task())

        info = task_ok(si, instance.Destroy_Task())

        assert info.entity._moId == inst["moref"]
        files = vc.ctl.files("ds-shared-1")
        assert delta in files
        assert vol["vmdk"] in files
        assert inst["root_vmdk"] not in files
        assert f"[ds-shared-1] {name}/{name}.vmx" not in files
        bkey = virtual_disks(si, backing)[0].key
        assert vc.ctl.read_disk(vol["moref"], bkey)["tokens"] == [seed, "t1"]

        task_ok(si, backing.Destroy_Task())
    assert not any(vol["name"] in f or name in f for f in vc.ctl.files("ds-shared-1"))


@pytest.mark.live
def test_delete_virtual_disk_deletes_deltas_and_refuses_files_in_use(vc: Target) -> None:
    vol = _available(vc)
    vmdk = vol["vmdk"]
    d1 = _delta(vmdk, 1)
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        s1 = _snapshot(si, vm, "s1")
        content = si.RetrieveContent()
        manager = content.virtualDiskManager
        datacenter = props(si, content.rootFolder, "childEntity")["childEntity"][0]

        fault = task_fault(si, manager.DeleteVirtualDisk_Task(d1, datacenter))
        assert isinstance(fault, vim.fault.FileLocked)
        # The snapshot holds the base.
        fault = task_fault(si, manager.DeleteVirtualDisk_Task(vmdk, datacenter))
        assert isinstance(fault, vim.fault.FileLocked)
        assert vmdk in vc.ctl.files("ds-shared-1")

        # Without the snapshot (files kept) the disk can be detached, and
        # its files deleted one by one.
        task_ok(si, s1.RemoveSnapshot_Task(removeChildren=False, consolidate=False))
        disk = virtual_disks(si, vm)[0]
        task_ok(si, vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[remove_disk_change(disk)])))
        task_ok(si, manager.DeleteVirtualDisk_Task(d1, datacenter))
        files = vc.ctl.files("ds-shared-1")
        assert d1 not in files
        assert d1.replace(".vmdk", "-delta.vmdk") not in files
        assert vmdk in files

        fault = task_fault(si, manager.DeleteVirtualDisk_Task(d1, datacenter))
        assert isinstance(fault, vim.fault.FileNotFound)


@pytest.mark.live
def test_disk_locator_move_type_applies_to_its_disk(vc: Target) -> None:
    inst, vol = _attached(vc)
    name = inst["name"]
    with connect(vc) as si:
        vm = _vm(si, inst["moref"])
        root_key = _key_of(si, vm, inst["root_vmdk"])
        vol_key = _key_of(si, vm, vol["vmdk"])
        _snapshot(si, vm, "s1")
        ds2 = _datastore(si, "ds-shared-2")
        locator = vim.vm.RelocateSpec.DiskLocator(
            diskId=vol_key, datastore=ds2, diskMoveType="moveChildMostDiskBacking"
        )

        task_ok(si, vm.RelocateVM_Task(vim.vm.RelocateSpec(datastore=ds2, disk=[locator])))

        assert _chain(_disk(si, vm, root_key).backing) == [
            f"[ds-shared-2] {name}/{name}-000001.vmdk",
            f"[ds-shared-2] {name}/{name}.vmdk",
        ]
        assert _chain(_disk(si, vm, vol_key).backing) == [
            f"[ds-shared-2] {name}/{vol['name']}-000001.vmdk",
            vol["vmdk"],
        ]


@pytest.mark.live
def test_moved_vm_logs_into_its_new_home(vc: Target) -> None:
    """The old home stays (the backing uses the instance's delta there), but
    the moved instance's log goes to its new home."""
    inst, vol = _attached(vc)
    name = inst["name"]
    with connect(vc) as si:
        vm, backing = _vm(si, inst["moref"]), _vm(si, vol["moref"])
        key = _key_of(si, vm, vol["vmdk"])
        _snapshot(si, vm, "s1")
        delta = _disk(si, vm, key).backing.fileName
        old = virtual_disks(si, backing)[0]
        add = add_disk_change(old.controllerKey, delta, unit=old.unitNumber)
        add.device.capacityInKB = old.capacityInKB
        spec = vim.vm.ConfigSpec(deviceChange=[remove_disk_change(old), add])
        task_ok(si, backing.ReconfigVM_Task(spec))

        move = vim.vm.RelocateSpec(datastore=_datastore(si, "ds-shared-2"))
        task_ok(si, vm.RelocateVM_Task(move))
        task_ok(si, vm.PowerOffVM_Task())

    left = [f for f in vc.ctl.files("ds-shared-1") if f"] {name}/" in f]
    assert left == sorted([delta, delta.replace(".vmdk", "-delta.vmdk")])
    assert f"[ds-shared-2] {name}/vmware.log" in vc.ctl.files("ds-shared-2")


@pytest.mark.live
def test_revert_drops_a_disk_added_after_the_snapshot_but_keeps_its_file(vc: Target) -> None:
    vol = _available(vc)
    scratch = f"{_dir(vol['vmdk'])}/scratch.vmdk"
    with connect(vc) as si:
        vm = _vm(si, vol["moref"])
        s1 = _snapshot(si, vm, "s1")
        disk = virtual_disks(si, vm)[0]
        add = add_disk_change(disk.controllerKey, scratch, unit=3, file_operation="create")
        add.device.capacityInKB = 1024
        task_ok(si, vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[add])))
        assert len(virtual_disks(si, vm)) == 2

        task_ok(si, s1.RevertToSnapshot_Task())

        assert [_chain(d.backing)[-1] for d in virtual_disks(si, vm)] == [vol["vmdk"]]
    assert scratch in vc.ctl.files("ds-shared-1")
