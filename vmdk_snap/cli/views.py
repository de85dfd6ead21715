"""How the command line shows driver results: as text for people, as JSON for scripts.

The JSON shapes here are the stable ``--json`` contract documented in the
README ("Command line"); add keys freely, but change or remove one only with
a bump of :data:`vmdk_snap.cli.output.SCHEMA`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

from vmdk_snap.cli.base import EXIT_OK, classify, one_line
from vmdk_snap.cli.output import Output, TreeNode, render_fields, render_table, render_tree
from vmdk_snap.driver import SnapshotResult
from vmdk_snap.group_snapshots import MemberResult, taken_with
from vmdk_snap.strategies import (
    DEEP_CHAIN_REMEDY,
    MAX_DELTAS,
    ChainHeadroom,
    VolumeState,
    chain_headroom,
)
from vmdk_snap.types import Disk, SnapshotNode, VmInfo
from vmdk_snap.workflows.engine import Plan, RecoveryResult

__all__ = [
    "FEW_FORCED_SNAPSHOTS_LEFT",
    "advice",
    "advice_items",
    "check_all_text",
    "check_text",
    "error_doc",
    "list_text",
    "recover_text",
    "recovery_doc",
    "show_plan",
    "snapshot_doc",
    "snapshot_line",
    "snapshot_outcome",
    "volume_doc",
]


# -- snapshots -----------------------------------------------------------------


def snapshot_doc(node: SnapshotNode) -> dict[str, Any]:
    return {
        "name": node.name,
        "description": node.description,
        "moref": node.ref.value,
        "created": node.created.isoformat() if node.created else None,
        "quiesced": node.quiesced,
        # A group snapshot's other members (taken at the same moment).
        "taken_with": taken_with(node.description),
        "children": [snapshot_doc(c) for c in node.children],
    }


def snapshot_line(node: SnapshotNode) -> str:
    """``s1 (snapshot-41), created ...``: the creation time shows whether the
    snapshot was made now or already existed (a name is never taken twice)."""
    when = f", created {node.created:%Y-%m-%d %H:%M:%S %Z}".rstrip() if node.created else ""
    return f"{node.name} ({node.ref.value}){when}"


def snapshot_outcome(result: SnapshotResult) -> str:
    """``snapshot s1 (snapshot-41), created ...``, or ``... already exists ...`` for a retry."""
    node = result.node
    if result.created:
        return f"snapshot {snapshot_line(node)}"
    when = (
        f" (created {node.created:%Y-%m-%d %H:%M:%S %Z})".replace(" )", ")") if node.created else ""
    )
    return f"snapshot {node.name} ({node.ref.value}) already exists{when}: nothing was changed"


def _snapshot_tree(nodes: Iterable[SnapshotNode], current: str | None) -> tuple[TreeNode, ...]:
    out = []
    for n in nodes:
        label = n.name
        if n.created:
            label += f"  {n.created:%Y-%m-%d %H:%M:%S}"
        if n.quiesced:
            label += "  quiesced"
        together = taken_with(n.description)
        if together:
            label += "  with " + ", ".join(f"volume-{v}" for v in together)
        if n.ref.value == current:
            label += "  (current)"
        out.append(TreeNode(label, _snapshot_tree(n.children, current)))
    return tuple(out)


# -- disks and chains ------------------------------------------------------------


def volume_disk(state: VolumeState, vm: VmInfo | None) -> Disk | None:
    """The volume's disk on the backing or on the instance."""
    if vm is None:
        return None
    return state.backing_disk if vm is state.backing else state.volume_disk


def _disk_doc(disk: Disk | None) -> dict[str, Any] | None:
    if disk is None:
        return None
    return {
        "key": disk.key,
        "path": disk.path,
        "datastore": disk.datastore_name,
        "chain": list(disk.chain),
        "depth": disk.depth,
        "mode": disk.mode,
    }


def chain_tree(state: VolumeState) -> tuple[TreeNode, ...]:
    """The volume's files from base to top, branching where backing and instance differ."""
    owners: list[tuple[str, Disk]] = []
    backing_disk = volume_disk(state, state.backing)
    if backing_disk is not None:
        owners.append((f"backing {state.backing.name}", backing_disk))
    inst_disk = volume_disk(state, state.instance)
    if state.instance is not None and inst_disk is not None:
        owners.append((f"instance {state.instance.name} (disk {inst_disk.key})", inst_disk))
    # A trie of the chains read base first; each owner marks the file it writes to.
    trie: dict[str, Any] = {}
    for owner, disk in owners:
        level = trie
        for path in reversed(disk.chain):
            node = level.setdefault(path, {"owners": [], "children": {}})
            last = node
            level = node["children"]
        last["owners"].append(owner)

    def build(level: dict[str, Any]) -> tuple[TreeNode, ...]:
        nodes = []
        for path, node in level.items():
            label = path + (f"  <- {', '.join(node['owners'])}" if node["owners"] else "")
            nodes.append(TreeNode(label, build(node["children"])))
        return tuple(nodes)

    return build(trie)


