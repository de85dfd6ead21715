"""A fault at every SOAP call of every workflow: success, exact rollback, or recover.

Faults at step boundaries (tests/library/test_workflow_faults.py) miss the
calls in between: the ``ModifyListView`` that hands a task to the watcher,
the wait after a task was sent, the reads after the journal says ``done``.
Here each workflow runs once without faults to list its SOAP calls in order
(so a call added to a workflow is covered without editing this test), then
once per call index with one fault injected at that call, on a fresh
scenario each time. Whatever the fault, the user sees one of three things:

- the call succeeded, and the volume is in the workflow's end state;
- it failed with an ordinary error, and everything (snapshot trees, every
  chain, every file, homes, data) is exactly as before, journaled rolled back;
- it failed with "needs recovery" (exit 9: Incomplete, OutcomeUnknown,
  RollbackFailed), and ``recover`` (faults cleared) ends it in one of the two
  states above, as its outcome says.

Never an error for a change that happened, nor "rolled back" for one that
then completes; nothing is left running, no temporary snapshot stays.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import (
    World,
    assert_files_consistent,
    assert_nothing_running,
    calls_made,
    make_driver,
    vm,
    volume_disk_key,
    world,
)
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.errors import VmdkSnapError
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.engine import Incomplete, RollbackFailed


@pytest.fixture
def vc(own_vc: Target) -> Target:
    """A simulator of each test's own (``session`` and ``ops`` use it): each test seeds a
    scenario per call index, which would burden every later test of the worker."""
    return own_vc


WAIT_CALLS = frozenset({"WaitForUpdatesEx", "ModifyListView"})


def _is_task_call(method: str) -> bool:
    return method.endswith("_Task")


@dataclass(frozen=True)
class Fault:
    """One kind of fault, injected at one call index (``applies`` filters the call)."""

    kind: str
    fault: str | None = None
    count: int = 1
    applies: Callable[[str], bool] = lambda _method: True
    # The simulator takes this kind only on the named method (task faults).
    by_method: bool = False
    # Faults the session itself gets past (a request that never reached
    # vCenter is sent again; an expired session logs in again): every
    # workflow must simply succeed.
    always_succeeds: bool = False

    def inject(self, vc: Target, calls: list[str], index: int) -> None:
        """Fail call ``index`` of ``calls`` (the dry run's list) when it is made again."""
        if self.by_method:
            method = calls[index]
            skip = calls[:index].count(method)
        else:
            method, skip = "*", index
        vc.ctl.inject_fault(method, self.kind, self.fault, count=self.count, skip=skip)


FAULTS: dict[str, Fault] = {
    # The connection drops before vCenter runs the call.
    "dropped": Fault("drop", always_succeeds=True),
    # vCenter runs the call; its answer is lost.
    "answer-lost": Fault("drop_after"),
    # vCenter unavailable for four calls in a row (the session's retries run out).
    "503x4": Fault("http503", count=4),
    # Every session expires: re-login, the watcher's collector is gone.
    "session-expired": Fault("expire_sessions", always_succeeds=True),
    # A SOAP fault on the calls that wait for tasks.
    "wait-fault": Fault("soap", "SystemError", applies=lambda m: m in WAIT_CALLS),
    # The task ends in error.
    "task-error": Fault("task", "FileLocked", applies=_is_task_call, by_method=True),
}


@dataclass
class Case:
    """A workflow on a freshly seeded scenario, and what its end state is."""

    seeded: dict[str, Any]
    run: Callable[[Driver], Any]
    morefs: list[str]
    assert_done: Callable[[], None]
    # VMs whose consolidationNeeded a rollback may set (see _follow_kept).
    loose_flags: tuple[str, ...] = ()


Prepare = Callable[[Target, Any, Driver], Case]


def _tokens(vc: Target, moref: str, key: int) -> list[str]:
    return list(vc.ctl.read_disk(moref, key)["tokens"])


def _backing_key(ops: Any, moref: str) -> int:
    (disk,) = ops.get_vm(vm(moref)).disks
    return int(disk.key)


def _snapshot_of(ops: Any, moref: str, name: str) -> Any:
    return ops.get_vm(vm(moref)).snapshot_named(name)


def _forced_snapshot(scenario: str) -> Prepare:
    def prepare(vc: Target, ops: Any, driver: Driver) -> Case:
        seeded = vc.ctl.scenario(scenario)
        inst, vol = seeded["instances"][0], seeded["volumes"][0]
        key = volume_disk_key(ops, vol, inst["moref"])
        tokens = _tokens(vc, inst["moref"], key)
        inst_tree = ops.get_vm(vm(inst["moref"])).snapshots
        volume = Volume(vol["id"], "in-use", inst["uuid"])

        def done() -> None:
            backing, instance = ops.get_vms([vm(vol["moref"]), vm(inst["moref"])])
            node = backing.snapshot_named("snap-f")
            assert node is not None, "the snapshot the workflow reported is missing"
            (bdisk,) = backing.disks
            assert vc.ctl.read_snapshot(node.ref.value, bdisk.key)["tokens"] == tokens
            assert instance.snapshots == inst_tree  # no temporary snapshot left
            idisk = next(d for d in instance.disks if d.key == key)
            assert bdisk.path == idisk.path  # the backing holds the instance's current file
            assert _tokens(vc, inst["moref"], key) == tokens
            assert_files_consistent(vc, seeded)

        return Case(
            seeded,
            lambda d: d.create_snapshot(volume, "snap-f", force=True),
            [inst["moref"], vol["moref"]],
            done,
        )

    return prepare


def _available_snapshot(vc: Target, ops: Any, driver: Driver) -> Case:
    seeded = vc.ctl.scenario("available-volume")
    vol = seeded["volumes"][0]
    key = _backing_key(ops, vol["moref"])
    tokens = _tokens(vc, vol["moref"], key)
    volume = Volume(vol["id"], "available")

    def done() -> None:
        node = _snapshot_of(ops, vol["moref"], "snap-a")
        assert node is not None
        assert vc.ctl.read_snapshot(node.ref.value, key)["tokens"] == tokens
        assert _tokens(vc, vol["moref"], key) == tokens
        assert_files_consistent(vc, seeded)

    return Case(seeded, lambda d: d.create_snapshot(volume, "snap-a"), [vol["moref"]], done)


def _delete_attached(vc: Target, ops: Any, driver: Driver) -> Case:
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    driver.create_snapshot(volume, "snap-d", force=True)
    key = volume_disk_key(ops, vol, inst["moref"])
    vc.ctl.write(inst["moref"], key, "after")
    tokens = _tokens(vc, inst["moref"], key)

    def done() -> None:
        assert _snapshot_of(ops, vol["moref"], "snap-d") is None
        assert _tokens(vc, inst["moref"], key) == tokens
        assert_files_consistent(vc, seeded)

    return Case(
        seeded,
        lambda d: d.delete_snapshot(volume, "snap-d"),
        [inst["moref"], vol["moref"]],
        done,
    )


def _delete_available(vc: Target, ops: Any, driver: Driver) -> Case:
    seeded = vc.ctl.scenario("available-volume")
    vol = seeded["volumes"][0]
    volume = Volume(vol["id"], "available")
    driver.create_snapshot(volume, "snap-d")
    key = _backing_key(ops, vol["moref"])
    vc.ctl.write(vol["moref"], key, "after")
    tokens = _tokens(vc, vol["moref"], key)

    def done() -> None:
        assert _snapshot_of(ops, vol["moref"], "snap-d") is None
        assert _tokens(vc, vol["moref"], key) == tokens
        assert_files_consistent(vc, seeded)

    return Case(seeded, lambda d: d.delete_snapshot(volume, "snap-d"), [vol["moref"]], done)


def _revert(vc: Target, ops: Any, driver: Driver) -> Case:
    seeded = vc.ctl.scenario("available-volume")
    vol = seeded["volumes"][0]
    volume = Volume(vol["id"], "available")
    key = _backing_key(ops, vol["moref"])
    driver.create_snapshot(volume, "snap-r")
    at_snapshot = _tokens(vc, vol["moref"], key)
    vc.ctl.write(vol["moref"], key, "after")

    def done() -> None:
        assert _snapshot_of(ops, vol["moref"], "snap-r") is not None
        assert _tokens(vc, vol["moref"], key) == at_snapshot
        assert_files_consistent(vc, seeded)

    return Case(seeded, lambda d: d.revert_to_snapshot(volume, "snap-r"), [vol["moref"]], done)


def _consolidate(vc: Target, ops: Any, driver: Driver) -> Case:
    seeded = vc.ctl.scenario("attached-volume-moved")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    key = volume_disk_key(ops, vol, inst["moref"])
    tokens = _tokens(vc, inst["moref"], key)

    def done() -> None:
        backing, instance = ops.get_vms([vm(vol["moref"]), vm(inst["moref"])])
        (bdisk,) = backing.disks
        idisk = next(d for d in instance.disks if d.key == key)
        assert bdisk.path == idisk.path
        assert _tokens(vc, inst["moref"], key) == tokens
        assert_files_consistent(vc, seeded)

    return Case(seeded, lambda d: d.consolidate(volume), [inst["moref"], vol["moref"]], done)


def _compact(vc: Target, ops: Any, driver: Driver) -> Case:
    # One volume: repointing several backings is the same step again
    # (tests/library/test_compaction.py covers two), at twice the time here.
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    start = [len(d.chain) for d in ops.get_vm(vm(inst["moref"])).disks]
    setup = Driver(ops, journal_path=driver.journal.path.with_name("setup.sqlite"), compact=False)
    setup.create_snapshot(volume, "snap-c", force=True)
    setup.delete_snapshot(volume, "snap-c")
    key = volume_disk_key(ops, vol, inst["moref"])
    vc.ctl.write(inst["moref"], key, "after")
    tokens = _tokens(vc, inst["moref"], key)

    def done() -> None:
        instance = ops.get_vm(vm(inst["moref"]))
        assert [len(d.chain) for d in instance.disks] == start
        assert not instance.consolidation_needed
        for v in seeded["volumes"]:
            (bdisk,) = ops.get_vm(vm(v["moref"])).disks
            assert bdisk.path in {d.path for d in instance.disks}
        assert _tokens(vc, inst["moref"], key) == tokens
        assert_files_consistent(vc, seeded)

    morefs = [inst["moref"], *(v["moref"] for v in seeded["volumes"])]
    return Case(seeded, lambda d: d.compact(volume), morefs, done)


def _copying(driver: Driver) -> Driver:
    """The same journal, copying snapshots out at any depth."""
    return Driver(driver.ops, journal=driver.journal, lock_dir=driver.lock_dir, copy_depth=1)


def _forced_with_copy(vc: Target, ops: Any, driver: Driver) -> Case:
    # A retained snapshot holds the instance's files; the next forced
    # snapshot copies both out, then compaction merges the instance.
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    key = volume_disk_key(ops, vol, inst["moref"])
    kept = driver.create_snapshot(volume, "snap-keep", force=True)
    bkey = _backing_key(ops, vol["moref"])
    kept_tokens = vc.ctl.read_snapshot(kept.ref.value, bkey)["tokens"]
    vc.ctl.write(inst["moref"], key, "after-keep")
    tokens = _tokens(vc, inst["moref"], key)

    def done() -> None:
        backing, instance = ops.get_vms([vm(vol["moref"]), vm(inst["moref"])])
        for name, want in (("snap-keep", kept_tokens), ("snap-c", tokens)):
            node = backing.snapshot_named(name)
            assert node is not None, name
            assert vc.ctl.read_snapshot(node.ref.value, bkey)["tokens"] == want, name
        (bdisk,) = backing.disks
        assert bdisk.path in {d.path for d in instance.disks}
        assert _tokens(vc, inst["moref"], key) == tokens
        assert_files_consistent(vc, seeded)

    return Case(
        seeded,
        lambda d: _copying(d).create_snapshot(volume, "snap-c", force=True),
        [inst["moref"], vol["moref"]],
        done,
    )


def _delete_copied(vc: Target, ops: Any, driver: Driver) -> Case:
    # The last snapshot held as copies: removing it merges nothing, and its
    # files, which nothing uses then, are deleted.
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    driver.create_snapshot(volume, "snap-1", force=True)
    _copying(driver).create_snapshot(volume, "snap-2", force=True)
    driver.delete_snapshot(volume, "snap-1")
    key = volume_disk_key(ops, vol, inst["moref"])
    vc.ctl.write(inst["moref"], key, "after")
    tokens = _tokens(vc, inst["moref"], key)

    def done() -> None:
        assert ops.get_vm(vm(vol["moref"])).snapshots == ()
        assert _tokens(vc, inst["moref"], key) == tokens
        assert_files_consistent(vc, seeded)  # no copy left behind

    return Case(
        seeded,
        lambda d: d.delete_snapshot(volume, "snap-2"),
        [inst["moref"], vol["moref"]],
        done,
    )


def _forced_moved_kept(vc: Target, ops: Any, driver: Driver) -> Case:
    # Work Flow 2 on a backing with a retained snapshot: its stale disk is
    # swapped through a temporary snapshot (vSphere refuses a plain detach).
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    volume = Volume(vol["id"], "in-use", inst["uuid"])
    key = volume_disk_key(ops, vol, inst["moref"])
    kept = driver.create_snapshot(volume, "snap-keep", force=True)
    bkey = _backing_key(ops, vol["moref"])
    kept_tokens = vc.ctl.read_snapshot(kept.ref.value, bkey)["tokens"]
    ops.relocate(vm(inst["moref"]), datastore=ops.datastore_named("ds-shared-2"))
    vc.ctl.write(inst["moref"], key, "moved")
    tokens = _tokens(vc, inst["moref"], key)

    def done() -> None:
        backing, instance = ops.get_vms([vm(vol["moref"]), vm(inst["moref"])])
        assert [n.name for n in backing.all_snapshots()] == ["snap-keep", "snap-f"]
        assert vc.ctl.read_snapshot(kept.ref.value, bkey)["tokens"] == kept_tokens
        node = backing.snapshot_named("snap-f")
        assert node is not None
        assert vc.ctl.read_snapshot(node.ref.value, bkey)["tokens"] == tokens
        (bdisk,) = backing.disks
        assert bdisk.path in {d.path for d in instance.disks}
        assert _tokens(vc, inst["moref"], key) == tokens
        assert_files_consistent(vc, seeded)

    return Case(
        seeded,
        lambda d: d.create_snapshot(volume, "snap-f", force=True),
        [inst["moref"], vol["moref"]],
        done,
    )


def _follow_kept(vc: Target, ops: Any, driver: Driver) -> Case:
    # The other volume's backing has a retained snapshot holding the file it
    # is on: it follows the instance's new delta through a temporary snapshot.
    seeded = vc.ctl.scenario("instance-two-volumes")
    inst = seeded["instances"][0]
    vol_a, vol_b = seeded["volumes"]
    vol_b_in_use = Volume(vol_b["id"], "in-use", inst["uuid"])
    kept = driver.create_snapshot(vol_b_in_use, "b-keep", force=True)
    bkey = _backing_key(ops, vol_b["moref"])
    kept_tokens = vc.ctl.read_snapshot(kept.ref.value, bkey)["tokens"]
    key_b = volume_disk_key(ops, vol_b, inst["moref"])
    vc.ctl.write(inst["moref"], key_b, "b-after")
    tokens_b = _tokens(vc, inst["moref"], key_b)
    volume = Volume(vol_a["id"], "in-use", inst["uuid"])

    def done() -> None:
        backing_b, instance = ops.get_vms([vm(vol_b["moref"]), vm(inst["moref"])])
        assert [n.name for n in backing_b.all_snapshots()] == ["b-keep"]
        assert vc.ctl.read_snapshot(kept.ref.value, bkey)["tokens"] == kept_tokens
        (bdisk,) = backing_b.disks
        assert bdisk.path == next(d.path for d in instance.disks if d.key == key_b)
        assert _tokens(vc, vol_b["moref"], bkey) == tokens_b
        assert _snapshot_of(ops, vol_a["moref"], "snap-f") is not None
        assert_files_consistent(vc, seeded)

    return Case(
        seeded,
        lambda d: d.create_snapshot(volume, "snap-f", force=True),
        [inst["moref"], vol_a["moref"], vol_b["moref"]],
        done,
        # b-keep's forced snapshot left volume a's backing on a delta the
        # instance shares (it followed). Removing a's new snapshot on rollback
        # (consolidate=True, nothing to merge) makes vCenter recompute a's
        # consolidationNeeded, which a delta over its base shows: a flag, no
        # file or data changes (the rest is compared exactly).
        loose_flags=(vol_a["moref"],),
    )


def _group(vc: Target, ops: Any, driver: Driver) -> Case:
    # Two volumes of one instance at one moment: all or none.
    seeded = vc.ctl.scenario("instance-two-volumes")
    inst = seeded["instances"][0]
    vols = seeded["volumes"]
    volumes = [Volume(v["id"], "in-use", inst["uuid"]) for v in vols]
    keys = [volume_disk_key(ops, v, inst["moref"]) for v in vols]
    tokens = [_tokens(vc, inst["moref"], k) for k in keys]
    inst_tree = ops.get_vm(vm(inst["moref"])).snapshots

    def done() -> None:
        instance = ops.get_vm(vm(inst["moref"]))
        assert instance.snapshots == inst_tree
        for v, k, want in zip(vols, keys, tokens, strict=True):
            backing = ops.get_vm(vm(v["moref"]))
            node = backing.snapshot_named("snap-g")
            assert node is not None, v["id"]
            (bdisk,) = backing.disks
            assert vc.ctl.read_snapshot(node.ref.value, bdisk.key)["tokens"] == want
            assert bdisk.path == next(d.path for d in instance.disks if d.key == k)
            assert _tokens(vc, inst["moref"], k) == want
        assert_files_consistent(vc, seeded)

    return Case(
        seeded,
        lambda d: d.create_group_snapshot(volumes, "snap-g", force=True),
        [inst["moref"], *(v["moref"] for v in vols)],
        done,
    )


WORKFLOWS: dict[str, Prepare] = {
    "forced-snapshot": _forced_snapshot("attached-volume"),
    "forced-snapshot-moved": _forced_snapshot("attached-volume-moved"),
    "available-snapshot": _available_snapshot,
    "delete-attached": _delete_attached,
    "delete-available": _delete_available,
    "revert": _revert,
    "consolidate": _consolidate,
    "compact": _compact,
    "forced-snapshot-copy": _forced_with_copy,
    "delete-copied": _delete_copied,
    "forced-snapshot-moved-kept": _forced_moved_kept,
    "follow-kept": _follow_kept,
    "group": _group,
}


def _calls_of(vc: Target, ops: Any, tmp_path: Path, prepare: Prepare) -> list[str]:
    """The workflow's SOAP calls in order, from one run without faults."""
    driver = make_driver(ops, tmp_path / "dry")
    case = prepare(vc, ops, driver)
    with calls_made(vc, ops) as seen:
        case.run(driver)
    case.assert_done()
    return seen


def _as_before(vc: Target, ops: Any, case: Case, before: World) -> None:
    after = world(vc, ops, *case.morefs)
    assert after.trees == before.trees
    assert after.homes == before.homes
    assert _flags_loose(after.chains, case) == _flags_loose(before.chains, case)
    assert after.files == before.files


def _flags_loose(chains: dict[str, Any], case: Case) -> dict[str, Any]:
    return {
        m: {k: v for k, v in c.items() if k != "consolidation_needed" or m not in case.loose_flags}
        for m, c in chains.items()
    }


def _one(  # noqa: PLR0917
    vc: Target,
    ops: Any,
    tmp_path: Path,
    prepare: Prepare,
    fault: Fault,
    calls: list[str],
    index: int,
) -> str:
    """Inject ``fault`` at call ``index`` of a fresh run; check; return how it ended."""
    driver = make_driver(ops, tmp_path)
    case = prepare(vc, ops, driver)
    before = world(vc, ops, *case.morefs)
    earlier = {r.id for r in driver.journal.workflows()}  # the scenario's own
    fault.inject(vc, calls, index)
    raised: VmdkSnapError | None = None
    try:
        case.run(driver)
    except VmdkSnapError as exc:
        raised = exc
    finally:
        vc.ctl.clear_faults()
    if raised is None:
        ending = "success"
        case.assert_done()
    elif isinstance(raised, (Incomplete, RollbackFailed)):
        results = driver.recover()
        outcomes = {r.outcome for r in results}
        assert outcomes <= {"finished", "rolled_back"}, results
        assert len(outcomes) == 1, results
        ending = f"recover-{outcomes.pop()}"
        if ending == "recover-finished":
            case.assert_done()
        else:
            _as_before(vc, ops, case, before)
    else:
        ending = "rolled-back"
        _as_before(vc, ops, case, before)
        ours = [r for r in driver.journal.workflows() if r.id not in earlier]
        assert all(r.state == jn.ROLLED_BACK for r in ours), (raised, ours)
    assert driver.journal.unfinished() == []
    assert_nothing_running(ops, *case.morefs)
    # A group's member records say how it ended: all made or none.
    want = "error" if ending in ("rolled-back", "recover-rolled_back") else "available"
    for record in driver.journal.workflows():
        if record.id not in earlier and record.params.get("members"):
            assert {m["state"] for m in record.params["members"]} == {want}, (ending, record)
    return ending


# Workflows with many calls run in several parts (every PARTS-th call
# index each), so that the test's xdist workers share them out.
PARTS = {
    "forced-snapshot": 2,
    "forced-snapshot-moved": 3,
    "consolidate": 2,
    "compact": 2,
    "delete-attached": 3,
    "forced-snapshot-copy": 4,
    "delete-copied": 2,
    "forced-snapshot-moved-kept": 4,
    "follow-kept": 3,
    "group": 4,
}


# Workflows whose steps are the others' run in another order or on more
# VMs: the faults that test a step's check, undo and recovery (a task's
# error, a lost answer, vCenter gone for a while). The connection-level
# kinds (a drop before the call, expired sessions, faults of the waits) are
# handled by the session and the task watcher whatever the step, and run on
# every other workflow; leaving them out here keeps CI within its time.
STEP_FAULTS = ("answer-lost", "503x4", "task-error")
KINDS: dict[str, tuple[str, ...]] = {
    "forced-snapshot-moved-kept": STEP_FAULTS,
    "follow-kept": STEP_FAULTS,
    "group": STEP_FAULTS,
}


def _cases() -> list[tuple[str, str, int]]:
    return [
        (workflow, kind, part)
        for workflow, kind in itertools.product(WORKFLOWS, FAULTS)
        if kind in KINDS.get(workflow, tuple(FAULTS))
        for part in range(PARTS.get(workflow, 1))
    ]


@pytest.mark.live
@pytest.mark.slow
@pytest.mark.usefixtures("quick_sim")  # the same calls, in a tenth of the time
@pytest.mark.parametrize(("workflow", "kind", "part"), _cases())
def test_a_fault_at_every_call_ends_in_success_rollback_or_recover(  # noqa: PLR0917
    vc: Target, ops: Any, tmp_path: Path, workflow: str, kind: str, part: int
) -> None:
    prepare, fault = WORKFLOWS[workflow], FAULTS[kind]
    calls = _calls_of(vc, ops, tmp_path, prepare)
    indices = [i for i, method in enumerate(calls) if fault.applies(method)]
    assert indices, f"{workflow} makes no call {kind} applies to: {calls}"
    endings: dict[str, list[int]] = {}
    for index in indices[part :: PARTS.get(workflow, 1)]:
        try:
            ending = _one(vc, ops, tmp_path / str(index), prepare, fault, calls, index)
        except AssertionError as exc:
            raise AssertionError(f"{kind} at call {index} ({calls[index]}): {exc}") from exc
        endings.setdefault(ending, []).append(index)
    # Each run ended one of the three ways (asserted inside).
    if fault.always_succeeds:
        assert set(endings) == {"success"}, {e: [calls[i] for i in ix] for e, ix in endings.items()}
