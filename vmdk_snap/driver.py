"""The Cinder-facing API: snapshot, delete, revert and consolidate volumes.

::

    from vmdk_snap.driver import Driver, Volume

    with Session(url, user, password, ca_file=ca) as session:
        driver = Driver(session)                      # journal in the state dir
        vol = Volume("3f2a...", status="in-use", instance_uuid="9c1e...")
        driver.plan_snapshot(vol, "snapshot-5d1c", force=True)   # dry run
        node = driver.create_snapshot(vol, "snapshot-5d1c", force=True)

The driver keeps the state and the sanity checks (names, status, ``force``,
idempotency, one workflow per volume at a time, interrupted workflows) and
hands the work to a strategy (:mod:`vmdk_snap.strategies`), whose steps
(:mod:`vmdk_snap.workflows.table`) run with the journal (:mod:`vmdk_snap.workflows.engine`).

Status rules, as Cinder's: ``available`` -> snapshot the backing; ``in-use``
-> refused unless ``force`` (then the attached workflow); any other status is
refused. Revert only when ``available``. Deleting a snapshot that is gone is
a logged no-op; creating a snapshot whose name exists returns the existing one.

Cinder's ``available`` is checked before anything changes (snapshot, delete,
revert, consolidate, and their plans): one read finds any VM that has the
volume attached, and if one does the call is refused (Cinder's record is
stale), since snapshotting or reverting the backing under a running instance
would be wrong. :meth:`Driver.describe` takes the status as given (a read).

Locks: one workflow per volume (a second gets ``Busy`` at once), and one
workflow per instance for those that work on an instance (a forced snapshot,
a consolidation, deleting an attached volume's snapshot, and their recovery):
a second one waits up to ``instance_wait`` seconds, so the
volumes of a consistency group are snapshotted one after the other. Every
process of the host shares them, whatever its journal (:mod:`vmdk_snap.workflows.locks`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vmdk_snap.errors import Busy, InvalidState, NotFound, VmdkSnapError
from vmdk_snap.group_snapshots import (
    GroupSnapshotResult,
    GroupSnapshots,
    finalise_records,
    group_of,
)
from vmdk_snap.strategies import (
    AttachedStrategy,
    DetachedStrategy,
    SnapshotStrategy,
    VolumeState,
    WorkflowSpec,
    chain_headroom,
    missing_snapshot,
)
from vmdk_snap.types import SnapshotNode, VmInfo, datastore_of
from vmdk_snap.volume_state import (
    AVAILABLE,
    IN_USE,
    Volume,
    check_status,
    incomplete_snapshot,
    read_state,
    refuse_stale_available,
    state_of,
)
from vmdk_snap.vsphere.volumeops import Attachments, VolumeOps
from vmdk_snap.vsphere.volumeops.lookups import names_of
from vmdk_snap.workflows import leftovers
from vmdk_snap.workflows.compaction import CompactionPlan, plan_compaction
from vmdk_snap.workflows.consolidation import unseen_datastore_remedy
from vmdk_snap.workflows.coordination import HeldLock, Locks, make_locks
from vmdk_snap.workflows.copy_out import (
    copies_merge_safely,
    copy_cost,
    copy_params,
    copy_target,
)
from vmdk_snap.workflows.engine import Engine, Incomplete, Plan, RecoveryResult, plan_of
from vmdk_snap.workflows.group import ERROR
from vmdk_snap.workflows.journal import Journal, WorkflowRecord
from vmdk_snap.workflows.locks import DEFAULT_INSTANCE_WAIT, default_lock_dir
from vmdk_snap.workflows.stepctx import ref_json, ref_of
from vmdk_snap.workflows.table import OpsContext, build_steps, validate_snapshot_name

__all__ = [
    "Driver",
    "Plan",
    "RecoveryResult",
    "SnapshotResult",
    "Volume",
    "VolumeState",
    "validate_snapshot_name",
]

log = logging.getLogger(__name__)


Progress = Callable[[str, "int | None"], None]

# The journal key of the instance a workflow works on (its lock's name).
INSTANCE_UUID = "instance_uuid"


@dataclass(frozen=True)
class SnapshotResult:
    """A volume's snapshot, and whether this call made it (False: it existed)."""

    node: SnapshotNode
    created: bool


COMPACT_DEPTH = 3
"""A forced snapshot first compacts the instance when its deepest chain has this many deltas.

VMware advises keeping a running VM's chains at two or three deltas for its
I/O; compaction copies nothing and costs two tasks and a few reads (see the
README's cost section), so it runs as soon as that is passed.
"""


