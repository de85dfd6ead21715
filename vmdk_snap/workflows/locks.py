"""Per-volume and per-instance locks held across processes.

One workflow at a time per volume: a second ``vmdk-snap`` process (or a
second thread) that wants the same volume gets :class:`~vmdk_snap.errors.Busy`
at once instead of interleaving vSphere calls on the same backing.

One workflow at a time per instance, too: a forced snapshot takes a
temporary snapshot of the instance, so two forced snapshots of different
volumes of one instance (a Cinder consistency-group snapshot, two
``vmdk-snap`` processes) must not interleave. The instance lock *waits*
(bounded) instead of refusing, so such a group is snapshotted one volume
after the other; it is always taken after the volume lock.

Both are ``fcntl.flock`` on a file in ``<journal dir>/locks/``
(``<volume id>.lock``, ``instance-<uuid>.lock``); the kernel drops a lock when
its holder dies, so a crashed process never leaves anything locked (its
journal record is what ``recover`` uses).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from vmdk_snap.errors import Busy

__all__ = ["DEFAULT_INSTANCE_WAIT", "InstanceLock", "VolumeLock", "exclusive"]

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]")

# A forced snapshot takes about a minute on a busy vCenter (four to seven
# tasks); a consistency group of a few volumes waits its turn well within this.
DEFAULT_INSTANCE_WAIT = 900.0

# How often a waiting process tries the lock again (seconds, doubling from
# the first value up to the second): flock cannot wait with a timeout, and a
# blocking flock would need a signal to give up.
_POLL = (0.05, 1.0)


class _FileLock:
    """An exclusive ``flock`` on one file; the holder's pid is written in it."""

    what = "lock"

    def __init__(self, directory: Path, filename: str) -> None:
        directory = Path(directory) / "locks"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / (_SAFE.sub("_", filename) + ".lock")
        self._fd: int | None = None

    def _try(self) -> tuple[int | None, str]:
        """The locked fd, or None and the pid holding the lock."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            return None, holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd, ""

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        log.debug("released %s (%s)", self.what, self.path)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class VolumeLock(_FileLock):
    """An exclusive, non-blocking lock on one volume; a context manager."""

    def __init__(self, directory: Path, volume_id: str) -> None:
        super().__init__(directory, volume_id)
        self.volume_id = volume_id
        self.what = f"volume {volume_id}"

    def acquire(self) -> None:
        """Take the lock or raise Busy naming the process that holds it."""
        fd, holder = self._try()
        if fd is None:
            raise Busy(
                f"volume {self.volume_id} is busy: another vmdk-snap workflow (pid {holder}) "
                "is working on it",
                hint="wait for it to finish, then try again",
            )
        self._fd = fd
        log.debug("locked volume %s (%s)", self.volume_id, self.path)

    def __enter__(self) -> VolumeLock:
        self.acquire()
        return self


class InstanceLock(_FileLock):
    """An exclusive lock on one instance that waits up to ``timeout`` seconds.

    ``waited`` tells, once acquired, whether another workflow held it first
    (what the holder read about the instance before may be out of date).
    """

    def __init__(
        self, directory: Path, instance_uuid: str, timeout: float = DEFAULT_INSTANCE_WAIT
    ) -> None:
        super().__init__(directory, f"instance-{instance_uuid}")
        self.instance_uuid = instance_uuid
        self.timeout = timeout
        self.waited = False
        self.what = f"instance {instance_uuid}"

    def acquire(self) -> bool:
        """Take the lock, waiting for the holder; True if it had to wait.

        Raises:
            Busy: still held by another workflow after ``timeout`` seconds.
        """
        deadline = time.monotonic() + self.timeout
        delay = _POLL[0]
        self.waited = False
        while True:
            fd, holder = self._try()
            if fd is not None:
                break
            if not self.waited:
                self.waited = True
                log.info(
                    "instance %s is locked by another workflow (pid %s): waiting up to %.0f s",
                    self.instance_uuid,
                    holder,
                    self.timeout,
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise Busy(
                    f"instance {self.instance_uuid} is busy: another vmdk-snap workflow "
                    f"(pid {holder}) has been working on it for more than {self.timeout:g} s",
                    hint="wait for it to finish, then try again (one workflow at a time "
                    "changes an instance)",
                )
            time.sleep(min(delay, left))
            delay = min(delay * 2, _POLL[1])
        self._fd = fd
        log.debug("locked instance %s (%s)", self.instance_uuid, self.path)
        return self.waited

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed), waiting for it.

    For short critical sections such as creating the journal; workflows use
    :class:`VolumeLock` and :class:`InstanceLock`.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
