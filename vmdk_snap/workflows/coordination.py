"""Where the per-volume and per-instance locks live: this host, or a coordination service.

Workflows lock through :class:`Locks`: ``volume(id)`` fails at once with
:class:`~vmdk_snap.errors.Busy` naming the holder, ``instance(uuid, timeout)``
waits up to its bound; both release on every exit path (context managers).
Two implementations, with the same semantics:

- :class:`LocalLocks` (the default, nothing to set up): ``flock`` files in the
  host's lock directory (:mod:`vmdk_snap.workflows.locks`). They hold between
  the processes of one host only.
- :class:`ToozLocks`: locks in a coordination service through tooz, the
  library Cinder, Nova and others use (etcd, ZooKeeper, Redis behind it), so
  that they hold across hosts: an operator's ``vmdk-snap`` on an admin host
  and cinder-volume on another, two cinder-volume services with volumes on
  one instance, a ``batch`` split over machines. The URL is Cinder's
  ``[coordination] backend_url``, e.g. ``etcd3+http://127.0.0.1:2379``.

A holder that dies (even ``kill -9``) releases within the backend's lease
time: with etcd, the lock is a key on a lease the holder's heartbeat keeps
alive (a beat every third of it); tooz's default is 30 s (``?timeout=N`` in
the URL sets N seconds).
Each holder also publishes which locks it holds as its capabilities in the
tooz group ``vmdk-snap`` (on the same kind of lease), so that ``Busy`` can
name it: host, pid and what it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from vmdk_snap.errors import Busy, ConnectionFailed, InvalidInput
from vmdk_snap.workflows.locks import DEFAULT_INSTANCE_WAIT, InstanceLock, VolumeLock

__all__ = [
    "COORDINATION_URL_ENV",
    "GROUP",
    "HeldLock",
    "LocalLocks",
    "Locks",
    "ToozLocks",
    "WaitingLock",
    "make_locks",
]

log = logging.getLogger(__name__)

COORDINATION_URL_ENV = "VMDK_SNAP_COORDINATION_URL"
GROUP = b"vmdk-snap"
_POLL = (0.05, 1.0)  # first and longest pause between tries of an instance lock


class HeldLock(Protocol):
    """A lock taken by ``acquire`` (or ``with``), given back by ``release``."""

    @property
    def held(self) -> bool: ...
    def acquire(self) -> Any: ...
    def release(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class WaitingLock(HeldLock, Protocol):
    """An instance lock: ``acquire`` waits, ``waited`` tells whether it had to."""

    waited: bool


class Locks(Protocol):
    """Makes the locks of volumes and instances."""

    description: str

    def volume(self, volume_id: str) -> HeldLock: ...
    def instance(
        self, instance_uuid: str, timeout: float = DEFAULT_INSTANCE_WAIT
    ) -> WaitingLock: ...
    def close(self) -> None: ...


class LocalLocks:
    """``flock`` files in one host's lock directory (the default)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.description = f"this host's lock directory {self.directory}"

    def volume(self, volume_id: str) -> VolumeLock:
        return VolumeLock(self.directory, volume_id)

    def instance(self, instance_uuid: str, timeout: float = DEFAULT_INSTANCE_WAIT) -> InstanceLock:
        return InstanceLock(self.directory, instance_uuid, timeout)

    def close(self) -> None:
        """Nothing to close: each lock is its own file."""


def _tooz() -> Any:
    try:
        with warnings.catch_warnings():
            # tooz imports futurist, which imports eventlet: its deprecation
            # warning is not the operator's business.
            warnings.simplefilter("ignore")
            from tooz import coordination  # noqa: PLC0415 - optional: only with a coordination URL
    except ImportError as exc:
        raise InvalidInput(
            "a coordination URL needs tooz and the backend's client library, "
            "which are not installed",
            hint="pip install 'vmdk-snap[coordination]' (tooz and etcd3gw), "
            "or drop the coordination URL",
        ) from exc
    return coordination