# -- a volume ------------------------------------------------------------------


def _vm_doc(vm: VmInfo | None, disk: Disk | None, host: str | None, ds: str | None) -> Any:
    if vm is None:
        return None
    return {
        "name": vm.name,
        "uuid": vm.instance_uuid,
        "moref": vm.ref.value,
        "power_state": vm.power_state,
        "host": host,
        "datastore": ds,
        "consolidation_needed": vm.consolidation_needed,
        "disk": _disk_doc(disk),
    }


def _headroom_doc(state: VolumeState) -> dict[str, Any]:
    room = chain_headroom(state)
    return {
        "deepest_chain": {"path": room.path, "depth": room.depth},
        "forced_snapshots_left": _forced_left(state, room),
    }


def volume_doc(state: VolumeState) -> dict[str, Any]:
    """The JSON shape of one volume (``list``, ``check``, ``consolidate``)."""
    return {
        "volume": state.volume_id,
        "name": f"volume-{state.volume_id}",
        "status": state.status,
        "attached_to": state.instance.instance_uuid if state.instance else None,
        # Where the volume's current data is: the instance's copy when attached.
        "host": state.instance_host or state.backing_host,
        "datastore": state.instance_datastore or state.backing_datastore,
        "duplicated": state.duplicated,
        "consolidation_needed": state.consolidation_needed,
        "depth": state.chain_depth,
        **_headroom_doc(state),
        "backing": _vm_doc(
            state.backing, state.backing_disk, state.backing_host, state.backing_datastore
        ),
        "instance": _vm_doc(
            state.instance, state.volume_disk, state.instance_host, state.instance_datastore
        ),
        "snapshots": [snapshot_doc(s) for s in state.snapshots],
        "stale_files": list(state.stale_files),
        "temporary_snapshots_left": list(state.leftovers),
        "compaction": _compaction_doc(state),
        "copy_out": _copy_out_doc(state),
        "notes": list(state.notes),
        "advice": advice(state),
    }


def _compaction_doc(state: VolumeState) -> dict[str, Any] | None:
    if state.compaction is None:
        return None
    deltas, why = state.compaction
    return {"possible": why is None, "deltas": deltas, "why_not": why}


def _copy_out_doc(state: VolumeState) -> dict[str, Any] | None:
    if state.copy_out is None:
        return None
    at, cost = state.copy_out
    return {"at_depth": at, "depth": chain_headroom(state).depth, "copies": cost}


def _copy_out_text(state: VolumeState) -> str | None:
    if state.copy_out is None:
        return None
    at, cost = state.copy_out
    depth = chain_headroom(state).depth
    when = "the next forced snapshot" if depth >= at else f"at {at} deltas (now {depth})"
    return f"{when} copies this volume's snapshots out: {cost}"


FEW_FORCED_SNAPSHOTS_LEFT = 3
"""``check`` warns when this many forced snapshots or fewer are left before the refusal."""


def _forced_left(state: VolumeState, room: ChainHeadroom) -> int | None:
    """Forced snapshots left, or None when the volume is not attached (none applies)."""
    return room.forced_snapshots_left if state.attached else None


def _depth_advice(state: VolumeState) -> str | None:
    room = chain_headroom(state)
    left = _forced_left(state, room)
    deep = f"{room.path} is {room.depth} deltas deep and vSphere allows {MAX_DELTAS}"
    if left is None:
        # An available volume's snapshots add deltas to its backing's disk only,
        # and deleting one merges its delta (consolidate=True).
        if room.forced_snapshots_left > FEW_FORCED_SNAPSHOTS_LEFT:
            return None
        return f"{deep}: delete old snapshots of this volume"
    if left == 0:
        return f"the next forced snapshot will be refused: {deep}; {DEEP_CHAIN_REMEDY}"
    if left > FEW_FORCED_SNAPSHOTS_LEFT:
        return None
    plural = "" if left == 1 else "s"
    return (
        f"{left} forced snapshot{plural} left before they are refused: {deep} (each adds a "
        f"delta to every disk of the instance); to make room, {DEEP_CHAIN_REMEDY}"
    )


