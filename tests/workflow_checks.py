"""What the workflow tests look at: the simulator's own view of VMs and files.

Chains, tokens and files come from the simulator's control API (what is on
the datastores), snapshot trees from the property collector through
volumeops (its reads are tested in tests/library/test_volumeops.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import Target
from tests.vsphere import connect, task_ok
from tests.vsphere import moref as mo
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.types import Moref, SnapshotNode, datastore_of
from vmdk_snap.vsphere.volumeops.lookups import tasks_in_flight

DATASTORES = ("ds-shared-1", "ds-shared-2", "ds-local-h0")
DELTA_RE = re.compile(r"-\d{6}\.vmdk$")


def vm(value: str) -> Moref:
    return Moref("VirtualMachine", value)


def tree(nodes: tuple[SnapshotNode, ...]) -> tuple[Any, ...]:
    """A snapshot tree as nested (name, children) tuples, for comparisons."""
    return tuple((n.name, tree(n.children)) for n in nodes)


def snapshot_trees(ops: Any, *morefs: str) -> list[tuple[Any, ...]]:
    return [tree(info.snapshots) for info in ops.get_vms([vm(m) for m in morefs])]


@dataclass(frozen=True)
class World:
    """Everything a rollback must restore, for a set of VMs."""

    chains: dict[str, Any]  # moref -> the simulator's chain view
    trees: list[tuple[Any, ...]]
    files: frozenset[str]
    homes: tuple[tuple[str, str | None, str | None, str], ...] = ()  # moref, host, pool, vmx

    def disks(self, moref: str) -> dict[int, dict[str, Any]]:
        """Current disks (not snapshots') of a VM: key -> {chain, tokens}."""
        return {d["disk"]: d for d in self.chains[moref]["disks"] if not d.get("snapshot")}


def world(vc: Target, ops: Any, *morefs: str) -> World:
    infos = ops.get_vms([vm(m) for m in morefs])
    return World(
        chains={m: vc.ctl.chain(m) for m in morefs},
        trees=[tree(info.snapshots) for info in infos],
        files=frozenset(f for ds in DATASTORES for f in vc.ctl.files(ds)),
        homes=tuple(
            (
                i.ref.value,
                i.host.value if i.host else None,
                i.resource_pool.value if i.resource_pool else None,
                i.vm_path_name,
            )
            for i in infos
        ),
    )


def descriptors(files: frozenset[str]) -> set[str]:
    """Disk descriptors among datastore files (not -flat/-delta data files)."""
    return {
        f for f in files if f.endswith(".vmdk") and not f.endswith(("-flat.vmdk", "-delta.vmdk"))
    }


def referenced(vc: Target, morefs: list[str]) -> set[str]:
    """Every file any chain (current or snapshot) of these VMs references."""
    out: set[str] = set()
    for m in morefs:
        for d in vc.ctl.chain(m)["disks"]:
            out.update(d["chain"])
    return out


def all_vms(vc: Target, seeded: dict[str, Any]) -> list[str]:
    return [i["moref"] for i in seeded["instances"]] + [v["moref"] for v in seeded["volumes"]]


def assert_files_consistent(
    vc: Target, seeded: dict[str, Any], stray_allowed: frozenset[str] = frozenset()
) -> None:
    """Every referenced file exists; every disk of the scenario's dirs is referenced."""
    morefs = all_vms(vc, seeded)
    files = frozenset(f for ds in DATASTORES for f in vc.ctl.files(ds))
    refs = referenced(vc, morefs)
    missing = refs - files
    assert not missing, f"chains reference missing files: {sorted(missing)}"
    names = [i["name"] for i in seeded["instances"]] + [v["name"] for v in seeded["volumes"]]
    ours = {f for f in descriptors(files) if any(f"] {n}/" in f for n in names)}
    stray = ours - refs
    assert stray == stray_allowed, f"disk files no chain uses: {sorted(stray)}"


def volume_disk_key(ops: Any, seeded_volume: dict[str, Any], instance: str) -> int:
    info = ops.get_vm(vm(instance))
    disk = info.disk_by_uuid(seeded_volume["disk_uuid"])
    assert disk is not None
    return int(disk.key)


def make_driver(ops: Any, tmp_path: Path) -> Driver:
    return Driver(ops, journal_path=tmp_path / "state" / "journal.sqlite")


def assert_forced_snapshot_invariants(
    vc: Target,
    ops: Any,
    seeded: dict[str, Any],
    *,
    volume: dict[str, Any],
    instance: dict[str, Any],
    node: SnapshotNode,
    instance_tree_before: tuple[Any, ...],
    backing_tree_before: tuple[Any, ...],
    tokens_at_snapshot: list[str],
    stray_allowed: frozenset[str] = frozenset(),
) -> None:
    """The issue's invariants after a successful forced snapshot."""
    backing_info, instance_info = ops.get_vms([vm(volume["moref"]), vm(instance["moref"])])
    # The instance's snapshot tree is what it was.
    assert tree(instance_info.snapshots) == instance_tree_before
    # The backing has exactly one new snapshot, with the name.
    assert tree(backing_info.snapshots) == _with_leaf(backing_tree_before, node.name)
    # Backing and instance share the volume's current top file, on the
    # instance's datastore (the new delta is in the instance's folder), the
    # backing on the instance's host and in its resource pool.
    key = volume_disk_key(ops, volume, instance["moref"])
    inst_disk = next(d for d in instance_info.disks if d.key == key)
    (backing_disk,) = backing_info.disks
    assert backing_disk.path == inst_disk.path
    assert backing_disk.chain == inst_disk.chain
    assert backing_info.host == instance_info.host
    assert backing_info.resource_pool == instance_info.resource_pool
    assert datastore_of(inst_disk.path) == datastore_of(instance_info.vm_path_name)
    # The snapshot holds the content at the moment of the snapshot ...
    held = vc.ctl.read_snapshot(node.ref.value, backing_disk.key)
    assert held["tokens"] == tokens_at_snapshot
    # ... and later writes through the instance do not change it.
    vc.ctl.write(instance["moref"], key, "after-snapshot")
    assert vc.ctl.read_snapshot(node.ref.value, backing_disk.key)["tokens"] == tokens_at_snapshot
    now = vc.ctl.read_disk(volume["moref"], backing_disk.key)["tokens"]
    assert now == [*tokens_at_snapshot, "after-snapshot"]
    assert_files_consistent(vc, seeded, stray_allowed)


def _with_leaf(before: tuple[Any, ...], name: str) -> tuple[Any, ...]:
    """The tree with a new snapshot under the deepest last node (the current one)."""
    if not before:
        return ((name, ()),)
    *rest, (last, children) = before
    return (*rest, (last, _with_leaf(children, name)))


def snapshot_checked(
    vc: Target,
    ops: Any,
    driver: Driver,
    seeded: dict[str, Any],
    *,
    volume: dict[str, Any],
    name: str,
    quiesce: bool = False,
) -> tuple[SnapshotNode, list[str]]:
    """A forced snapshot of ``volume`` on the scenario's first instance, every
    invariant checked against the state just before it.

    Returns the new snapshot and the volume's tokens when it was taken.
    """
    inst = seeded["instances"][0]
    key = volume_disk_key(ops, volume, inst["moref"])
    tokens = vc.ctl.read_disk(inst["moref"], key)["tokens"]
    inst_tree, backing_tree = snapshot_trees(ops, inst["moref"], volume["moref"])
    node = driver.create_snapshot(
        Volume(volume["id"], "in-use", inst["uuid"]), name, force=True, quiesce=quiesce
    )
    assert node.name == name
    assert_forced_snapshot_invariants(
        vc,
        ops,
        seeded,
        volume=volume,
        instance=inst,
        node=node,
        instance_tree_before=inst_tree,
        backing_tree_before=backing_tree,
        tokens_at_snapshot=tokens,
    )
    return node, tokens


def forced_snapshot(
    vc: Target, ops: Any, driver: Driver, scenario: str, *, quiesce: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Seed a scenario, snapshot its first volume forced, check every invariant.

    Returns the seeded scenario and {"node", "tokens", "key"}: the new
    snapshot, the volume's tokens when it was taken and its disk key on the
    instance.
    """
    seeded = vc.ctl.scenario(scenario)
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    if quiesce:
        vc.ctl.set_tools(inst["moref"], True)
    node, tokens = snapshot_checked(
        vc, ops, driver, seeded, volume=vol, name="snapshot-1", quiesce=quiesce
    )
    key = volume_disk_key(ops, vol, inst["moref"])
    return seeded, {"node": node, "tokens": tokens, "key": key}


def assert_nothing_running(ops: Any, *morefs: str) -> None:
    """No task is still queued or running on these VMs (or deleting files):
    what recover must leave after waiting for a dead process's tasks."""
    assert tasks_in_flight(ops.session, [vm(m) for m in morefs]) == []


@contextmanager
def calls_made(vc: Target, ops: Any) -> Iterator[list[str]]:
    """The SOAP calls the session makes inside the block, in order.

    The simulator's count must agree, so that index ``i`` of the list is the
    call an injected fault with ``skip=i`` (method ``"*"``) fails.
    """
    session = ops.session
    seen: list[str] = []
    count = session._count

    def counting(method: str) -> None:
        seen.append(method)
        count(method)

    before = sum(vc.ctl.calls().values())
    session._count = counting
    try:
        yield seen
    finally:
        del session._count
    assert sum(vc.ctl.calls().values()) - before == len(seen)


@contextmanager
def powered_off(vc: Target, moref: str) -> Iterator[None]:
    """The VM powered off for the block, on again after (plain pyVmomi).

    A running VM locks the file it writes to: a snapshot of a backing that
    shares that file is possible only while the instance is off.
    """
    with connect(vc) as si:
        task_ok(si, mo(si, "VirtualMachine", moref).PowerOffVM_Task())
    try:
        yield
    finally:
        with connect(vc) as si:
            task_ok(si, mo(si, "VirtualMachine", moref).PowerOnVM_Task())
