"""The demo: Work Flow 2 on the simulator, driven with the ``vmdk-snap`` command line.

Starts the simulator, seeds the blueprint's Work Flow 2 (an instance with a
root disk and two attached volumes, storage-vMotioned to another datastore
after data was written, so each volume's chain is duplicated), then runs
``vmdk-snap`` on one volume: check, list (the chains before), snapshot
--dry-run, snapshot without and with --force, the same snapshot again (a
retry: "already exists"), list (the chain after), check --all. Every
command's exit code is checked; the demo exits 0 only if each did what it
should.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from vmdk_snap.testing import Simulator

OK, WRONG_STATE = 0, 4


def vmdk_snap() -> list[str]:
    """The installed console script, or the module when run from a bare checkout."""
    found = shutil.which("vmdk-snap")
    return [found] if found else [sys.executable, "-m", "vmdk_snap.cli"]


def run(args: list[str], env: dict[str, str], expect: int = OK) -> None:
    print(f"\n$ vmdk-snap {' '.join(args)}", flush=True)
    proc = subprocess.run([*vmdk_snap(), *args], env=env, check=False)
    if proc.returncode != expect:
        raise SystemExit(f"demo: 'vmdk-snap {args[0]}' exited {proc.returncode}, expected {expect}")
    if expect != OK:
        print(f"(exit code {proc.returncode}, as expected)", flush=True)


def quietly(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """A command's --json document, for the demo's own checks (not shown)."""
    out = subprocess.run([*vmdk_snap(), *args, "--json"], env=env, check=True, capture_output=True)
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def main() -> int:
    with Simulator() as sim, tempfile.TemporaryDirectory(prefix="vmdk-snap-demo-") as tmp:
        info = sim.info
        assert info is not None
        seeded = sim.control().scenario("workflow2")
        inst = seeded["instances"][0]
        print(f"simulator: {info.url}")
        print(f"Work Flow 2: instance {inst['name']} was moved to ds-shared-2 with its volumes:")
        for vol in seeded["volumes"]:
            print(f"  volume {vol['id']}: backing still at {vol['vmdk']}")
        env = dict(
            os.environ,
            HOME=tmp,  # no operator config file leaks into the demo
            VMDK_SNAP_URL=info.url,
            VMDK_SNAP_USERNAME=info.username,
            VMDK_SNAP_PASSWORD=info.password,
            VMDK_SNAP_CA_FILE=info.ca_file,
            VMDK_SNAP_JOURNAL=os.path.join(tmp, "journal.sqlite"),
            VMDK_SNAP_LOCK_DIR=os.path.join(tmp, "locks"),  # the demo's volumes: its own locks
        )
        ctl = sim.control()
        volume = seeded["volumes"][0]["id"]
        disk = int(quietly(["list", volume], env)["instance"]["disk"]["key"])
        content = ctl.read_disk(inst["moref"], disk)["tokens"]
        print(f"\n(simulator) the guest sees on this volume: {content}")
        run(["check", volume], env)
        run(["list", volume], env)
        run(["snapshot", volume, "--name", "snap-1", "--dry-run", "--force"], env)
        run(["snapshot", volume, "--name", "snap-1"], env, expect=WRONG_STATE)
        run(["snapshot", volume, "--name", "snap-1", "--force"], env)
        run(["snapshot", volume, "--name", "snap-1"], env)  # a retry: the same snapshot
        run(["list", volume], env)
        run(["check", "--all"], env)

        ctl.write(inst["moref"], disk, "after-snap-1")
        doc = quietly(["list", volume], env)
        held = ctl.read_snapshot(doc["snapshots"][0]["moref"], doc["backing"]["disk"]["key"])
        now = ctl.read_disk(inst["moref"], disk)["tokens"]
        print(f"\n(simulator) the guest wrote more; it now sees: {now}")
        print(f"(simulator) snapshot snap-1 still holds:      {held['tokens']}")
        if held["tokens"] != content or now != [*content, "after-snap-1"]:
            raise SystemExit("demo: the snapshot does not hold the volume's content")
    return 0


if __name__ == "__main__":
    sys.exit(main())
