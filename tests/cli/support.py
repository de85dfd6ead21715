"""Running ``vmdk-snap`` in-process against a test target, as an operator would."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import Target
from vmdk_snap.cli.main import main


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def line(self) -> str:
        """The one line on stderr (fails if there is not exactly one)."""
        lines = self.err.splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
        assert "Traceback" not in self.err
        return lines[0]


class Tty(io.StringIO):
    """A captured stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@dataclass
class Cli:
    """``vmdk-snap`` with the environment an operator would have for ``target``."""

    target: Target
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {
            "HOME": str(self.home),  # no operator config file is read
            "VMDK_SNAP_URL": self.target.url,
            "VMDK_SNAP_USERNAME": self.target.username,
            "VMDK_SNAP_PASSWORD": self.target.password,
            "VMDK_SNAP_CA_FILE": self.target.ca_file,
            "VMDK_SNAP_JOURNAL": str(self.home / "journal.sqlite"),
        }

    def __call__(
        self, *argv: str, env: Mapping[str, str] | None = None, tty: bool = False
    ) -> Result:
        out = io.StringIO()
        err = Tty() if tty else io.StringIO()
        code = main(list(argv), env=env or self.env, stdout=out, stderr=err, interactive=False)
        return Result(code, out.getvalue(), err.getvalue())


def tasks_started(calls: Mapping[str, int]) -> dict[str, int]:
    """The task-starting SOAP methods in a call count (what changes vCenter)."""
    return {m: n for m, n in calls.items() if m.endswith("_Task")}
