"""Test tiers: live (against the simulator) and replay (from cassettes).

A test marked ``cassette`` runs twice: ``[live]`` against the session's
simulator (recording ``cassettes/<module>/<test>.yaml`` when ``--record`` is
given) and ``[replay]`` from that cassette with the network blocked. Tests
marked ``live`` run against the simulator only.

Options: ``--tier=live|replay|all`` picks tiers; ``--record`` re-records.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cassettes import CASSETTE_DIR, make_vcr
from vmdk_snap.testing import DEFAULT_USERNAME, Control, Simulator


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--tier", choices=["live", "replay", "all"], default="all")
    parser.addoption("--record", action="store_true", help="re-record cassettes from the simulator")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tier" not in metafunc.fixturenames:
        return
    wanted = metafunc.config.getoption("--tier")
    tiers = ["live", "replay"] if wanted == "all" else [wanted]
    if metafunc.definition.get_closest_marker("cassette") is None:
        tiers = [t for t in tiers if t == "live"] or ["live"]
    metafunc.parametrize("tier", tiers, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tier = config.getoption("--tier")
    skip_live = pytest.mark.skip(reason="--tier=replay: live tests are not run")
    for item in items:
        params = getattr(item, "callspec", None)
        item_tier = params.params.get("tier") if params else None
        if item_tier == "replay":
            item.add_marker(pytest.mark.replay)
        elif item_tier == "live" or item.get_closest_marker("live"):
            item.add_marker(pytest.mark.live)
            if tier == "replay":
                item.add_marker(skip_live)


@pytest.fixture
def tier(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    """One simulator for the session; tests seed their own scenarios in it."""
    with Simulator() as sim:
        yield sim
        # pyVmomi's lazy accessors show up as Fetch: none are allowed, in the
        # library or in the tests.
        fetches = sim.control().request("GET", "/calls", total=1).get("Fetch", 0)
        assert fetches == 0, f"{fetches} lazy pyVmomi property fetches reached the simulator"


@dataclass(frozen=True)
class Target:
    """What a test needs to reach vCenter, in either tier."""

    tier: str
    url: str
    host: str
    port: int
    username: str
    password: str
    ca_file: str
    thumbprint: str
    ctl: Control


def _cassette_path(request: pytest.FixtureRequest) -> Path:
    module = str(request.node.module.__name__).rsplit(".", 1)[-1]
    name = str(request.node.originalname)
    return CASSETTE_DIR / module / f"{name}.yaml"


def _block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise OSError("network blocked in replay tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def vc(
    tier: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Target]:
    """A vCenter to talk to: the live simulator, or a cassette of it."""
    cassette = _cassette_path(request)
    meta_path = cassette.with_suffix(".meta.json")
    if tier == "live":
        sim: Simulator = request.getfixturevalue("simulator")
        assert sim.info is not None
        info = sim.info
        target = Target(
            tier,
            info.url,
            info.host,
            info.port,
            info.username,
            info.password,
            info.ca_file,
            info.thumbprint,
            sim.control(),
        )
        recording = request.config.getoption("--record")
        if not recording or request.node.get_closest_marker("cassette") is None:
            yield target
            return
        cassette.parent.mkdir(parents=True, exist_ok=True)
        cassette.unlink(missing_ok=True)
        with make_vcr("all").use_cassette(str(cassette)):
            yield target
        meta = {
            "url": info.url,
            "username": info.username,
            "thumbprint": info.thumbprint,
            "ca_pem": Path(info.ca_file).read_text(),
        }
        meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        return

    if not cassette.exists() or not meta_path.exists():
        pytest.fail(f"no cassette {cassette}; record it with: ./dev record")
    meta = json.loads(meta_path.read_text())
    ca_dir = tempfile.mkdtemp(prefix="vmdk-snap-replay-")
    ca_file = os.path.join(ca_dir, "ca.pem")
    Path(ca_file).write_text(meta["ca_pem"])
    _block_network(monkeypatch)
    url = meta["url"]
    control_url = url.rsplit("/sdk", 1)[0] + "/_ctl"
    sim_host, _, port = url.split("://", 1)[1].split("/", 1)[0].rpartition(":")
    target = Target(
        tier,
        url,
        sim_host,
        int(port),
        meta.get("username", DEFAULT_USERNAME),
        "replay-password",
        ca_file,
        meta["thumbprint"],
        Control(control_url, ca_file),
    )
    with make_vcr("none").use_cassette(str(cassette), allow_playback_repeats=False):
        yield target


@pytest.fixture
def session(vc: Target) -> Iterator[Any]:
    """A connected vmdk_snap Session to ``vc`` (closed after the test)."""
    from vmdk_snap.session import RetryPolicy, Session  # noqa: PLC0415 - keeps pyVmomi out of collection

    with Session(
        vc.url,
        vc.username,
        vc.password,
        ca_file=vc.ca_file,
        retry=RetryPolicy(initial_delay=0.01, max_delay=0.05),
    ) as s:
        yield s


@pytest.fixture
def ops(session: Any) -> Any:
    """VolumeOps on the ``session`` fixture."""
    from vmdk_snap.volumeops import VolumeOps  # noqa: PLC0415 - keeps pyVmomi out of collection

    return VolumeOps(session, task_timeout=60)
