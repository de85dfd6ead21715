"""What every ``vmdk-snap`` subcommand shares: exit codes, errors, the connection.

Exit codes (stable, documented in the README):

== ====================================================================
0  success
1  unexpected error (a bug: run again with -v and report the traceback)
2  bad usage or input: arguments, snapshot name, configuration
3  not found: the volume, its backing, instance or snapshot does not exist
4  wrong state: e.g. the volume is in-use and --force was not given
5  busy: another workflow holds the volume, or vCenter says a task is running
6  cannot connect: connection refused, certificate, login
7  vCenter refused the operation or its task failed (the workflow was rolled back)
8  partial: batch or check --all, some volumes failed (the others were done)
9  a workflow could neither finish nor roll back: run ``vmdk-snap recover``
130 interrupted (Ctrl-C)
== ====================================================================
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vmdk_snap import errors
from vmdk_snap.cli.config import ConfigError, Overrides, Settings, load_settings
from vmdk_snap.cli.output import Output
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.vsphere.session import Session
from vmdk_snap.workflows.engine import Incomplete, RollbackFailed
from vmdk_snap.workflows.journal import Journal

__all__ = [
    "EXIT_BUSY",
    "EXIT_CONNECTION",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_RECOVER",
    "EXIT_STATE",
    "EXIT_TASK",
    "EXIT_UNEXPECTED",
    "EXIT_USAGE",
    "Context",
    "UsageError",
    "classify",
    "parse_volume",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_STATE = 4
EXIT_BUSY = 5
EXIT_CONNECTION = 6
EXIT_TASK = 7
EXIT_PARTIAL = 8
EXIT_RECOVER = 9
EXIT_INTERRUPTED = 130

# A leading '-' is allowed: such an id is given after "--" (or, all digits, as is).
_VOLUME_RE = re.compile(r"^(?:volume-)?[0-9A-Za-z-]{1,64}$")


class UsageError(Exception):
    """Bad arguments or input, found before anything is asked of vCenter."""


def parse_volume(text: str) -> Volume:
    """A volume named as Cinder names it: its id or ``volume-<id>``."""
    if not _VOLUME_RE.match(text):
        raise UsageError(f"{text!a} is not a Cinder volume: give its id or volume-<id>")
    return Volume(text)


# -- errors -> exit codes ---------------------------------------------------


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit code and the kind (``not_found``, ...) for an exception."""
    if isinstance(exc, (UsageError, ConfigError, errors.JournalError)):
        return EXIT_USAGE, "usage"
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    # Order matters: FileLocked is both TaskFailed and Busy, and is "busy".
    table: list[tuple[type[BaseException], int, str]] = [
        (RollbackFailed, EXIT_RECOVER, "needs_recovery"),
        (Incomplete, EXIT_RECOVER, "needs_recovery"),
        (errors.NotFound, EXIT_NOT_FOUND, "not_found"),
        (errors.InvalidState, EXIT_STATE, "wrong_state"),
        (errors.Busy, EXIT_BUSY, "busy"),
        (errors.InvalidInput, EXIT_USAGE, "usage"),
        (errors.ConnectionFailed, EXIT_CONNECTION, "connection"),
        (errors.AuthenticationFailed, EXIT_CONNECTION, "authentication"),
        (errors.TransientError, EXIT_CONNECTION, "connection"),
        (errors.TaskFailed, EXIT_TASK, "task_failed"),
        (errors.VsphereFault, EXIT_TASK, "task_failed"),
    ]
    for kind, code, name in table:
        if isinstance(exc, kind):
            return code, name
    return EXIT_UNEXPECTED, "unexpected"


def one_line(exc: BaseException) -> str:
    """The exception's message on one line, with its hint if it has one."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    hint = getattr(exc, "hint", None)
    if hint and str(hint) not in text:
        text = f"{text}: {' '.join(str(hint).split())}"
    return text


# -- the context a command runs in ------------------------------------------


@dataclass
class Context:
    """The parsed arguments, where output goes, and how to reach vCenter."""

    args: argparse.Namespace
    out: Output
    env: Mapping[str, str]
    interactive: bool = False
    _settings: Settings | None = field(default=None, repr=False)
    _journal: Journal | None = field(default=None, repr=False)
    _warned: bool = False

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            a = self.args
            flags = Overrides(
                url=a.url,
                username=a.username,
                ca_file=a.ca_file,
                thumbprint=a.thumbprint,
                insecure=a.insecure,
                journal=a.journal,
                lock_dir=a.lock_dir,
                coordination_url=a.coordination_url,
                config=a.config,
            )
            self._settings = load_settings(flags, self.env, interactive=self.interactive)
        return self._settings

    def session(self) -> Session:
        """A new, not yet entered, Session for these settings."""
        s = self.settings
        log.info("connecting to %s as %s", s.url, s.username)
        if s.insecure and not self._warned:
            self._warned = True
            self.out.note(
                f"vmdk-snap: warning: not verifying the certificate of {s.url} (insecure): "
                "pass --ca-file or --thumbprint instead"
            )
        return Session(
            s.url,
            s.username,
            s.password,
            ca_file=s.ca_file,
            thumbprint=s.thumbprint,
            insecure=s.insecure,
            # Commands that only read (list, check, --dry-run) never wait for a
            # task: they skip the task watcher's 4 calls at login.
            prepare_tasks=not self.reads_only,
        )

    @property
    def reads_only(self) -> bool:
        """Whether this command only reads from vCenter."""
        return bool(getattr(self.args, "reads_only", False) or getattr(self.args, "dry_run", False))

    def journal(self) -> Journal:
        """The journal, opened (checked, or created) once, before connecting.

        Raises:
            JournalError: its remedy names the setting the path came from.
        """
        if self._journal is None:
            s = self.settings
            try:
                self._journal = Journal(Path(s.journal) if s.journal else None)
            except errors.JournalError as exc:
                raise exc.naming(s.journal_setting) from exc
        return self._journal

    @contextmanager
    def driver(self) -> Iterator[Driver]:
        """A logged-in Driver; logs out on exit."""
        journal, lock_dir = self.journal(), self.settings.lock_dir
        with self.session() as session:
            driver = Driver(
                session,
                journal=journal,
                lock_dir=Path(lock_dir) if lock_dir else None,
                coordination_url=self.settings.coordination_url,
            )
            try:
                yield driver
            finally:
                driver.locks.close()
