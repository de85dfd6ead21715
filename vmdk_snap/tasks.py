"""Waiting for vSphere tasks on property-collector filters, never by polling.

A session keeps one :class:`TaskWatcher`: its own property collector with one
long-lived filter over a ``ListView`` of tasks, watching ``info.state``,
``info.error`` and ``info.result``. Waiting for a task adds it to the view
with ``ModifyListView`` (dropping the tasks already seen to finish in the same
call), then blocks in ``WaitForUpdatesEx`` with a fixed ``maxWaitSeconds``.
A task that ends within one wait therefore costs three round trips in all:
the call that starts it, the ``ModifyListView`` and one ``WaitForUpdatesEx``.
A wait that reports progress adds a filter on ``info.progress`` of its tasks
to the same collector and destroys it in ``finally``. The collector (and
with it every filter) and the view are destroyed when the session closes,
and whenever a wait fails, so that no broken filter is reused.

Why a ListView and not a filter on ``TaskManager.recentTask`` (which would
save the ``ModifyListView``): the API reference says that property "should
not be used for tracking Task completion ... a ListView is a better way to
monitor a specific set of Task objects", and that servers after vSphere API
5.0 "might not generate property collector update notifications" for it; it
also holds every session's recent tasks (up to 200), whose changes would wake
our waits. vcsim maintains it, but we must be right on vCenter.

A task still running when it enters the view costs one more wait (the view
change itself is an update); progress changes never wake a wait that does
not report progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyVmomi import vim, vmodl

from vmdk_snap.errors import TaskTimeout, translate
from vmdk_snap.types import Moref, TaskRef

if TYPE_CHECKING:
    from vmdk_snap.session import Session

__all__ = ["ProgressCallback", "TaskWatcher", "wait_for_task", "wait_for_tasks"]

log = logging.getLogger(__name__)

TASK_PATHS = ("info.state", "info.error", "info.result")
PROGRESS_PATH = "info.progress"

ProgressCallback = Callable[[TaskRef, int], None]

_DONE = ("success", "error")


@dataclass
class _State:
    state: str = ""
    error: Any = None
    result: Any = None
    progress: int | None = None


class TaskWatcher:
    """One long-lived filter that serves every wait of a session (thread-safe)."""

    def __init__(self, session: Session, wait_seconds: int) -> None:
        self._session = session
        self._wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._collector: Any = None
        self._view: Any = None
        self._version = ""
        self._watched: set[str] = set()  # task moref values in the view
        self._finished: set[str] = set()  # seen to finish; dropped on the next change
        self._states: dict[str, _State] = {}

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
        reported: dict[str, int | None] = {}
        progress: tuple[Any, Any] | None = None  # (collector, filter) for info.progress
        try:
            while True:
                with self._lock:
                    self._watch(tasks)
                    if on_progress is not None and (
                        progress is None or progress[0] is not self._collector
                    ):
                        progress = (self._collector, self._progress_filter(tasks))
                    outcome = self._settled(tasks, deadline, timeout)
                    if outcome is not None:
                        return outcome
                    self._wait_once()
                    seen = [(t, self._states.get(t.ref.value)) for t in tasks]
                if on_progress is not None:
                    for task, state in seen:
                        value = state.progress if state else None
                        if value is not None and reported.get(task.ref.value) != value:
                            reported[task.ref.value] = value
                            on_progress(task, value)
        finally:
            if progress is not None:
                self._destroy_progress_filter(*progress)

    def _settled(
        self, tasks: Sequence[TaskRef], deadline: float, timeout: float
    ) -> list[Any] | None:
        """The results if every task is done; raise if one failed or time is up."""
        states = [self._states.get(t.ref.value) for t in tasks]
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

    def _progress_filter(self, tasks: Sequence[TaskRef]) -> Any:
        """A filter on ``info.progress`` of these tasks, on the same collector.

        Progress is watched only for waits that report it: every change wakes
        ``WaitForUpdatesEx``, and most waits only need the end.
        """
        session = self._session
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(obj=session.mo(t.ref), skip=False)
                for t in tasks
            ],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.Task, pathSet=[PROGRESS_PATH], all=False
                )
            ],
        )
        return session.invoke(self._collector, "CreateFilter", spec, partialUpdates=False)

    def _destroy_progress_filter(self, collector: Any, progress_filter: Any) -> None:
        with self._lock:
            if collector is not self._collector:
                return  # torn down with its collector already
            try:
                self._session.invoke(progress_filter, "DestroyPropertyFilter")
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the real error
                log.debug("DestroyPropertyFilter failed: %s", exc)

    def close(self) -> None:
        """Destroy the collector (and its filter) and the view."""
        with self._lock:
            self._teardown()

    # -- internals (called with the lock held) -------------------------------

    def _outcome(self, tasks: Iterable[TaskRef]) -> list[Any]:
        results = []
        for task in tasks:
            state = self._states[task.ref.value]
            if state.state == "error":
                fault = getattr(state.error, "fault", None) or state.error
                raise translate(fault, task=task) from (
                    fault if isinstance(fault, BaseException) else None
                )
            results.append(state.result)
        return results

    def _watch(self, tasks: Sequence[TaskRef]) -> None:
        new = [t.ref.value for t in tasks if t.ref.value not in self._watched]
        if not new:
            return
        session = self._session
        objs = [session.mo(Moref("Task", value)) for value in new]
        if self._collector is None:
            self._setup(objs)
        else:
            drop = sorted(self._finished - {t.ref.value for t in tasks})
            session.invoke(
                self._view,
                "ModifyListView",
                add=objs,
                remove=[session.mo(Moref("Task", v)) for v in drop],
            )
            for value in drop:
                self._watched.discard(value)
                self._finished.discard(value)
                self._states.pop(value, None)
        self._watched.update(new)

    def _setup(self, objs: list[Any]) -> None:
        session = self._session
        content = session.content
        try:
            self._collector = session.invoke(content.propertyCollector, "CreatePropertyCollector")
            self._view = session.invoke(content.viewManager, "CreateListView", obj=objs)
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[
                    vmodl.query.PropertyCollector.ObjectSpec(
                        obj=self._view,
                        skip=True,
                        selectSet=[
                            vmodl.query.PropertyCollector.TraversalSpec(
                                name="view", type=vim.view.ListView, path="view", skip=False
                            )
                        ],
                    )
                ],
                propSet=[
                    vmodl.query.PropertyCollector.PropertySpec(
                        type=vim.Task, pathSet=list(TASK_PATHS), all=False
                    )
                ],
            )
            session.invoke(self._collector, "CreateFilter", spec, partialUpdates=False)
        except BaseException:
            self._teardown()
            raise
        self._version = ""

    def _wait_once(self) -> None:
        options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=self._wait_seconds)
        try:
            update = self._session.invoke(
                self._collector, "WaitForUpdatesEx", self._version, options
            )
        except BaseException:
            # Our version may now be out of step with the collector: start over.
            self._teardown()
            raise
        if update is None:
            return
        self._version = update.version
        for filter_update in update.filterSet or []:
            for obj_update in filter_update.objectSet or []:
                value = obj_update.obj._moId
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

    def _teardown(self) -> None:
        collector, view = self._collector, self._view
        self._collector = self._view = None
        self._version = ""
        self._watched.clear()
        self._finished.clear()
        self._states.clear()
        for obj, method in ((collector, "DestroyPropertyCollector"), (view, "DestroyView")):
            if obj is None:
                continue
            try:
                self._session.invoke(obj, method)
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the real error
                log.debug("%s failed during cleanup: %s", method, exc)


def wait_for_tasks(
    session: Session,
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
    session: Session,
    task: TaskRef,
    timeout: float,
    on_progress: ProgressCallback | None = None,
) -> Any:
    """Wait for one task and return its raw ``info.result``."""
    return wait_for_tasks(session, [task], timeout, on_progress)[0]
