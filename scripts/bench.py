"""Round trips and wall time: vmdk_snap's volumeops vs the OpenStack VMDK driver's pattern.

Starts a simulator per inventory size, seeds an attached volume among N
filler VMs, and measures, as counted by the simulator (``/_ctl/calls``, after
login):

- resolve: find the backing and the instance (by its UUID) and read
  everything the workflows need about both;
- resolve, instance found by its volume: the same without the instance's
  UUID (ours scans the inventory once; the driver has no such lookup);
- snapshot create+remove on a volume's backing, for several task durations,
  on a warm session (its task watcher made) and, once, on a cold one.

The baseline does what the OpenStack driver does through oslo.vmware (here
through our session, so both are counted alike): one
``RetrievePropertiesEx`` per property, and tasks polled by reading
``info`` every 2.0 s (``vmware_task_poll_interval``), first poll at once.

Usage: ./dev bench [--vms 10 1000] [--repeat 2] [--task-ms 20 1500 5000 12000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmdk_snap.testing import Control, SimInfo, Simulator
from vmdk_snap.types import Moref
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.volumeops import VolumeOps
from vmdk_snap.vsphere.volumeops.collect import VM_PATHS, Obj, retrieve

POLL_INTERVAL = 2.0  # cinder's vmware_task_poll_interval default

Row = tuple[str, str, str, str, str, str, str]
HEADER: Row = ("operation", "VMs", "task ms", "ours calls", "driver calls", "ours s", "driver s")


@dataclass
class Measured:
    calls: list[int]
    seconds: list[float]

    def cells(self) -> tuple[str, str]:
        return f"{statistics.mean(self.calls):g}", f"{statistics.mean(self.seconds):.2f}"


def measure(ctl: Control, repeat: int, run: Callable[[int], object]) -> Measured:
    result = Measured([], [])
    for i in range(repeat):
        ctl.reset_calls()
        start = time.perf_counter()
        run(i)
        result.seconds.append(time.perf_counter() - start)
        result.calls.append(sum(ctl.calls().values()))
    return result


# -- the baseline: the OpenStack driver's access pattern --------------------------


class Baseline:
    """One property per call; tasks polled every 2.0 s."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def prop(self, obj: Any, path: str) -> Any:
        found = retrieve(self.s, [Obj(obj)], {type(obj): [path]})
        return found[0].props.get(path) if found else None

    def find(self, uuid: str) -> Any:
        return self.s.invoke(self.s.content.searchIndex, "FindByUuid", None, uuid, True, True)

    def resolve(self, volume_id: str, instance_uuid: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, uuid in (("backing", volume_id), ("instance", instance_uuid)):
            vm = self.find(uuid)
            out[key] = {path: self.prop(vm, path) for path in VM_PATHS}
        return out

    def wait(self, task: Any) -> Any:
        while True:
            info = self.prop(task, "info")
            if info.state == "success":
                return info.result
            if info.state == "error":
                raise RuntimeError(str(info.error))
            time.sleep(POLL_INTERVAL)

    def snapshot_cycle(self, vm: Any, name: str) -> None:
        snap = self.wait(
            self.s.invoke(
                vm, "CreateSnapshot_Task", name=name, description="", memory=False, quiesce=False
            )
        )
        self.wait(self.s.invoke(snap, "RemoveSnapshot_Task", removeChildren=False))


# -- the run -------------------------------------------------------------------------


def _session(info: SimInfo) -> Session:
    return Session(info.url, info.username, info.password, ca_file=info.ca_file)


def bench(vms: int, repeat: int, task_ms: list[int], snapshots: bool) -> list[Row]:
    rows: list[Row] = []
    with Simulator() as sim:
        assert sim.info is not None
        info = sim.info
        ctl = sim.control()
        ctl.scenario("many-vms", count=vms)
        seeded = ctl.scenario("attached-volume")
        vol, inst = seeded["volumes"][0], seeded["instances"][0]
        # Snapshots cycle on an available volume: removing one from the backing
        # of an attached volume cannot merge into the file the instance uses.
        free = ctl.scenario("available-volume")["volumes"][0]
        backing = Moref("VirtualMachine", free["moref"])
        with _session(info) as session:
            ops = VolumeOps(session)
            base = Baseline(session)
            ours = measure(ctl, repeat, lambda i: ops.resolve(vol["id"], inst["uuid"]))
            theirs = measure(ctl, repeat, lambda i: base.resolve(vol["id"], inst["uuid"]))
            rows.append(("resolve", str(vms), "-", *_pair(ours, theirs)))
            found = measure(ctl, repeat, lambda i: ops.resolve(vol["id"], find_attached=True))
            calls, seconds = found.cells()
            rows.append(
                ("resolve, instance by its volume", str(vms), "-", calls, "n/a", seconds, "n/a")
            )
        if not snapshots:
            return rows
        for ms in task_ms:
            ctl.set_default_task_time(ms)
            rows += _snapshot_rows(info, ctl, backing, vms=vms, ms=ms, repeat=repeat)
        ctl.reset_timing()
    return rows


def _snapshot_rows(
    info: SimInfo, ctl: Control, backing: Moref, *, vms: int, ms: int, repeat: int
) -> list[Row]:
    """Create+remove on a cold session (its first tasks), then warm, ours and the driver's."""

    def ours_cycle(ops: VolumeOps, name: str) -> None:
        ops.remove_snapshot(ops.create_snapshot(backing, name))

    with _session(info) as session:
        ops = VolumeOps(session)
        ours_cold = measure(ctl, 1, lambda i: ours_cycle(ops, f"c{ms}"))
    with _session(info) as session:
        base = Baseline(session)
        vm = session.mo(backing)
        # The driver keeps nothing per session: its cold and warm costs are the same.
        theirs = measure(ctl, repeat, lambda i: base.snapshot_cycle(vm, f"b{ms}-{i}"))
    with _session(info) as session:
        ops = VolumeOps(session)
        ours_cycle(ops, f"w{ms}")  # warm the watcher
        ours = measure(ctl, repeat, lambda i: ours_cycle(ops, f"o{ms}-{i}"))
    return [
        ("snapshot create+remove, cold session", str(vms), str(ms), *_pair(ours_cold, theirs)),
        ("snapshot create+remove, warm session", str(vms), str(ms), *_pair(ours, theirs)),
    ]


def _pair(ours: Measured, theirs: Measured) -> tuple[str, str, str, str]:
    (oc, os_), (tc, ts) = ours.cells(), theirs.cells()
    return oc, tc, os_, ts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--vms", type=int, nargs="+", default=[10, 1000], help="inventory sizes")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (mean shown)")
    parser.add_argument(
        "--task-ms",
        type=int,
        nargs="+",
        default=[20, 1500, 5000, 12000],
        help="simulated task durations (vCenter snapshots take seconds)",
    )
    args = parser.parse_args(argv)
    rows: list[Row] = []
    for n, count in enumerate(args.vms):
        # Task costs do not depend on the inventory: measured with the first size.
        rows += bench(count, args.repeat, args.task_ms, snapshots=n == 0)
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    for row in [HEADER, tuple("-" * w for w in widths), *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(
        "\ncalls: SOAP round trips after login, counted by the simulator (mean of runs);"
        " s: wall time.\nresolve: backing + instance with every property the workflows read."
        "\nsnapshot create+remove: two tasks on a volume's backing; cold = the session's"
        " first tasks (the driver keeps no state per session: same numbers).\n"
        "driver: one RetrievePropertiesEx per property, tasks polled every"
        f" {POLL_INTERVAL:g} s (OpenStack's vmware_task_poll_interval), first poll at once.\n"
        "ours: one filter over a ListView of tasks, WaitForUpdatesEx(maxWaitSeconds=30); a task"
        " still running when it enters the view costs one wait more.\n"
        "The simulator answers a waiting WaitForUpdatesEx on a 250 ms tick: a floor on our"
        " times that vCenter does not have."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
