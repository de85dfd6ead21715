"""Cinder's own VMDK driver against vmdk_snap, side by side in one run on one simulator.

    ./dev bench cinder [--sizes 1 10 100] [--copy-rate-mib 1024]

For volumes of each size (GiB), filled with that much guest data, measures:

- in-use: Cinder's snapshot of an attached volume (its default
  ``vmware_snapshot_format = template``: a full clone of the instance with
  every other disk removed, marked as a template) against our forced snapshot
  (``Driver.create_snapshot(..., force=True)``);
- available: Cinder's COW snapshot of a detached volume against ours.

Figures: SOAP round trips (counted by the simulator, per operation, after
login), bytes of disk data copied (``/_ctl/bytes-copied``), wall time. The
simulator copies at ``--copy-rate-mib`` MiB/s and takes 20 ms per task
besides. Cinder runs unpatched in its own eventlet-patched process with its
default task poll interval (``vmware_task_poll_interval = 2.0`` s); its time
is that of the driver call alone (not its process start or ``do_setup``).
Ours runs on a warm session, as in a long-running cinder-volume.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cinder.children import run_child
from tests.cinder.support import EAGER, CinderVolume, backing, nova_attach
from tests.conftest import Target
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.testing import Simulator
from vmdk_snap.vsphere.session import Session

GIB = 1 << 30
CINDER_POLL = {"vmware_task_poll_interval": 2.0}  # Cinder's default


@dataclass
class Figures:
    calls: int
    copied: int
    seconds: float


def cinder(vc: Target, call: list[Any], **options: Any) -> Figures:
    """One driver call in Cinder's process; its own round trips and time."""
    vc.ctl.reset_bytes_copied()
    _setup, result = run_child(
        "tests.cinder.cinder_child",
        vc,
        [call],
        timeout=3600,
        options={**CINDER_POLL, **options},
        count_calls=True,
    )
    assert "error" not in result, result
    return Figures(
        int(result["soap_calls"]), int(vc.ctl.bytes_copied()["total"]), float(result["seconds"])
    )


def ours(vc: Target, driver: Driver, volume: Volume, name: str, force: bool) -> Figures:
    vc.ctl.reset_calls()
    vc.ctl.reset_bytes_copied()
    start = time.perf_counter()
    driver.create_snapshot(volume, name, force=force)
    elapsed = time.perf_counter() - start
    return Figures(sum(vc.ctl.calls().values()), int(vc.ctl.bytes_copied()["total"]), elapsed)


def human(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1, 10, 100], help="volume sizes, GiB"
    )
    parser.add_argument(
        "--copy-rate-mib", type=float, default=1024.0, help="simulated copy rate, MiB/s"
    )
    args = parser.parse_args(argv)
    rows: list[tuple[str, int, Figures, Figures]] = []
    with Simulator() as sim, tempfile.TemporaryDirectory() as tmp:
        assert sim.info is not None
        info, ctl = sim.info, sim.control()
        vc = Target.of(sim)
        ctl.set_copy_rate(args.copy_rate_mib * (1 << 20))
        with Session(info.url, info.username, info.password, ca_file=info.ca_file) as session:
            driver = Driver(
                session, journal_path=Path(tmp) / "journal.sqlite", lock_dir=Path(tmp) / "locks"
            )
            for size in args.sizes:
                # In use: a volume Cinder creates, Nova attaches to an instance
                # of its own (one volume each: the sizes do not share disks),
                # the guest fills.
                inst = ctl.scenario("instance")["instances"][0]
                volume = CinderVolume(size=size)
                (_, connection) = run_child(
                    "tests.cinder.cinder_child",
                    vc,
                    [
                        ["create_volume", volume.json()],
                        ["initialize_connection", volume.json(), {"instance": inst["moref"]}],
                    ],
                    timeout=600,
                    options=EAGER,
                )[1:]
                key = nova_attach(vc, inst["moref"], volume, connection["result"])
                ctl.write(inst["moref"], key, f"fill-{size}", size=size * GIB)
                theirs = cinder(vc, ["create_snapshot", volume.snapshot()])
                mine = ours(
                    vc,
                    driver,
                    Volume(volume.id, "in-use", inst["uuid"]),
                    "snapshot-ours",
                    force=True,
                )
                rows.append(("in-use snapshot", size, theirs, mine))

                # Available: COW on both sides.
                volume = CinderVolume(size=size)
                run_child(
                    "tests.cinder.cinder_child",
                    vc,
                    [["create_volume", volume.json()]],
                    timeout=600,
                    options=EAGER,
                )
                moref = backing(vc, volume.name)
                assert moref is not None
                ctl.write(
                    moref,
                    int(ctl.chain(moref)["disks"][0]["disk"]),
                    f"fill-{size}",
                    size=size * GIB,
                )
                theirs = cinder(
                    vc, ["create_snapshot", volume.snapshot()], vmware_snapshot_format="COW"
                )
                mine = ours(
                    vc, driver, Volume(volume.id, "available", None), "snapshot-ours", force=False
                )
                rows.append(("available snapshot", size, theirs, mine))

    poll = CINDER_POLL["vmware_task_poll_interval"]
    print(
        f"copy rate {args.copy_rate_mib:g} MiB/s, 20 ms per task; Cinder {poll} s task polls"
        " (its default), ours event-driven on a warm session\n"
    )
    header = (
        "operation",
        "GiB",
        "Cinder calls",
        "ours calls",
        "Cinder copied",
        "ours copied",
        "Cinder s",
        "ours s",
    )
    print("{:<20} {:>4} {:>12} {:>10} {:>13} {:>11} {:>8} {:>6}".format(*header))
    print(
        "{:<20} {:>4} {:>12} {:>10} {:>13} {:>11} {:>8} {:>6}".format(
            *("-" * len(h) for h in header)
        )
    )
    for label, size, theirs, mine in rows:
        print(
            f"{label:<20} {size:>4} {theirs.calls:>12} {mine.calls:>10} {human(theirs.copied):>13}"
            f" {human(mine.copied):>11} {theirs.seconds:>8.2f} {mine.seconds:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
