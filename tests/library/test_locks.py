"""The locks: the instance's waits for the holder (bounded), unlike the volume's;
both are the host's (issue 11), whatever journal each process keeps.

Real ``flock`` on real files, held by another process or thread; no mocks.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmdk_snap.driver import Driver, Volume
from vmdk_snap.errors import Busy, InvalidState
from vmdk_snap.workflows import locks
from vmdk_snap.workflows.locks import InstanceLock, VolumeLock, default_lock_dir

UUID = "9c1e0000-1111-2222-3333-444455556666"


def _hold(
    directory: str,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
) -> None:
    """Hold the instance lock until told to stop, and leave a mark just before releasing."""
    with InstanceLock(Path(directory), UUID):
        ready.set()
        stop.wait(30)
        (Path(directory) / "released").write_text("yes")


def _start_holder(
    tmp_path: Path,
) -> tuple[multiprocessing.process.BaseProcess, multiprocessing.synchronize.Event]:
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(tmp_path), ready, stop))
    proc.start()
    assert ready.wait(10)
    return proc, stop


def test_a_second_workflow_waits_for_the_instance_then_gets_it(tmp_path: Path) -> None:
    proc, stop = _start_holder(tmp_path)
    got: list[InstanceLock] = []
    released_when_acquired: list[bool] = []

    def take() -> None:
        lock = InstanceLock(tmp_path, UUID, timeout=30)
        lock.acquire()
        released_when_acquired.append((tmp_path / "released").exists())
        got.append(lock)

    waiter = threading.Thread(target=take)
    try:
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()
        assert not got
        # Volumes are other locks, even one named like the instance.
        with VolumeLock(tmp_path, UUID) as vol:
            assert vol.held
        stop.set()
        waiter.join(30)
    finally:
        stop.set()
        proc.join(10)
    assert not waiter.is_alive()
    (lock,) = got
    assert lock.held
    assert lock.waited
    assert released_when_acquired == [True]  # never both at once
    lock.release()
    assert not lock.held


def test_the_wait_is_bounded_and_says_who_holds_it(tmp_path: Path) -> None:
    proc, stop = _start_holder(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(Busy, match=f"instance {UUID} is busy: .*pid {proc.pid}.* 1 s") as err:
            InstanceLock(tmp_path, UUID, timeout=1.0).acquire()
        assert time.monotonic() - started >= 1.0
        assert "wait for it to finish, then try again" in str(err.value)
        # Another instance is free meanwhile, at once.
        with InstanceLock(tmp_path, "another-instance", timeout=0) as other:
            assert other.held
            assert not other.waited
    finally:
        stop.set()
        proc.join(10)


def test_a_holder_that_dies_frees_the_instance(tmp_path: Path) -> None:
    proc, _stop = _start_holder(tmp_path)
    got: list[bool] = []
    lock = InstanceLock(tmp_path, UUID, timeout=30)
    waiter = threading.Thread(target=lambda: got.append(lock.acquire()))
    try:
        waiter.start()
        waiter.join(0.3)
        assert not got
    finally:
        # Dies holding the lock: the kernel releases it. (Never set the
        # Event afterwards: its condition would wait for the dead waiter.)
        proc.kill()
        proc.join(10)
    waiter.join(30)
    assert got == [True]  # it waited, then got it
    assert lock.held
    assert not (tmp_path / "released").exists()
    lock.release()


def test_threads_take_the_instance_one_after_the_other(tmp_path: Path) -> None:
    inside: list[int] = []
    most = [0]
    guard = threading.Lock()
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        with InstanceLock(tmp_path, UUID, timeout=30):
            with guard:
                inside.append(1)
                most[0] = max(most[0], len(inside))
            time.sleep(0.1)
            with guard:
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert most == [1]


# -- the host's lock directory, whatever the journal ---------------------------------

NO_VSPHERE = object()  # a session: any vSphere call would fail the test


def _driver(journal: Path, lock_dir: Path | None) -> Driver:
    return Driver(NO_VSPHERE, journal_path=journal, lock_dir=lock_dir)


def _hold_with_driver(
    journal: str,
    lock_dir: str | None,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
) -> None:
    """Another process's driver working on vol-1 (its own journal)."""
    driver = _driver(Path(journal), Path(lock_dir) if lock_dir else None)
    with driver._locked(Volume("vol-1")):
        ready.set()
        stop.wait(30)


@pytest.mark.parametrize("given", ["Driver(lock_dir=)", "VMDK_SNAP_LOCK_DIR"])
def test_drivers_with_other_journals_share_the_volume_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    shared = tmp_path / "host-locks"
    lock_dir: Path | None = shared
    if given == "VMDK_SNAP_LOCK_DIR":
        monkeypatch.setenv("VMDK_SNAP_LOCK_DIR", str(shared))
        lock_dir = None
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    cinder = str(tmp_path / "cinder" / "journal.sqlite")
    proc = ctx.Process(target=_hold_with_driver, args=(cinder, str(lock_dir or ""), ready, stop))
    proc.start()
    try:
        assert ready.wait(10)
        operator = _driver(tmp_path / "operator" / "journal.sqlite", lock_dir)
        with pytest.raises(Busy, match=f"volume vol-1 is busy: .*pid {proc.pid}"):
            operator.create_snapshot(Volume("vol-1"), "snapshot-1")  # before any vSphere call
    finally:
        stop.set()
        proc.join(10)
    assert sorted(p.name for p in shared.iterdir()) == ["vol-1.lock"]
    assert not (tmp_path / "cinder" / "locks").exists()