class ToozLocks:
    """Locks in a coordination service through tooz; they hold across hosts.

    The coordinator is started on first use (so building a Driver contacts
    nothing), with a heartbeat thread of ours keeping its leases alive, and
    stopped by :meth:`close`.
    """

    def __init__(
        self,
        url: str = "",
        member_id: str | None = None,
        *,
        coordinator: Any = None,
        description: str | None = None,
    ) -> None:
        self.url = url
        self.description = description or f"the coordination service {_redact(url)}"
        self.host = socket.gethostname()
        self.member_id = member_id or f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # A coordinator given (Cinder's own, started and kept alive by its
        # service) is used as it is: never started, beaten or stopped here.
        self._coordinator: Any = coordinator
        self._owned = coordinator is None
        self._joined = False
        self._mutex = threading.Lock()
        self._holds: dict[str, str] = {}  # lock name -> what holds it here
        self._stopping = threading.Event()
        self._heart: threading.Thread | None = None

    # -- the coordinator --------------------------------------------------------------

    def _coord(self) -> Any:
        with self._mutex:
            if self._coordinator is not None:
                if not self._joined:
                    self._joined = True
                    self._join()
                return self._coordinator
            coordination = _tooz()
            try:
                coordinator = coordination.get_coordinator(self.url, self.member_id.encode())
                coordinator.start(start_heart=False)
            except Exception as exc:  # tooz's errors, and its backends' own (etcd3gw's)
                raise ConnectionFailed(
                    f"cannot reach {self.description}: {exc}",
                    hint="check the coordination URL (--coordination-url, "
                    f"{COORDINATION_URL_ENV}, [coordination] backend_url) "
                    "and that the service runs",
                ) from exc
            self._coordinator = coordinator
            self._joined = True
            self._join()
            self._stopping.clear()
            self._heart = threading.Thread(
                target=self._beat, args=(coordinator,), name="vmdk-snap-heartbeat", daemon=True
            )
            self._heart.start()
            return coordinator

    def _beat(self, coordinator: Any) -> None:
        """Keep the leases alive: a beat every third of the lease time.

        tooz's own heart beats once per lease time, which lets a lease lapse
        between two beats; a lock must not expire while its holder lives.
        """
        coordination = _tooz()
        while not self._stopping.is_set():
            try:
                lease = coordinator.heartbeat()
            except (coordination.ToozError, OSError) as exc:
                log.warning("heartbeat to %s failed: %s", self.description, exc)
                lease = None
            self._stopping.wait(max(0.2, float(lease or 30) / 3))

    def _join(self) -> None:
        """Join the group where holders say what they hold (best effort)."""
        coordination = _tooz()
        coord = self._coordinator
        try:
            with contextlib.suppress(coordination.GroupAlreadyExist):
                coord.create_group(GROUP).get()
            coord.join_group(GROUP, self._capabilities()).get()
        except (coordination.ToozError, NotImplementedError) as exc:
            log.info("holders will not be named (%s has no groups: %s)", self.description, exc)

    def _capabilities(self) -> dict[str, Any]:
        return {"host": self.host, "pid": os.getpid(), "holds": dict(self._holds)}

    def _publish(self) -> None:
        coordination = _tooz()
        try:
            self._coordinator.update_capabilities(GROUP, self._capabilities()).get()
        except (coordination.ToozError, NotImplementedError) as exc:
            log.debug("could not publish held locks: %s", exc)

    def holder(self, name: str) -> str:
        """Who holds lock ``name``, as its holder published it ("unknown" if not)."""
        coordination = _tooz()
        try:
            members = self._coord().get_members(GROUP).get()
            for member in members:
                caps = self._coordinator.get_member_capabilities(GROUP, member).get() or {}
                holds = caps.get("holds") or {}
                if name in holds:
                    return f"pid {caps.get('pid')} on host {caps.get('host')}"
        except (coordination.ToozError, NotImplementedError):
            pass
        return "unknown holder"

    # -- locks --------------------------------------------------------------------------

    def _try(self, name: str, what: str) -> Any:
        """The acquired tooz lock, or None if another member holds it."""
        lock = self._coord().get_lock(name.encode())
        try:
            if not lock.acquire(blocking=False):
                return None
        except Exception as exc:  # tooz's errors, and its backends' own
            raise ConnectionFailed(
                f"cannot take lock {name} in {self.description}: {exc}",
                hint="check that the coordination service runs, then try again",
            ) from exc
        with self._mutex:
            self._holds[name] = what
        self._publish()
        return lock

    def _release(self, name: str, lock: Any) -> None:
        coordination = _tooz()
        with self._mutex:
            self._holds.pop(name, None)
        try:
            if not lock.release():
                log.warning("lock %s was no longer ours when released (its lease expired)", name)
        except coordination.ToozError as exc:
            log.warning("could not release lock %s (its lease will expire): %s", name, exc)
        self._publish()

    def volume(self, volume_id: str) -> _ToozVolumeLock:
        return _ToozVolumeLock(self, volume_id)

    def instance(
        self, instance_uuid: str, timeout: float = DEFAULT_INSTANCE_WAIT
    ) -> _ToozInstanceLock:
        return _ToozInstanceLock(self, instance_uuid, timeout)

    def close(self) -> None:
        """Leave the group and stop the coordinator (its leases go with it)."""
        with self._mutex:
            coord = self._coordinator
            if self._owned:
                self._coordinator = None
            joined, self._joined = self._joined, False
        if coord is None:
            return
        if not self._owned:
            if joined:
                with contextlib.suppress(Exception):
                    coord.leave_group(GROUP).get()
            return
        self._stopping.set()
        if self._heart is not None:
            self._heart.join(timeout=5)
        coordination = _tooz()
        with contextlib.suppress(coordination.ToozError, NotImplementedError):
            coord.leave_group(GROUP).get()
        try:
            coord.stop()
        except coordination.ToozError as exc:
            log.debug("stopping the coordinator: %s", exc)


