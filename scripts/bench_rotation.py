"""A nightly rotation of forced snapshots for N days: depth and bytes copied.

    .venv/bin/python scripts/bench_rotation.py [--days 100] [--fill 65536] [--copy-depth 14]

An instance with a root disk and two volumes; every day each volume gets a
forced snapshot (the first keeps 7, the second 3; the oldest beyond that is
deleted), with every day's checks of tests/rotation.py (each retained
snapshot reads exactly what it had, each volume reads every token). Each
volume first gets ``--fill`` bytes written: they stand for its data. Prints
the deepest chain seen between calls, the bytes copied in total and per
snapshot, and what Cinder's template format copies (the whole volume's data
for every snapshot) for the same snapshots.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.rotation import Rotation, run_rotation
from vmdk_snap.driver import COPY_DEPTH, Driver
from vmdk_snap.testing import Simulator
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.volumeops import VolumeOps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--fill", type=int, default=65536, help="bytes of data per volume")
    parser.add_argument("--copy-depth", type=int, default=COPY_DEPTH)
    parser.add_argument("--task-ms", type=float, default=0.0, help="simulated task time")
    args = parser.parse_args()
    with Simulator() as sim, tempfile.TemporaryDirectory() as tmp:
        assert sim.info is not None
        info, ctl = sim.info, sim.control()
        ctl.set_default_task_time(args.task_ms)
        with Session(info.url, info.username, info.password, ca_file=info.ca_file) as session:
            ops = VolumeOps(session)
            driver = Driver(
                ops,
                journal_path=Path(tmp) / "journal.sqlite",
                lock_dir=Path(tmp),
                copy_depth=args.copy_depth,
            )
            start = time.perf_counter()

            def day(n: int, out: Rotation) -> None:
                if n % 10 == 0:
                    print(f"day {n:3}: deepest so far {out.deepest}, files {out.files[-1]}",
                          flush=True)  # fmt: skip

            out = run_rotation(driver, ops, ctl, days=args.days, fill=args.fill, on_day=day)
            wall = time.perf_counter() - start
    per = out.bytes_copied / out.snapshots
    template = out.template_bytes / out.snapshots
    print(f"{out.days} days, {out.snapshots} forced snapshots, copy depth {args.copy_depth}, "
          f"all checks passed ({wall:.0f} s)")  # fmt: skip
    print(f"deepest chain seen: {out.deepest} deltas")
    print(f"vmdk-snap: {out.bytes_copied} bytes copied, {per:.0f} per snapshot "
          f"({per / args.fill:.3f} of a volume's {args.fill} bytes)")  # fmt: skip
    print(f"Cinder template format: {out.template_bytes} bytes copied, {template:.0f} per "
          f"snapshot ({template / args.fill:.3f} of a volume)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
