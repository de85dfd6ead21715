"""Round trips and wall time: vmdk_snap's volumeops vs the OpenStack VMDK driver's pattern.

Starts its own simulator, seeds an attached volume among N filler VMs, then
measures, as counted by the simulator (``/_ctl/calls``):

- resolve: find the backing and the instance and read everything the
  workflow needs about both;
- snapshot: create a snapshot of the backing and remove it again.

The baseline does what the OpenStack driver does through oslo.vmware (here
through our session, so both are counted alike): one
``RetrievePropertiesEx`` per property, and tasks polled by reading
``info`` every 2.0 s (``vmware_task_poll_interval``), first poll at once.

Usage: ./dev bench [--vms 10 1000] [--repeat 2] [--task-ms 20 1500 6000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmdk_snap.session import Session
from vmdk_snap.testing import Control, Simulator
from vmdk_snap.types import Moref
from vmdk_snap.volumeops import VolumeOps
from vmdk_snap.volumeops.collect import VM_PATHS, Obj, retrieve

POLL_INTERVAL = 2.0  # cinder's vmware_task_poll_interval default


@dataclass
class Result:
    name: str
    calls: list[int]
    seconds: list[float]

    def row(self) -> tuple[str, str, str]:
        calls = statistics.mean(self.calls)
        secs = statistics.mean(self.seconds)
        return self.name, f"{calls:g}", f"{secs:.3f}"


def measure(name: str, ctl: Control, repeat: int, run: Callable[[int], object]) -> Result:
    result = Result(name, [], [])
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


def bench(vms: int, repeat: int, task_ms: int) -> list[tuple[str, str, str, str, str]]:
    with Simulator() as sim:
        assert sim.info is not None
        info = sim.info
        ctl = sim.control()
        ctl.set_default_task_time(task_ms)
        ctl.scenario("many-vms", count=vms)
        seeded = ctl.scenario("attached-volume")
        vol, inst = seeded["volumes"][0], seeded["instances"][0]
        # Snapshots cycle on an available volume: removing one from the backing
        # of an attached volume cannot merge into the file the instance uses.
        free = ctl.scenario("available-volume")["volumes"][0]
        with Session(info.url, info.username, info.password, ca_file=info.ca_file) as session:
            ops = VolumeOps(session)
            base = Baseline(session)
            backing = Moref("VirtualMachine", free["moref"])
            # Our first task of a session also creates the long-lived filter.
            ours_first = measure(
                "snapshot create+remove (first)",
                ctl,
                1,
                lambda i: ops.remove_snapshot(ops.create_snapshot(backing, "warm-up")),
            )
            rows = [
                (
                    measure("resolve", ctl, repeat, lambda i: ops.resolve(vol["id"], inst["uuid"])),
                    measure(
                        "resolve", ctl, repeat, lambda i: base.resolve(vol["id"], inst["uuid"])
                    ),
                ),
                (
                    ours_first,
                    measure(
                        "snapshot create+remove (first)",
                        ctl,
                        1,
                        lambda i: base.snapshot_cycle(session.mo(backing), "b-warm-up"),
                    ),
                ),
                (
                    measure(
                        "snapshot create+remove",
                        ctl,
                        repeat,
                        lambda i: ops.remove_snapshot(ops.create_snapshot(backing, f"o{i}")),
                    ),
                    measure(
                        "snapshot create+remove",
                        ctl,
                        repeat,
                        lambda i: base.snapshot_cycle(session.mo(backing), f"b{i}"),
                    ),
                ),
            ]
    table = []
    for ours, theirs in rows:
        name, oc, os_ = ours.row()
        _, bc, bs = theirs.row()
        table.append((f"{name} [{vms} VMs, tasks {task_ms} ms]", oc, os_, bc, bs))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, nargs="+", default=[10, 1000], help="inventory sizes")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (mean shown)")
    parser.add_argument(
        "--task-ms",
        type=int,
        nargs="+",
        default=[20, 1500, 6000],
        help="simulated task durations (vCenter snapshots take seconds)",
    )
    args = parser.parse_args(argv)
    header = ("operation", "ours calls", "ours s", "driver calls", "driver s")
    rows: list[tuple[str, str, str, str, str]] = []
    for count in args.vms:
        for task_ms in args.task_ms:
            rows += bench(count, args.repeat, task_ms)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(
        "\nresolve: backing + instance with every property; snapshot: create + remove on a backing."
        "\ncalls: SOAP round trips counted by the simulator (mean per run); s: wall time.\n"
        "driver: one RetrievePropertiesEx per property, tasks polled every "
        f"{POLL_INTERVAL:g} s (OpenStack's vmware_task_poll_interval)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
