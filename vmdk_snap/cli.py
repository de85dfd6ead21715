"""The ``vmdk-snap`` command line (grows with the workflow issue)."""

from __future__ import annotations

import argparse
import sys

from vmdk_snap import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmdk-snap",
        description="Consistent snapshots of Cinder VMDK volumes on vSphere.",
    )
    parser.add_argument("--version", action="version", version=f"vmdk-snap {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
