"""The workflow journal: an embedded SQLite record of every workflow and step.

Each workflow (``snapshot``, ``consolidate``, ``delete``, ``revert``) gets a
row with its id, kind, volume and the parameters needed to rebuild its steps
in another process. Each step gets a row written *before* it runs (``started``,
with what it intends to change) and *after* (``done`` with what it changed, or
``failed``); undo is recorded the same way (``undoing`` then ``undone`` or
``undo_failed``). After a crash, :meth:`Journal.unfinished` lists the
workflows whose last state is ``running`` or ``rollback_failed``, and the
workflow engine finishes or rolls them back (two-phase records, as in Cinder's
guest-assisted snapshots: a record is ``creating`` until it is finalized).

The default location is ``$XDG_STATE_HOME/vmdk-snap/journal.sqlite`` (or
``~/.local/state/vmdk-snap/journal.sqlite``). Nothing secret is written here:
no passwords, session keys or cookies, only names, paths and morefs.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmdk_snap.workflows.journal_file import prepare

__all__ = [
    "Journal",
    "StepRecord",
    "WorkflowRecord",
    "default_journal_path",
]

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]

# Workflow states.
RUNNING = "running"
DONE = "done"
ROLLED_BACK = "rolled_back"
ROLLBACK_FAILED = "rollback_failed"

# Step states.
STARTED = "started"
STEP_DONE = "done"
FAILED = "failed"
UNDOING = "undoing"
UNDONE = "undone"
UNDO_FAILED = "undo_failed"
SKIPPED = "skipped"  # recovery found the step had not happened

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workflows (
    id       TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    volume   TEXT NOT NULL,
    params   TEXT NOT NULL,
    state    TEXT NOT NULL,
    error    TEXT,
    created  REAL NOT NULL,
    updated  REAL NOT NULL,
    pid      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    workflow TEXT NOT NULL REFERENCES workflows(id),
    idx      INTEGER NOT NULL,
    name     TEXT NOT NULL,
    state    TEXT NOT NULL,
    intent   TEXT NOT NULL,
    changes  TEXT,
    error    TEXT,
    task     TEXT,
    started  REAL NOT NULL,
    updated  REAL NOT NULL,
    PRIMARY KEY (workflow, idx)
);
CREATE INDEX IF NOT EXISTS workflows_state ON workflows(state);
"""