def test_the_default_lock_dir_is_the_hosts_not_the_journals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lock_dir: Path
) -> None:
    journals = [tmp_path / "a" / "journal.sqlite", tmp_path / "elsewhere" / "b" / "j.sqlite"]
    # The tests' default (tests/conftest.py): one directory for both.
    assert [_driver(j, None).lock_dir for j in journals] == [lock_dir, lock_dir]
    # The system's: the same for both too (nothing is made before a lock is taken).
    monkeypatch.delenv("VMDK_SNAP_LOCK_DIR")
    system = [_driver(j, None).lock_dir for j in journals]
    assert system == [default_lock_dir({})] * 2
    assert system[0] == Path("/run/lock/vmdk-snap") or not Path("/run/lock").is_dir()


def test_the_system_default_is_under_the_first_base_that_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bases = [tmp_path / "run-lock", tmp_path / "var-lock", tmp_path / "tmp"]
    monkeypatch.setattr(locks, "_SYSTEM_BASES", tuple(str(b) for b in bases))
    bases[1].mkdir()
    bases[2].mkdir()
    assert default_lock_dir({}) == bases[1] / "vmdk-snap"
    assert default_lock_dir({"VMDK_SNAP_LOCK_DIR": "/x/y"}) == Path("/x/y")


# -- a directory other users can write -----------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_the_directory_and_files_it_makes_are_for_every_user(tmp_path: Path) -> None:
    directory = tmp_path / "made" / "locks"
    with VolumeLock(directory, "vol-1"):
        path = directory / "vol-1.lock"
        assert path.read_text() == str(os.getpid())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o1777  # sticky, as /tmp
    assert stat.S_IMODE(path.stat().st_mode) == 0o666
    assert path.read_text() == ""  # no holder


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_text("not yours")
    return victim


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        (os.symlink, "holds vol-1.lock as a symbolic link, which is never followed"),
        (os.link, "holds vol-1.lock, which is not a plain file with one link"),
    ],
    ids=["symlink", "hardlink"],
)
def test_a_planted_link_is_refused_and_never_written(
    tmp_path: Path, plant: Callable[[Path, Path], None], message: str
) -> None:
    directory = tmp_path / "locks"
    directory.mkdir()
    victim = _victim(tmp_path)
    plant(victim, directory / "vol-1.lock")
    with pytest.raises(InvalidState, match=message):
        VolumeLock(directory, "vol-1").acquire()
    assert victim.read_text() == "not yours"


def test_a_symlinked_lock_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "locks").symlink_to(tmp_path / "real")
    with pytest.raises(InvalidState, match="locks is a symbolic link, which is never followed"):
        VolumeLock(tmp_path / "locks", "vol-1").acquire()
    assert list((tmp_path / "real").iterdir()) == []


def test_a_directory_others_can_write_must_be_sticky(tmp_path: Path) -> None:
    directory = tmp_path / "locks"
    directory.mkdir()
    directory.chmod(0o777)
    with pytest.raises(InvalidState, match=r"mode 0777\) but is not sticky") as err:
        InstanceLock(directory, "inst-1", timeout=0).acquire()
    assert "VMDK_SNAP_LOCK_DIR" in str(err.value)
    directory.chmod(0o1777)
    with InstanceLock(directory, "inst-1", timeout=0) as lock:
        assert lock.held


# -- two users -------------------------------------------------------------------------

NOBODY = 65534


def _as_nobody(
    directory: str,
    name: str,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
) -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    with VolumeLock(Path(directory), name):
        ready.set()
        stop.wait(30)


def _hold_as_nobody(
    directory: Path, name: str
) -> tuple[multiprocessing.process.BaseProcess, multiprocessing.synchronize.Event]:
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_as_nobody, args=(str(directory), name, ready, stop))
    proc.start()
    if not ready.wait(10):
        stop.set()
        proc.join(10)
        pytest.fail(f"user nobody could not take the lock {name} (exit code {proc.exitcode})")
    return proc, stop


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A directory every user can reach and write, as /run/lock (not tmp_path)."""
    base = Path(tempfile.mkdtemp(prefix="vmdk-snap-users-"))
    base.chmod(0o1777)  # as /run/lock
    try:
        yield base
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as two users needs root")
@pytest.mark.usefixtures("umask_022")
def test_two_users_share_the_directory_its_files_and_the_holders_pid(shared_base: Path) -> None:
    """The cinder user makes the directory and a lock; an operator waits for it,
    told which pid holds it, then takes it; and the other way round."""
    directory = shared_base / "locks"
    proc, stop = _hold_as_nobody(directory, "vol-1")
    try:
        assert directory.stat().st_uid == NOBODY
        with pytest.raises(Busy, match=f"pid {proc.pid}"):
            VolumeLock(directory, "vol-1").acquire()
    finally:
        stop.set()
        proc.join(10)
    with VolumeLock(directory, "vol-1"):
        assert (directory / "vol-1.lock").read_text() == str(os.getpid())
    # A lock file this user made: the other user opens it, locks it, writes its pid.
    with VolumeLock(directory, "vol-2"):
        pass
    proc, stop = _hold_as_nobody(directory, "vol-2")
    try:
        with pytest.raises(Busy, match=f"pid {proc.pid}"):
            VolumeLock(directory, "vol-2").acquire()
    finally:
        stop.set()
        proc.join(10)
    assert proc.exitcode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as two users needs root")
def test_a_file_the_other_user_cannot_write_is_locked_read_only(shared_base: Path) -> None:
    directory = shared_base / "locks"
    with VolumeLock(directory, "vol-1"):
        pass
    (directory / "vol-1.lock").chmod(0o644)  # as an older vmdk-snap or an admin left it
    proc, stop = _hold_as_nobody(directory, "vol-1")
    try:
        with pytest.raises(Busy, match="pid unknown"):  # locked, but it could not say who
            VolumeLock(directory, "vol-1").acquire()
    finally:
        stop.set()
        proc.join(10)
