"""The SQLite journal and the per-volume locks (real SQLite, real flock)."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from vmdk_snap.errors import Busy
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.journal import Journal, default_journal_path
from vmdk_snap.workflows.locks import VolumeLock


def test_default_path_follows_xdg_state_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_journal_path() == tmp_path / "state" / "vmdk-snap" / "journal.sqlite"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_journal_path() == (
        tmp_path / "home" / ".local" / "state" / "vmdk-snap" / "journal.sqlite"
    )


def test_journal_created_at_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    journal = Journal()
    assert journal.path == tmp_path / "vmdk-snap" / "journal.sqlite"
    assert journal.path.exists()
    assert (journal.path.parent.stat().st_mode & 0o777) == 0o700


def test_steps_are_written_before_and_after(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    wf = journal.begin("snapshot", "vol-1", {"name": "snapshot-1", "backing": "vm-7"})
    journal.step_started(wf, 0, "snapshot_backing", {"describe": "create snapshot"})

    # Another connection (another process) sees the "before" record at once.
    with sqlite3.connect(journal.path) as db:
        rows = db.execute("SELECT name, state, changes FROM steps WHERE workflow = ?", (wf,))
        assert rows.fetchall() == [("snapshot_backing", "started", None)]

    journal.step_task(wf, 0, "task-12")
    journal.step_state(wf, 0, jn.STEP_DONE, changes={"snapshot": "snapshot-9"})
    record = journal.get(wf)
    assert record is not None
    assert record.state == jn.RUNNING
    assert record.params == {"name": "snapshot-1", "backing": "vm-7"}
    assert record.pid == os.getpid()
    (step,) = record.steps
    assert (step.name, step.state, step.task) == ("snapshot_backing", "done", "task-12")
    assert step.intent == {"describe": "create snapshot"}
    assert step.changes == {"snapshot": "snapshot-9"}
    assert [r.id for r in journal.unfinished()] == [wf]

    journal.finish(wf, jn.DONE)
    assert journal.unfinished() == []
    assert [r.id for r in journal.workflows("vol-1")] == [wf]
    assert journal.workflows("vol-2") == []


def test_unfinished_lists_running_and_rollback_failed_oldest_first(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    ids = [journal.begin("snapshot", f"vol-{i}", {}) for i in range(4)]
    journal.finish(ids[0], jn.DONE)
    journal.finish(ids[1], jn.ROLLBACK_FAILED, error="undo failed")
    journal.finish(ids[3], jn.ROLLED_BACK)
    assert [r.id for r in journal.unfinished()] == [ids[1], ids[2]]
    again = Journal(tmp_path / "j.sqlite")  # reopening keeps everything
    assert [r.id for r in again.unfinished()] == [ids[1], ids[2]]


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    with VolumeLock(tmp_path, "vol-1"):
        with pytest.raises(Busy, match=r"volume vol-1 is busy: .*pid \d+") as info:
            VolumeLock(tmp_path, "vol-1").acquire()
        assert "try again" in str(info.value)
        with VolumeLock(tmp_path, "vol-2") as other:  # other volumes are free
            assert other.held
    with VolumeLock(tmp_path, "vol-1") as lock:
        assert lock.held
    assert not lock.held


def _hold(directory: str, ready: multiprocessing.synchronize.Event, stop: object) -> None:
    with VolumeLock(Path(directory), "vol-x"):
        ready.set()
        stop.wait(30)  # type: ignore[attr-defined]  # an Event from the parent


def test_lock_held_by_another_process_and_freed_when_it_dies(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(tmp_path), ready, stop))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(Busy, match=f"pid {proc.pid}"):
            VolumeLock(tmp_path, "vol-x").acquire()
    finally:
        proc.kill()  # dies holding the lock: the kernel releases it
        proc.join()
    with VolumeLock(tmp_path, "vol-x") as lock:
        assert lock.held


def test_processes_creating_the_journal_at_once_all_succeed(tmp_path: Path) -> None:
    """Two vmdk-snap processes started together on a fresh machine both open
    (and so create) the journal: neither may fail with "database is locked"."""
    errors: list[BaseException] = []

    def open_and_write(path: Path) -> None:
        try:
            Journal(path).begin("snapshot", "vol-1", {})
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    for i in range(200):
        path = tmp_path / f"state-{i}" / "journal.sqlite"
        threads = [threading.Thread(target=open_and_write, args=(path,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(Journal(path).workflows()) == 4
