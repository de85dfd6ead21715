"""Temporary instance snapshots that outlived their workflow: found, settled or reported.

A forced snapshot's temporary snapshot of the instance
(``vmdk-snap-tmp-<volume id>-<name>``, :func:`~vmdk_snap.workflows.table.temp_snapshot_name`)
lives from its step ``snapshot_instance`` to ``remove_instance_snapshot``.
The journal names it before the call, so ``recover`` settles it with its
workflow. One that no running workflow owns keeps a delta on every disk of
the instance, unseen, unless someone looks for it; ``recover`` does, across
the inventory (one read), after settling the journal's workflows:

- its volume's lock is held by a live process on this host: its workflow is
  running (whatever journal that process uses): left alone, ``busy``;
- this journal's record of it is finished although it is still there (the
  false rollback of an older release): the journal knows its workflow and
  that it is not running, so it is settled;
- no journal here knows it (another host's or another ``--journal``'s
  workflow, or a lost journal): settled only with ``recover --adopt``, since
  only the operator knows that no other journal will settle it; otherwise it
  is reported with what to run.

How it is settled follows from what vCenter shows for volume ``V`` and the
volume snapshot ``NAME`` it was taken for (the snapshot's description names
it), as the forced snapshot itself would have ended:

- ``V``'s backing has snapshot ``NAME`` and is on the instance's current file
  for ``V``: the forced snapshot got past its hand-over, and the volume
  snapshot is complete. The temporary snapshot is removed with
  ``consolidate=False`` (``release_temporary``), as its last step would.
- the backing has no snapshot ``NAME`` and is not on that file: nothing was
  made from it. It is removed as the rollback would (``discard_temporary``:
  merged back when the merge guard finds that harmless).
- anything else (a snapshot ``NAME`` whose backing is not on the instance's
  file, a backing on the new delta without it): reported with what was
  found; the remedy is the journal that made it, or deleting the half-made
  volume snapshot first.

Each settling is a journaled workflow of its own (one forward-only step), so
a crash in the middle is finished by the next ``recover``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vmdk_snap.types import Disk, SnapshotNode, VmInfo
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.journal import WorkflowRecord
from vmdk_snap.workflows.stepctx import disk_json, ref_json
from vmdk_snap.workflows.table import TEMP_PREFIX

__all__ = [
    "DISCARD",
    "KIND",
    "RELEASE",
    "Leftover",
    "SeenVolume",
    "Verdict",
    "find_leftovers",
    "judge",
    "leftover_params",
    "not_settled",
]

KIND = "temporary_snapshot"  # what recover's results call these
RELEASE = "release_temporary"
DISCARD = "discard_temporary"

_UUID = r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}"
_TEMP_RE = re.compile(rf"^{re.escape(TEMP_PREFIX)}(?P<volume>{_UUID})-")
# The description snapshot_instance gives it.
_FOR_RE = re.compile(r"for volume snapshot (?P<name>[A-Za-z0-9._-]+)")


class SeenVolume(Protocol):
    """What is read of the leftover's volume (a ``strategies.VolumeState``)."""

    @property
    def volume_id(self) -> str: ...
    @property
    def backing(self) -> VmInfo: ...
    @property
    def instance(self) -> VmInfo | None: ...
    @property
    def backing_disk(self) -> Disk: ...
    @property
    def volume_disk(self) -> Disk | None: ...


@dataclass(frozen=True)
class Leftover:
    """A temporary snapshot no unfinished workflow of this journal owns."""

    instance: VmInfo  # as ``VolumeOps.vms_with_snapshots`` read it
    node: SnapshotNode
    volume_id: str | None  # from its name; None when it does not follow ours
    name: str | None  # the volume snapshot it was taken for
    record: WorkflowRecord | None  # this journal's (finished) record of it

    @property
    def where(self) -> str:
        return f"temporary snapshot {self.node.name} of instance {self.instance.name}"


@dataclass(frozen=True)
class Verdict:
    """How a leftover would be settled (``kind`` None: it cannot be, from what is seen)."""

    kind: str | None
    found: str


def _temporary(nodes: Iterable[SnapshotNode]) -> list[SnapshotNode]:
    return [n for root in nodes for n in root.walk() if n.name.startswith(TEMP_PREFIX)]


