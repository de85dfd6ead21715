"""Bad input: exit 2, one line saying what to do, the JSON error with --json, nothing touched.

Each case is refused before connecting: the target is a local port nobody
listens on, so an attempt to connect would end in exit 6 instead of 2. The
journal cases also check that the refused file keeps its bytes and mtime.
"""

from __future__ import annotations

import io
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.support import Cli, Result
from tests.conftest import Target
from vmdk_snap.cli.base import EXIT_USAGE
from vmdk_snap.workflows.journal import Journal

UNKNOWN = "00000000-dead-beef-0000-000000000000"


def closed_port_cli(home: Path) -> Cli:
    """``vmdk-snap`` aimed at a local port nobody listens on: connecting fails at once (exit 6)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = Target("live", f"https://127.0.0.1:{port}/sdk", "127.0.0.1", port, "u", "p",
                    "", "", None)  # type: ignore[arg-type]  # fmt: skip
    cli = Cli(target, home)
    cli.env.pop("VMDK_SNAP_CA_FILE")
    return cli


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    return closed_port_cli(home)


def usage_error(r: Result) -> str:
    """The message of an exit-2 error, checked to be one line (and the JSON's, if any).

    Exit 2 and not 6 also says that the command never tried to connect.
    """
    assert r.code == EXIT_USAGE, r.err
    assert r.line.startswith("vmdk-snap: ")
    message = r.line.removeprefix("vmdk-snap: ")
    if r.out:
        assert r.json()["error"] == {"kind": "usage", "exit_code": EXIT_USAGE, "message": message}
    return message


def files(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory``: its bytes and mtime."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# -- the journal -------------------------------------------------------------------


def _journal_bytes(directory: Path) -> bytes:
    journal = Journal(directory / "journal.sqlite")
    journal.begin("snapshot", "vol-1", {"name": "s1"})
    return journal.path.read_bytes()


def _sqlite(path: Path, sql: str) -> None:
    db = sqlite3.connect(path)
    db.execute(sql)
    db.commit()
    db.close()


JOURNALS: dict[str, tuple[Callable[[Path, bytes], object], str, str]] = {
    # kind: (make it, what the error says, what to do with {setting} where the path came from)
    "text": (
        lambda p, _: p.write_text("hello\n" * 50),
        "is not a vmdk-snap journal (not an SQLite database)",
        "point {setting} at a new file or at a vmdk-snap journal",
    ),
    "foreign": (
        lambda p, _: _sqlite(p, "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)"),
        "is not a vmdk-snap journal (an SQLite database with other tables: accounts)",
        "point {setting} at a new file or at a vmdk-snap journal",
    ),
    "foreign-steps": (
        lambda p, _: _sqlite(p, "CREATE TABLE steps (id INTEGER PRIMARY KEY, recipe TEXT)"),
        "is not a vmdk-snap journal (an SQLite database whose table steps is not a journal's)",
        "point {setting} at a new file or at a vmdk-snap journal",
    ),
    "truncated": (
        lambda p, good: p.write_bytes(good[: len(good) // 2]),
        "is damaged (SQLite: database disk image is malformed)",
        "restore it from a backup, or point {setting} at a new file",
    ),
    "corrupt": (
        lambda p, good: p.write_bytes(good[:16] + b"\x00\x07" + good[18:]),
        "is damaged (SQLite: file is not a database)",
        "restore it from a backup, or point {setting} at a new file",
    ),
    "directory": (
        lambda p, _: p.mkdir(),
        "is a directory",
        "point {setting} at a file, e.g. ",
    ),
}


@pytest.mark.parametrize("kind", sorted(JOURNALS))
def test_a_journal_that_is_not_one_is_refused_untouched(
    cli: Cli, tmp_path: Path, kind: str
) -> None:
    make, says, remedy = JOURNALS[kind]
    good = _journal_bytes(tmp_path)
    here = tmp_path / "here"
    here.mkdir()
    path = here / "journal.sqlite"
    make(path, good)
    before = files(here)
    env = {k: v for k, v in cli.env.items() if k != "VMDK_SNAP_JOURNAL"}
    config = cli.home / "config.ini"
    config.write_text(f"[vcenter]\njournal = {path}\n")

    for argv, run_env, setting in [
        (["list", UNKNOWN, "--journal", str(path)], env, "--journal"),
        (["snapshot", UNKNOWN, "--name", "s1", "--json"], env | {"VMDK_SNAP_JOURNAL": str(path)},
         "VMDK_SNAP_JOURNAL"),
        (["recover", "--config", str(config)], env, f"journal in {config}"),
        (["batch", "check", "--all-attached", "--journal", str(path), "--json"], env, "--journal"),
    ]:  # fmt: skip
        r = cli(*argv, env=run_env)
        message = usage_error(r)
        assert message.startswith(f"journal {path} {says}"), message
        assert "; " + remedy.format(setting=setting) in message, message
        assert bool(r.out) == ("--json" in argv)
        assert files(here) == before  # same bytes, same mtime, nothing beside it


def test_a_journal_that_cannot_be_created_is_refused(cli: Cli, tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where a directory should be\n")
    path = blocker / "vmdk-snap" / "journal.sqlite"
    r = cli("list", UNKNOWN, "--journal", str(path), "--json")
    assert usage_error(r) == (
        f"journal {path} cannot be created ({blocker} is not a directory); "
        "point --journal at a file in a directory this user can write"
    )
    assert blocker.read_text() == "a file where a directory should be\n"


def test_a_good_journal_is_still_accepted(cli: Cli, tmp_path: Path) -> None:
    """The checks do not refuse the journal a previous command created."""
    path = tmp_path / "journal.sqlite"
    _journal_bytes(tmp_path)
    r = cli("list", "vol<1>", "--journal", str(path))  # refused after the journal check
    assert "is not a Cinder volume" in usage_error(r)


# -- URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://[::1/sdk", "an IPv6 address without its closing ']'"),
        ("https://vc.example.org:99999/sdk", "port 99999 is out of range"),
        ("vc.example.org:abc", "port 'abc' is not a number"),
    ],
)
def test_a_malformed_url_is_refused_before_connecting(cli: Cli, url: str, problem: str) -> None:
    remedy = "give https://HOST[:PORT]/sdk, an IPv6 HOST in brackets, PORT from 1 to 65535"
    env = {k: v for k, v in cli.env.items() if k != "VMDK_SNAP_URL"}
    config = cli.home / "config.ini"
    config.write_text(f"[vcenter]\nurl = {url}\n")
    for argv, run_env, where in [
        (["list", UNKNOWN, "--url", url], env, "--url"),
        (["list", UNKNOWN, "--json"], env | {"VMDK_SNAP_URL": url}, "VMDK_SNAP_URL"),
        (["snapshot", UNKNOWN, "--name", "s1"], env | {"GOVC_URL": url}, "GOVC_URL"),
        (["recover", "--config", str(config)], env, f"url in {config}"),
    ]:
        message = usage_error(cli(*argv, env=run_env))
        assert message == f"{where} {url!r} is not a valid vCenter URL ({problem}): {remedy}"


def test_a_malformed_url_never_shows_its_password(cli: Cli) -> None:
    env = {k: v for k, v in cli.env.items() if k != "VMDK_SNAP_URL"}
    r = cli("list", UNKNOWN, "--json", env=env | {"GOVC_URL": "admin:s3cret-pw@[::1:443"})
    message = usage_error(r)
    assert message.startswith("GOVC_URL '***@[::1:443' is not a valid vCenter URL")
    assert "s3cret" not in r.out + r.err


# -- batch files -------------------------------------------------------------------


def test_a_volume_list_that_is_not_utf8_is_refused(cli: Cli) -> None:
    listing = cli.home / "volumes.txt"
    listing.write_bytes(b"# nightly\nvolume-1\nvol\xe9-2\n")
    r = cli("batch", "check", "--file", str(listing), "--json")
    assert usage_error(r) == (
        f"volume list {listing} is not UTF-8 text: byte 0xe9 at offset 22 (line 3): "
        "save it as UTF-8 (volume ids are plain ASCII)"
    )


def test_a_volume_list_on_stdin_that_is_not_utf8_is_refused(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfev\x00o\x00l\x00")))
    message = usage_error(cli("batch", "check", "--file", "-"))
    assert message.startswith("volume list on stdin is not UTF-8 text: byte 0xff at offset 0")


# -- --json with argument errors ---------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "command", "says"),
    [
        (["--json", "frobnicate"], None, "invalid choice: 'frobnicate'"),
        (["--json"], None, "the following arguments are required: COMMAND"),
        (["snapshot", UNKNOWN, "--json"], "snapshot", "arguments are required: --name"),
        (["--json", "list", UNKNOWN, "--bogus"], "list", "unrecognized arguments: --bogus"),
        (["list", "--js"], "list", "the following arguments are required: VOLUME"),
        (["batch", "snapshot", "--json", "--concurrency", "x"], "batch", "invalid int value"),
        (["list", UNKNOWN, "--json", "--config", "/nonexistent/c.ini"], "list", "does not exist"),
    ],
)
def test_json_argument_errors_print_the_json_error(
    cli: Cli, argv: list[str], command: str | None, says: str
) -> None:
    r = cli(*argv)
    message = usage_error(r)
    assert says in message
    doc = r.json()
    assert doc["schema"] == 1
    assert doc["command"] == command
    assert doc["error"]["message"] == message


def test_json_after_double_dash_is_not_the_option(cli: Cli) -> None:
    r = cli("snapshot", "--", "--json")  # a (strange) volume id; --name is still missing
    assert "arguments are required: --name" in usage_error(r)
    assert r.out == ""


# -- volume ids that start with '-' -------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "example"),
    [
        (["snapshot", "-3f2a-9c1e", "--name", "s1"], "vmdk-snap snapshot [OPTIONS] -- -3f2a-9c1e"),
        (["snapshot", "--name", "s1", "-3f2a-9c1e"], "vmdk-snap snapshot [OPTIONS] -- -3f2a-9c1e"),
        (["delete", "-abc", "s1", "--json"], "vmdk-snap delete [OPTIONS] -- -abc"),
        (["check", "-abc"], "vmdk-snap check [OPTIONS] -- -abc"),
        (["list", UNKNOWN, "-abc"], "vmdk-snap list [OPTIONS] -- -abc"),
    ],
)
def test_a_volume_id_taken_for_an_option_gets_the_double_dash_remedy(
    cli: Cli, argv: list[str], example: str
) -> None:
    message = usage_error(cli(*argv))
    assert message.endswith(f"; put -- before volume ids that start with '-': {example}")


def test_other_argument_errors_do_not_mention_double_dash(cli: Cli) -> None:
    assert "put --" not in usage_error(cli("snapshot", UNKNOWN, "-vv"))
    assert "put --" not in usage_error(cli("frobnicate", "-k"))


def test_volume_ids_that_start_with_a_dash_pass_after_double_dash(cli: Cli) -> None:
    """They reach the connection (refused), so argparse and the id check let them by."""
    for argv in (
        ["snapshot", "--name", "s1", "--", "-3f2a-9c1e"],
        ["delete", "--json", "--", "-3f2a-9c1e", "s1"],
        ["list", "--", "volume--3f2a-9c1e"],
        ["snapshot", "-1234", "--name", "s1"],  # a negative number is no option to argparse
    ):
        r = cli(*argv)
        assert r.code == 6, (argv, r.err)
        assert "cannot reach" in r.line
