"""Recognising a journal file before anything is written to it.

A journal gets ``PRAGMA application_id`` = :data:`APPLICATION_ID` and
``PRAGMA user_version`` = :data:`SCHEMA_VERSION` in the transaction that
creates its tables. Journals created before that marker existed
(application_id 0) are recognised by their tables, which must be exactly ours;
they are used as they are, never rewritten. Anything else (not SQLite,
damaged, another application's database, a directory) raises
:class:`~vmdk_snap.errors.JournalError` and is left byte for byte as it was:
until a file is known to be absent, empty or a journal, it is only read,
through a read-only connection.
"""

from __future__ import annotations

import enum
import functools
import sqlite3
import stat
from pathlib import Path

from vmdk_snap.errors import JournalError
from vmdk_snap.workflows.locks import exclusive

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "Found", "inspect", "prepare"]

APPLICATION_ID = int.from_bytes(b"vsnj", "big")  # "vmdk-snap journal"
SCHEMA_VERSION = 1

_MAGIC = b"SQLite format 3\x00"
_HEADER = 100  # bytes of an SQLite database header

_FOREIGN = "point {setting} at a new file or at a vmdk-snap journal"
_DAMAGED = (
    "restore it from a backup, or point {setting} at a new file "
    "(the unfinished workflows recorded in it are then not recovered)"
)
_UNREADABLE = "let this user read and write it, or point {setting} at another file"
_UNCREATABLE = "point {setting} at a file in a directory this user can write"


# (type, name, table, SQL with its whitespace collapsed) of a schema object.
_Object = tuple[str, str, str, str | None]


class Found(enum.Enum):
    NEW = "new"  # absent or empty: the schema is to be created
    JOURNAL = "journal"  # a vmdk-snap journal, to be used as it is


def prepare(path: Path, schema: str) -> None:
    """Make sure ``path`` is a vmdk-snap journal, creating it (and its directory) if absent.

    Cheap for an existing journal: one header read and one read-only
    connection, no lock and no write.

    Raises:
        JournalError: the file is something else, is damaged, or cannot be created.
    """
    init_lock = path.with_name(path.name + ".init-lock")
    try:
        if inspect(path, schema) is Found.JOURNAL:
            return
    except JournalError:
        # A vmdk-snap process may be creating it right now (its first pages
        # written, not yet its tables; it took the lock first): judged again
        # below, once that process is done. With no lock file beside it, no
        # vmdk-snap process ever created it: the answer stands.
        if not init_lock.exists():
            raise
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Switching a new database to WAL does not wait for a busy one: two
        # processes creating the journal at once could get "database is
        # locked". One at a time, under a lock file; WAL then stays set in
        # the file for every later connection.
        with exclusive(init_lock):
            if inspect(path, schema) is Found.JOURNAL:  # another process made it meanwhile
                return
            db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                # The marker and the tables in one transaction: a journal is
                # either complete and marked, or still empty.
                db.executescript(
                    f"BEGIN IMMEDIATE;\n{schema}\n"
                    f"PRAGMA application_id = {APPLICATION_ID};\n"
                    f"PRAGMA user_version = {SCHEMA_VERSION};\n"
                    "COMMIT;"
                )
            finally:
                db.close()
    except OSError as exc:
        reason = _os_reason(path, exc)
        raise JournalError(path, f"cannot be created ({reason})", _UNCREATABLE) from exc
    except sqlite3.Error as exc:
        raise JournalError(path, f"cannot be created (SQLite: {exc})", _UNCREATABLE) from exc


