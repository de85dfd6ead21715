"""Per-volume locks held across processes.

One workflow at a time per volume: a second ``vmdk-snap`` process (or a
second thread) that wants the same volume gets :class:`~vmdk_snap.errors.Busy`
at once instead of interleaving vSphere calls on the same backing. The lock
is ``fcntl.flock`` on ``<journal dir>/locks/<volume id>.lock``; the kernel
drops it when the holder dies, so a crashed process never leaves a volume
locked (its journal record is what ``recover`` uses).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from pathlib import Path
from types import TracebackType

from vmdk_snap.errors import Busy

__all__ = ["VolumeLock"]

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class VolumeLock:
    """An exclusive, non-blocking lock on one volume; a context manager."""

    def __init__(self, directory: Path, volume_id: str) -> None:
        self.volume_id = volume_id
        directory = Path(directory) / "locks"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / (_SAFE.sub("_", volume_id) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise Busy naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise Busy(
                f"volume {self.volume_id} is busy: another vmdk-snap workflow (pid {holder}) "
                "is working on it",
                hint="wait for it to finish, then try again",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        log.debug("locked volume %s (%s)", self.volume_id, self.path)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        log.debug("unlocked volume %s", self.volume_id)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> VolumeLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
