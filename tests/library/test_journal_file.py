"""A journal path that is not a vmdk-snap journal is refused, and left byte for byte as it was."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from vmdk_snap.errors import JournalError
from vmdk_snap.workflows import journal as jn
from vmdk_snap.workflows.journal import Journal
from vmdk_snap.workflows.journal_file import APPLICATION_ID, SCHEMA_VERSION


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in ``directory``: its bytes and mtime."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir() if p.is_file()
    }


def _sqlite(path: Path, *sql: str) -> None:
    db = sqlite3.connect(path)
    try:
        for statement in sql:
            db.execute(statement)
        db.commit()
    finally:
        db.close()


def _journal_bytes(tmp_path: Path) -> bytes:
    """A journal with one workflow in it, checkpointed into its file."""
    journal = Journal(tmp_path / "made" / "journal.sqlite")
    journal.begin("snapshot", "vol-1", {"name": "s1"})
    return journal.path.read_bytes()


def _foreign_tables(path: Path) -> None:
    _sqlite(path, "CREATE TABLE photos (id INTEGER PRIMARY KEY, data BLOB)")


def _foreign_steps(path: Path) -> None:
    _sqlite(path, "CREATE TABLE steps (id INTEGER PRIMARY KEY, what TEXT)")


def _foreign_wal(path: Path) -> None:
    _sqlite(path, "PRAGMA journal_mode=WAL", "CREATE TABLE notes (body TEXT)")


def _other_application(path: Path) -> None:
    _sqlite(path, "PRAGMA application_id = 42", "CREATE TABLE t (x)")


def _newer_journal(path: Path) -> None:
    _sqlite(
        path,
        *[s for s in jn._SCHEMA.split(";") if s.strip()],
        f"PRAGMA application_id = {APPLICATION_ID}",
        f"PRAGMA user_version = {SCHEMA_VERSION + 1}",
    )


@pytest.mark.parametrize(
    ("make", "says", "remedy"),
    [
        (
            lambda p, _: p.write_text("volume-1\nvolume-2\n" * 20),
            "is not a vmdk-snap journal (not an SQLite database)",
            "point journal_path at a new file or at a vmdk-snap journal",
        ),
        (
            lambda p, _: _foreign_tables(p),
            "is not a vmdk-snap journal (an SQLite database with other tables: photos)",
            "point journal_path at a new file or at a vmdk-snap journal",
        ),
        (
            lambda p, _: _foreign_steps(p),
            "is not a vmdk-snap journal (an SQLite database whose table steps is not a journal's)",
            "point journal_path at a new file",
        ),
        (
            lambda p, _: _foreign_wal(p),
            "(an SQLite database with other tables: notes)",
            "point journal_path at a new file",
        ),
        (
            lambda p, _: _other_application(p),
            "(an SQLite database of another application, application_id 0x0000002a)",
            "point journal_path at a new file",
        ),
        (
            lambda p, good: p.write_bytes(good[:60]),
            "is damaged (truncated to 60 bytes)",
            "restore it from a backup, or point journal_path at a new file",
        ),
        (
            lambda p, good: p.write_bytes(good[: len(good) // 2]),
            "is damaged (SQLite: database disk image is malformed)",
            "restore it from a backup",
        ),
        (
            lambda p, good: p.write_bytes(good[:100] + b"\xa5" * (len(good) - 100)),
            "is damaged (SQLite: ",
            "restore it from a backup",
        ),
        (
            lambda p, _: _newer_journal(p),
            f"was written by a newer vmdk-snap (journal version {SCHEMA_VERSION + 1}",
            "use that newer vmdk-snap, or point journal_path at a new file",
        ),
    ],
    ids=[
        "text",
        "other-tables",
        "other-steps",
        "other-wal",
        "other-app",
        "truncated-header",
        "truncated",
        "corrupt",
        "newer",
    ],
)
def test_a_file_that_is_not_a_journal_is_refused_untouched(
    tmp_path: Path, make: Callable[[Path, bytes], object], says: str, remedy: str
) -> None:
    good = _journal_bytes(tmp_path)
    here = tmp_path / "here"
    here.mkdir()
    path = here / "journal.sqlite"
    make(path, good)
    before = _snapshot(here)

    with pytest.raises(JournalError) as caught:
        Journal(path)

    assert str(caught.value).startswith(f"journal {path} "), str(caught.value)
    assert says in caught.value.message
    assert remedy in caught.value.hint
    assert caught.value.path == path
    assert _snapshot(here) == before  # same bytes, same mtime, no file added beside it


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JournalError) as caught:
        Journal(tmp_path)
    assert str(caught.value) == (
        f"journal {tmp_path} is a directory; "
        f"point journal_path at a file, e.g. {tmp_path / 'journal.sqlite'}"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_journal_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a directory\n")
    for path in (blocker / "journal.sqlite", blocker / "sub" / "journal.sqlite"):
        with pytest.raises(JournalError) as caught:
            Journal(path)
        assert f"journal {path} cannot be created ({blocker} is not a directory)" in str(
            caught.value
        )
        assert "point journal_path at a file in a directory this user can write" in str(
            caught.value
        )
    assert blocker.read_text() == "not a directory\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_journal_in_a_read_only_directory_cannot_be_created(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(JournalError, match=r"cannot be created .*Permission denied"):
            Journal(locked / "journal.sqlite")
    finally:
        locked.chmod(0o700)


def test_a_new_journal_carries_the_marker(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    Journal(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_an_empty_file_becomes_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    path.touch()
    journal = Journal(path)
    wf = journal.begin("snapshot", "vol-1", {})
    assert Journal(path).get(wf) is not None


def test_a_journal_made_before_the_marker_is_used_as_it_is(tmp_path: Path) -> None:
    """A journal the first release created (no marker) still works, and is not rewritten."""
    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(jn._SCHEMA)  # what that release ran, and nothing else
    db.close()
    before = path.read_bytes()

    journal = Journal(path)
    assert path.read_bytes() == before
    wf = journal.begin("snapshot", "vol-1", {"name": "s1"})
    record = Journal(path).get(wf)
    assert record is not None
    assert record.params == {"name": "s1"}
