"""The ``vmdk-snap`` command line: parsing, logging, errors and exit codes.

Each subcommand is a thin adapter over :mod:`vmdk_snap.driver` in
:mod:`vmdk_snap.cli.commands` (``batch`` in :mod:`vmdk_snap.cli.batch`);
this module only wires them up. See :mod:`vmdk_snap.cli.base` for the exit codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import NoReturn, TextIO

from vmdk_snap import __version__
from vmdk_snap.cli import batch as cli_batch
from vmdk_snap.cli import commands as cli_commands
from vmdk_snap.cli import views
from vmdk_snap.cli.base import EXIT_USAGE, Context, UsageError, classify, one_line
from vmdk_snap.cli.output import Output

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)

DESCRIPTION = """\
Consistent snapshots of Cinder VMDK volumes on vSphere, attached or not,
without detaching or copying them. VOLUME is a Cinder volume id or volume-<id>.

Connection (highest precedence first): flags; VMDK_SNAP_URL, VMDK_SNAP_USERNAME,
VMDK_SNAP_PASSWORD, VMDK_SNAP_CA_FILE, VMDK_SNAP_THUMBPRINT, VMDK_SNAP_INSECURE;
govc's GOVC_URL (user:pass@host allowed), GOVC_USERNAME, GOVC_PASSWORD,
GOVC_INSECURE; the [vcenter] section of --config (default
~/.config/vmdk-snap/config.ini; a password there only if the file is chmod 600);
for the password, a prompt on a terminal. The password is never a flag.

