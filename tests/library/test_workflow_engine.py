"""The step engine's rules, on steps that change a plain in-memory world.

These steps are not vCenter: they exercise the engine's ordering, journaling,
rollback and recovery rules on their own. The vCenter workflows are tested
live in tests/library/test_driver_snapshot.py, tests/library/test_driver_delete_revert.py,
tests/library/test_driver_guards.py and tests/library/test_workflow_faults.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vmdk_snap.errors import InvalidInput
from vmdk_snap.types import Moref, TaskRef
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.engine import Context, Engine, Incomplete, RollbackFailed, Step, plan_of
from vmdk_snap.workflows.journal import Journal
from vmdk_snap.workflows.table import temp_snapshot_name, validate_snapshot_name


@dataclass
class WorldCtx(Context):
    world: dict[str, str] = field(default_factory=dict)
    fail: set[str] = field(default_factory=set)  # "do:<key>" / "undo:<key>"


def setter(key: str, value: str, *, reversible: bool = True) -> Step[WorldCtx]:
    def do(ctx: WorldCtx) -> dict[str, str]:
        if f"do:{key}" in ctx.fail:
            raise RuntimeError(f"cannot set {key}")
        before = ctx.world.get(key, "")
        ctx.world[key] = value
        return {"before": before}

    def undo(ctx: WorldCtx, changes: dict[str, str]) -> None:
        if f"undo:{key}" in ctx.fail:
            raise RuntimeError(f"cannot reset {key}")
        ctx.world[key] = changes["before"]

    def check(ctx: WorldCtx) -> dict[str, str] | None:
        return {"before": ""} if ctx.world.get(key) == value else None

    return Step(
        name=f"set_{key}",
        describe=lambda _ctx: f"set {key} to {value}",
        do=do,
        undo=undo if reversible else None,
        check=check,
        undo_text=f"reset {key}",
    )


def steps(*, last_irreversible: bool = False) -> list[Step[WorldCtx]]:
    return [
        setter("a", "1"),
        setter("b", "2"),
        setter("c", "3", reversible=not last_irreversible),
        setter("d", "4"),
    ]


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.sqlite")


def test_success_journals_every_step(journal: Journal) -> None:
    ctx = WorldCtx(params={"k": "v"})
    wf = Engine[WorldCtx](journal).run("demo", "vol-1", steps(), ctx)
    assert ctx.world == {"a": "1", "b": "2", "c": "3", "d": "4"}
    record = journal.get(wf)
    assert record is not None
    assert record.state == jn.DONE
    assert [(s.name, s.state) for s in record.steps] == [
        ("set_a", "done"),
        ("set_b", "done"),
        ("set_c", "done"),
        ("set_d", "done"),
    ]
    assert record.steps[1].intent == {"describe": "set b to 2"}
    assert record.steps[1].changes == {"before": ""}


def test_plan_describes_without_running(journal: Journal) -> None:
    ctx = WorldCtx(params={})
    plan = plan_of("demo", "vol-1", steps(last_irreversible=True), ctx)
    assert ctx.world == {}
    assert [s.name for s in plan.steps] == ["set_a", "set_b", "set_c", "set_d"]
    assert plan.steps[2].reversible is False
    assert "3. set_c: set c to 3" in str(plan)
    assert journal.workflows() == []


@pytest.mark.parametrize("failing", ["a", "b", "c", "d"])
def test_failure_at_each_step_undoes_the_completed_ones(journal: Journal, failing: str) -> None:
    ctx = WorldCtx(params={}, world={"a": "0"}, fail={f"do:{failing}"})
    with pytest.raises(RuntimeError, match=f"cannot set {failing}"):
        Engine[WorldCtx](journal).run("demo", "vol-1", steps(), ctx)
    assert ctx.world == {"a": "0", **{k: "" for k in "bcd" if k < failing}}
    (record,) = journal.workflows()
    assert record.state == jn.ROLLED_BACK
    states = {s.name: s.state for s in record.steps}
    assert states[f"set_{failing}"] == "failed"
    assert all(states[f"set_{k}"] == "undone" for k in "abcd" if k < failing)


def test_failed_undo_is_recorded_and_recover_finishes_the_rollback(journal: Journal) -> None:
    ctx = WorldCtx(params={}, fail={"do:c", "undo:a"})
    with pytest.raises(RollbackFailed, match="undoing step set_a failed too"):
        Engine[WorldCtx](journal).run("demo", "vol-1", steps(), ctx)
    (record,) = journal.unfinished()
    assert record.state == jn.ROLLBACK_FAILED
    assert ctx.world == {"a": "1", "b": ""}

    ctx.fail.clear()
    resumed = WorldCtx(params=record.params, world=ctx.world)
    assert Engine[WorldCtx](journal).resume(record, steps(), resumed) == "rolled_back"
    assert resumed.world == {"a": "", "b": ""}
    assert journal.unfinished() == []


def test_failure_after_point_of_no_return_goes_forward_on_recover(journal: Journal) -> None:
    ctx = WorldCtx(params={}, fail={"do:d"})
    with pytest.raises(Incomplete, match="after the point of no return"):
        Engine[WorldCtx](journal).run("demo", "vol-1", steps(last_irreversible=True), ctx)
    assert ctx.world == {"a": "1", "b": "2", "c": "3"}  # nothing undone
    (record,) = journal.unfinished()
    resumed = WorldCtx(params={}, world=ctx.world)
    assert Engine[WorldCtx](journal).resume(record, steps(last_irreversible=True), resumed) == (
        "finished"
    )
    assert resumed.world == {"a": "1", "b": "2", "c": "3", "d": "4"}
    assert journal.get(record.id).state == jn.DONE  # type: ignore[union-attr]


def test_a_started_forward_only_step_fixes_the_direction(journal: Journal) -> None:
    """Clean-up (say, deleting a stale copy) that fails or is interrupted is
    finished forward: the steps before it are never undone, since their undo
    could need what it deletes."""

    def workflow() -> list[Step[WorldCtx]]:
        *first, last = steps()
        return [*first, dataclasses.replace(last, undo=None, forward_only=True)]

    ctx = WorldCtx(params={}, fail={"do:d"})
    with pytest.raises(Incomplete, match="after the point of no return"):
        Engine[WorldCtx](journal).run("demo", "vol-1", workflow(), ctx)
    assert ctx.world == {"a": "1", "b": "2", "c": "3"}  # nothing undone
    (record,) = journal.unfinished()
    assert [s.state for s in record.steps] == [jn.STEP_DONE] * 3 + [jn.FAILED]
    resumed = WorldCtx(params={}, world=ctx.world)
    assert Engine[WorldCtx](journal).resume(record, workflow(), resumed) == "finished"
    assert resumed.world == {"a": "1", "b": "2", "c": "3", "d": "4"}


@pytest.mark.parametrize("happened", [True, False])
def test_crash_during_a_step_is_checked_then_rolled_back(journal: Journal, happened: bool) -> None:
    # A crash leaves the journal as it was at that moment: b started.
    ctx = WorldCtx(params={"x": 1})
    wf = journal.begin("demo", "vol-1", ctx.params)
    journal.step_started(wf, 0, "set_a", {"describe": "set a to 1"})
    ctx.world["a"] = "1"
    journal.step_state(wf, 0, jn.STEP_DONE, changes={"before": "0"})
    journal.step_started(wf, 1, "set_b", {"describe": "set b to 2"})
    if happened:
        ctx.world["b"] = "2"

    (record,) = journal.unfinished()
    resumed = WorldCtx(params=record.params, world=ctx.world)
    assert Engine[WorldCtx](journal).resume(record, steps(), resumed) == "rolled_back"
    assert resumed.world == {"a": "0", **({"b": ""} if happened else {})}
    final = journal.get(wf)
    assert final is not None
    assert final.state == jn.ROLLED_BACK
    assert final.steps[1].state == ("undone" if happened else "skipped")


def test_crash_after_irreversible_step_is_finished(journal: Journal) -> None:
    ctx = WorldCtx(params={})
    wf = journal.begin("demo", "vol-1", {})
    for i, key in enumerate("ab"):
        journal.step_started(wf, i, f"set_{key}", {})
        journal.step_state(wf, i, jn.STEP_DONE, changes={"before": ""})
    journal.step_started(wf, 2, "set_c", {})
    ctx.world.update(a="1", b="2", c="3")  # c happened just before the crash
    (record,) = journal.unfinished()
    outcome = Engine[WorldCtx](journal).resume(record, steps(last_irreversible=True), ctx)
    assert outcome == "finished"
    assert ctx.world == {"a": "1", "b": "2", "c": "3", "d": "4"}


def test_snapshot_names_are_validated_and_temporary_names_fit() -> None:
    assert validate_snapshot_name("snapshot-5d1c_v1.2") == "snapshot-5d1c_v1.2"
    for bad in ['a"b', "a'b", "<b>", "a>b", "snäp", "a b", "x" * 81, ""]:
        with pytest.raises(InvalidInput, match="ASCII letters, digits"):
            validate_snapshot_name(bad)
    # The temporary snapshots' names are kept for them (a leftover is found by name).
    for reserved in ["vmdk-snap-hold", "vmdk-snap-tmp-x", "vmdk-snap-"]:
        with pytest.raises(InvalidInput, match="temporary snapshots"):
            validate_snapshot_name(reserved)
    assert validate_snapshot_name("vmdk-snapshot-1") == "vmdk-snapshot-1"
    vol = "2694e50a-c604-59cf-a7fb-eb0bb14d4667"
    assert temp_snapshot_name(vol, "s1") == f"vmdk-snap-tmp-{vol}-s1"
    # One per volume: two volumes of an instance never share a temporary name.
    assert temp_snapshot_name(vol, "s1") != temp_snapshot_name(vol[:-1] + "8", "s1")
    long_a, long_b = "a" * 79 + "1", "a" * 79 + "2"
    assert len(temp_snapshot_name(vol, long_a)) == 80
    assert temp_snapshot_name(vol, long_a) != temp_snapshot_name(vol, long_b)
    assert temp_snapshot_name(vol, long_a) == temp_snapshot_name(vol, long_a)


def test_an_undo_task_is_journaled_on_the_step_it_undoes(journal: Journal) -> None:
    """Recover waits for the task a dead process's undo left running: the
    journal must name it on the undone step's row, not on the failed one's."""

    def tasked(key: str) -> Step[WorldCtx]:
        def do(ctx: WorldCtx) -> dict[str, str]:
            if f"do:{key}" in ctx.fail:
                raise RuntimeError(f"cannot set {key}")
            ctx.task_started(TaskRef(Moref("Task", f"do-{key}"), f"set {key}"))
            return {}

        def undo(ctx: WorldCtx, changes: dict[str, str]) -> None:
            ctx.task_started(TaskRef(Moref("Task", f"undo-{key}"), f"reset {key}"))

        return Step(f"set_{key}", lambda _c: key, do, undo, lambda _c: None)

    ctx = WorldCtx(params={}, fail={"do:b"})
    with pytest.raises(RuntimeError, match="cannot set b"):
        Engine[WorldCtx](journal).run("demo", "vol-1", [tasked("a"), tasked("b")], ctx)
    (record,) = journal.workflows("vol-1")
    assert [(s.name, s.state, s.task) for s in record.steps] == [
        ("set_a", jn.UNDONE, "undo-a"),
        ("set_b", jn.FAILED, None),
    ]