def inspect(path: Path, schema: str) -> Found:
    """What ``path`` holds, found without writing to it.

    Raises:
        JournalError: it is neither absent, nor empty, nor a vmdk-snap journal.
    """
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            remedy = f"point {{setting}} at a file, e.g. {path / 'journal.sqlite'}"
            raise JournalError(path, "is a directory", remedy)
        if not stat.S_ISREG(mode):
            raise JournalError(path, "is not a regular file", _FOREIGN)
        with path.open("rb") as f:
            head = f.read(_HEADER)
    except (FileNotFoundError, NotADirectoryError):
        return Found.NEW  # creating it says what is in the way, if anything
    except OSError as exc:
        raise JournalError(path, f"cannot be read ({exc.strerror})", _UNREADABLE) from exc
    if not head:
        return Found.NEW
    if not head.startswith(_MAGIC[: len(head)]):
        raise JournalError(path, "is not a vmdk-snap journal (not an SQLite database)", _FOREIGN)
    if len(head) < _HEADER:
        raise JournalError(path, f"is damaged (truncated to {len(head)} bytes)", _DAMAGED)
    return _classify(path, schema)


def _classify(path: Path, schema: str) -> Found:
    """Read an SQLite file's marker and schema (read-only) and judge it."""
    # Read-only: reading must not even roll back another program's hot journal.
    # Without a -wal file beside it nobody has the database open, and reading it
    # as immutable leaves no -wal and -shm files beside a file that is refused.
    idle = not path.with_name(path.name + "-wal").exists()
    uri = path.absolute().as_uri() + ("?immutable=1" if idle else "?mode=ro")
    try:
        db = sqlite3.connect(uri, uri=True, timeout=30.0)
        try:
            app_id: int = db.execute("PRAGMA application_id").fetchone()[0]
            version: int = db.execute("PRAGMA user_version").fetchone()[0]
            objects = _objects(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        # SQLite also checks here that the file holds every page its header counts.
        if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise JournalError(path, f"is damaged (SQLite: {exc})", _DAMAGED) from exc
        raise JournalError(path, f"cannot be read (SQLite: {exc})", _UNREADABLE) from exc

    ours = _expected(schema)
    if app_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise JournalError(
                path,
                f"was written by a newer vmdk-snap (journal version {version}, "
                f"this one reads {SCHEMA_VERSION})",
                "use that newer vmdk-snap, or point {setting} at a new file",
            )
        if objects != ours:
            raise JournalError(path, "is damaged (its tables are not a journal's)", _DAMAGED)
        return Found.JOURNAL
    if app_id != 0:
        raise JournalError(
            path,
            "is not a vmdk-snap journal "
            f"(an SQLite database of another application, application_id {app_id:#010x})",
            _FOREIGN,
        )
    if objects == ours:
        return Found.JOURNAL  # created before the marker existed
    if not objects and version == 0:
        return Found.NEW
    raise _foreign(path, objects, ours)


def _foreign(path: Path, objects: frozenset[_Object], ours: frozenset[_Object]) -> JournalError:
    """The error for an SQLite database that is not a journal, saying what it holds."""
    our_names = {o[1] for o in ours}
    names = sorted({o[1] for o in objects if not o[1].startswith("sqlite_")})
    others = [n for n in names if n not in our_names]
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        what = f"an SQLite database with other tables: {shown}"
    elif differ := sorted({o[2] for o in objects ^ ours} & set(names)) or names:
        tables = f"table {differ[0]} is" if len(differ) == 1 else f"tables {', '.join(differ)} are"
        what = f"an SQLite database whose {tables} not a journal's"
    else:
        what = "an empty SQLite database with user_version set"
    return JournalError(path, f"is not a vmdk-snap journal ({what})", _FOREIGN)


def _objects(db: sqlite3.Connection) -> frozenset[_Object]:
    rows = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return frozenset((t, n, tbl, " ".join(sql.split()) if sql else None) for t, n, tbl, sql in rows)


@functools.cache
def _expected(schema: str) -> frozenset[_Object]:
    """The schema objects a journal has: ``schema`` as SQLite stores it."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(schema)
        return _objects(db)
    finally:
        db.close()


def _os_reason(path: Path, exc: OSError) -> str:
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        # The first existing ancestor that is not a directory is what is in the way.
        for parent in reversed(path.parents):
            if parent.exists() and not parent.is_dir():
                return f"{parent} is not a directory"
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"
