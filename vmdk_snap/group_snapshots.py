"""Snapshots of several volumes at one moment: the library side of group snapshots.

::

    result = driver.create_group_snapshot(
        [Volume(a, "in-use", inst), Volume(b, "in-use", inst)], "db-2026-12-03", force=True
    )
    for m in result.members:
        print(m.volume_id, m.state, m.snapshot)

The attached members (all on one instance) are frozen by one temporary
instance snapshot (:mod:`vmdk_snap.workflows.group`); available members get
ordinary backing snapshots, each its own workflow, after the group.
Everything is checked before anything changes: names, statuses (``force``
for attached members), one instance, independent disks, chain depth, and a
snapshot of that name on some members but not on others.

Two-phase records: each member is journaled ``creating`` before the first
change (in the workflow's parameters) and finalised ``available`` or
``error`` (with the reason) when the workflow ends, by this call or by
``recover``; the result (and the error raised, as ``exc.members``) carries
them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from vmdk_snap.errors import InvalidInput, InvalidState, VmdkSnapError
from vmdk_snap.strategies import AttachedStrategy, VolumeState
from vmdk_snap.types import SnapshotNode
from vmdk_snap.volume_state import IN_USE, Volume, check_status
from vmdk_snap.vsphere.volumeops import VolumeOps
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.coordination import Locks
from vmdk_snap.workflows.engine import Engine, Incomplete, Plan, plan_of
from vmdk_snap.workflows.group import AVAILABLE, CREATING, ERROR, GROUP_KIND, made_snapshots
from vmdk_snap.workflows.journal import Journal
from vmdk_snap.workflows.stepctx import OpsContext, ref_json, ref_of, workflow_volumes
from vmdk_snap.workflows.table import build_steps, temp_snapshot_name, validate_snapshot_name

__all__ = [
    "GroupSnapshotResult",
    "GroupSnapshots",
    "MemberResult",
    "finalise_records",
    "group_description",
    "group_of",
    "taken_with",
]

log = logging.getLogger(__name__)

# Keys of a member's forced-snapshot parameters that belong to the group.
# Each member's own snapshot name, by volume id (Cinder names every member
# snapshot-<id>); a member not named gets the group's name.
Names = Mapping[str, str]
_NONE: Names = MappingProxyType({})

_GROUP_KEYS = ("temp_name", "others", "quiesce", "instance", "instance_name")


@dataclass(frozen=True)
class MemberResult:
    """One member of a group snapshot: its record and, once made, its snapshot."""

    volume_id: str
    name: str
    state: str  # creating, available, error
    snapshot: SnapshotNode | None = None
    error: str | None = None
    created: bool = True  # False: it existed before this call


@dataclass(frozen=True)
class GroupSnapshotResult:
    """What a group snapshot made: one record per member, in the order given."""

    name: str
    instance_uuid: str | None
    workflow_id: str | None
    members: tuple[MemberResult, ...]


def finalise_records(params: dict[str, Any], state: str, error: str | None = None) -> None:
    """Set every member's record (``params["members"]``) to ``state``."""
    for m in params.get("members", ()):
        m["state"] = state
        m["error"] = error


class _Driver(Protocol):
    """What group snapshots use of :class:`~vmdk_snap.driver.Driver`."""

    ops: VolumeOps
    journal: Journal
    locks: Locks
    instance_wait: float

    @property
    def _engine(self) -> Engine[OpsContext]: ...

    def _state(self, volume: Volume, *, verify: bool = False) -> VolumeState: ...

    def _locked(self, volume: Volume) -> AbstractContextManager[None]: ...

    def _take(
        self,
        volume: Volume,
        state: VolumeState,
        name: str,
        *,
        force: bool,
        quiesce: bool,
        on_progress: Any,
    ) -> Any: ...