def advice_items(state: VolumeState) -> list[str]:
    """What the operator should do about this volume, most urgent first."""
    items = [
        f"temporary snapshot {name} was left on the instance by an interrupted vmdk-snap "
        "workflow: run 'vmdk-snap recover'"
        for name in state.leftovers
    ]
    if state.duplicated:
        items.append(f"duplicated chain: run 'vmdk-snap consolidate {state.volume_id}'")
    if state.compaction is not None and state.compaction[1] is None:
        items.append(
            f"{state.compaction[0]} deltas that forced snapshots left on the instance can be "
            f"merged now: run 'vmdk-snap compact {state.volume_id}'"
        )
    depth = _depth_advice(state)
    if depth is not None:
        items.append(depth)
    return items


def advice(state: VolumeState) -> str | None:
    """The advice as JSON shows it: one line per item, most urgent first; None if none."""
    return "\n".join(advice_items(state)) or None


def _consolidation_text(state: VolumeState) -> str:
    if not state.consolidation_needed:
        return "no"
    if state.compaction is not None:
        deltas, why = state.compaction
        how = "not now: " + why if why else f"{deltas} deltas now, with 'vmdk-snap compact'"
        return f"yes (vmdk-snap merges them: {how}; do not run vSphere's Consolidate on it)"
    # Expected after a forced snapshot: the instance keeps its deltas, and
    # vSphere's merge would write into files the backing's snapshots hold.
    return "yes (expected after forced snapshots: do not run vSphere's Consolidate on it)"


def _where(host: str | None, datastore: str | None) -> str | None:
    if not host and not datastore:
        return None
    return f"host {host or '?'}, datastore {datastore or '?'}"


def _attached(state: VolumeState) -> str:
    if state.instance is None:
        return "-"
    return f"{state.instance.name} ({state.instance.instance_uuid})"


def list_text(state: VolumeState) -> str:
    current = state.backing.current_snapshot.value if state.backing.current_snapshot else None
    snaps = _snapshot_tree(state.backing.snapshots, current)
    parts = [
        render_fields(
            [
                ("Volume", f"volume-{state.volume_id}"),
                ("Status", state.status),
                ("Attached to", _attached(state)),
                ("Backing on", _where(state.backing_host, state.backing_datastore)),
                ("Instance on", _where(state.instance_host, state.instance_datastore)),
            ]
        ),
        "Snapshots:",
        render_tree(snaps) if snaps else "  (none)",
        "Disk chain (base first):",
        render_tree(chain_tree(state)),
    ]
    return "\n".join(parts)


def check_text(s: VolumeState) -> str:
    room = chain_headroom(s)
    fields: list[tuple[str, object]] = [
        ("Volume", f"volume-{s.volume_id}"),
        ("Status", s.status),
        ("Attached to", _attached(s)),
        ("Backing on", _where(s.backing_host, s.backing_datastore)),
        ("Instance on", _where(s.instance_host, s.instance_datastore)),
        ("Chain depth", s.chain_depth),
        ("Deepest chain", f"{room.depth} deltas: {room.path}"),
        ("Forced snapshots left", _forced_left(s, room)),
        ("Duplicated chain", s.duplicated),
        ("consolidationNeeded", _consolidation_text(s)),
    ]
    copy_out = _copy_out_text(s)
    if copy_out is not None:
        fields.append(("Copy-out", copy_out))
    together = [
        f"{n.name} with " + ", ".join(f"volume-{v}" for v in taken_with(n.description))
        for root in s.snapshots
        for n in root.walk()
        if taken_with(n.description)
    ]
    if together:
        fields.append(("Taken together", "; ".join(together)))
    # One line per piece of advice, aligned under the first.
    indent = " " * (max(len(k) for k, _ in fields) + 3)
    fields.append(("Advice", f"\n{indent}".join(advice_items(s)) or "none: ready for snapshots"))
    return render_fields(fields)


def error_doc(volume_id: str, exc: BaseException) -> dict[str, Any]:
    """A volume that could not be looked at, in ``check --all``'s ``errors``."""
    code, kind = classify(exc)
    return {"volume": volume_id, "kind": kind, "exit_code": code, "message": one_line(exc)}