def find_leftovers(vms: Sequence[VmInfo], records: Sequence[WorkflowRecord]) -> list[Leftover]:
    """The temporary snapshots on ``vms`` that no unfinished workflow of ``records`` owns."""
    owners: dict[tuple[str, str], WorkflowRecord] = {}
    for record in records:  # oldest first: the latest record of a name wins
        temp, instance = record.params.get("temp_name"), record.params.get("instance")
        if temp and instance:
            owners[(str(instance[1]), str(temp))] = record
    found = []
    for vm in vms:
        for node in _temporary(vm.snapshots):
            owner = owners.get((vm.ref.value, node.name))
            if owner is not None and owner.state not in (jn.DONE, jn.ROLLED_BACK):
                continue  # its workflow is recover's (or running)
            match = _TEMP_RE.match(node.name)
            named = _FOR_RE.search(node.description or "")
            name = owner.params.get("name") if owner is not None else None
            found.append(
                Leftover(
                    vm,
                    node,
                    match.group("volume") if match else None,
                    name or (named.group("name") if named else None),
                    owner,
                )
            )
    return found


def judge(leftover: Leftover, state: SeenVolume) -> Verdict:
    """Which way the forced snapshot that left it had gone, from vCenter's state."""
    group = leftover.record is not None and leftover.record.kind == "snapshot_group"
    if group or leftover.name is None:
        # A group snapshot's (or unnamed): one volume's state cannot say how
        # every member's went.
        return Verdict(
            None,
            "it is not one volume snapshot's temporary snapshot (its description: "
            f"{leftover.node.description or 'none'!r}): run `vmdk-snap recover` with the journal "
            "of the host that made it; if none has it, check each volume named there with "
            "`vmdk-snap check`, delete half-made snapshots, then remove it in vCenter",
        )
    vdisk = state.volume_disk
    on_top = vdisk is not None and state.backing_disk.path == vdisk.path
    name = leftover.name
    made = name is not None and state.backing.snapshot_named(name) is not None
    backing = state.backing.name
    if made and on_top:
        return Verdict(
            RELEASE,
            f"volume snapshot {name} is complete ({backing} has it and is on the instance's "
            "current file): removed without merging, as the forced snapshot's last step",
        )
    if not made and not on_top:
        return Verdict(
            DISCARD,
            f"no volume snapshot was made from it ({backing} has no snapshot {name}): removed "
            "as the forced snapshot's rollback, merged back when nothing else holds the files",
        )
    if made:
        return Verdict(
            None,
            f"{backing} has snapshot {name} but is not on the instance's current file for the "
            f"volume: delete that half-made snapshot (`vmdk-snap delete {state.volume_id} "
            f"{name}`), then run `vmdk-snap recover --adopt`",
        )
    return Verdict(
        None,
        f"{backing} is on the instance's current file but has no snapshot {name}: check the "
        "volume with `vmdk-snap check`, then remove the temporary snapshot in vCenter",
    )


def not_settled(leftover: Leftover, verdict: Verdict | None) -> str:
    """What was found and what to run, for a leftover that was left as it is."""
    if leftover.volume_id is None:
        return (
            f"{leftover.where}: its name does not say which volume it is for; remove it in "
            "vCenter once no vmdk-snap workflow runs on the instance"
        )
    if verdict is None or verdict.kind is None:
        return f"{leftover.where}: " + (verdict.found if verdict else "")
    how = "release" if verdict.kind == RELEASE else "discard"
    return (
        f"{leftover.where} is in no journal here: if vmdk-snap with another journal or on "
        "another host made it, run `vmdk-snap recover` there (with that journal); if none "
        f"did, `vmdk-snap recover --adopt` will {how} it: {verdict.found}"
    )


def leftover_params(leftover: Leftover, state: SeenVolume) -> dict[str, Any]:
    """The journaled params of the workflow that settles ``leftover``."""
    instance = state.instance
    assert instance is not None  # read with the instance's uuid
    return {
        "volume_id": state.volume_id,
        "name": leftover.name or "",
        "backing": ref_json(state.backing.ref),
        "backing_name": state.backing.name,
        "disk": disk_json(state.backing_disk),
        "instance": ref_json(instance.ref),
        "instance_name": instance.name,
        "temp_name": leftover.node.name,
        "temp_snapshot": ref_json(leftover.node.ref),
        "adopted": leftover.record is None,
    }
