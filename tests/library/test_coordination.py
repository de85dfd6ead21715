"""Locks that hold across hosts, through tooz and a real etcd (issue 15).

Two "hosts" are two processes with state directories of their own (journal
and lock directory), so that only the coordination service can keep them
apart; the simulator is shared, as vCenter would be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target, child_env
from tests.etcd import LEASE_SECONDS
from tests.workflow_checks import snapshot_trees, vm, volume_disk_key
from vmdk_snap.driver import Driver
from vmdk_snap.errors import Busy
from vmdk_snap.workflows.coordination import ToozLocks
from vmdk_snap.workflows.journal import Journal

pytest.importorskip("tooz")

# Each test runs Cinder (or several processes) for tens of seconds: handed out
# first, so that a parallel run does not end waiting on them.
pytestmark = pytest.mark.slow

# A forced snapshot holds the instance through several tasks of this length:
# the second host arrives while the first holds it, even on a loaded machine.
TASK_MS = 700
HOLD_MS = 12000


class Host:
    """One "host": ``vmdk-snap`` with its own journal and lock directory."""

    def __init__(self, vc: Target, etcd: str, root: Path) -> None:
        self.root = root
        self.journal = root / "journal.sqlite"
        self.env = child_env(
            HOME=str(root / "home"),
            VMDK_SNAP_URL=vc.url,
            VMDK_SNAP_USERNAME=vc.username,
            VMDK_SNAP_PASSWORD=vc.password,
            VMDK_SNAP_CA_FILE=vc.ca_file,
            VMDK_SNAP_JOURNAL=str(self.journal),
            VMDK_SNAP_LOCK_DIR=str(root / "locks"),
            VMDK_SNAP_COORDINATION_URL=etcd,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "vmdk_snap.cli", "-v", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.start(*args)
        out, err = proc.communicate(timeout=180)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def wait_until_running(self, proc: subprocess.Popen[str]) -> None:
        """Until this host's journal shows its workflow (it holds its locks)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the first host's workflow ended too early: {proc.communicate()}")
            if self.journal.exists() and Journal(self.journal).workflows():
                return
            time.sleep(0.05)
        pytest.fail("the first host's workflow never began")


@pytest.fixture
def vc(own_vc: Target) -> Target:
    """A simulator of these tests' own (``session``, ``ops`` and ``clean_sim`` use it).

    Processes are killed here: what a failing test leaves (a temporary
    instance snapshot) must not reach other tests' ``recover``, which looks
    across the whole inventory.
    """
    return own_vc


def _hosts(vc: Target, etcd: str, tmp_path: Path) -> tuple[Host, Host]:
    return Host(vc, etcd, tmp_path / "host-a"), Host(vc, etcd, tmp_path / "host-b")


