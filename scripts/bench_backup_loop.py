"""cinder-backup of an in-use volume, round after round: forced snapshot, then delete it.

    .venv/bin/python scripts/bench_backup_loop.py [--rounds 100] [--task-ms 20]

Prints, per round, the instance's deepest chain, ``consolidationNeeded``, the
files on each datastore and the SOAP round trips, then totals. Every round
must leave the instance's chains, flag and files as they were before the
first one (the script exits 1 on the first round that does not).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from vmdk_snap.driver import Driver, Volume
from vmdk_snap.testing import Control, Simulator
from vmdk_snap.types import Moref
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.volumeops import VolumeOps

DATASTORES = ("ds-shared-1", "ds-shared-2", "ds-local-h0")


def _shape(ops: VolumeOps, ctl: Control, instance: str) -> tuple[int, bool, dict[str, int]]:
    info = ops.get_vm(Moref("VirtualMachine", instance))
    files = {ds: len(ctl.files(ds)) for ds in DATASTORES}
    return max(d.depth for d in info.disks), info.consolidation_needed, files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--task-ms", type=float, default=20.0, help="simulated task time")
    args = parser.parse_args()
    with Simulator() as sim, tempfile.TemporaryDirectory() as tmp:
        assert sim.info is not None
        info, ctl = sim.info, sim.control()
        ctl.set_default_task_time(args.task_ms)
        with Session(info.url, info.username, info.password, ca_file=info.ca_file) as session:
            ops = VolumeOps(session)
            driver = Driver(ops, journal_path=Path(tmp) / "journal.sqlite", lock_dir=Path(tmp))
            seeded = ctl.scenario("attached-volume")
            inst, vol = seeded["instances"][0], seeded["volumes"][0]
            volume = Volume(vol["id"], "in-use", inst["uuid"])
            start_shape = _shape(ops, ctl, inst["moref"])
            print(f"before: deepest chain {start_shape[0]}, files {start_shape[2]}")
            total_calls, start = 0, time.perf_counter()
            for n in range(1, args.rounds + 1):
                ctl.reset_calls()
                driver.create_snapshot(volume, f"backup-{n}", force=True)
                driver.delete_snapshot(volume, f"backup-{n}")
                calls = sum(ctl.calls().values())
                total_calls += calls
                shape = _shape(ops, ctl, inst["moref"])
                print(f"round {n:3}: depth {shape[0]}, consolidationNeeded {shape[1]}, "
                      f"files {shape[2]}, {calls} round trips")  # fmt: skip
                if shape != start_shape:
                    print(f"round {n} left the instance changed: {shape} != {start_shape}")
                    return 1
            elapsed = time.perf_counter() - start
            print(f"{args.rounds} rounds: {total_calls / args.rounds:.1f} round trips and "
                  f"{elapsed / args.rounds:.2f} s per round, "
                  f"{int(ctl.bytes_copied()['total'])} bytes copied")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
