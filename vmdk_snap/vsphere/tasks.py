"""Waiting for vSphere tasks on property-collector filters, never by polling.

A session keeps one :class:`TaskWatcher`: its own property collector with one
long-lived filter over a ``ListView`` of tasks, watching ``info.state``,
``info.error`` and ``info.result``.

Why a collector of our own (``CreatePropertyCollector``, one round trip per
session) and not the session's ``ServiceContent.propertyCollector``: vCenter
gives each session its own instance of that one, which would do; but vcsim
0.24.2, our test bed, registers the update listener of every session's
instance under the same moref, so a second session waiting at the same time
(``vmdk-snap batch`` runs one session per worker) takes the first one's
updates and the first waits forever. A created collector has a moref of its
own in both.

Round trips, as counted in ``tests/library/test_tasks.py``:

- Setting the watcher up: ``CreatePropertyCollector``, ``CreateListView``
  (empty), ``CreateFilter`` and the first ``WaitForUpdatesEx`` (version "",
  which answers at once with the empty state): **4**, once per session. A
  session prepares it at login (:meth:`TaskWatcher.prepare`; ``Session(prepare_tasks=False)``
  defers it to the first wait, for sessions that only read), so the budgets
  the workflows are held to ("round trips after login") are those below.
- Every task: the call that starts it, ``ModifyListView`` (which
  adds it and drops the tasks already seen to finish, in the same call) and
  one ``WaitForUpdatesEx``: **3**, when the task has ended by the time that
  wait reports it entering the view. vcsim reports on a 250 ms tick, so its
  quick tasks do; vCenter reports at once, so there only tasks that end
  before the ``ModifyListView`` do.
- A task still running when it enters the view costs one more wait: entering
  the view is itself an update, and the property collector has no way to wait
  "until state is success or error". Each further ``maxWaitSeconds`` (30 s by
  default) the task runs adds one wait. A timeout shorter than that waits at
  most ``ceil(timeout)`` seconds per call instead. Both are fixed numbers, so
  requests are the same on every run (cassettes replay them).
- Closing the session destroys the collector (with its filters) and the view
  (``DestroyPropertyCollector``, ``DestroyView``) before the logout; a wait
  that fails destroys them too, so that no collector whose version went out of
  step is reused.

A wait that reports progress adds a filter on ``info.progress`` of its tasks
to the same collector and destroys it in ``finally``. Its changes wake
``WaitForUpdatesEx``, which is why waits without a listener have none.

Threads share the watcher: one thread at a time sits in ``WaitForUpdatesEx``
(without holding the lock); the others wait on a condition it signals after
each update. A thread adding its task with ``ModifyListView`` meanwhile wakes
that wait (the task entering the view is an update), so no thread waits on
another's ``maxWaitSeconds``.

If the session expired and the session logged in again while a watcher call
was under way, the collector and view died with the old session: the watcher
forgets them and builds new ones in the new session (the session raises
:class:`~vmdk_snap.vsphere.session.SessionRenewed` for such session-bound calls
instead of repeating them).

Why a ListView and not a filter on ``TaskManager.recentTask`` (which would
save the ``ModifyListView``): the API reference says that property "should
not be used for tracking Task completion ... a ListView is a better way to
monitor a specific set of Task objects", and that servers after vSphere API
5.0 "might not generate property collector update notifications" for it; it
also holds every session's recent tasks (up to 200), whose changes would wake
our waits. vcsim maintains it, but we must be right on vCenter.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pyVmomi import vim, vmodl

from vmdk_snap.errors import AuthenticationFailed, TaskTimeout, VmdkSnapError, translate
from vmdk_snap.types import Moref, TaskRef

__all__ = [
    "DEFAULT_WAIT_SECONDS",
    "ProgressCallback",
    "SessionRenewed",
    "TaskSession",
    "TaskWatcher",
    "wait_for_task",
    "wait_for_tasks",
]

log = logging.getLogger(__name__)

# maxWaitSeconds of each WaitForUpdatesEx (see the module docstring).
DEFAULT_WAIT_SECONDS = 30


class SessionRenewed(Exception):
    """A session-bound call met an expired session; the session logged in again.

    Raised instead of repeating calls on objects that lived in the old session
    (property filters, views, the session's collector state): they are gone,
    so the caller builds them again (see :mod:`vmdk_snap.vsphere.tasks`).
    """


class TaskSession(Protocol):
    """What the watcher needs of a session (:class:`vmdk_snap.vsphere.session.Session`).

    A protocol, not an import: the session owns its watcher, so the session
    module imports this one and not the other way round.
    """

    @property
    def content(self) -> Any: ...

    @property
    def generation(self) -> int: ...

    @property
    def watcher(self) -> TaskWatcher: ...

    def mo(self, ref: Moref) -> Any: ...

    def invoke(
        self,
        obj: Any,
        method: str,
        /,
        *args: Any,
        session_bound: bool = False,
        repeat_if_lost: bool = True,
        **kwargs: Any,
    ) -> Any: ...


TASK_PATHS = ("info.state", "info.error", "info.result")
PROGRESS_PATH = "info.progress"

ProgressCallback = Callable[[TaskRef, int], None]

PC = vmodl.query.PropertyCollector

_DONE = ("success", "error")
_FINAL_KEPT = 1024  # outcomes of finished tasks remembered per session
# Failed watcher calls in a row after which a wait gives up (each failure
# rebuilds the collector, view and filter: a new filter reports every task's
# state as it is now, so nothing a lost answer carried is missed).
_REBUILDS = 3


@dataclass
class _State:
    state: str = ""
    error: Any = None
    result: Any = None
    progress: int | None = None


def max_wait_for(timeout: float, wait_seconds: int) -> int:
    """``maxWaitSeconds`` for a wait with this timeout: fixed for a given configuration."""
    return max(1, min(wait_seconds, math.ceil(timeout)))


class TaskWatcher:
    """One long-lived filter that serves every wait of a session (thread-safe)."""

    def __init__(self, session: TaskSession, wait_seconds: int = DEFAULT_WAIT_SECONDS) -> None:
        self._session = session
        self._wait_seconds = wait_seconds
        self._cond = threading.Condition()
        self._view: Any = None
        self._collector: Any = None
        self._session_generation = -1  # of the session the view and filter live in
        self._epoch = 0  # bumped whenever the collector and view are forgotten
        self._version = ""
        self._waiting = False  # a thread is in WaitForUpdatesEx
        self._watched: set[str] = set()  # task moref values in the view
        self._finished: set[str] = set()  # returned to their waiter; dropped on the next change
        self._states: dict[str, _State] = {}
        # Tasks that ended and left the view: their outcome never changes, and
        # a task put back into the view may never be reported again (the
        # collector already told this filter about it), so a later wait for it
        # (recovery waits again for the tasks it journaled) is answered here.
        self._final: OrderedDict[str, _State] = OrderedDict()

    def wait(
        self,
        tasks: Sequence[TaskRef],
        timeout: float,
        on_progress: ProgressCallback | None = None,
    ) -> list[Any]:
        """Wait until every task succeeded; return their raw ``info.result`` in order.

        Raises:
            TaskFailed (or a subclass from :func:`vmdk_snap.errors.translate`):
                the first task that ended in error, with its fault.
            TaskTimeout: a task was still running after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        max_wait = max_wait_for(timeout, self._wait_seconds)
        reported: dict[str, int | None] = {}
        progress_filter: Any = None
        progress_epoch = -1  # the collector it lives on
        failures = 0
        try:
            with self._cond:
                while True:
                    try:
                        self._watch(tasks)
                        if on_progress is not None and progress_epoch != self._epoch:
                            try:
                                progress_filter = self._progress_filter(tasks)
                            except SessionRenewed:
                                self._teardown(destroy=False)
                                continue
                            progress_epoch = self._epoch
                    except (AuthenticationFailed, TaskTimeout):
                        raise
                    except VmdkSnapError as exc:
                        failures = self._failed(exc, failures, destroy=True)
                        continue
                    outcome = self._settled(tasks, deadline, timeout)
                    if outcome is not None:
                        return outcome
                    failures = self._next_update(deadline, max_wait, failures)
                    if on_progress is not None:
                        self._report(tasks, reported, on_progress)
        finally:
            with self._cond:
                if progress_filter is not None and progress_epoch == self._epoch:
                    # Otherwise it went with its collector.
                    self._destroy(progress_filter, "DestroyPropertyFilter")

    def prepare(self) -> None:
        """Make the collector, an empty view and its filter now (4 round trips).

        :class:`~vmdk_snap.vsphere.session.Session` does this at login, so that every
        task operation afterwards costs the same three round trips, the first
        one included.
        """
        with self._cond:
            if self._view is None or self._session_generation != self._session.generation:
                self._teardown(destroy=False)
                self._setup([])
                # The first WaitForUpdatesEx (version "") answers at once with
                # the whole (empty) state; taking it now means no task wait
                # ever gets that answer instead of its task's end.
                options = PC.WaitOptions(maxWaitSeconds=1)
                update = self._session.invoke(
                    self._collector, "WaitForUpdatesEx", "", options, session_bound=True
                )
                if update is not None:
                    self._apply_update(update)

    def close(self) -> None:
        """Destroy the collector (and its filters) and the view."""
        with self._cond:
            self._teardown(destroy=True)

    # -- internals (called with the lock held) -------------------------------

    def _next_update(self, deadline: float, max_wait: int, failures: int) -> int:
        """Wait for the next update (ours or another thread's); the failures in a row."""
        if self._waiting:
            # Another thread is in WaitForUpdatesEx: it signals after each update.
            self._cond.wait(max(0.0, deadline - time.monotonic()))
            return failures
        try:
            self._lead(max_wait)
        except (AuthenticationFailed, TaskTimeout):
            raise
        except VmdkSnapError as exc:
            # _lead forgot the collector already.
            return self._failed(exc, failures, destroy=False)
        return 0

    def _failed(self, exc: VmdkSnapError, failures: int, *, destroy: bool) -> int:
        """A watcher call failed: forget the collector so the next turn rebuilds it.

        A failed or unanswered ``WaitForUpdatesEx`` leaves our version out of
        step with the collector (a lost answer may have carried a task's end,
        which that collector never reports again), and a failed
        ``ModifyListView`` leaves the view's contents unknown. A new
        collector's first wait reports every watched task as it is now. After
        :data:`_REBUILDS` failures in a row the wait gives up with the error.
        """
        if destroy:
            self._teardown(destroy=True)
        failures += 1
        if failures >= _REBUILDS:
            raise exc
        log.warning("waiting for tasks: %s; watching them anew", exc)
        return failures

    def _lead(self, max_wait: int) -> None:
        """Sit in WaitForUpdatesEx without the lock, then apply what came and signal."""
        self._waiting = True
        epoch, version = self._epoch, self._version
        options = PC.WaitOptions(maxWaitSeconds=max_wait)
        collector = self._collector
        update: Any = None
        failed: BaseException | None = None
        self._cond.release()
        try:
            update = self._session.invoke(
                collector,
                "WaitForUpdatesEx",
                version,
                options,
                session_bound=True,
                repeat_if_lost=False,
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised below with the lock held
            failed = exc
        finally:
            self._cond.acquire()
            self._waiting = False
            self._cond.notify_all()
        if failed is not None:
            if epoch == self._epoch:
                # A renewed session ended the view and filter; otherwise our
                # version may be out of step with the collector: start over.
                self._teardown(destroy=not isinstance(failed, SessionRenewed))
            if isinstance(failed, SessionRenewed):
                return
            raise failed
        if epoch == self._epoch and update is not None:
            self._apply_update(update)

    def _report(
        self,
        tasks: Sequence[TaskRef],
        reported: dict[str, int | None],
        on_progress: ProgressCallback,
    ) -> None:
        seen = [(t, self._state_of(t.ref.value)) for t in tasks]
        self._cond.release()
        try:
            for task, state in seen:
                value = state.progress if state else None
                if value is not None and reported.get(task.ref.value) != value:
                    reported[task.ref.value] = value
                    on_progress(task, value)
        finally:
            self._cond.acquire()

    def _settled(
        self, tasks: Sequence[TaskRef], deadline: float, timeout: float
    ) -> list[Any] | None:
        """The results if every task is done; raise if one failed or time is up."""
        states = [self._state_of(t.ref.value) for t in tasks]
        if all(s is not None and s.state in _DONE for s in states):
            self._finished.update(t.ref.value for t in tasks)
            return self._outcome(tasks)
        failed = next(
            (t for t, s in zip(tasks, states, strict=True) if s and s.state == "error"), None
        )
        if failed is not None:
            self._finished.update(t.ref.value for t in tasks)
            return self._outcome([failed])
        if time.monotonic() >= deadline:
            late = next(
                t for t, s in zip(tasks, states, strict=True) if s is None or s.state not in _DONE
            )
            raise TaskTimeout(
                f"{late.description} (task {late.ref.value}) did not finish within {timeout:g} s",
                task=late,
            )
        return None

    def _outcome(self, tasks: Iterable[TaskRef]) -> list[Any]:
        results = []
        for task in tasks:
            state = self._state_of(task.ref.value)
            assert state is not None  # settled
            if state.state == "error":
                fault = getattr(state.error, "fault", None) or state.error
                raise translate(fault, task=task) from (
                    fault if isinstance(fault, BaseException) else None
                )
            results.append(state.result)
        return results

    def _progress_filter(self, tasks: Sequence[TaskRef]) -> Any:
        """A filter on ``info.progress`` of these tasks, on the session's collector.

        Progress is watched only for waits that report it: every change wakes
        ``WaitForUpdatesEx``, and most waits only need the end.
        """
        session = self._session
        spec = PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=session.mo(t.ref), skip=False) for t in tasks],
            propSet=[PC.PropertySpec(type=vim.Task, pathSet=[PROGRESS_PATH], all=False)],
        )
        return session.invoke(
            self._collector, "CreateFilter", spec, partialUpdates=False, session_bound=True
        )

    def _watch(self, tasks: Sequence[TaskRef]) -> None:
        """Put these tasks in the view (creating view and filter on first use)."""
        if self._view is not None and self._session_generation != self._session.generation:
            # The session logged in again: the old view and filter are gone with it.
            self._teardown(destroy=False)
        new = [
            t.ref.value
            for t in tasks
            if t.ref.value not in self._watched and t.ref.value not in self._final
        ]
        if not new:
            return
        session = self._session
        objs = [session.mo(Moref("Task", value)) for value in new]
        try:
            if self._view is None:
                self._setup(objs)
            else:
                drop = sorted(self._finished - {t.ref.value for t in tasks})
                session.invoke(
                    self._view,
                    "ModifyListView",
                    add=objs,
                    remove=[session.mo(Moref("Task", v)) for v in drop],
                    session_bound=True,
                )
                for value in drop:
                    self._watched.discard(value)
                    self._finished.discard(value)
                    self._remember(value, self._states.pop(value, None))
        except SessionRenewed:
            self._teardown(destroy=False)
            self._setup(objs)
        self._watched.update(new)

    def _setup(self, objs: list[Any]) -> None:
        session = self._session
        content = session.content
        generation = session.generation
        try:
            self._collector = session.invoke(content.propertyCollector, "CreatePropertyCollector")
            self._view = session.invoke(content.viewManager, "CreateListView", obj=objs)
            spec = PC.FilterSpec(
                objectSet=[
                    PC.ObjectSpec(
                        obj=self._view,
                        skip=True,
                        selectSet=[
                            PC.TraversalSpec(
                                name="view", type=vim.view.ListView, path="view", skip=False
                            )
                        ],
                    )
                ],
                propSet=[PC.PropertySpec(type=vim.Task, pathSet=list(TASK_PATHS), all=False)],
            )
            session.invoke(
                self._collector,
                "CreateFilter",
                spec,
                partialUpdates=False,
                session_bound=True,
            )
        except BaseException:
            self._teardown(destroy=session.generation == generation)
            raise
        self._session_generation = generation
        self._version = ""

    def _remember(self, value: str, state: _State | None) -> None:
        if state is None or state.state not in _DONE:
            return
        self._final[value] = state
        while len(self._final) > _FINAL_KEPT:
            self._final.popitem(last=False)

    def _state_of(self, value: str) -> _State | None:
        return self._states.get(value) or self._final.get(value)

    def _apply_update(self, update: Any) -> None:
        self._version = update.version
        for filter_update in update.filterSet or []:
            for obj_update in filter_update.objectSet or []:
                value = obj_update.obj._moId
                if str(obj_update.kind) == "leave":
                    continue
                state = self._states.setdefault(value, _State())
                for change in obj_update.changeSet or []:
                    self._apply(state, change.name, change.val)

    @staticmethod
    def _apply(state: _State, name: str, val: Any) -> None:
        if name == "info.state":
            state.state = str(val)
        elif name == "info.error":
            state.error = val
        elif name == "info.result":
            state.result = val
        elif name == "info.progress":
            state.progress = int(val) if val is not None else None

    def _teardown(self, *, destroy: bool) -> None:
        """Forget the collector and view; destroy them too unless they died with a session."""
        collector, view = self._collector, self._view
        self._collector = self._view = None
        self._epoch += 1
        self._version = ""
        self._watched.clear()
        self._finished.clear()
        self._states.clear()
        # A new filter reports every task it is given, and task ids are only
        # unique within one vCenter run: no answers from before.
        self._final.clear()
        if destroy:
            self._destroy(collector, "DestroyPropertyCollector")
            self._destroy(view, "DestroyView")

    def _destroy(self, obj: Any, method: str) -> None:
        if obj is None:
            return
        try:
            self._session.invoke(obj, method)
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the real error
            log.debug("%s failed during cleanup: %s", method, exc)


def wait_for_tasks(
    session: TaskSession,
    tasks: Sequence[TaskRef],
    timeout: float,
    on_progress: ProgressCallback | None = None,
) -> list[Any]:
    """Wait for several tasks on one filter; return their results in order.

    A timeout always applies; :class:`~vmdk_snap.errors.TaskTimeout` names the
    task still running.
    """
    if not tasks:
        return []
    watcher: TaskWatcher = session.watcher
    return watcher.wait(tasks, timeout, on_progress)


def wait_for_task(
    session: TaskSession,
    task: TaskRef,
    timeout: float,
    on_progress: ProgressCallback | None = None,
) -> Any:
    """Wait for one task and return its raw ``info.result``."""
    return wait_for_tasks(session, [task], timeout, on_progress)[0]
