"""Several volumes of one instance at one moment: the group snapshot's steps.

One temporary instance snapshot (optionally quiesced) freezes every member
volume at once. The steps are the forced snapshot's
(:mod:`vmdk_snap.workflows.table`), run per member where they concern a
backing and once where they concern the instance::

    for each member:  consolidation steps (relocate, swap: before the freeze)
    snapshot_instance            once: every disk of the instance gets a delta
    for each member:  snapshot_backing_<i>   (its snapshot holds the frozen file)
    for each member:  hand_over_top_<i>      (the first one is the point of no return)
    disable_instance_consolidation, remove_instance_snapshot   once
    follow_other_volumes         the instance's volumes outside the group
    for each member:  clean-up (release_old_disk, delete_stale_copy)

A failure before the first hand-over rolls every member back (none made); a
failure or crash after it is finished forward by ``recover`` (all made).

Each member step is the single-volume step run with the member's journaled
parameters (``params["members"][i]``) laid over the group's, and named
``<step>_<i>``. Each member's record (``state``: ``creating``, then
``available`` or ``error`` with the reason) is in ``params["members"]`` from
before the first change (:mod:`vmdk_snap.group_snapshots` sets it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from vmdk_snap.workflows.consolidation import cleanup_steps, consolidation_steps
from vmdk_snap.workflows.engine import Changes, Step
from vmdk_snap.workflows.snapshot_steps import (
    disable_instance_consolidation,
    follow_other_volumes,
    hand_over_top,
    remove_instance_snapshot,
    snapshot_backing,
    snapshot_instance,
)
from vmdk_snap.workflows.stepctx import OpsContext

__all__ = [
    "AVAILABLE",
    "CREATING",
    "ERROR",
    "GROUP_KIND",
    "group_steps",
    "member_step",
]

GROUP_KIND = "snapshot_group"
CREATING, AVAILABLE, ERROR = "creating", "available", "error"

T = TypeVar("T")


@contextmanager
def _as_member(ctx: OpsContext, index: int) -> Iterator[None]:
    """The context as the single-volume step expects it, for member ``index``."""
    group, seen = ctx.params, ctx.seen
    ctx.params = {**group, **group["members"][index]}
    ctx.seen = {}  # the reads of another member's backing do not apply
    try:
        yield
    finally:
        ctx.params, ctx.seen = group, seen


def member_step(step: Step[OpsContext], index: int) -> Step[OpsContext]:
    """``step`` for member ``index``, named ``<name>_<index>``."""

    def scoped(fn: Callable[..., T]) -> Callable[..., T]:
        def run(ctx: OpsContext, *args: Any) -> T:
            with _as_member(ctx, index):
                return fn(ctx, *args)

        return run

    undo = step.undo
    return Step(
        f"{step.name}_{index}",
        scoped(step.describe),
        scoped(step.do),
        scoped(undo) if undo is not None else None,
        scoped(step.check),
        undo_text=step.undo_text,
        forward_only=step.forward_only,
    )


def _each(
    members: Sequence[dict[str, Any]], build: Callable[[dict[str, Any]], list[Step[OpsContext]]]
) -> list[Step[OpsContext]]:
    return [member_step(s, i) for i, m in enumerate(members) for s in build(m)]


def group_steps(params: dict[str, Any]) -> list[Step[OpsContext]]:
    """The group snapshot's steps, from its journaled parameters."""
    members = params["members"]
    return [
        *_each(members, consolidation_steps),
        snapshot_instance(),
        *_each(members, lambda m: [snapshot_backing(attached=True)]),
        *_each(members, lambda m: [hand_over_top()]),
        disable_instance_consolidation(),
        remove_instance_snapshot(),
        *([follow_other_volumes()] if params.get("others") else []),
        *_each(members, cleanup_steps),
    ]


def made_snapshots(changes: dict[str, Changes], count: int) -> list[Any]:
    """Each member's snapshot moref (JSON) as its snapshot_backing_<i> step recorded it."""
    return [changes.get(f"snapshot_backing_{i}", {}).get("snapshot") for i in range(count)]