class _ToozLock:
    def __init__(self, locks: ToozLocks, name: str, what: str) -> None:
        self._locks = locks
        self.name = name
        self.what = what
        self._lock: Any = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def release(self) -> None:
        if self._lock is None:
            return
        lock, self._lock = self._lock, None
        self._locks._release(self.name, lock)
        log.debug("released %s (%s)", self.what, self.name)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class _ToozVolumeLock(_ToozLock):
    def __init__(self, locks: ToozLocks, volume_id: str) -> None:
        super().__init__(locks, f"vmdk-snap.volume.{volume_id}", f"volume {volume_id}")
        self.volume_id = volume_id

    def acquire(self) -> None:
        lock = self._locks._try(self.name, self.what)
        if lock is None:
            raise Busy(
                f"volume {self.volume_id} is busy: another vmdk-snap workflow "
                f"({self._locks.holder(self.name)}) is working on it",
                hint="wait for it to finish, then try again (a holder that died releases "
                "within the coordination service's lease time)",
            )
        self._lock = lock

    def __enter__(self) -> _ToozVolumeLock:
        self.acquire()
        return self


class _ToozInstanceLock(_ToozLock):
    def __init__(self, locks: ToozLocks, instance_uuid: str, timeout: float) -> None:
        super().__init__(locks, f"vmdk-snap.instance.{instance_uuid}", f"instance {instance_uuid}")
        self.instance_uuid = instance_uuid
        self.timeout = timeout
        self.waited = False

    def acquire(self, sleep: Callable[[float], None] = time.sleep) -> bool:
        deadline = time.monotonic() + self.timeout
        delay = _POLL[0]
        self.waited = False
        while True:
            lock = self._locks._try(self.name, self.what)
            if lock is not None:
                break
            if not self.waited:
                self.waited = True
                log.info(
                    "instance %s is locked by another workflow (%s): waiting up to %.0f s",
                    self.instance_uuid,
                    self._locks.holder(self.name),
                    self.timeout,
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise Busy(
                    f"instance {self.instance_uuid} is busy: another vmdk-snap workflow "
                    f"({self._locks.holder(self.name)}) has been working on it for more than "
                    f"{self.timeout:g} s",
                    hint="wait for it to finish, then try again "
                    "(one workflow at a time changes an instance)",
                )
            sleep(min(delay, left))
            delay = min(delay * 2, _POLL[1])
        self._lock = lock
        return self.waited

    def __enter__(self) -> _ToozInstanceLock:
        self.acquire()
        return self


def _redact(url: str) -> str:
    """The URL without a password (``scheme://user:secret@host`` -> ``user:***``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    cred, _, host = rest.partition("@")
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def make_locks(lock_dir: Path, coordination_url: str | None) -> Locks:
    """The locks a Driver uses: a coordination service's when a URL is given, else this host's."""
    if coordination_url:
        return ToozLocks(coordination_url)
    return LocalLocks(lock_dir)