def check_all_text(states: Sequence[VolumeState], errors: Sequence[dict[str, Any]]) -> str:
    if not states and not errors:
        return "no Cinder volumes found"
    headers = ["volume", "status", "instance", "host", "datastore", "depth", "forced left",
               "duplicated", "consolidation needed"]  # fmt: skip
    rows = [
        [
            f"volume-{s.volume_id}",
            s.status,
            s.instance.name if s.instance else None,
            s.instance_host or s.backing_host,
            s.instance_datastore or s.backing_datastore,
            s.chain_depth,
            _forced_left(s, chain_headroom(s)),
            s.duplicated,
            s.consolidation_needed,
        ]
        for s in states
    ]
    lines = [render_table(headers, rows)] if rows else []
    lines += [f"volume-{s.volume_id}: {item}" for s in states for item in advice_items(s)]
    lines += [f"volume-{e['volume']}: cannot check: {e['message']}" for e in errors]
    flagged = sum(1 for s in states if advice_items(s))
    lines.append(
        f"{len(states) + len(errors)} volumes: {flagged} need attention, "
        f"{len(errors)} could not be checked"
    )
    return "\n".join(lines)


# -- plans and recovery ----------------------------------------------------------


def show_plan(
    out: Output, command: str, volume_id: str, plan: Plan, volumes: Sequence[str] = ()
) -> int:
    """Print what a --dry-run would do; nothing is changed.

    ``volumes``: a group snapshot's members (the plan is of all of them).
    """
    steps = [
        {"step": s.name, "description": s.description, "undo": s.undo, "reversible": s.reversible}
        for s in plan.steps
    ]
    what = ", ".join(f"volume-{v}" for v in volumes) if volumes else f"volume-{volume_id}"
    lines = [f"plan: {command} {what}, {len(steps)} steps (dry run: nothing was changed)"]
    for i, step in enumerate(plan.steps, 1):
        lines.append(f"{i:2d}. {step.name}")
        lines.extend(
            textwrap.wrap(step.description, 96, initial_indent="    ", subsequent_indent="    ")
        )
        lines.extend(
            textwrap.wrap(
                f"undo: {step.undo}", 96, initial_indent="    ", subsequent_indent="          "
            )
        )
    lines.extend(f"note: {n}" for n in plan.notes)
    out.text("\n".join(lines))
    doc: dict[str, Any] = {"volume": volume_id, "dry_run": True, "plan": steps}
    if volumes:
        doc["volumes"] = list(volumes)
    out.document(command, {**doc, "notes": list(plan.notes)})
    return EXIT_OK


# -- group snapshots -------------------------------------------------------------------


def member_doc(m: MemberResult) -> dict[str, Any]:
    """One member of a group snapshot (its record), as JSON shows it."""
    return {
        "volume": m.volume_id,
        "name": m.name,
        "state": m.state,
        "created": m.created if m.snapshot is not None else None,
        "snapshot": snapshot_doc(m.snapshot) if m.snapshot is not None else None,
        "error": m.error,
    }


def member_line(m: MemberResult, together: Sequence[str]) -> str:
    """``volume-x: available: snapshot s1 (snapshot-41), created ...; with volume-y``."""
    return f"volume-{m.volume_id}: {member_outcome(m, together)}"


def member_outcome(m: MemberResult, together: Sequence[str]) -> str:
    """What became of one member: its state, snapshot, and the volumes taken with it."""
    if m.snapshot is None:
        what = f"snapshot {m.name}" + (f": {m.error}" if m.error else "")
    elif m.created:
        what = f"snapshot {snapshot_line(m.snapshot)}"
    else:
        what = f"snapshot {m.name} ({m.snapshot.ref.value}) already exists: nothing was changed"
    others = [f"volume-{v}" for v in together if v != m.volume_id]
    with_ = f"; at one moment with {', '.join(others)}" if others and m.snapshot else ""
    return f"{m.state}: {what}{with_}"


def recovery_doc(result: RecoveryResult) -> dict[str, Any]:
    return {
        "workflow": result.workflow_id,
        "kind": result.kind,
        "volume": result.volume_id,
        "outcome": result.outcome,
        "detail": result.detail,
    }


NOTHING_TO_RECOVER = "nothing to recover: no interrupted workflow, no leftover temporary snapshot"


def recover_text(results: Sequence[RecoveryResult]) -> str:
    if not results:
        return NOTHING_TO_RECOVER
    rows = []
    for r in results:
        volume = f"volume-{r.volume_id}" if r.volume_id else "-"
        rows.append([r.workflow_id or "-", r.kind, volume, r.outcome, r.detail])
    return render_table(["workflow", "kind", "volume", "outcome", "detail"], rows)
