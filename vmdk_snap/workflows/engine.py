"""The step engine: run named steps with the journal, undo them on failure.

A workflow is a list of :class:`Step`. Each step has

- ``describe``: what it would change, in words (for ``--dry-run`` plans and
  for the journal, written before the step runs);
- ``do``: make the change and return what changed (JSON-able, journaled
  after the step);
- ``undo``: revert that change, given what ``do`` returned; ``None`` marks an
  *irreversible* step (e.g. removing the temporary instance snapshot, which
  cannot be re-created);
- ``check``: look at vCenter and say whether the step's change is there
  (returning what ``do`` would have returned) or not (``None``). It is how
  the engine decides, after a crash or an ambiguous failure, whether a step
  that started also finished.

What happened is decided only once every task the step started has ended
(:meth:`Context.settle` waits for them first): a check made while a task may
still run could see "not yet" and roll back a change that then completes. A
failed step whose change turns out to be there is done, and the workflow goes
on. When the tasks' end cannot be seen (vCenter unreachable, a task still
running after its bound) or the check cannot read, the outcome is unknown:
the workflow neither rolls back nor reports done; it stays ``running`` in the
journal with its task ids and :class:`OutcomeUnknown` says to run ``recover``,
which waits for those tasks and settles the step from their end.

Rules. A failure before any irreversible step completed undoes every
completed step, newest first, and leaves vCenter as it was. Once an
irreversible step has completed, or a ``forward_only`` step has started
(clean-up after the change is complete, such as deleting a stale copy: the
steps before it must not be undone, since their undo may need what it
deletes), the workflow can only go forward: a later failure leaves it
``running`` in the journal and :meth:`Engine.resume` (``recover``) finishes
it. After a crash, :meth:`Engine.resume` applies the same rules from the
journal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from vmdk_snap.errors import VmdkSnapError
from vmdk_snap.types import TaskRef
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.journal import Journal, WorkflowRecord

__all__ = [
    "Context",
    "Engine",
    "Incomplete",
    "OutcomeUnknown",
    "Plan",
    "PlannedStep",
    "RecoveryResult",
    "RollbackFailed",
    "Step",
]

log = logging.getLogger(__name__)

Changes = dict[str, Any]
Progress = Callable[[str, "int | None"], None]


class RollbackFailed(VmdkSnapError):
    """A step failed and undoing the completed steps failed too."""

    default_hint = "fix the cause, then run `vmdk-snap recover` to finish the rollback"


class Incomplete(VmdkSnapError):
    """The workflow passed its point of no return, then a later step failed."""

    default_hint = "run `vmdk-snap recover` to finish it once the cause is fixed"


class OutcomeUnknown(Incomplete):
    """A step failed and whether its change happened cannot be seen yet.

    Nothing was rolled back or reported done: the journal keeps the workflow
    ``running`` with the step's task ids, for ``recover``.
    """

    default_hint = (
        "run `vmdk-snap recover` once vCenter answers again: it waits for the step's "
        "tasks to end and finishes or rolls back the workflow from what they did"
    )


@dataclass
class Context:
    """What steps share: the journaled parameters and earlier steps' changes.

    ``params`` is JSON-able and journaled when the workflow begins, so another
    process can rebuild the steps; ``results`` maps step names to what they
    changed. Subclasses add the operations object the steps call.
    """

    params: dict[str, Any]
    results: dict[str, Changes] = field(default_factory=dict)
    on_progress: Progress | None = None
    # Set by the engine while a step runs: journal a task the step started,
    # so recovery can wait for it when the process died during the wait.
    on_task: Callable[[TaskRef], None] | None = None
    step_name: str = ""
    # Tasks the running step (or undo) started, for settle after a failure.
    step_tasks: list[str] = field(default_factory=list)

    def progress(self, percent: int | None) -> None:
        if self.on_progress is not None:
            self.on_progress(self.step_name, percent)

    def task_started(self, task: TaskRef) -> None:
        self.step_tasks.append(task.ref.value)
        if self.on_task is not None:
            self.on_task(task)

    def settle(self, tasks: Sequence[str]) -> None:
        """Before a check: wait until every task the step may have started ended.

        ``tasks`` are the ids known (journaled, or started by this process);
        a context that talks to vCenter also waits for tasks still running on
        the workflow's VMs (a call whose answer was lost). Raises when their
        end cannot be seen: the check must not run then. The default does
        nothing.
        """


C = TypeVar("C", bound=Context)


@dataclass(frozen=True)
class Step(Generic[C]):
    """One named step of a workflow and its undo."""

    name: str
    describe: Callable[[C], str]
    do: Callable[[C], Changes]
    undo: Callable[[C, Changes], None] | None
    check: Callable[[C], Changes | None]
    undo_text: str = ""
    forward_only: bool = False  # once started, finished forward (see the module doc)

    @property
    def reversible(self) -> bool:
        return self.undo is not None


@dataclass(frozen=True)
class PlannedStep:
    """One step of a plan: its name, what it would change, how it is undone."""

    name: str
    description: str
    undo: str
    reversible: bool


@dataclass(frozen=True)
class Plan:
    """What a workflow would do; building it changes nothing in vCenter."""

    kind: str
    volume_id: str
    steps: tuple[PlannedStep, ...]
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"{self.kind} of volume {self.volume_id}: {len(self.steps)} steps"]
        for i, step in enumerate(self.steps, 1):
            lines.append(f"  {i}. {step.name}: {step.description}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass(frozen=True)
class RecoveryResult:
    """What ``recover`` did with one interrupted workflow.

    ``outcome`` is ``finished`` (rolled forward), ``rolled_back``, ``busy``
    (another live process holds the volume: not interrupted, left alone) or
    ``failed`` (``detail`` says why; the journal keeps it for the next try).
    """

    workflow_id: str
    kind: str
    volume_id: str
    outcome: str
    detail: str = ""


def plan_of(kind: str, volume_id: str, steps: Sequence[Step[C]], ctx: C) -> Plan:
    """The plan for ``steps``: each one's description, no call that changes anything."""
    return Plan(
        kind=kind,
        volume_id=volume_id,
        steps=tuple(
            PlannedStep(s.name, s.describe(ctx), s.undo_text or "none", s.reversible) for s in steps
        ),
    )


