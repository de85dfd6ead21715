"""``vmdk-snap batch``: one operation over many volumes, concurrently.

Each worker thread has its own Session and Driver (logged in on first use,
logged out at the end). Volumes attached to the same instance run one after
the other in one worker, since each forced snapshot takes a temporary snapshot
of that instance; the per-volume locks keep other processes off a volume. A
failure is recorded for its volume and the others go on; the summary says what
happened to each.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from vmdk_snap.cli import views
from vmdk_snap.cli.base import (
    EXIT_OK,
    EXIT_PARTIAL,
    Context,
    UsageError,
    classify,
    one_line,
    parse_volume,
)
from vmdk_snap.cli.commands import _Subparsers, add_command
from vmdk_snap.cli.output import render_table
from vmdk_snap.driver import Driver, validate_snapshot_name
from vmdk_snap.vsphere.volumeops.inventory import read_inventory
from vmdk_snap.workflows.coordination import Locks, make_locks
from vmdk_snap.workflows.locks import default_lock_dir

__all__ = ["register"]

log = logging.getLogger(__name__)

OPERATIONS = ("snapshot", "delete", "consolidate", "check")


def register(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "batch",
        "Run one operation on many volumes; a failure never stops the others.",
        """
        vmdk-snap batch snapshot --name nightly-2026-11-21 --force --all-attached --concurrency 4
        vmdk-snap batch snapshot --name before-upgrade --file volumes.txt
        vmdk-snap batch snapshot --name db-0300 --force --consistent --all-attached
        vmdk-snap batch delete --name nightly-2026-11-14 --file volumes.txt --json
        grep -v '^#' volumes.txt | vmdk-snap batch check --file -
        """,
    )
    p.add_argument("operation", choices=OPERATIONS, metavar="{" + ",".join(OPERATIONS) + "}")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="volume ids, one per line ('#' comments; '-': stdin)")
    source.add_argument("--all-attached", action="store_true", help="every in-use volume")
    p.add_argument("--name", help="snapshot name (snapshot, delete)")
    p.add_argument("--force", action="store_true", help="snapshot attached volumes too")
    p.add_argument("--quiesce", action="store_true", help="quiesce guests (snapshot)")
    p.add_argument(
        "--consistent",
        action="store_true",
        help="snapshot: the listed volumes of each instance at one moment (one group "
        "snapshot per instance: all of them or none)",
    )
    p.add_argument("--concurrency", type=int, default=2, help="volumes at once (default 2)")
    p.set_defaults(run=run_batch)


@dataclass(frozen=True)
class Outcome:
    volume: str
    exit_code: int
    kind: str
    message: str

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK


def _read_volumes(path: str) -> list[str]:
    try:
        if path != "-":
            data = Path(path).read_bytes()
        elif hasattr(sys.stdin, "buffer"):
            data = sys.stdin.buffer.read()
        else:  # a text stream put in place of stdin
            data = sys.stdin.read().encode("utf-8", "surrogateescape")
    except OSError as exc:
        raise UsageError(
            f"cannot read volume list {path}: {exc.strerror}: give a readable file"
        ) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        name = "on stdin" if path == "-" else path
        raise UsageError(
            f"volume list {name} is not UTF-8 text: byte {data[exc.start]:#04x} at offset "
            f"{exc.start} (line {line}): save it as UTF-8 (volume ids are plain ASCII)"
        ) from exc
    entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return list(dict.fromkeys(e for e in entries if e))  # in order, once each


class _Workers:
    """One logged-in Driver per worker thread, all logged out on close."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._local = threading.local()
        self._stack = ExitStack()
        self._lock = threading.Lock()
        self._shared_locks: Locks | None = None

    def driver(self) -> Driver:
        driver: Driver | None = getattr(self._local, "driver", None)
        if driver is None:
            session = self._ctx.session()
            session.__enter__()
            with self._lock:
                self._stack.push(session.__exit__)
            driver = Driver(session, journal=self._ctx.journal(), locks=self._locks())
            self._local.driver = driver
        return driver

    def _locks(self) -> Locks:
        """One set of locks for every worker: the lock directory or coordination URL given."""
        with self._lock:
            if self._shared_locks is None:
                s = self._ctx.settings
                lock_dir = Path(s.lock_dir) if s.lock_dir else default_lock_dir()
                self._shared_locks = make_locks(lock_dir, s.coordination_url)
                self._stack.callback(self._shared_locks.close)
            return self._shared_locks

    def close(self) -> None:
        self._stack.close()


