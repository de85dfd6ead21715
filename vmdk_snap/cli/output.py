"""What the command line prints: tables, trees, JSON documents and progress bars.

Results go to standard output, as a table for people or as one JSON document
(``--json``) for scripts. Messages, errors and progress bars go to standard
error, so ``vmdk-snap list VOL --json | jq`` always sees clean JSON.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = [
    "SCHEMA",
    "Output",
    "Progress",
    "TreeNode",
    "render_fields",
    "render_table",
    "render_tree",
]

SCHEMA = 1
"""Version of the ``--json`` shape; bumped only when a key changes meaning or goes away."""

_BAR = 24


def render_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, headers in capitals (as govc)."""
    text_rows = [[_cell(v) for v in row] for row in rows]
    head = [h.upper() for h in headers]
    widths = [len(h) for h in head]
    for row in text_rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, *text_rows]
    ]
    return "\n".join(lines)


def render_fields(fields: Sequence[tuple[str, object]]) -> str:
    """``name:  value`` lines, names aligned (as ``govc vm.info``)."""
    width = max((len(k) for k, _ in fields), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(width)}  {_cell(v)}" for k, v in fields)


@dataclass(frozen=True)
class TreeNode:
    label: str
    children: tuple[TreeNode, ...] = ()


def render_tree(roots: Sequence[TreeNode], indent: str = "") -> str:
    """Box-drawing tree, like ``tree(1)``."""
    lines: list[str] = []
    for i, node in enumerate(roots):
        last = i == len(roots) - 1
        lines.append(f"{indent}{'└─ ' if last else '├─ '}{node.label}")
        if node.children:
            lines.append(render_tree(node.children, indent + ("   " if last else "│  ")))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class Output:
    """Where one command's results and messages go."""

    def __init__(self, stdout: TextIO, stderr: TextIO, *, as_json: bool = False) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.as_json = as_json

    def text(self, text: str) -> None:
        """Print text for people (nothing in --json mode)."""
        if not self.as_json:
            print(text, file=self.stdout, flush=True)

    def document(self, command: str | None, payload: Mapping[str, Any]) -> None:
        """Print the --json document of a command: ``{"schema", "command", ...}``.

        ``command`` is None only when the command line named none that exists.
        """
        if self.as_json:
            doc = {"schema": SCHEMA, "command": command, **payload}
            print(json.dumps(doc, indent=2, sort_keys=True, default=str), file=self.stdout)
            self.stdout.flush()

    def note(self, message: str) -> None:
        """A message for the operator, on stderr."""
        print(message, file=self.stderr, flush=True)

    def progress(self, enabled: bool | None = None) -> Progress:
        """A progress bar on stderr, shown only when stderr is a terminal."""
        if enabled is None:
            isatty = getattr(self.stderr, "isatty", None)
            enabled = bool(isatty and isatty())
        return Progress(self.stderr, enabled=enabled)


class Progress:
    """``on_progress(step, percent)`` callback drawing one bar per step on stderr.

    Fed only by vCenter's task progress: a step with no percentage shows as a
    step name without a bar. Thread-safe (batch workers share one).
    """

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self._stream = stream
        self.enabled = enabled
        self._lock = threading.Lock()
        self._step: str | None = None

    def __call__(self, step: str, percent: int | None) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._step is not None and step != self._step:
                self._stream.write("\n")
            self._step = step
            if percent is None:
                self._stream.write(f"\r{step}")
            else:
                pct = max(0, min(100, int(percent)))
                filled = _BAR * pct // 100
                self._stream.write(f"\r{step} [{'#' * filled}{'.' * (_BAR - filled)}] {pct:3d}%")
            self._stream.flush()

    def listener(self) -> Progress | None:
        """This bar as an ``on_progress`` callback, or ``None`` when it is not shown.

        Without a listener the library waits for tasks without progress
        filters: 2 round trips less per task.
        """
        return self if self.enabled else None

    def close(self) -> None:
        """End the current line, if a bar was drawn."""
        with self._lock:
            if self.enabled and self._step is not None:
                self._stream.write("\n")
                self._stream.flush()
            self._step = None
