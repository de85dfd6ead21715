"""The rule that decides whether a rollback merges the instance's temporary delta back.

Pure function over what volumeops reads; the live cases (a backing snapshot
holding the instance's file, earlier forced snapshots, every step's rollback)
are in tests/library/test_workflow_faults.py. These cover the refusals the simulator's
scenarios do not reach.
"""

from __future__ import annotations

from vmdk_snap.types import Disk, Moref, SnapshotNode, VmInfo
from vmdk_snap.workflows.merge_guard import merge_refusal, snapshots_to_read

VOL = "[ds1] volume-1/volume-1.vmdk"
ROOT = "[ds1] inst/inst.vmdk"
VOL_DELTA = "[ds1] inst/volume-1-000001.vmdk"
ROOT_DELTA = "[ds1] inst/inst-000001.vmdk"
TEMP = Moref("VirtualMachineSnapshot", "snap-temp")


def _disk(key: int, *chain: str, mode: str = "persistent") -> Disk:
    return Disk(key, 1000, key - 2000, chain[0], tuple(chain), None, 1024, mode)


def _node(ref: Moref, name: str, *children: SnapshotNode) -> SnapshotNode:
    return SnapshotNode(ref, name, "", None, False, tuple(children))


def _vm(
    value: str,
    disks: tuple[Disk, ...],
    snapshots: tuple[SnapshotNode, ...] = (),
    current: Moref | None = None,
) -> VmInfo:
    return VmInfo(
        Moref("VirtualMachine", value), value, None, "poweredOff", None, None, (), "",
        disks, snapshots=snapshots, current_snapshot=current,
    )  # fmt: skip


def _instance(*children: SnapshotNode, current: Moref = TEMP) -> VmInfo:
    disks = (_disk(2000, ROOT_DELTA, ROOT), _disk(2001, VOL_DELTA, VOL))
    return _vm("inst", disks, (_node(TEMP, "temp", *children),), current)


FROZEN = {TEMP: (_disk(2000, ROOT), _disk(2001, VOL))}


def test_a_backing_sharing_the_frozen_file_as_its_top_allows_the_merge() -> None:
    backing = _vm("volume-1", (_disk(2000, VOL),))
    assert merge_refusal(_instance(), TEMP, [backing], FROZEN) is None


def test_a_backing_snapshot_holding_the_frozen_file_refuses() -> None:
    held = Moref("VirtualMachineSnapshot", "snap-b")
    backing = _vm(
        "volume-1", (_disk(2000, "[ds1] volume-1/volume-1-000001.vmdk", VOL),),
        (_node(held, "s1"),), held,
    )  # fmt: skip
    disks = {**FROZEN, held: (_disk(2000, VOL),)}
    why = merge_refusal(_instance(), TEMP, [backing], disks)
    assert why == f"a snapshot or a deeper chain holds {VOL}"


def test_a_snapshot_alone_holding_the_frozen_file_refuses() -> None:
    """The backing's current chain no longer goes through the file (it was
    reverted to another base, say): only its snapshot holds it."""
    held = Moref("VirtualMachineSnapshot", "snap-b")
    other = "[ds1] volume-1/volume-1-copy.vmdk"
    backing = _vm("volume-1", (_disk(2000, other),), (_node(held, "s1"),), held)
    disks = {**FROZEN, held: (_disk(2000, VOL),)}
    why = merge_refusal(_instance(), TEMP, [backing], disks)
    assert why == f"a snapshot or a deeper chain holds {VOL}"
    assert merge_refusal(_instance(), TEMP, [backing], {**FROZEN, held: ()}) is None


def test_a_backing_on_the_instance_delta_refuses() -> None:
    backing = _vm("volume-1", (_disk(2000, VOL_DELTA, VOL),))
    why = merge_refusal(_instance(), TEMP, [backing], FROZEN)
    assert why == f"backing volume-1 uses the instance's delta {VOL_DELTA}"


def test_a_snapshot_stacked_on_the_temporary_one_refuses() -> None:
    later = Moref("VirtualMachineSnapshot", "snap-later")
    why = merge_refusal(_instance(_node(later, "later"), current=later), TEMP, [], FROZEN)
    assert why == "the temporary snapshot is no longer the instance's latest"


def test_a_disk_moved_off_the_delta_refuses() -> None:
    frozen = {TEMP: (_disk(2000, ROOT), _disk(2001, "[ds1] elsewhere.vmdk"))}
    why = merge_refusal(_instance(), TEMP, [], frozen)
    assert why == "the instance's disk 2001 is no longer on the snapshot's delta"


def test_unreadable_snapshots_refuse() -> None:
    assert merge_refusal(_instance(), TEMP, [], {}) == (
        "the temporary snapshot's disks could not be read"
    )
    other = Moref("VirtualMachineSnapshot", "snap-b")
    backing = _vm("volume-1", (_disk(2000, VOL),), (_node(other, "s1"),), other)
    why = merge_refusal(_instance(), TEMP, [backing], FROZEN)
    assert why == "the disks of snapshot s1 of volume-1 could not be read"


def test_independent_disks_take_no_merge() -> None:
    frozen = {TEMP: (_disk(2000, ROOT), _disk(2001, VOL, mode="independent_persistent"))}
    disks = (_disk(2000, ROOT_DELTA, ROOT), _disk(2001, VOL, mode="independent_persistent"))
    instance = _vm("inst", disks, (_node(TEMP, "temp"),), TEMP)
    backing = _vm("volume-1", (_disk(2000, VOL),))
    assert merge_refusal(instance, TEMP, [backing], frozen) is None


def test_the_gone_temporary_snapshot_refuses() -> None:
    instance = _vm("inst", (_disk(2000, ROOT),))
    assert merge_refusal(instance, TEMP, [], FROZEN) == (
        "the temporary snapshot is no longer in the instance's tree"
    )


def test_snapshots_to_read_covers_the_instance_and_every_backing() -> None:
    other = Moref("VirtualMachineSnapshot", "snap-b")
    backing = _vm("volume-1", (_disk(2000, VOL),), (_node(other, "s1"),), other)
    assert snapshots_to_read(_instance(), [backing]) == [TEMP, other]
