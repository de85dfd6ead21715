"""Snapshots kept, depth bounded: forced snapshots copy retained snapshots out.

A nightly rotation keeps snapshots that hold files of the instance's
chains, so compaction alone never merges. When the chains are deep, a
forced snapshot relocates its backing: the snapshots' chains are copied to
another datastore keeping their deltas, and compaction merges the
instance once no backing's snapshot holds its files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.rotation import run_rotation
from tests.workflow_checks import assert_files_consistent, make_driver, vm, volume_disk_key
from vmdk_snap.driver import COPY_DEPTH, Driver, Volume
from vmdk_snap.errors import VmdkSnapError, fault_name
from vmdk_snap.types import datastore_of

DAYS = 40  # scripts/bench_rotation.py runs 100


@pytest.fixture
def vc(own_vc: Target) -> Target:
    """A simulator of each test's own (``session`` and ``ops`` use it): a rotation of many
    days whose snapshots would burden every later test of the worker."""
    return own_vc


@pytest.mark.live
@pytest.mark.slow
def test_a_nightly_rotation_keeps_every_chain_at_16_deltas_or_less(
    quick_sim: Target, ops: Any, tmp_path: Path
) -> None:
    vc = quick_sim
    driver = make_driver(ops, tmp_path)
    out = run_rotation(driver, ops, vc.ctl, days=DAYS, fill=2000, max_depth=16)
    assert out.days == DAYS  # every day's checks passed (in run_rotation)
    assert COPY_DEPTH < out.deepest <= 16
    # Copies are made, and cost a fraction of a full copy per snapshot: each
    # volume's data once per 16 forced snapshots (two volumes, each adding
    # a delta to every chain), plus the deltas (the benchmark: 100 days).
    assert 0 < out.bytes_copied * 7 <= out.template_bytes
    # Files do not pile up: the last eras use no more than the first ones.
    for ds in out.files[0]:
        assert max(f[ds] for f in out.files[24:]) <= max(f[ds] for f in out.files[:24]), ds


@pytest.mark.live
def test_a_forced_snapshot_on_deep_chains_copies_out_and_the_instance_is_compacted(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    key = volume_disk_key(ops, vol, inst["moref"])
    start = [d.chain for d in ops.get_vm(vm(inst["moref"])).disks]
    first = driver.create_snapshot(volume, "first", force=True)
    (bdisk,) = ops.get_vm(vm(vol["moref"])).disks
    first_tokens = vc.ctl.read_snapshot(first.ref.value, bdisk.key)["tokens"]
    vc.ctl.write(inst["moref"], key, "second")
    second_tokens = vc.ctl.read_disk(inst["moref"], key)["tokens"]
    copying = Driver(ops, journal=driver.journal, copy_depth=1)
    plan = copying.plan_snapshot(volume, "second", force=True)
    assert "copy_snapshots_out" in [s.name for s in plan.steps]
    vc.ctl.reset_bytes_copied()
    second = copying.create_snapshot(volume, "second", force=True)
    backing, instance = ops.get_vms([vm(vol["moref"]), vm(inst["moref"])])
    # The instance is back on its first chains; vSphere's Consolidate is allowed again.
    assert [d.chain for d in instance.disks] == start
    assert not instance.consolidation_needed
    assert ops.disabled_methods(instance.ref) == ()
    # Both snapshots hold copies on the backing's new home, with their content.
    assert datastore_of(backing.vm_path_name) == "ds-shared-2"
    snaps = ops.snapshots_disks([first.ref, second.ref])
    for node, tokens in ((first, first_tokens), (second, second_tokens)):
        assert vc.ctl.read_snapshot(node.ref.value, bdisk.key)["tokens"] == tokens
        assert all(datastore_of(p) == "ds-shared-2" for d in snaps[node.ref] for p in d.chain)
    assert vc.ctl.bytes_copied()["total"] > 0
    # The backing shares the instance's file; the instance reads everything.
    (bdisk,) = backing.disks
    assert bdisk.path in {d.path for d in instance.disks}
    vc.ctl.write(inst["moref"], key, "later")
    assert vc.ctl.read_disk(vol["moref"], bdisk.key)["tokens"] == [*second_tokens, "later"]
    assert_files_consistent(vc, seeded)
    # Deleting copied snapshots merges them and leaves no copy behind.
    assert driver.delete_snapshot(volume, "first")
    assert driver.delete_snapshot(volume, "second")
    home = f"[ds-shared-2] {vol['name']}/"
    assert [
        f for f in vc.ctl.files("ds-shared-2") if f.startswith(home) and f.endswith(".vmdk")
    ] == []
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_vsphere_consolidate_is_refused_until_the_snapshots_are_copied_out(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    driver = make_driver(ops, tmp_path)
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    driver.create_snapshot(volume, "kept", force=True)
    with pytest.raises(VmdkSnapError) as refused:
        ops.consolidate_disks(vm(inst["moref"]))
    assert fault_name(refused.value.fault) == "MethodDisabled"
    Driver(ops, journal=driver.journal, copy_depth=1).create_snapshot(volume, "copied", force=True)
    assert ops.disabled_methods(vm(inst["moref"])) == ()
    assert_files_consistent(vc, seeded)


@pytest.mark.live
def test_no_copy_without_another_datastore_the_backing_host_sees(
    vc: Target, ops: Any, tmp_path: Path
) -> None:
    """The copies' target must hold none of the files: asking for the same one is refused."""
    driver = Driver(ops, journal_path=tmp_path / "j.sqlite", copy_depth=1, copy_to="ds-shared-1")
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    driver.create_snapshot(volume, "one", force=True)
    plan = driver.plan_snapshot(volume, "two", force=True)
    assert "copy_snapshots_out" not in [s.name for s in plan.steps]
    assert any("not copying snapshots out" in n and "ds-shared-1" in n for n in plan.notes)
    driver.create_snapshot(volume, "two", force=True)  # still works, without the copy
    assert_files_consistent(vc, seeded)