def _check_settled(ctx: C, step: Step[C], tasks: Sequence[str]) -> Changes | None:
    """The step's check, run only once every task it may have started has ended."""
    ctx.settle(list(tasks))
    return step.check(ctx)


@dataclass
class _Run(Generic[C]):
    wf_id: str
    steps: Sequence[Step[C]]
    ctx: C
    done: list[int] = field(default_factory=list)  # indexes of completed steps, in order
    forward: bool = False  # a forward_only step has started

    @property
    def committed(self) -> bool:
        return self.forward or any(not self.steps[i].reversible for i in self.done)


class Engine(Generic[C]):
    """Runs steps with the journal; see the module docstring for the rules."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    # -- a fresh run ---------------------------------------------------------

    def run(
        self,
        kind: str,
        volume_id: str,
        steps: Sequence[Step[C]],
        ctx: C,
        *,
        on_begin: Callable[[str], None] | None = None,
    ) -> str:
        """Run ``steps`` in order; return the workflow id.

        Raises:
            the failing step's error, after every completed step was undone;
            RollbackFailed: when an undo failed too (the journal keeps it);
            Incomplete: when a step after the point of no return failed.
        """
        wf_id = self.journal.begin(kind, volume_id, ctx.params)
        if on_begin is not None:
            on_begin(wf_id)  # the caller may have to record its outcome
        run = _Run(wf_id, steps, ctx)
        self._forward(run, 0)
        self.journal.finish(wf_id, jn.DONE)
        return wf_id

    def _forward(self, run: _Run[C], start: int) -> None:
        for index in range(start, len(run.steps)):
            step = run.steps[index]
            self._start(run, index, step)
            try:
                changes = step.do(run.ctx)
            except Exception as exc:  # noqa: BLE001 - _failed re-raises what did not happen
                changes = self._failed(run, index, step, exc)
            self._done(run, index, step, changes)

    def _start(self, run: _Run[C], index: int, step: Step[C]) -> None:
        intent = {"describe": step.describe(run.ctx)}
        self.journal.step_started(run.wf_id, index, step.name, intent)
        log.info("step %s: %s", step.name, intent["describe"])
        run.ctx.step_name = step.name
        run.forward = run.forward or step.forward_only
        run.ctx.step_tasks = []
        run.ctx.on_task = self._task_recorder(run.wf_id, index)

    def _task_recorder(self, wf_id: str, index: int) -> Callable[[TaskRef], None]:
        def on_task(task: TaskRef) -> None:
            self.journal.step_task(wf_id, index, task.ref.value)

        return on_task

    def _done(self, run: _Run[C], index: int, step: Step[C], changes: Changes) -> None:
        self.journal.step_state(run.wf_id, index, jn.STEP_DONE, changes=changes)
        run.ctx.results[step.name] = changes
        run.done.append(index)
        run.ctx.on_task = None

    def _failed(self, run: _Run[C], index: int, step: Step[C], exc: Exception) -> Changes:
        """Decide what a failed step did; return its changes if it happened.

        Raises the step's error after rolling back (nothing happened, before
        the point of no return), :class:`Incomplete` (after it), or
        :class:`OutcomeUnknown` (its tasks' end or its state cannot be seen).
        """
        log.warning("step %s failed: %s", step.name, exc)
        self.journal.step_state(run.wf_id, index, jn.FAILED, error=str(exc))
        run.ctx.on_task = None
        happened = self._settled_check(run, step, exc)
        if happened is not None:
            # The call failed (an answer lost, a wait cut short), the task did not.
            log.warning("step %s failed, but its change is there: going on", step.name)
            return happened
        if run.committed:
            raise Incomplete(
                f"step {step.name} failed after the point of no return: {exc}",
            ) from exc
        self._rollback(run, exc)
        self.journal.finish(run.wf_id, jn.ROLLED_BACK, error=str(exc))
        raise exc

    def _settled_check(self, run: _Run[C], step: Step[C], exc: Exception) -> Changes | None:
        """The step's check, once every task it started has ended."""
        try:
            return _check_settled(run.ctx, step, run.ctx.step_tasks)
        except Exception as unknown:  # noqa: BLE001 - any reason: the outcome is unknown
            log.warning("cannot tell whether step %s happened: %s", step.name, unknown)
            tasks = ", ".join(run.ctx.step_tasks) or "none journaled"
            raise OutcomeUnknown(
                f"step {step.name} failed ({exc}) and whether it happened cannot be seen yet "
                f"({unknown}); workflow {run.wf_id} is left for recover (tasks: {tasks})",
            ) from exc

    def _rollback(self, run: _Run[C], cause: Exception | None) -> None:
        for index in reversed(list(run.done)):
            step = run.steps[index]
            assert step.undo is not None  # committed runs never roll back
            changes = run.ctx.results.get(step.name, {})
            self.journal.step_state(run.wf_id, index, jn.UNDOING)
            run.ctx.step_name = f"undo {step.name}"
            # The undo's tasks go on this step's row (recover waits for them).
            run.ctx.on_task = self._task_recorder(run.wf_id, index)
            run.ctx.step_tasks = []
            log.info("undo %s", step.name)
            try:
                step.undo(run.ctx, changes)
            except Exception as exc:
                if self._undone_after_all(run, step):
                    log.warning("undo of %s failed, but the change is gone: %s", step.name, exc)
                    self.journal.step_state(run.wf_id, index, jn.UNDONE)
                    run.done.remove(index)
                    continue
                self.journal.step_state(run.wf_id, index, jn.UNDO_FAILED, error=str(exc))
                self.journal.finish(run.wf_id, jn.ROLLBACK_FAILED, error=str(exc))
                why = f"{cause}; " if cause is not None else ""
                raise RollbackFailed(
                    f"{why}undoing step {step.name} failed too: {exc}",
                ) from exc
            self.journal.step_state(run.wf_id, index, jn.UNDONE)
            run.done.remove(index)

    def _undone_after_all(self, run: _Run[C], step: Step[C]) -> bool:
        """After a failed undo: did it happen anyway (seen once its tasks ended)?"""
        try:
            return _check_settled(run.ctx, step, run.ctx.step_tasks) is None
        except Exception as exc:  # noqa: BLE001 - unknown: recover decides later
            log.warning("cannot tell whether the undo of %s happened: %s", step.name, exc)
            return False

    # -- recovery ------------------------------------------------------------

    def resume(self, record: WorkflowRecord, steps: Sequence[Step[C]], ctx: C) -> str:
        """Finish or roll back an interrupted workflow; return the outcome.

        Steps the journal shows as completed are trusted; a step that started
        but has no outcome is checked against vCenter. If an irreversible
        step completed (or the workflow was rolling back) the direction is
        fixed; otherwise the workflow is rolled back.
        """
        run = _Run(record.id, steps, ctx)
        rolling_back = record.state == jn.ROLLBACK_FAILED
        by_index = {s.index: s for s in record.steps}
        for index, step in enumerate(steps):
            rec = by_index.get(index)
            run.forward = run.forward or (rec is not None and step.forward_only)
            if rec is None or rec.state in (jn.UNDONE, jn.SKIPPED):
                rolling_back = rolling_back or (rec is not None and rec.state == jn.UNDONE)
                continue
            if rec.state == jn.STEP_DONE and rec.changes is not None:
                changes: Changes | None = rec.changes
            else:
                # started, failed, undoing, undo_failed: ask vCenter.
                rolling_back = rolling_back or rec.state in (jn.UNDOING, jn.UNDO_FAILED)
                ctx.step_name = step.name
                changes = _check_settled(ctx, step, [rec.task] if rec.task else [])
                state = jn.STEP_DONE if changes is not None else jn.SKIPPED
                self.journal.step_state(record.id, index, state, changes=changes)
                log.info("recover: step %s %s", step.name, "happened" if changes else "did not")
            if changes is not None:
                ctx.results[step.name] = changes
                run.done.append(index)
        if run.committed and not rolling_back:
            first = max(run.done) + 1
            self._forward(run, first)
            self.journal.finish(record.id, jn.DONE)
            return "finished"
        self._rollback(run, None)
        self.journal.finish(record.id, jn.ROLLED_BACK, error="rolled back by recover")
        return "rolled_back"