class GroupSnapshots:
    """The group snapshot calls of a :class:`~vmdk_snap.driver.Driver`."""

    def __init__(self, driver: _Driver) -> None:
        self.driver = driver

    # -- checks before any change ----------------------------------------------

    def _states(
        self, volumes: Sequence[Volume], name: str, force: bool, names: Names
    ) -> list[VolumeState]:
        validate_snapshot_name(name)
        for member_name in names.values():
            validate_snapshot_name(member_name)
        if not volumes:
            raise InvalidInput("no volumes given", hint="name the volumes to snapshot together")
        states = [self.driver._state(v, verify=True) for v in volumes]
        for s in states:
            check_status(s)
        attached = [s for s in states if s.status == IN_USE]
        if attached and not force:
            ids = ", ".join(s.volume_id for s in attached)
            raise InvalidState(
                f"volumes {ids} are in-use; nothing was changed",
                hint="pass --force to snapshot them while attached",
            )
        where = {s.volume_id: s.instance.instance_uuid for s in attached if s.instance}
        if len(set(where.values())) > 1:
            listed = "; ".join(f"{v} on {i}" for v, i in where.items())
            raise InvalidInput(
                f"the volumes are attached to several instances ({listed}): one moment is "
                "taken on one instance; nothing was changed",
                hint="take one group snapshot per instance (`vmdk-snap snapshot --instance UUID`)",
            )
        have = [
            s.volume_id
            for s in states
            if s.backing.snapshot_named(names.get(s.volume_id, name)) is not None
        ]
        if have and len(have) != len(states):
            raise InvalidState(
                f"volumes {', '.join(have)} already have a snapshot {name} and the others do "
                "not: those were not taken at this moment; nothing was changed",
                hint="delete those snapshots or choose another name",
            )
        return states

    @staticmethod
    def _members(
        states: Sequence[VolumeState], name: str, quiesce: bool, names: Names
    ) -> list[dict[str, Any]]:
        """Each attached member's forced-snapshot parameters (refusals raised here)."""
        strategy = AttachedStrategy()
        ids = [s.volume_id for s in states]
        members = []
        for s in states:
            member_name = names.get(s.volume_id, name)
            params = dict(strategy.take(s, member_name, quiesce=quiesce).params)
            for key in _GROUP_KEYS:
                params.pop(key, None)
            others = [v for v in ids if v != s.volume_id]
            params["description"] = group_description(name, s.volume_id, others)
            members.append({**params, "state": CREATING, "error": None})
        return members

    @staticmethod
    def _params(
        states: Sequence[VolumeState], name: str, quiesce: bool, names: Names
    ) -> dict[str, Any]:
        members = GroupSnapshots._members(states, name, quiesce, names)
        first = states[0]
        instance = first.instance
        assert instance is not None
        ids = [s.volume_id for s in states]
        keys = {f"volume-{v}" for v in ids}
        return {
            **members[0],
            "quiesce": quiesce,
            "instance": ref_json(instance.ref),
            "instance_name": instance.name,
            "temp_name": temp_snapshot_name(ids[0], name),
            # Not "for volume snapshot": a leftover of it is reported, never
            # settled as one volume's (vmdk_snap.workflows.leftovers).
            "temp_description": (
                f"vmdk-snap: temporary, for group snapshot {name} of volumes {', '.join(ids)}"
            ),
            "others": any(k not in keys for k in instance.volume_keys),
            "members": members,
        }

    # -- plans and changes ---------------------------------------------------------

    def plan(
        self, volumes: Sequence[Volume], name: str, *, force: bool = False, names: Names = _NONE
    ) -> Plan:
        """What :meth:`create` would do; changes nothing."""
        states = self._states(volumes, name, force, names)
        attached = [s for s in states if s.status == IN_USE]
        notes = tuple(
            f"volume {s.volume_id} is available: an ordinary snapshot of its backing"
            for s in states
            if s.status != IN_USE
        )
        if not attached:
            return Plan(GROUP_KIND, states[0].volume_id, (), notes)
        first = attached[0]
        if first.backing.snapshot_named(names.get(first.volume_id, name)) is not None:
            return Plan(GROUP_KIND, first.volume_id, (), ("the snapshots exist",))
        params = self._params(attached, name, False, names)
        ctx = OpsContext(params=params, ops=self.driver.ops)
        plan = plan_of(GROUP_KIND, attached[0].volume_id, build_steps(GROUP_KIND, params), ctx)
        return Plan(plan.kind, plan.volume_id, plan.steps, plan.notes + notes)

    def create(
        self,
        volumes: Sequence[Volume],
        name: str,
        *,
        force: bool,
        quiesce: bool,
        names: Names = _NONE,
    ) -> GroupSnapshotResult:
        volumes = list({v.id: v for v in volumes}.values())
        with self._all_locked(volumes):
            states = self._states(volumes, name, force, names)
            attached = [s for s in states if s.status == IN_USE]
            result = self._attached(attached, name, quiesce, names) if attached else None
            members = {m.volume_id: m for m in (result.members if result else ())}
            for s in states:
                if s.status != IN_USE:
                    member_name = names.get(s.volume_id, name)
                    made = self.driver._take(
                        Volume(s.volume_id, s.status), s, member_name,
                        force=force, quiesce=False, on_progress=None,
                    )  # fmt: skip
                    members[s.volume_id] = MemberResult(
                        s.volume_id, member_name, AVAILABLE, made.node, created=made.created
                    )
        uuid = attached[0].instance.instance_uuid if attached and attached[0].instance else None
        return GroupSnapshotResult(
            name,
            uuid,
            result.workflow_id if result else None,
            tuple(members[v.id] for v in volumes),
        )

    @contextmanager
    def _all_locked(self, volumes: Sequence[Volume]) -> Iterator[None]:
        """Every member's volume lock, in the order of their ids (no deadlock)."""
        with ExitStack() as stack:
            for v in sorted(volumes, key=lambda v: v.id):
                stack.enter_context(self.driver._locked(v))
            yield

    def _attached(
        self, states: list[VolumeState], name: str, quiesce: bool, names: Names
    ) -> GroupSnapshotResult:
        instance = states[0].instance
        if instance is None or not instance.instance_uuid:
            raise InvalidState(
                f"volume {states[0].volume_id}'s instance has no instance UUID in vCenter; "
                "nothing was changed",
                hint="snapshot its volumes one by one",
            )
        if states[0].backing.snapshot_named(names.get(states[0].volume_id, name)) is not None:
            return self._existing(states, name, names)
        driver = self.driver
        lock = driver.locks.instance(instance.instance_uuid, driver.instance_wait)
        with lock:
            if lock.waited:
                # Another workflow on the instance may have moved these backings.
                states = [driver._state(Volume(s.volume_id, IN_USE, instance.instance_uuid),
                                        verify=True) for s in states]  # fmt: skip
            params = self._params(states, name, quiesce, names)
            params["instance_uuid"] = instance.instance_uuid  # recover takes the same lock
            return self._run(states, name, params, names)

    def _existing(
        self, states: Sequence[VolumeState], name: str, names: Names
    ) -> GroupSnapshotResult:
        """A retry of a finished group snapshot: every member has it already."""
        members = []
        for s in states:
            member_name = names.get(s.volume_id, name)
            node = s.backing.snapshot_named(member_name)
            assert node is not None
            members.append(MemberResult(s.volume_id, member_name, AVAILABLE, node, created=False))
        log.info("group snapshot %s exists on every member: returning it", name)
        uuid = states[0].instance.instance_uuid if states[0].instance else None
        return GroupSnapshotResult(name, uuid, None, tuple(members))

    def _run(
        self, states: Sequence[VolumeState], name: str, params: dict[str, Any], names: Names
    ) -> GroupSnapshotResult:
        driver = self.driver
        steps = build_steps(GROUP_KIND, params)
        ctx = OpsContext(params=params, ops=driver.ops)
        journal = driver.journal
        wf_id = ""

        def on_begin(begun: str) -> None:
            nonlocal wf_id
            wf_id = begun

        try:
            driver._engine.run(GROUP_KIND, states[0].volume_id, steps, ctx, on_begin=on_begin)
        except Incomplete as exc:
            exc.members = self._records(states, name, params, {}, None, names=names)
            raise
        except VmdkSnapError as exc:
            if wf_id:
                finalise_records(params, ERROR, str(exc))
                journal.set_params(wf_id, params)
            exc.members = self._records(states, name, params, {}, str(exc), names=names)
            raise
        finalise_records(params, AVAILABLE)
        journal.set_params(wf_id, params)
        return GroupSnapshotResult(
            name,
            states[0].instance.instance_uuid if states[0].instance else None,
            wf_id,
            self._records(
                states, name, params, self._made(states, name, ctx, names), None, names=names
            ),
        )

    def _made(
        self, states: Sequence[VolumeState], name: str, ctx: OpsContext, names: Names
    ) -> dict[int, SnapshotNode]:
        """Each member's new snapshot as vCenter shows it (one read), else as journaled."""
        member_names = [names.get(s.volume_id, name) for s in states]
        try:
            backings = self.driver.ops.get_vms([s.backing.ref for s in states])
            nodes = {i: b.snapshot_named(member_names[i]) for i, b in enumerate(backings)}
            return {i: n for i, n in nodes.items() if n is not None}
        except VmdkSnapError as exc:
            log.warning("the group snapshot was made; reading it back failed: %s", exc)
        made = made_snapshots(ctx.results, len(states))
        return {
            i: SnapshotNode(ref_of(ref), member_names[i], "", None, False)
            for i, ref in enumerate(made)
            if ref is not None
        }

    def _records(
        self,
        states: Sequence[VolumeState],
        name: str,
        params: dict[str, Any],
        made: dict[int, SnapshotNode],
        error: str | None,
        *,
        names: Names,
    ) -> tuple[MemberResult, ...]:
        return tuple(
            MemberResult(
                s.volume_id,
                names.get(s.volume_id, name),
                m["state"],
                made.get(i),
                m.get("error") or error,
            )
            for i, (s, m) in enumerate(zip(states, params["members"], strict=True))
        )


_TAKEN_WITH = "taken at one moment with volumes "


def group_description(name: str, volume_id: str, others: Sequence[str]) -> str:
    """A member snapshot's description: it names the volumes taken at the same moment.

    In vCenter, not only in this host's journal: ``list`` and ``check`` show
    which snapshots were taken together (:func:`taken_with`).
    """
    return (
        f"Cinder snapshot {name} of volume {volume_id} (attached), {_TAKEN_WITH}{', '.join(others)}"
    )


def taken_with(description: str) -> list[str]:
    """The volumes a snapshot was taken together with, from its description ([] if none)."""
    _, found, rest = description.partition(_TAKEN_WITH)
    return [v.strip() for v in rest.split(",") if v.strip()] if found else []


def group_of(record: jn.WorkflowRecord) -> list[str]:
    """The volumes a journaled workflow works on (a group's members, or its one volume)."""
    return workflow_volumes(record.params, record.volume)