def _one(ctx: Context, workers: _Workers, text: str, instance_uuid: str | None) -> Outcome:
    a = ctx.args
    try:
        volume = replace(parse_volume(text), instance_uuid=instance_uuid)
        driver = workers.driver()
        if a.operation == "snapshot":
            result = driver.take_snapshot(volume, a.name, force=a.force, quiesce=a.quiesce)
            message = views.snapshot_outcome(result)
        elif a.operation == "delete":
            gone = not driver.delete_snapshot(volume, a.name)
            message = "already gone" if gone else f"deleted {a.name}"
        elif a.operation == "consolidate":
            message = "consolidated" if driver.consolidate(volume) else "nothing to consolidate"
        else:
            message = views.advice(driver.describe(volume)) or "ok"
    except Exception as exc:  # one volume's failure never stops the others
        code, kind = classify(exc)
        log.info("batch: volume %s failed", text, exc_info=True)
        return Outcome(text, code, kind, one_line(exc))
    log.info("batch: volume %s: %s", text, message)
    return Outcome(text, EXIT_OK, "ok", message)


def _group(
    ctx: Context, workers: _Workers, texts: list[str], instance_uuid: str | None
) -> list[Outcome]:
    """The listed volumes of one instance at one moment: one outcome per member."""
    a = ctx.args
    try:
        volumes = [replace(parse_volume(t), instance_uuid=instance_uuid) for t in texts]
        result = workers.driver().create_group_snapshot(
            volumes, a.name, force=a.force, quiesce=a.quiesce
        )
    except Exception as exc:  # the group failed: every member with it
        code, kind = classify(exc)
        log.info("batch: group %s failed", texts, exc_info=True)
        return [Outcome(t, code, kind, one_line(exc)) for t in texts]
    together = [m.volume_id for m in result.members]
    return [
        Outcome(t, EXIT_OK, "ok", views.member_outcome(m, together))
        for t, m in zip(texts, result.members, strict=True)
    ]


def run_batch(ctx: Context) -> int:
    a = ctx.args
    if a.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if a.consistent and a.operation != "snapshot":
        raise UsageError("--consistent applies to batch snapshot only")
    if a.operation in ("snapshot", "delete"):
        if not a.name:
            raise UsageError(f"batch {a.operation} needs --name NAME")
        validate_snapshot_name(a.name)
    _ = ctx.settings  # resolve (and prompt for) the password once, before the workers
    # Bad input is refused before connecting: the volume list, the journal.
    listed = None if a.all_attached else _read_volumes(a.file)
    ctx.journal()
    workers = _Workers(ctx)
    try:
        inventory = read_inventory(workers.driver().ops.session)
        volumes = list(inventory.attached) if listed is None else listed
        # Volumes of one instance run one after the other (each forced
        # snapshot takes a temporary snapshot of the instance); instances and
        # detached volumes run side by side.
        # The instance each volume was found on goes with it: one search of
        # the inventory here, not one per volume.
        groups: dict[str, list[str]] = {}
        uuids: dict[str, str | None] = {}
        for v in volumes:
            vid = v.removeprefix("volume-")
            key = inventory.instance_of.get(vid, "volume:" + vid)
            groups.setdefault(key, []).append(v)
            uuids[v] = inventory.instance_uuid_of.get(vid)

        def run(key: str, group: list[str]) -> list[Outcome]:
            if a.consistent and not key.startswith("volume:"):
                return _group(ctx, workers, group, uuids[group[0]])
            return [_one(ctx, workers, v, uuids[v]) for v in group]

        with ThreadPoolExecutor(max_workers=a.concurrency, thread_name_prefix="batch") as pool:
            done = pool.map(lambda item: run(*item), groups.items())
            by_volume = {o.volume: o for group in done for o in group}
    finally:
        workers.close()
    return _report(ctx, [by_volume[v] for v in volumes])


def _report(ctx: Context, outcomes: list[Outcome]) -> int:
    failed = [o for o in outcomes if not o.ok]
    rows = [[o.volume, "ok" if o.ok else f"FAILED ({o.exit_code})", o.message] for o in outcomes]
    summary = f"{len(outcomes)} volumes: {len(outcomes) - len(failed)} ok, {len(failed)} failed"
    ctx.out.text(
        (render_table(["volume", "result", "detail"], rows) + "\n" if rows else "") + summary
    )
    ctx.out.document(
        "batch",
        {
            "operation": ctx.args.operation,
            "results": [
                {
                    "volume": o.volume,
                    "ok": o.ok,
                    "exit_code": o.exit_code,
                    "kind": o.kind,
                    "message": o.message,
                }
                for o in outcomes
            ],
            "summary": {
                "total": len(outcomes),
                "ok": len(outcomes) - len(failed),
                "failed": len(failed),
            },
        },
    )
    if not failed:
        return EXIT_OK
    codes = {o.exit_code for o in failed}
    # Every volume failed the same way: that error's code; otherwise "partial".
    if len(failed) == len(outcomes) and len(codes) == 1:
        return codes.pop()
    return EXIT_PARTIAL
