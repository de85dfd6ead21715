"""The per-instance lock: it waits for the holder (bounded), unlike the volume lock.

Real ``flock`` on real files, held by another process or thread; no mocks.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import threading
import time
from pathlib import Path

import pytest

from vmdk_snap.errors import Busy
from vmdk_snap.workflows.locks import InstanceLock, VolumeLock

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
