"""Measure the snapshot workflows on the simulator: SOAP round trips, bytes copied, time.

    .venv/bin/python scripts/bench_workflow.py [--task-ms 20]

Each path runs on a freshly seeded scenario, on one warm session (the task
watcher already made, as in a long-running Cinder volume service).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from vmdk_snap.driver import Driver, Volume
from vmdk_snap.testing import Control, Simulator
from vmdk_snap.vsphere.session import Session

PATHS = [
    ("available volume", "available-volume", False),
    ("attached, forced", "attached-volume", True),
    ("attached, forced, after storage vMotion", "attached-volume-moved", True),
    ("Work Flow 2 (two volumes + root, moved)", "workflow2", True),
]


def _one(driver: Driver, ctl: Control, scenario: str, force: bool) -> tuple[int, int, float]:
    seeded = ctl.scenario(scenario)
    vol = seeded["volumes"][0]
    inst = seeded["instances"][0]["uuid"] if seeded["instances"] else None
    volume = Volume(vol["id"], "in-use" if inst else "available", inst)
    ctl.reset_calls()
    ctl.reset_bytes_copied()
    start = time.perf_counter()
    driver.create_snapshot(volume, "snapshot-bench", force=force)
    elapsed = time.perf_counter() - start
    return sum(ctl.calls().values()), int(ctl.bytes_copied()["total"]), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task-ms", type=float, default=20.0, help="simulated task time")
    args = parser.parse_args()
    with Simulator() as sim, tempfile.TemporaryDirectory() as tmp:
        assert sim.info is not None
        info, ctl = sim.info, sim.control()
        ctl.set_default_task_time(args.task_ms)
        with Session(info.url, info.username, info.password, ca_file=info.ca_file) as session:
            driver = Driver(
                session, journal_path=Path(tmp) / "journal.sqlite", lock_dir=Path(tmp) / "locks"
            )
            _one(driver, ctl, "available-volume", False)  # warm the session
            print(f"{'path':44} {'round trips':>11} {'bytes copied':>12} {'seconds':>8}")
            for label, scenario, force in PATHS:
                calls, copied, elapsed = _one(driver, ctl, scenario, force)
                print(f"{label:44} {calls:>11} {copied:>12} {elapsed:>8.2f}")


if __name__ == "__main__":
    main()