COPY_DEPTH = 14
"""A forced snapshot copies its backing's snapshots out when the deepest chain has this many deltas.

With snapshots retained, the instance can be compacted only after every
backing whose snapshots hold its files has copied them out, and a backing
copies only in its own forced snapshot (its disk is then its own fresh
delta). Every forced snapshot adds one delta to every chain, so with two
volumes rotated separately the chains reach ``COPY_DEPTH + 2`` before the
second copy lets compaction merge: 14 keeps them at 16 or less. Each copy
costs one volume's data (plus the deltas) per about ``COPY_DEPTH`` forced
snapshots; the README's benchmark gives the figures for other values.
"""


class Driver:
    """Snapshots of Cinder VMDK volumes, attached or not, crash-safe.

    Args:
        session: a connected :class:`vmdk_snap.vsphere.session.Session` (or a
            :class:`~vmdk_snap.vsphere.volumeops.VolumeOps` already built on one).
        journal_path: the SQLite journal (default: the user's state dir,
            see :func:`vmdk_snap.workflows.journal.default_journal_path`).
        lock_dir: the host's lock directory, whatever the journal (default:
            :func:`vmdk_snap.workflows.locks.default_lock_dir`).
        coordination_url: lock in this coordination service instead (tooz,
            e.g. ``etcd3+http://host:2379``, Cinder's ``[coordination]
            backend_url``), so that the locks hold across hosts
            (:mod:`vmdk_snap.workflows.coordination`).
        locks: the :class:`~vmdk_snap.workflows.coordination.Locks` to use,
            instead of ``lock_dir`` and ``coordination_url`` (Cinder's own
            coordinator, a test's).
        journal: an already opened :class:`~vmdk_snap.workflows.journal.Journal`,
            instead of ``journal_path`` (several Drivers may share one).
        strategies: replace the ``"available"`` and/or ``"in-use"`` strategy.
        instance_wait: how long (seconds) a workflow that changes an instance
            waits for another one on the same instance before ``Busy``.
        compact: after deleting an attached volume's snapshot, and before a
            forced snapshot when the instance's deepest chain has
            ``compact_depth`` (:data:`COMPACT_DEPTH`) deltas or more, merge the
            instance's redundant deltas when no snapshot holds them any more
            (:meth:`compact`); False leaves that to an explicit ``compact``.
        compact_depth: see ``compact`` (default :data:`COMPACT_DEPTH`).
        copy_depth: a forced snapshot that finds the instance's deepest chain
            at this many deltas (:data:`COPY_DEPTH`) or more, with snapshots
            holding its files, copies its backing's snapshots out first (to
            another datastore; see :mod:`vmdk_snap.workflows.copy_out`), so
            that compaction can merge. Only with ``compact``.
        copy_to: the datastore those copies go to (default: the backing's
            home datastore if it holds none of the instance's files, else the
            first other datastore its host sees, by name).
    """

    def __init__(
        self,
        session: Any,
        *,
        journal_path: Path | None = None,
        lock_dir: Path | None = None,
        coordination_url: str | None = None,
        locks: Locks | None = None,
        journal: Journal | None = None,
        strategies: Mapping[str, SnapshotStrategy] | None = None,
        instance_wait: float = DEFAULT_INSTANCE_WAIT,
        compact: bool = True,
        compact_depth: int = COMPACT_DEPTH,
        copy_depth: int = COPY_DEPTH,
        copy_to: str | None = None,
    ) -> None:
        self.instance_wait = instance_wait
        self.auto_compact = compact
        self.compact_depth = compact_depth
        self.copy_depth = copy_depth
        self.copy_to = copy_to
        self.ops: VolumeOps = session if isinstance(session, VolumeOps) else VolumeOps(session)
        self.journal = journal if journal is not None else Journal(journal_path)
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
        self.locks: Locks = (
            locks if locks is not None else make_locks(self.lock_dir, coordination_url)
        )
        self._engine = Engine[OpsContext](self.journal)
        self.strategies: dict[str, SnapshotStrategy] = {
            AVAILABLE: DetachedStrategy(),
            IN_USE: AttachedStrategy(),
        }
        self.strategies.update(strategies or {})

    # -- reading -------------------------------------------------------------------

    def describe(self, volume_id: str | Volume) -> VolumeState:
        """The volume's backing, instance, chain and snapshots (reads only)."""
        volume = volume_id if isinstance(volume_id, Volume) else Volume(volume_id)
        return self._described(self._state(volume), {})

    def describe_all(self) -> tuple[list[VolumeState], list[tuple[str, VmdkSnapError]]]:
        """Every volume in vCenter, as :meth:`describe` shows one (reads only).

        The volumes' backings and instances are found in one read of the
        inventory and read together, so the cost grows with the number of
        volumes, not with its square. A volume that cannot be described is
        returned with its error; the others go on.
        """
        inventory = self.ops.read_attachments()
        located = inventory.located()
        refs = {r for pair in located.values() for r in pair if r is not None}
        infos = self.ops.read_vms(sorted(refs))
        hosts: dict[Any, str] = {}
        states: list[VolumeState] = []
        errors: list[tuple[str, VmdkSnapError]] = []
        for vid, (backing, instance) in located.items():
            try:
                if backing not in infos or (instance is not None and instance not in infos):
                    raise NotFound(
                        f"a VM of volume {vid} no longer exists", hint="run the check again"
                    )
                state = state_of(
                    Volume(vid),
                    infos[backing],
                    infos[instance] if instance is not None else None,
                    searched=True,
                )
                states.append(self._described(state, hosts, inventory))
            except VmdkSnapError as exc:  # one odd volume must not hide the others
                errors.append((vid, exc))
        return states, errors

    def _described(
        self, state: VolumeState, names: dict[Any, str], inventory: Attachments | None = None
    ) -> VolumeState:
        """``state`` with its hosts' names (cached in ``names``), leftovers and advice.

        ``inventory``: a read of every VM made already (for compaction's lookups).
        """
        for vm in (state.backing, state.instance):
            if vm is not None and vm.host is not None and vm.host not in names:
                names[vm.host] = self.ops.get_host(vm.host).name
        inst = state.instance
        return replace(
            state,
            backing_host=names.get(state.backing.host, ""),
            instance_host=names.get(inst.host) if inst is not None else None,
            leftovers=self._leftovers_on(inst) if inst is not None else (),
            compaction=self._compaction_summary(state, inventory),
            copy_out=self._copy_out_summary(state),
        )

    def _copy_out_summary(self, state: VolumeState) -> tuple[int, str] | None:
        """What a forced snapshot at ``copy_depth`` would copy (no read)."""
        disk = state.volume_disk
        if disk is None or not state.backing.snapshots or not self.auto_compact:
            return None
        return self.copy_depth, copy_cost(disk.chain, disk.capacity_kb)

    def _compaction_summary(
        self, state: VolumeState, inventory: Attachments | None = None
    ) -> tuple[int, str | None] | None:
        if state.instance is None or not state.instance.consolidation_needed:
            return None
        plan = self._compaction(state, inventory)
        return (plan.deltas, plan.refusal) if plan is not None else None

    def _leftovers_on(self, instance: VmInfo) -> tuple[str, ...]:
        """Temporary snapshots on ``instance`` whose volume no process here is working on."""
        found = []
        for left in leftovers.find_leftovers([instance], ()):
            if left.volume_id is not None:
                try:
                    with self.locks.volume(left.volume_id):
                        pass
                except Busy:
                    continue  # its workflow is running
            found.append(left.node.name)
        return tuple(found)

    def _state(self, volume: Volume, *, verify: bool = False) -> VolumeState:
        return read_state(self.ops, volume, verify=verify)

    # -- plans (dry runs) -------------------------------------------------------

    def plan_snapshot(self, volume: Volume, name: str, *, force: bool = False) -> Plan:
        """What :meth:`create_snapshot` would do, step by step; changes nothing."""
        validate_snapshot_name(name)
        state = self._state(volume, verify=True)
        existing = state.backing.snapshot_named(name)
        if existing is not None:
            return Plan("snapshot", volume.id, (), (f"snapshot {name} exists: nothing to do",))
        spec = self._strategy_for_snapshot(state, force).take(state, name, quiesce=False)
        return self._plan(volume.id, self._with_copy(state, spec))

    def plan_consolidate(self, volume: Volume) -> Plan:
        """What :meth:`consolidate` would do; changes nothing."""
        state = self._state(volume, verify=True)
        refuse_stale_available(state)
        if not state.duplicated:
            return Plan("consolidate", volume.id, (), ("nothing to consolidate",))
        return self._plan(volume.id, self._attached(state).consolidate(state))

    def _plan(self, volume_id: str, spec: WorkflowSpec) -> Plan:
        params = self._with_names(spec.params)
        steps = build_steps(spec.kind, params)
        ctx = OpsContext(params=params, ops=self.ops)
        plan = plan_of(spec.kind, volume_id, steps, ctx)
        return replace(plan, notes=plan.notes + spec.notes + self._refusals(params))

    def _refusals(self, params: dict[str, Any]) -> tuple[str, ...]:
        """Why vCenter will refuse the plan's relocation, if it will (one read, plans only).

        The backing moves to the instance's host while its old disk stays where
        it is: that host must see the old disk's datastore.
        """
        relocate = params.get("relocate")
        if not relocate:
            return ()
        host = self.ops.get_host(ref_of(relocate["host"]))
        old = relocate["keep_disk"]["datastore_name"]
        if host.datastore_named(old) is not None:
            return ()
        return (
            f"vCenter will refuse relocate_backing: host {host.name} cannot see datastore "
            f"{old} (the backing's old disk); "
            + unseen_datastore_remedy(host.name, old, params["instance_name"]),
        )

    def _with_names(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with the names of the hosts and pools a relocation involves.

        For plans (one more read): people read names, as ``check`` shows them.
        A running workflow does without (the journal's morefs are exact).
        """
        relocate, origin = params.get("relocate"), params.get("origin")
        if not relocate or not origin:
            return params
        refs = [ref_of(w[k]) for w in (relocate, origin) for k in ("host", "pool") if w.get(k)]
        names = names_of(self.ops.session, refs)

        def named(where: dict[str, Any]) -> dict[str, Any]:
            out = dict(where)
            for k in ("host", "pool"):
                if where.get(k) and ref_of(where[k]) in names:
                    out[f"{k}_name"] = names[ref_of(where[k])]
            return out

        return {**params, "relocate": named(relocate), "origin": named(origin)}

    # -- changes ---------------------------------------------------------------------

    def create_snapshot(
        self,
        volume: Volume,
        name: str,
        *,
        force: bool = False,
        quiesce: bool = False,
        on_progress: Progress | None = None,
    ) -> SnapshotNode:
        """Snapshot the volume; the backing's snapshot is named ``name``.

        Idempotent: if the backing already has a snapshot ``name``, it is
        returned and nothing changes (see :meth:`take_snapshot`).
        """
        return self.take_snapshot(
            volume, name, force=force, quiesce=quiesce, on_progress=on_progress
        ).node

    def take_snapshot(
        self,
        volume: Volume,
        name: str,
        *,
        force: bool = False,
        quiesce: bool = False,
        on_progress: Progress | None = None,
    ) -> SnapshotResult:
        """:meth:`create_snapshot`, also saying whether the snapshot was made now.

        A snapshot ``name`` that already exists is returned with
        ``created=False`` whatever the volume's status and ``force``: Cinder
        calls ``create_snapshot`` again with the same snapshot only to retry
        one, and the retry must get the first snapshot, not a refusal.

        Raises:
            InvalidInput: a bad name (nothing was changed).
            InvalidState: the status does not allow it, in-use without force, or
                ``available`` while an instance has the volume (nothing changed).
            Busy: another workflow holds the volume, or the instance for longer
                than ``instance_wait``.
            VmdkSnapError: a step failed; every completed step was undone.
        """
        validate_snapshot_name(name)
        with self._locked(volume):
            how: dict[str, Any] = {"force": force, "quiesce": quiesce, "on_progress": on_progress}
            state = self._state(volume, verify=True)
            existing = state.backing.snapshot_named(name)
            if existing is None and state.instance is not None:
                self._strategy_for_snapshot(state, force)  # refused before any wait
                with self._instance_locked(volume, state) as locked:
                    return self._take(volume, self._compacted_first(volume, locked), name, **how)
            return self._take(volume, state, name, **how)

    def _take(
        self,
        volume: Volume,
        state: VolumeState,
        name: str,
        *,
        force: bool,
        quiesce: bool,
        on_progress: Progress | None,
    ) -> SnapshotResult:
        existing = state.backing.snapshot_named(name)
        if existing is not None:
            why = incomplete_snapshot(self.ops, self.journal.workflows(volume.id), state, existing)
            if why is not None:
                raise InvalidState(
                    f"volume {volume.id} already has a snapshot {name}, but it is not a "
                    f"finished one: {why}; nothing was changed",
                    hint=f"run `vmdk-snap recover`; if it settles nothing, delete that snapshot "
                    f"(`vmdk-snap delete {volume.id} {name}`) and take it again",
                )
            log.info("volume %s already has snapshot %s: returning it", volume.id, name)
            return SnapshotResult(existing, created=False)
        strategy = self._strategy_for_snapshot(state, force)
        spec = self._with_copy(state, strategy.take(state, name, quiesce=quiesce))
        for note in spec.notes:
            log.info("%s", note)
        ctx = self._run(volume.id, spec, on_progress, state.instance)
        made = SnapshotResult(self._made(ctx, state, name, quiesce), created=True)
        if spec.params.get("copy") and self.auto_compact:
            # This volume's snapshots no longer hold the instance's files.
            self._compact_after(volume, f"snapshot {name}, its backing's snapshots copied out")
        return made

    def _with_copy(self, state: VolumeState, spec: WorkflowSpec) -> WorkflowSpec:
        """A forced snapshot on deep chains also copies the backing's snapshots out.

        When the instance's deepest chain has ``copy_depth`` deltas or more
        and compaction could not shorten it (snapshots hold its files), the
        snapshot relocates the backing so that its snapshots, the new one
        included, hold copies (:mod:`vmdk_snap.workflows.copy_out`); compaction
        follows once no backing's snapshot holds the instance's files.
        """
        disk = state.volume_disk
        if spec.kind != "snapshot_attached" or not self.auto_compact or disk is None:
            return spec
        depth = chain_headroom(state).depth
        if depth < self.copy_depth:
            return spec
        backing = state.backing
        if backing.host is None:
            return spec
        datastores = self.ops.get_host(backing.host).datastores
        shared = self.ops.shared_datastores([d.ref for d in datastores])
        target = copy_target(backing, set(disk.chain), datastores, shared, self.copy_to)
        if isinstance(target, str):
            note = f"the chains are {depth} deltas deep, but not copying snapshots out: {target}"
            return replace(spec, notes=(*spec.notes, note))
        names = tuple(n.name for n in backing.all_snapshots())
        params = {**spec.params, "copy": copy_params(disk.chain, names, target)}
        return replace(spec, params=params)

    def _made(self, ctx: OpsContext, state: VolumeState, name: str, quiesce: bool) -> SnapshotNode:
        """The snapshot a finished workflow made, read back if vCenter answers.

        The journal says ``done`` already: a read that fails now (vCenter
        briefly unavailable) must not turn a snapshot that exists into an
        error, so the node is then built from what the step recorded.
        """
        backing = ctx.seen.get("backing")
        node = backing.snapshot_named(name) if backing is not None else None
        if node is not None:
            return node
        try:
            node = self.ops.get_vm(state.backing.ref).snapshot_named(name)
        except VmdkSnapError as exc:
            log.warning("snapshot %s was made; reading it back failed: %s", name, exc)
        if node is not None:
            return node
        made = ctx.results.get("snapshot_backing", {}).get("snapshot")
        if made is None:  # pragma: no cover - the workflow checked it exists
            raise NotFound(f"snapshot {name} vanished right after it was made")
        return SnapshotNode(ref_of(made), name, "", None, quiesce)

    def delete_snapshot(self, volume: Volume, name: str) -> bool:
        """Delete snapshot ``name``; False (a logged no-op) if it is already gone.

        Detached volumes: ``consolidate=True``. Attached: ``consolidate=False``,
        so nothing is merged into a file the instance uses; the files stay.
        An attached volume's deletion also takes the instance's lock: a forced
        snapshot of another volume of the instance reconfigures this backing.
        """
        validate_snapshot_name(name)
        with self._locked(volume):
            state = self._state(volume, verify=True)
            if state.instance is not None and state.backing.snapshot_named(name) is not None:
                check_status(state)  # refused before any wait
                with self._instance_locked(volume, state) as state:
                    return self._delete(volume, state, name)
            return self._delete(volume, state, name)

    def _delete(self, volume: Volume, state: VolumeState, name: str) -> bool:
        node = state.backing.snapshot_named(name)
        if node is None:
            log.info("volume %s has no snapshot %s: nothing to delete", volume.id, name)
            return False
        check_status(state)
        spec = self.strategies[state.status].delete(state, node)
        inst = state.instance
        if inst is not None and self._may_hold_copies(state) and not spec.params.get("consolidate"):
            copies = copies_merge_safely(self.ops, state.backing, inst, node.ref)
            if copies is not None:
                # A snapshot copied out of the instance's chains merges as
                # on a detached volume; what nothing uses then is deleted.
                params = {**spec.params, "consolidate": True, "cleanup": list(copies)}
                note = f"snapshot {name} holds copies, outside the instance's chains: merged"
                spec = replace(spec, params=params, notes=(note,))
        for note in spec.notes:
            log.info("%s", note)
        self._run(volume.id, spec, None, state.instance)
        if state.instance is not None and self.auto_compact:
            # The last snapshot holding the instance's files may be gone now.
            self._compact_after(volume, f"deleting snapshot {name}")
        return True

    @staticmethod
    def _may_hold_copies(state: VolumeState) -> bool:
        """Whether an attached volume's snapshots may be copies (costs no read).

        Copies are made on a datastore that holds none of the instance's
        files of the volume, and the backing's home moves there with them.
        """
        if state.instance is None or state.volume_disk is None:
            return False
        home = datastore_of(state.backing.vm_path_name)
        return home not in {datastore_of(p) for p in state.volume_disk.chain}

    # -- compaction (vmdk_snap.workflows.compaction) ------------------------------

    def compact(self, volume: Volume) -> bool:
        """Merge the instance's redundant deltas, when no snapshot holds their files.

        Gives the volume's instance back the chains it had before its forced
        snapshots. False (nothing changed, the reason logged) when there is
        nothing to merge or it would not be safe now.
        """
        with self._locked(volume):
            state = self._state(volume, verify=True)
            if state.instance is None:
                log.info("volume %s is not attached: nothing to compact", volume.id)
                return False
            with self._instance_locked(volume, state) as state:
                return self._compact(volume, state)

    def plan_compact(self, volume: Volume) -> Plan:
        """What :meth:`compact` would do, step by step; changes nothing."""
        state = self._state(volume, verify=True)
        plan = self._compaction(state)
        if plan is None or plan.refusal is not None:
            why = plan.refusal if plan is not None else f"volume {volume.id} is not attached"
            return Plan("compact", volume.id, (), (f"nothing to compact: {why}",))
        return self._plan(volume.id, WorkflowSpec("compact", self._compact_params(state, plan)))

    def _compacted_first(self, volume: Volume, state: VolumeState) -> VolumeState:
        """Before a forced snapshot: merge what earlier ones left, when the chains are deep.

        Deletions compact by themselves; this catches what they could not
        (a snapshot then still held the files, deletions made elsewhere).
        """
        inst = state.instance
        if not self.auto_compact or inst is None or not inst.consolidation_needed:
            return state
        if chain_headroom(state).depth < self.compact_depth:
            return state
        self._compact_after(volume, "before the forced snapshot")
        return self._state(volume, verify=True)

    def _compact_after(self, volume: Volume, what: str) -> None:
        """Compact after a workflow that may have released the instance's files."""
        try:
            self._compact(volume, self._state(volume))
        except Incomplete:
            raise
        except VmdkSnapError as exc:
            log.warning("%s: done; compacting the instance failed, nothing changed: %s", what, exc)

    def _compact(self, volume: Volume, state: VolumeState) -> bool:
        plan = self._compaction(state)
        if plan is None or plan.refusal is not None:
            log.info("volume %s: not compacting: %s", volume.id, plan and plan.refusal)
            return False
        spec = WorkflowSpec("compact", self._compact_params(state, plan))
        self._run(volume.id, spec, None, state.instance)
        log.info("volume %s: instance compacted, %d deltas merged", volume.id, plan.deltas)
        return True

    def _compaction(
        self, state: VolumeState, inventory: Attachments | None = None
    ) -> CompactionPlan | None:
        if state.instance is None:
            return None
        return plan_compaction(
            self.ops, state.instance, state.volume_id, state.backing.ref, inventory
        )

    @staticmethod
    def _compact_params(state: VolumeState, plan: CompactionPlan) -> dict[str, Any]:
        return {
            "volume_id": state.volume_id,
            "name": "",
            "backing": ref_json(state.backing.ref),
            "backing_name": state.backing.name,
            **plan.params(),
        }

    # -- several volumes at one moment (vmdk_snap.group_snapshots) -----------------

    def attached_volumes(self, instance_uuid: str) -> list[str]:
        """The ids of the volumes attached to the instance (Nova's keys; two reads).

        Raises:
            NotFound: no VM has that instance UUID.
            InvalidState: it has no volume attached.
        """
        ref = self.ops.find_instance(instance_uuid)
        if ref is None:
            raise NotFound(
                f"no instance with UUID {instance_uuid} in vCenter",
                hint="check the UUID (`openstack server show`)",
            )
        instance = self.ops.get_vm(ref)
        ids = sorted(k.removeprefix("volume-") for k in instance.volume_keys)
        if not ids:
            raise InvalidState(
                f"instance {instance_uuid} ({instance.name}) has no volume attached; "
                "nothing was changed",
                hint="attach the volumes first, or name them",
            )
        return ids

    def plan_group_snapshot(
        self,
        volumes: Sequence[Volume],
        name: str,
        *,
        force: bool = False,
        names: Mapping[str, str] | None = None,
    ) -> Plan:
        """What :meth:`create_group_snapshot` would do, step by step; changes nothing."""
        return GroupSnapshots(self).plan(volumes, name, force=force, names=names or {})

    def create_group_snapshot(
        self,
        volumes: Sequence[Volume],
        name: str,
        *,
        force: bool = False,
        quiesce: bool = False,
        names: Mapping[str, str] | None = None,
    ) -> GroupSnapshotResult:
        """Snapshot ``volumes`` at one moment; each backing's snapshot is named ``name``,
        or ``names[volume id]`` (Cinder names each member ``snapshot-<its id>``).

        The attached ones (all on one instance, ``force`` needed) through one
        temporary instance snapshot, all or none; available ones as usual.
        Refused before any change: bad name or status, several instances,
        independent or too deep disks, ``name`` on some members only. A
        retry of a finished group returns its snapshots (``created=False``).

        Raises:
            VmdkSnapError: with ``exc.members``, each member's record, once the
                group workflow began (rolled back: ``error``; left for
                ``recover``: ``creating``).
        """
        return GroupSnapshots(self).create(
            volumes, name, force=force, quiesce=quiesce, names=names or {}
        )

    def dependent_vms(self, volume: Volume) -> list[str]:
        """Names of other VMs whose disks build on files the volume's snapshots hold.

        A linked clone made from a snapshot (Cinder's ``clone_type: linked``)
        is a delta on such a file; deleting a snapshot of an available volume
        merges into those files, so while this list is not empty the caller
        refuses (Cinder: ``SnapshotIsBusy``). Conservative: any snapshot's
        file counts, not only the one to delete. One read across the inventory.
        """
        state = self._state(volume)
        held = {p for p in state.backing_disk.chain[1:]}
        if not held:
            return []
        others = [r for r in self.ops.find_vms_using(held) if r != state.backing.ref]
        return sorted(vm.name for vm in self.ops.get_vms(others)) if others else []

    def revert_to_snapshot(self, volume: Volume, name: str) -> None:
        """Revert the volume to snapshot ``name``; only when it is available."""
        validate_snapshot_name(name)
        with self._locked(volume):
            state = self._state(volume, verify=True)
            check_status(state)
            if state.status != AVAILABLE:
                who = state.instance.instance_uuid if state.instance else "an instance"
                raise InvalidState(
                    f"volume {volume.id} is in-use by instance {who}; a snapshot can only be "
                    "reverted while the volume is available, as Cinder does",
                    hint="detach the volume first, then revert",
                )
            node = state.backing.snapshot_named(name)
            if node is None:
                raise missing_snapshot(volume.id, name)
            self._run(volume.id, self.strategies[AVAILABLE].revert(state, node), None)

    def consolidate(self, volume: Volume, *, on_progress: Progress | None = None) -> bool:
        """Re-join the backing with the attached instance's newer copy, if it moved.

        Returns False (nothing changed) when the chain is not duplicated.
        ``on_progress(step, percent)`` is fed by vCenter's task progress.
        """
        with self._locked(volume):
            state = self._state(volume, verify=True)
            refuse_stale_available(state)
            if state.duplicated:
                with self._instance_locked(volume, state) as state:
                    if state.duplicated:
                        spec = self._attached(state).consolidate(state)
                        self._run(volume.id, spec, on_progress, state.instance)
                        return True
            log.info("volume %s: nothing to consolidate", volume.id)
            return False

    def recover(self, *, adopt: bool = False) -> list[RecoveryResult]:
        """Finish or roll back every interrupted workflow, then settle leftovers.

        A workflow whose volume is locked by a live process is left alone
        (``busy``); one that cannot be recovered now stays in the journal
        (``failed``) for the next try. A workflow on an instance (a forced
        snapshot, a consolidation, an attached volume's deletion) also waits
        for the instance's lock, as it did when it ran (the journal names it).

        Then temporary instance snapshots that no running workflow owns are
        looked for across the inventory (one read) and settled, or reported
        (``left``, with what to run); ``adopt`` also settles those no journal
        here knows (see :mod:`vmdk_snap.workflows.leftovers`).
        """
        results = [self._recover_record(record) for record in self.journal.unfinished()]
        try:
            vms = self.ops.vms_with_snapshots()
        except VmdkSnapError as exc:
            detail = f"could not look for leftover temporary snapshots: {exc}"
            return [*results, RecoveryResult("", leftovers.KIND, "", "failed", detail)]
        found = leftovers.find_leftovers(vms, self.journal.workflows())
        return results + [self._settle_leftover(left, adopt) for left in found]

    def _recover_record(self, record: WorkflowRecord) -> RecoveryResult:
        def result(outcome: str, detail: str = "") -> RecoveryResult:
            return RecoveryResult(record.id, record.kind, record.volume, outcome, detail)

        locks = [self.locks.volume(v) for v in sorted(group_of(record))]
        held: list[HeldLock] = []
        instance_lock: HeldLock | None = None
        try:
            for lock in locks:
                lock.acquire()
                held.append(lock)
            instance_lock = self._lock_instance_of(record.params)
        except VmdkSnapError as exc:
            for lock in reversed(held):
                lock.release()
            return result("busy" if isinstance(exc, Busy) else "failed", str(exc))
        try:
            steps = build_steps(record.kind, record.params)
            ctx = OpsContext(params=dict(record.params), ops=self.ops)
            outcome = self._engine.resume(record, steps, ctx)
            log.info("recovered %s of volume %s: %s", record.kind, record.volume, outcome)
            if record.params.get("members"):
                # The group's member records, final now.
                params = dict(record.params)
                finalise_records(
                    params,
                    *((AVAILABLE, None) if outcome == "finished" else (ERROR, "rolled back")),
                )
                self.journal.set_params(record.id, params)
            return result(outcome)
        except VmdkSnapError as exc:
            log.warning("could not recover workflow %s: %s", record.id, exc)
            return result("failed", str(exc))
        finally:
            if instance_lock is not None:
                instance_lock.release()
            for lock in reversed(held):
                lock.release()

    def _settle_leftover(self, left: leftovers.Leftover, adopt: bool) -> RecoveryResult:
        """Settle one leftover temporary snapshot under its volume's and instance's locks."""
        owner = left.record.id if left.record is not None else ""

        def result(outcome: str, detail: str) -> RecoveryResult:
            return RecoveryResult(owner, leftovers.KIND, left.volume_id or "", outcome, detail)

        if left.volume_id is None:
            return result("left", leftovers.not_settled(left, None))
        volume = Volume(left.volume_id, IN_USE, left.instance.instance_uuid)
        try:
            with self._locked(volume):
                state = self._state(volume)
                with self._instance_locked(volume, state) as state:
                    verdict = leftovers.judge(left, state)
                    if verdict.kind is None or (left.record is None and not adopt):
                        return result("left", leftovers.not_settled(left, verdict))
                    params = leftovers.leftover_params(left, state)
                    spec = WorkflowSpec(verdict.kind, params)
                    self._run(left.volume_id, spec, None, state.instance)
        except Busy as exc:
            return result("busy", f"{left.where}: its workflow is running ({exc})")
        except VmdkSnapError as exc:
            return result("failed", f"{left.where}: {exc}")
        outcome = "finished" if verdict.kind == leftovers.RELEASE else "rolled_back"
        log.info("settled %s: %s", left.where, verdict.found)
        return result(outcome, f"{left.where}: {verdict.found}")

    def _lock_instance_of(self, params: Mapping[str, Any]) -> HeldLock | None:
        """The held lock of the instance a journaled workflow works on, if any."""
        uuid = params.get(INSTANCE_UUID)
        if not uuid and params.get("instance"):  # journaled before the uuid was
            try:
                uuid = self.ops.get_vm(ref_of(params["instance"])).instance_uuid
            except NotFound:
                return None  # the instance is gone: nobody else can work on it
        if not uuid:
            return None
        lock = self.locks.instance(uuid, self.instance_wait)
        lock.acquire()
        return lock

    # -- internals -----------------------------------------------------------------------

    @contextmanager
    def _locked(self, volume: Volume) -> Iterator[None]:
        with self.locks.volume(volume.id):
            pending = [r for r in self.journal.unfinished() if volume.id in group_of(r)]
            if pending:
                raise InvalidState(
                    f"volume {volume.id} has an interrupted {pending[0].kind} workflow "
                    f"({pending[0].id})",
                    hint="run `vmdk-snap recover` first",
                )
            yield

    @contextmanager
    def _instance_locked(self, volume: Volume, state: VolumeState) -> Iterator[VolumeState]:
        """Hold the instance's lock (after the volume's); yields the state to act on.

        When another workflow held the instance first, it may have changed
        this volume's backing (a forced snapshot of another volume hands each
        backing the instance's new delta), so the state is read again then.
        """
        if state.instance is None or not state.instance.instance_uuid:
            yield state
            return
        uuid = state.instance.instance_uuid
        with self.locks.instance(uuid, self.instance_wait) as lock:
            if lock.waited:
                log.info("instance %s is free again: reading volume %s again", uuid, volume.id)
                state = self._state(volume, verify=True)
                if state.instance is None or state.instance.instance_uuid != uuid:
                    where = state.instance.instance_uuid if state.instance else "no instance"
                    raise InvalidState(
                        f"volume {volume.id} moved from instance {uuid} to {where} while "
                        "waiting for another workflow on that instance; nothing was changed",
                        hint="check the volume's attachment, then try again",
                    )
            yield state

    def _run(
        self,
        volume_id: str,
        spec: WorkflowSpec,
        on_progress: Progress | None,
        instance: VmInfo | None = None,
    ) -> OpsContext:
        params = spec.params
        if instance is not None and instance.instance_uuid:
            # Journaled, so that recover takes the same instance lock.
            params = {**params, INSTANCE_UUID: instance.instance_uuid}
        steps = build_steps(spec.kind, params)
        ctx = OpsContext(params=params, on_progress=on_progress, ops=self.ops)
        self._engine.run(spec.kind, volume_id, steps, ctx)
        return ctx

    def _strategy_for_snapshot(self, state: VolumeState, force: bool) -> SnapshotStrategy:
        check_status(state)
        if state.status == IN_USE and not force:
            who = state.instance.instance_uuid if state.instance else "an instance"
            raise InvalidState(
                f"volume {state.volume_id} is in-use by instance {who}",
                hint="pass --force to snapshot it while attached",
            )
        return self.strategies[state.status]

    def _attached(self, state: VolumeState) -> AttachedStrategy:
        strategy = self.strategies[IN_USE]
        if state.instance is None or not isinstance(strategy, AttachedStrategy):
            raise InvalidState(
                f"volume {state.volume_id} is not attached: there is nothing to consolidate",
                hint="consolidation re-joins an attached volume's copies",
            )
        return strategy