Exit codes: 0 ok, 1 unexpected, 2 usage/input/config, 3 not found,
4 wrong state, 5 busy, 6 connection/certificate/login, 7 vCenter task failed,
8 partial (batch, check --all), 9 run 'vmdk-snap recover', 130 interrupted.
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (the message says where to get help), exit 2."""

    commands: tuple[str, ...] = ()  # the subcommands' names (on the top-level parser)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _common() -> argparse.ArgumentParser:
    """Options accepted before or after the subcommand (as govc's flags)."""
    p = _Parser(add_help=False)
    s = argparse.SUPPRESS
    g = p.add_argument_group("connection and output")
    g.add_argument("--url", default=s, help="vCenter SDK URL, e.g. https://vc.example.org/sdk")
    g.add_argument("--username", "-u", default=s, help="vCenter user name")
    g.add_argument("--ca-file", default=s, help="CA bundle (PEM) to verify vCenter's certificate")
    g.add_argument("--thumbprint", default=s, help="pinned SHA-256 thumbprint of the certificate")
    g.add_argument(
        "--insecure", "-k", action="store_true", default=s, help="skip certificate checks"
    )
    g.add_argument("--config", default=s, help="config file (default ~/.config/vmdk-snap/...)")
    g.add_argument("--journal", default=s, help="workflow journal (SQLite) path")
    g.add_argument(
        "--lock-dir",
        default=s,
        help="lock directory every vmdk-snap of the host shares, whatever its journal "
        "(VMDK_SNAP_LOCK_DIR; default /run/lock/vmdk-snap)",
    )
    g.add_argument(
        "--coordination-url",
        default=s,
        help="lock in this coordination service (tooz), so that locks hold across hosts, "
        "e.g. etcd3+http://127.0.0.1:2379 (VMDK_SNAP_COORDINATION_URL; [coordination] "
        "backend_url in the config file, as in cinder.conf; default: the lock directory)",
    )
    g.add_argument("--json", action="store_true", default=s, help="print one JSON document")
    g.add_argument("-v", "--verbose", action="count", default=s, help="log to stderr (-vv: debug)")
    return p


_DEFAULTS = {
    "url": None,
    "username": None,
    "ca_file": None,
    "thumbprint": None,
    "insecure": False,
    "config": None,
    "journal": None,
    "lock_dir": None,
    "coordination_url": None,
    "json": False,
    "verbose": 0,
}


def build_parser() -> _Parser:
    common = _common()
    parser = _Parser(
        prog="vmdk-snap",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"vmdk-snap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cli_commands.register(sub, common)
    cli_batch.register(sub, common)
    parser.commands = tuple(sub.choices)
    return parser


# Parse errors that a volume id starting with '-', taken for an option, causes.
_MISSING = ("unrecognized arguments", "required", "explicit argument", "expected one argument")
_DASHED = re.compile(r"^-[0-9A-Za-z][0-9A-Za-z-]+$")
_FLAGS = re.compile(r"^-[hkv]+$")  # short options that take no value, possibly combined


def _parse_failed(
    exc: UsageError, argv: Sequence[str], commands: Sequence[str], stdout: TextIO, stderr: TextIO
) -> int:
    """Report a command line argparse refused: one line, and the JSON error if --json was given.

    The parse stopped before --json was read, so it is looked for in ``argv``
    (before ``--``; argparse also takes the prefix ``--js``).
    """
    words = list(argv[: argv.index("--")] if "--" in argv else argv)
    message = one_line(exc)
    command = next((w for w in words if w in commands), None)
    dashed = next((w for w in words if _DASHED.match(w) and not _FLAGS.match(w)), None)
    if dashed and any(m in message for m in _MISSING):
        example = f"vmdk-snap {command or 'COMMAND'} [OPTIONS] -- {dashed}"
        message += f"; put -- before volume ids that start with '-': {example}"
    as_json = any(len(w) >= 4 and "--json".startswith(w) for w in words)
    out = Output(stdout, stderr, as_json=as_json)
    out.note(f"vmdk-snap: {message}")
    out.document(command, {"error": {"kind": "usage", "exit_code": EXIT_USAGE, "message": message}})
    return EXIT_USAGE


def _logging(verbose: int, stderr: TextIO) -> logging.Handler:
    """Logs on stderr with -v (info) or -vv (debug); without -v, none.

    Without -v the command's one-line error says what went wrong; the
    library's warnings on the way there (a failed step before its rollback)
    would only repeat it.
    """
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    )
    level = logging.INFO if verbose == 1 else logging.DEBUG if verbose else logging.CRITICAL + 1
    handler.setLevel(level)
    root = logging.getLogger()
    root.addHandler(handler)
    if verbose:
        root.setLevel(min(root.getEffectiveLevel(), level))
    if verbose < 2:  # pyVmomi and urllib3 are very chatty at debug
        for name in ("pyVmomi", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return handler


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    interactive: bool | None = None,
) -> int:
    """Run one ``vmdk-snap`` command and return its exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _parse_failed(exc, argv, parser.commands, stdout, stderr)
    # Defaults here, not with set_defaults: the option objects are shared with
    # the subcommands (parents=), and a default there would undo "--json list".
    for key, value in _DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    if interactive is None:
        interactive = sys.stdin.isatty()
    ctx = Context(
        args=args,
        out=Output(stdout, stderr, as_json=args.json),
        env=os.environ if env is None else env,
        interactive=interactive,
    )
    handler = _logging(args.verbose, stderr)
    try:
        code: int = args.run(ctx)
        return code
    # The one place any error becomes a one-line message and its exit code.
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001
        code, kind = classify(exc)
        message = one_line(exc)
        if args.verbose:
            traceback.print_exception(exc, file=stderr)
        print(f"vmdk-snap: {message}", file=stderr, flush=True)
        payload: dict[str, object] = {
            "error": {"kind": kind, "exit_code": code, "message": message}
        }
        members = getattr(exc, "members", None)
        if members:  # a group snapshot: each member's record
            for m in members:
                print(f"  volume-{m.volume_id}: {m.state}", file=stderr, flush=True)
            payload["members"] = [views.member_doc(m) for m in members]
        ctx.out.document(args.command, payload)
        return code
    finally:
        logging.getLogger().removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
