"""Per-volume and per-instance locks, shared by every vmdk-snap process of a host.

One workflow at a time per volume: a second ``vmdk-snap`` process (or a
second thread) that wants the same volume gets :class:`~vmdk_snap.errors.Busy`
at once instead of interleaving vSphere calls on the same backing.

One workflow at a time per instance, too: a forced snapshot takes a
temporary snapshot of the instance, so two forced snapshots of different
volumes of one instance (a Cinder consistency-group snapshot, two
``vmdk-snap`` processes) must not interleave. The instance lock *waits*
(bounded) instead of refusing, so such a group is snapshotted one volume
after the other; it is always taken after the volume lock.

Both are ``fcntl.flock`` on a file in the host's lock directory
(``<volume id>.lock``, ``instance-<uuid>.lock``); the kernel drops a lock when
its holder dies, so a crashed process never leaves anything locked (its
journal record is what ``recover`` uses). The holder writes its pid in the
file, so that :class:`~vmdk_snap.errors.Busy` can name it.

Where: the vSphere objects are the host's to share, whatever journal each
process keeps, so the lock directory does not depend on the journal. It is
:func:`default_lock_dir`: ``$VMDK_SNAP_LOCK_DIR`` (the CLI also takes
``--lock-dir`` and ``lock_dir =`` in its config file, the library
``Driver(lock_dir=...)``), else ``/run/lock/vmdk-snap``: the FHS place for
lock files, a tmpfs emptied at boot (as the locks are), ``1777 root`` on
Debian and Ubuntu, and not hidden by a service's ``PrivateTmp=`` as ``/tmp``
would be (where there is no ``/run/lock``: ``/var/lock``, then ``/tmp``; the
choice depends only on what exists, so every user of a host makes the same).

Users: cinder-volume's user and an operator must both lock in it, so the
first process that needs it makes it sticky and writable by all (``1777``,
as ``/tmp``), and makes each lock file writable by all (``0666``: flock only
needs the file open, and whoever holds the lock writes its pid; a file
another user made read-only is still locked, read-only, without the pid).

Safety in a directory others can write: the directory is opened without
following a symbolic link and lock files are opened relative to it, never
following one either and never created over an existing file (so the
kernel's ``protected_regular`` never refuses another user's file); an open
lock file must be a plain file with one link (a planted hard link to another
file is refused, never written). The directory must be sticky if anyone but
root and this user can change it (another owner, or group/world writable):
then nobody but a file's owner and the directory's owner can remove or
replace a lock file. What remains: any local user can make a lock file
unusable, or (its owner) break a lock it made; on a host with untrusted
users, have root make the directory for the users of vmdk-snap only (e.g.
``systemd-tmpfiles``: ``d /run/lock/vmdk-snap 1770 root cinder -``) or point
``VMDK_SNAP_LOCK_DIR`` at such a directory.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from vmdk_snap.errors import Busy, InvalidState

__all__ = [
    "DEFAULT_INSTANCE_WAIT",
    "LOCK_DIR_ENV",
    "InstanceLock",
    "VolumeLock",
    "default_lock_dir",
    "exclusive",
]

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]")

# A forced snapshot takes about a minute on a busy vCenter (four to seven
# tasks); a consistency group of a few volumes waits its turn well within this.
DEFAULT_INSTANCE_WAIT = 900.0

# How often a waiting process tries the lock again (seconds, doubling from
# the first value up to the second): flock cannot wait with a timeout, and a
# blocking flock would need a signal to give up.
_POLL = (0.05, 1.0)

LOCK_DIR_ENV = "VMDK_SNAP_LOCK_DIR"

# The first that exists holds the host's lock directory. Fixed paths, not
# tempfile.gettempdir(): TMPDIR differs between users, the directory must not.
_SYSTEM_BASES = ("/run/lock", "/var/lock", "/tmp")  # noqa: S108 - see the module docstring
_DIR_NAME = "vmdk-snap"
_DIR_MODE = 0o1777  # every user may add lock files; only owners remove them
_FILE_MODE = 0o666  # every user may open one read-write and write its pid

# Never follow a symbolic link; never block on a FIFO someone left there.
_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK


def default_lock_dir(env: Mapping[str, str] | None = None) -> Path:
    """The host's lock directory: ``$VMDK_SNAP_LOCK_DIR``, else ``/run/lock/vmdk-snap``.

    Where there is no ``/run/lock``, ``/var/lock/vmdk-snap``, then
    ``/tmp/vmdk-snap``. ``env`` defaults to the process's environment.
    """
    env = os.environ if env is None else env
    if env.get(LOCK_DIR_ENV):
        return Path(env[LOCK_DIR_ENV])
    base = next((b for b in _SYSTEM_BASES if os.path.isdir(b)), _SYSTEM_BASES[-1])
    return Path(base) / _DIR_NAME


def _unusable(directory: Path, why: str) -> InvalidState:
    return InvalidState(
        f"lock directory {directory} {why}",
        hint=f"fix it, or point {LOCK_DIR_ENV} (--lock-dir, lock_dir = in the config file, "
        "Driver(lock_dir=...)) at another directory; every vmdk-snap of the host must use "
        "the same one",
    )


def _open_dir(directory: Path) -> int:
    """An fd of the lock directory (made if missing), once it can be trusted."""
    try:
        os.makedirs(directory.parent, exist_ok=True)
        try:
            os.mkdir(directory, _DIR_MODE)
            made = True
        except FileExistsError:
            made = False
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | _OPEN)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_DIRECTORY on a link: ENOTDIR
            what = "a symbolic link, which is never followed" if directory.is_symlink() else ""
            raise _unusable(directory, f"is {what or 'not a directory'}") from exc
        if exc.errno == errno.EACCES:
            raise _unusable(
                directory,
                f"cannot be made or opened ({exc.strerror}): have root make it for every user "
                f"of vmdk-snap ('install -d -m 1777 {directory}')",
            ) from exc
        raise _unusable(directory, f"cannot be made or opened ({exc.strerror})") from exc
    try:
        if made:
            os.fchmod(fd, _DIR_MODE)  # mkdir's mode went through the umask
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        others_change = st.st_uid not in (0, os.geteuid()) or bool(
            mode & (stat.S_IWGRP | stat.S_IWOTH)
        )
        if others_change and not mode & stat.S_ISVTX:
            raise _unusable(
                directory,
                f"can be changed by other users (owner uid {st.st_uid}, mode {mode:04o}) but is "
                f"not sticky: they could remove a lock a workflow holds ('chmod +t' fixes it)",
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_file(directory: Path, name: str) -> tuple[int, bool]:
    """The lock file ``name`` opened (made if missing), and whether it is writable."""
    dir_fd = _open_dir(directory)
    try:
        fd, writable = _open_at(dir_fd, name)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unusable(
                directory, f"holds {name} as a symbolic link, which is never followed: remove it"
            ) from exc
        raise _unusable(directory, f"has {name}, which cannot be opened ({exc.strerror})") from exc
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise _unusable(
            directory, f"holds {name}, which is not a plain file with one link: remove it"
        )
    return fd, writable


def _open_at(dir_fd: int, name: str) -> tuple[int, bool]:
    """Open ``name`` in the directory, making it only where nothing is (``O_EXCL``).

    Never ``O_CREAT`` on an existing file: in a sticky directory the kernel's
    ``protected_regular`` refuses that on another user's file.
    """
    for _ in range(3):  # another process may make or remove it meanwhile
        try:
            return os.open(name, os.O_RDWR | _OPEN, dir_fd=dir_fd), True
        except PermissionError:
            # Another user's file that only it may write: flock works on a
            # read-only fd too; only the pid is not written.
            return os.open(name, os.O_RDONLY | _OPEN, dir_fd=dir_fd), False
        except FileNotFoundError:
            pass
        try:
            fd = os.open(
                name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN, _FILE_MODE, dir_fd=dir_fd
            )
        except FileExistsError:
            continue
        os.fchmod(fd, _FILE_MODE)  # the umask took some
        return fd, True
    raise FileExistsError(errno.EEXIST, "made and removed again and again")


class _FileLock:
    """An exclusive ``flock`` on one file; the holder's pid is written in it."""

    what = "lock"

    def __init__(self, directory: Path, filename: str) -> None:
        self.directory = Path(directory)
        self.name = _SAFE.sub("_", filename) + ".lock"
        self.path = self.directory / self.name
        self._fd: int | None = None
        self._writable = False

    def _try(self) -> tuple[int | None, str]:
        """The locked fd, or None and the pid holding the lock."""
        fd, writable = _open_file(self.directory, self.name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            return None, text if text.isdigit() else "unknown"
        except BaseException:
            os.close(fd)
            raise
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._writable = writable
        return fd, ""

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._writable:
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
