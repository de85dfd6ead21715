"""Test tiers: live (against the simulator) and replay (from cassettes).

A test marked ``cassette`` runs twice: ``[live]`` against the session's
simulator (recording ``cassettes/<module>/<test>.yaml`` when ``--record`` is
given) and ``[replay]`` from that cassette with the network blocked. Tests
marked ``live`` run against the simulator only.

Options: ``--tier=live|replay|all`` picks tiers; ``--record`` re-records.

Recording targets the simulator, or a real vCenter when
``VMDK_SNAP_RECORD_URL`` (and its user name and password) are set: the
``vc`` fixture then points there, scenarios are built with plain pyVmomi
(``tests/realvc.py``) and tests that need the simulator's control API are
skipped. ``VMDK_SNAP_CASSETTE_DIR`` records into (and replays from) another
directory than ``cassettes/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cassettes import CASSETTE_DIR, make_vcr, scan
from tests.realvc import NEEDS_CTL, RealVCenterControl, RecordTarget
from vmdk_snap.testing import DEFAULT_USERNAME, Control, Simulator

# vcrpy logs every response at INFO, session keys included: keep it quiet.
logging.getLogger("vcr").setLevel(logging.WARNING)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--tier", choices=["live", "replay", "all"], default="all")
    parser.addoption(
        "--record",
        action="store_true",
        help="re-record cassettes from the simulator (or the vCenter in VMDK_SNAP_RECORD_URL)",
    )


def _record_target(config: pytest.Config) -> RecordTarget | None:
    """The real vCenter to record from: only with --record and VMDK_SNAP_RECORD_URL."""
    if not config.getoption("--record"):
        return None
    try:
        return RecordTarget.from_env()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc


def pytest_report_header(config: pytest.Config) -> str | None:
    target = _record_target(config)
    if target is None:
        return None
    return f"recording against the real vCenter {target.url} into {CASSETTE_DIR}"


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
    # Longest first (a stable sort keeps the rest in order): xdist hands tests
    # out in this order, and a long one started last would end the run alone.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


REPO = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a Python process a test starts: this checkout first on its path.

    The child then imports vmdk_snap from this checkout whatever the worker's
    state (once, on one xdist worker, children could not import it through the
    virtualenv's editable install; the cause was not found).
    """
    first = extra.pop("PYTHONPATH", "")  # a test's own packages, before this checkout
    parts = (first, str(REPO), os.environ.get("PYTHONPATH", ""))
    path = os.pathsep.join(p for p in parts if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


@pytest.fixture(autouse=True)
def lock_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The host-wide lock directory, one per test: never the system's.

    Through the environment, so the processes a test starts share it; a
    directory of each test's own, so tests (and xdist workers) never hold
    each other's locks.
    """
    path = tmp_path_factory.mktemp("locks")
    monkeypatch.setenv("VMDK_SNAP_LOCK_DIR", str(path))
    return path


@pytest.fixture
def tier(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(scope="session")
def simulator(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    """One simulator for the session; tests seed their own scenarios in it.

    When it stops, the session fails (an error in pytest's summary, exit
    code 1) if any lazy pyVmomi property access (``Fetch``) reached it.
    """
    if _record_target(request.config) is not None:
        pytest.skip(f"{NEEDS_CTL}: the test uses the simulator itself")
    with Simulator() as sim:
        yield sim
        fetches = _fetches(sim)
        if fetches:
            request.config.stash[_FETCHES] = fetches
            pytest.fail(_fetch_message(fetches), pytrace=False)


_FETCHES = pytest.StashKey[int]()


def _fetches(sim: Simulator) -> int:
    """Lazy pyVmomi accesses (``Fetch``) the simulator ever received: none are
    allowed, in the library or in the tests."""
    return int(sim.control().request("GET", "/calls", total=1).get("Fetch", 0))


def _fetch_message(fetches: int) -> str:
    return (
        f"Fetch check: {fetches} lazy pyVmomi property fetch(es) reached the simulator "
        "during this session: read properties with the property collector "
        "(tests/vsphere.py props), never vm.config... or si.content"
    )


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Repeat a failed Fetch check in full at the end (the short summary cuts it)."""
    fetches = config.stash.get(_FETCHES, 0)
    if fetches:
        terminalreporter.section("suite checks", sep="=", red=True, bold=True)
        terminalreporter.line("FAILED " + _fetch_message(fetches), red=True)


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
    insecure: bool = False

    @classmethod
    def of(cls, sim: Simulator, tier: str = "live") -> Target:
        """The target of a running simulator."""
        info = sim.info
        assert info is not None, "the simulator is not running"
        return cls(
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


def _cassette_path(request: pytest.FixtureRequest) -> Path:
    return _cassette_of(request.node)


def _cassette_of(item: Any) -> Path:
    module = str(item.module.__name__).rsplit(".", 1)[-1]
    name = str(item.originalname)
    return CASSETTE_DIR / module / f"{name}.yaml"


def _record_skip(cassette: Path, reason: str) -> None:
    """Note that a test could not be recorded from a real vCenter.

    A cassette recorded before (from the simulator) is kept as it is; only a
    test without one gets a note, so that replay skips it for the same
    reason instead of failing for a missing cassette.
    """
    meta_path = cassette.with_suffix(".meta.json")
    if cassette.exists() or meta_path.exists():
        return
    cassette.parent.mkdir(parents=True, exist_ok=True)
    _write_meta(meta_path, {"seeder": "vcenter", "skipped": reason})


_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report, so fixtures can tell a skipped test at teardown."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _skip_reason(item: pytest.Item) -> str | None:
    for report in item.stash.get(_REPORTS, {}).values():
        if report.skipped:
            longrepr = report.longrepr
            if isinstance(longrepr, tuple):
                return str(longrepr[2]).removeprefix("Skipped: ")
            return str(longrepr)
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Recording from a real vCenter: tests that use the simulator itself skip."""
    if _record_target(item.config) is None or item.get_closest_marker("cassette") is None:
        return
    params = getattr(item, "callspec", None)
    if params is None or params.params.get("tier") != "live":
        return
    if "simulator" in getattr(item, "fixturenames", ()):
        reason = f"{NEEDS_CTL}: the test uses the simulator itself"
        _record_skip(_cassette_of(item), reason)
        pytest.skip(reason)


def _block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise OSError("network blocked in replay tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def _check_scrubbed(cassette: Path, meta_path: Path, password: str) -> None:
    """Fail (and delete the recording) if a credential got into it."""
    files = [p for p in (cassette, meta_path) if p.exists()]
    findings = scan(files, secrets=[password])
    if findings:
        for p in files:
            p.unlink()
        pytest.fail("credentials in the recording (deleted): " + "; ".join(findings))


def _server_thumbprint(target: RecordTarget) -> str:
    """SHA-256 of the vCenter's certificate (tests pin it), as ``AB:CD:...``.

    The handshake is verified with the CA file or the system's CAs, unless
    the target is insecure.
    """
    context = ssl.create_default_context(cafile=target.ca_file or None)
    if target.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((target.host_name, target.port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=target.host_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True) or b""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _record_real(
    target: RecordTarget, request: pytest.FixtureRequest, cassette: Path, meta_path: Path
) -> Iterator[Target]:
    """Record ``cassette`` against a real vCenter, seeding with plain pyVmomi."""
    namespace = f"{cassette.parent.name}/{cassette.stem}"
    ctl = RealVCenterControl(target, namespace)
    thumbprint = target.thumbprint or _server_thumbprint(target)
    live = Target(
        "live",
        target.url,
        target.host_name,
        target.port,
        target.username,
        target.password,
        target.ca_file,
        thumbprint,
        ctl,
        target.insecure,
    )
    # Record beside the cassette: a test that skips (it needs the control
    # API) leaves the cassette recorded before from the simulator in place.
    cassette.parent.mkdir(parents=True, exist_ok=True)
    partial = cassette.with_suffix(".recording.yaml")
    partial.unlink(missing_ok=True)
    try:
        with make_vcr("all").use_cassette(str(partial)):
            try:
                yield live
            finally:
                ctl.close()
    finally:
        skipped = _skip_reason(request.node)
        if skipped is not None or not partial.exists():
            partial.unlink(missing_ok=True)
            _record_skip(cassette, skipped or f"{NEEDS_CTL}: nothing was recorded")
    if not partial.exists():
        return
    partial.replace(cassette)
    meta = {
        "url": target.url,
        "username": target.username,
        "thumbprint": thumbprint,
        "ca_pem": Path(target.ca_file).read_text() if target.ca_file else "",
        "insecure": target.insecure,
        "seeder": "vcenter",
        "placement": target.placement(),
    }
    _write_meta(meta_path, meta)
    _check_scrubbed(cassette, meta_path, target.password)


@pytest.fixture
def vc(
    tier: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Target]:
    """A vCenter to talk to: the live simulator (or, when recording, the
    vCenter in ``VMDK_SNAP_RECORD_URL``), or a cassette of either."""
    cassette = _cassette_path(request)
    meta_path = cassette.with_suffix(".meta.json")
    if tier == "live":
        recording = request.config.getoption("--record")
        is_cassette = request.node.get_closest_marker("cassette") is not None
        real = _record_target(request.config)
        if real is not None:
            if not is_cassette:
                pytest.skip(f"{NEEDS_CTL}: only cassette tests are recorded from a real vCenter")
            yield from _record_real(real, request, cassette, meta_path)
            return
        sim: Simulator = request.getfixturevalue("simulator")
        target = Target.of(sim, tier)
        info = sim.info
        assert info is not None
        if not recording or not is_cassette:
            yield target
            return
        cassette.parent.mkdir(parents=True, exist_ok=True)
        cassette.unlink(missing_ok=True)
        with make_vcr("all").use_cassette(str(cassette)):
            yield target
        _write_meta(
            meta_path,
            {
                "url": info.url,
                "username": info.username,
                "thumbprint": info.thumbprint,
                "ca_pem": Path(info.ca_file).read_text(),
                "seeder": "simulator",
            },
        )
        _check_scrubbed(cassette, meta_path, info.password)
        return

    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    placement: dict[str, str] = dict(meta.get("placement") or {})
    if meta.get("skipped"):
        pytest.skip(f"recorded from a real vCenter without this test: {meta['skipped']}")
    if not cassette.exists() or not meta_path.exists():
        pytest.fail(f"no cassette {cassette}; record it with: ./dev record")
    ca_file = ""
    if meta.get("ca_pem"):
        ca_dir = tempfile.mkdtemp(prefix="vmdk-snap-replay-")
        ca_file = os.path.join(ca_dir, "ca.pem")
        Path(ca_file).write_text(meta["ca_pem"])
    _block_network(monkeypatch)
    url = meta["url"]
    control_url = url.rsplit("/sdk", 1)[0] + "/_ctl"
    sim_host, _, port = url.split("://", 1)[1].split("/", 1)[0].rpartition(":")
    username = meta.get("username", DEFAULT_USERNAME)
    ctl: Control = Control(control_url, ca_file or None)
    if meta.get("seeder") == "vcenter":
        # Recorded from a real vCenter: the seeder's SOAP calls are in the
        # cassette, so the same seeder replays them.
        replayed = RecordTarget(
            url=url,
            username=username,
            password="replay-password",
            ca_file=ca_file,
            thumbprint=meta.get("thumbprint", ""),
            insecure=bool(meta.get("insecure", False)),
            **placement,
        )
        ctl = RealVCenterControl(replayed, f"{cassette.parent.name}/{cassette.stem}")
    target = Target(
        tier,
        url,
        sim_host or "127.0.0.1",
        int(port or 443),
        username,
        "replay-password",
        ca_file,
        meta["thumbprint"],
        ctl,
        bool(meta.get("insecure", False)),
    )
    with make_vcr("none").use_cassette(str(cassette), allow_playback_repeats=False):
        try:
            yield target
        finally:
            if isinstance(ctl, RealVCenterControl):
                ctl.close()


@pytest.fixture
def session(vc: Target) -> Iterator[Any]:
    """A connected vmdk_snap Session to ``vc`` (closed after the test)."""
    from vmdk_snap.vsphere.session import RetryPolicy, Session  # noqa: PLC0415 - keeps pyVmomi out of collection

    with Session(
        vc.url,
        vc.username,
        vc.password,
        ca_file=vc.ca_file or None,
        thumbprint=None if vc.ca_file else vc.thumbprint or None,
        insecure=vc.insecure,
        retry=RetryPolicy(initial_delay=0.01, max_delay=0.05),
    ) as s:
        yield s


@pytest.fixture
def ops(session: Any) -> Any:
    """VolumeOps on the ``session`` fixture."""
    from vmdk_snap.vsphere.volumeops import VolumeOps  # noqa: PLC0415 - keeps pyVmomi out of collection

    return VolumeOps(session, task_timeout=60)


@pytest.fixture
def quick_sim(vc: Target) -> Iterator[Target]:
    """``vc`` with tasks that end at once and updates looked for every 10 ms.

    For tests whose subject is not timing (a fault at every call, rounds of
    workflows): each task still ends within its first wait, as with the
    stock 250 ms interval and 20 ms tasks, so the calls are the same, in a
    tenth of the time. Timing is reset afterwards.
    """
    vc.ctl.set_default_task_time(0)
    vc.ctl.set_update_interval(10)
    try:
        yield vc
    finally:
        vc.ctl.reset_timing()


@pytest.fixture
def own_vc(tier: str) -> Iterator[Target]:
    """A simulator of the test's own, live only.

    For tests that fill the inventory (1,000 VMs, a scenario per fault
    injected) or count reads across all of it: the worker's shared simulator
    holds every earlier test's VMs, and every later test's inventory-wide
    reads (finding an attached volume, recovery's search) pay for them. A
    module overrides ``vc`` with it so that ``session`` and ``ops`` follow.
    """
    if tier != "live":
        pytest.skip("live only: an inventory of the test's own")
    with Simulator() as sim:
        yield Target.of(sim)
        # The session's check on the shared simulator, for this one.
        fetches = _fetches(sim)
        assert not fetches, _fetch_message(fetches)


@pytest.fixture
def clean_sim(vc: Target) -> Iterator[Target]:
    """``vc``, with faults and task timing reset after the test (both are global)."""
    try:
        yield vc
    finally:
        vc.ctl.clear_faults()
        vc.ctl.reset_timing()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[str]:
    """A real etcd of the test's own; its tooz URL (``etcd3+http://...?timeout=N``)."""
    from tests.etcd import running_etcd  # noqa: PLC0415 - only tests that ask start one

    with running_etcd(tmp_path / "etcd") as url:
        yield url
