"""The demo: start the simulator, seed a Cinder scenario, run vmdk-snap on it."""

from __future__ import annotations

import os
import subprocess
import sys

from vmdk_snap.testing import Simulator


def run(argv: list[str], env: dict[str, str]) -> None:
    print(f"\n$ {' '.join(argv)}", flush=True)
    subprocess.run(argv, env=env, check=True)


def main() -> int:
    with Simulator() as sim:
        info = sim.info
        assert info is not None
        print(f"simulator: {info.url}")
        seeded = sim.control().scenario("instance-two-volumes")
        inst = seeded["instances"][0]
        print(f"instance {inst['name']} ({inst['uuid']}) on {inst['host']}")
        for vol in seeded["volumes"]:
            print(f"  attached {vol['name']}: {vol['vmdk']}")
        env = dict(
            os.environ,
            VMDK_SNAP_URL=info.url,
            VMDK_SNAP_USERNAME=info.username,
            VMDK_SNAP_PASSWORD=info.password,
            VMDK_SNAP_CA_FILE=info.ca_file,
        )
        run(["vmdk-snap", "--version"], env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