def default_journal_path() -> Path:
    """``$XDG_STATE_HOME/vmdk-snap/journal.sqlite``, or under ``~/.local/state``."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "vmdk-snap" / "journal.sqlite"


@dataclass(frozen=True)
class StepRecord:
    """One step of a journaled workflow, as last written."""

    index: int
    name: str
    state: str
    intent: JsonDict
    changes: JsonDict | None
    error: str | None
    task: str | None = None  # moref value of the vSphere task the step last started


@dataclass(frozen=True)
class WorkflowRecord:
    """One journaled workflow and its steps, in order."""

    id: str
    kind: str
    volume: str
    params: JsonDict
    state: str
    error: str | None
    created: float
    updated: float
    pid: int
    steps: tuple[StepRecord, ...]

    def step(self, name: str) -> StepRecord | None:
        return next((s for s in self.steps if s.name == name), None)


class Journal:
    """The SQLite journal. Each write is its own committed transaction.

    Safe to use from several processes (SQLite locking, WAL). One
    connection per call, so it is also safe to share between threads.
    """

    def __init__(self, path: Path | None = None) -> None:
        """Open the journal at ``path``, creating it if it is absent or empty.

        Raises:
            JournalError: ``path`` is not a vmdk-snap journal (another file, a
                damaged one, a directory) or cannot be created; it is left as it was.
        """
        self.path = Path(path) if path is not None else default_journal_path()
        # Once per Journal: a file that is not a journal is refused untouched.
        prepare(self.path, _SCHEMA)

    @property
    def directory(self) -> Path:
        return self.path.parent

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            # A step record must be on disk before the step's vSphere call.
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(sql, args)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- workflows ---------------------------------------------------------

    def begin(self, kind: str, volume: str, params: Mapping[str, Any]) -> str:
        """Record a new running workflow and return its id."""
        wf_id = uuid.uuid4().hex
        now = time.time()
        self._write(
            "INSERT INTO workflows (id, kind, volume, params, state, error, created, updated, pid)"
            " VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)",
            (wf_id, kind, volume, _dump(params), RUNNING, now, now, os.getpid()),
        )
        log.debug("journal: workflow %s (%s of %s) begun", wf_id, kind, volume)
        return wf_id

    def finish(self, wf_id: str, state: str, error: str | None = None) -> None:
        """Record the workflow's final state (done, rolled_back, rollback_failed)."""
        self._write(
            "UPDATE workflows SET state = ?, error = ?, updated = ? WHERE id = ?",
            (state, error, time.time(), wf_id),
        )
        log.debug("journal: workflow %s %s", wf_id, state)

    def set_params(self, wf_id: str, params: Mapping[str, Any]) -> None:
        self._write(
            "UPDATE workflows SET params = ?, updated = ? WHERE id = ?",
            (_dump(params), time.time(), wf_id),
        )

    # -- steps -------------------------------------------------------------

    def step_started(self, wf_id: str, index: int, name: str, intent: Mapping[str, Any]) -> None:
        """Record, before it runs, that a step starts and what it means to change."""
        now = time.time()
        self._write(
            "INSERT OR REPLACE INTO steps"
            " (workflow, idx, name, state, intent, changes, error, task, started, updated)"
            " VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, ?, ?)",
            (wf_id, index, name, STARTED, _dump(intent), now, now),
        )

    def step_state(
        self,
        wf_id: str,
        index: int,
        state: str,
        *,
        changes: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Record a step's new state, and what it changed when known."""
        if changes is None:
            self._write(
                "UPDATE steps SET state = ?, error = ?, updated = ? WHERE workflow = ? AND idx = ?",
                (state, error, time.time(), wf_id, index),
            )
        else:
            self._write(
                "UPDATE steps SET state = ?, changes = ?, error = ?, updated = ?"
                " WHERE workflow = ? AND idx = ?",
                (state, _dump(changes), error, time.time(), wf_id, index),
            )

    def step_task(self, wf_id: str, index: int, task: str) -> None:
        """Record the vSphere task a step started (recovery waits for it)."""
        self._write(
            "UPDATE steps SET task = ?, updated = ? WHERE workflow = ? AND idx = ?",
            (task, time.time(), wf_id, index),
        )

    # -- reading -----------------------------------------------------------

    def get(self, wf_id: str) -> WorkflowRecord | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT id, kind, volume, params, state, error, created, updated, pid"
                " FROM workflows WHERE id = ?",
                (wf_id,),
            ).fetchone()
            if row is None:
                return None
            return self._record(db, row)

    def unfinished(self) -> list[WorkflowRecord]:
        """Workflows a crash or a failed rollback left behind, oldest first."""
        return self._select(None, unfinished=True)

    def workflows(self, volume: str | None = None) -> list[WorkflowRecord]:
        """Every journaled workflow (of one volume), oldest first."""
        return self._select(volume, unfinished=False)

    def _select(self, volume: str | None, *, unfinished: bool) -> list[WorkflowRecord]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, kind, volume, params, state, error, created, updated, pid"
                " FROM workflows WHERE (? IS NULL OR volume = ?)"
                " AND (? = 0 OR state IN (?, ?)) ORDER BY created, rowid",
                (volume, volume, int(unfinished), RUNNING, ROLLBACK_FAILED),
            ).fetchall()
            return [self._record(db, row) for row in rows]

    @staticmethod
    def _record(db: sqlite3.Connection, row: tuple[Any, ...]) -> WorkflowRecord:
        steps = db.execute(
            "SELECT idx, name, state, intent, changes, error, task FROM steps"
            " WHERE workflow = ? ORDER BY idx",
            (row[0],),
        ).fetchall()
        return WorkflowRecord(
            id=row[0],
            kind=row[1],
            volume=row[2],
            params=json.loads(row[3]),
            state=row[4],
            error=row[5],
            created=row[6],
            updated=row[7],
            pid=row[8],
            steps=tuple(
                StepRecord(
                    index=s[0],
                    name=s[1],
                    state=s[2],
                    intent=json.loads(s[3]),
                    changes=json.loads(s[4]) if s[4] is not None else None,
                    error=s[5],
                    task=s[6],
                )
                for s in steps
            ),
        )


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), sort_keys=True)