@pytest.mark.live
def test_volume_lock_is_busy_naming_the_holder_and_instance_lock_waits(etcd: str) -> None:
    a, b = ToozLocks(etcd), ToozLocks(etcd)
    try:
        with a.volume("vol-1"):
            with pytest.raises(Busy, match=rf"pid {os.getpid()} on host "):
                b.volume("vol-1").acquire()
            with b.volume("vol-2"):  # another volume is free
                pass
        with b.volume("vol-1"):  # released on exit
            pass
        held = a.instance("inst-1", timeout=10)
        held.acquire()
        waiting = b.instance("inst-1", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(Busy, match=r"has been working on it for more than 0\.5 s"):
            waiting.acquire()
        assert time.monotonic() - started >= 0.5
        held.release()
        assert b.instance("inst-1", timeout=5).acquire() is False  # free again: no wait
    finally:
        a.close()
        b.close()


@pytest.mark.live
def test_two_hosts_snapshot_two_volumes_of_one_instance_in_turn(
    clean_sim: Target, ops: Any, etcd: str, tmp_path: Path
) -> None:
    vc = clean_sim
    seeded = vc.ctl.scenario("instance-two-volumes")
    inst, vols = seeded["instances"][0], seeded["volumes"]
    keys = [volume_disk_key(ops, v, inst["moref"]) for v in vols]
    for vol, key in zip(vols, keys, strict=True):
        vc.ctl.write(inst["moref"], key, f"before-{vol['id'][:8]}")
    (inst_tree,) = snapshot_trees(ops, inst["moref"])
    a, b = _hosts(vc, etcd, tmp_path)
    vc.ctl.set_default_task_time(TASK_MS)
    # Host A holds the instance through its temporary snapshot's removal:
    # long enough for host B's process to start and find it held.
    vc.ctl.set_task_time("RemoveSnapshot_Task", HOLD_MS)
    first = a.start("snapshot", vols[0]["id"], "--name", "snapshot-a", "--force")
    try:
        a.wait_until_running(first)
        second = b.run("snapshot", vols[1]["id"], "--name", "snapshot-b", "--force")
        _out, err_a = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    assert (first.returncode, second.returncode) == (0, 0), (err_a, second.stderr)
    # Host B waited for the instance, which host A held through etcd.
    assert "is locked by another workflow" in second.stderr, second.stderr
    assert snapshot_trees(ops, inst["moref"]) == [inst_tree]  # no temporary snapshot left
    for vol, name in zip(vols, ("snapshot-a", "snapshot-b"), strict=True):
        node = ops.get_vm(vm(vol["moref"])).snapshot_named(name)
        assert node is not None, (vol["id"], name)
        backing_key = 2000  # the backing's own disk (tests/vcsim/scenarios.go)
        assert (
            vc.ctl.read_snapshot(node.ref.value, backing_key)["tokens"][-1]
            == f"before-{vol['id'][:8]}"
        )


@pytest.mark.live
def test_the_same_volume_from_two_hosts_one_is_busy_naming_the_other(
    clean_sim: Target, etcd: str, tmp_path: Path
) -> None:
    vc = clean_sim
    vol = vc.ctl.scenario("attached-volume")["volumes"][0]
    a, b = _hosts(vc, etcd, tmp_path)
    vc.ctl.set_default_task_time(TASK_MS)
    vc.ctl.set_task_time("RemoveSnapshot_Task", HOLD_MS)
    first = a.start("snapshot", vol["id"], "--name", "snapshot-a", "--force")
    try:
        a.wait_until_running(first)
        second = b.run("snapshot", vol["id"], "--name", "snapshot-b", "--force")
        first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0
    assert second.returncode == 5, second.stderr  # Busy
    assert f"volume {vol['id']} is busy" in second.stderr
    assert f"pid {first.pid} on host" in second.stderr


@pytest.mark.live
def test_a_killed_holder_releases_within_the_lease_and_recover_settles_its_workflow(
    clean_sim: Target, ops: Any, etcd: str, tmp_path: Path
) -> None:
    vc = clean_sim
    # A lease long enough that the early recover below starts inside it on a
    # loaded machine, short enough to wait for.
    lease = 8
    etcd = etcd.replace(f"timeout={LEASE_SECONDS}", f"timeout={lease}")
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    (inst_tree,) = snapshot_trees(ops, inst["moref"])
    key = volume_disk_key(ops, vol, inst["moref"])
    vc.ctl.write(inst["moref"], key, "before")
    a, b = _hosts(vc, etcd, tmp_path)
    vc.ctl.set_default_task_time(TASK_MS)
    doomed = a.start("snapshot", vol["id"], "--name", "snapshot-a", "--force")
    a.wait_until_running(doomed)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    killed_at = time.monotonic()

    # While the dead holder's lease lasts (checked in this process: no
    # process start to wait for), the volume is busy, naming it, and
    # recover with its journal never settles its workflow.
    locks = ToozLocks(etcd)
    try:
        with pytest.raises(Busy, match=f"pid {doomed.pid} on host"):
            locks.volume(vol["id"]).acquire()
        early = Driver(ops, journal_path=a.journal, locks=locks).recover()
    finally:
        locks.close()
    assert early, "recover found nothing to settle"
    assert {r.outcome for r in early} == {"busy"}, early
    (record,) = Journal(a.journal).workflows()
    assert record.state == "running", record

    # Host B proceeds once the lease has ended.
    while True:
        attempt = time.monotonic()
        tried = b.run("snapshot", vol["id"], "--name", "snapshot-b", "--force")
        if tried.returncode != 5:
            break
        assert attempt - killed_at < lease + 5, tried.stderr
    assert tried.returncode == 0, tried.stderr  # proceeded, and its snapshot was taken
    assert attempt - killed_at <= lease + 5  # the attempt that got the lock began by then

    # recover with the dead host's state directory settles its workflow,
    # under the same locks.
    recovered = a.run("recover")
    assert recovered.returncode == 0, recovered.stderr
    (record,) = Journal(a.journal).workflows()
    assert record.state in {"done", "rolled_back"}, record
    assert snapshot_trees(ops, inst["moref"]) == [inst_tree]  # its temporary snapshot gone

    node = ops.get_vm(vm(vol["moref"])).snapshot_named("snapshot-b")
    assert node is not None
    assert vc.ctl.read_snapshot(node.ref.value, 2000)["tokens"][-1] == "before"
    assert vc.ctl.read_disk(inst["moref"], key)["tokens"][-1] == "before"
    checked = b.run("check", vol["id"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
