"""Test helpers: start the vcsim test bed and drive its control API.

The simulator is our own Go program in ``tests/vcsim`` around govmomi's
vCenter simulator. This module starts it on a free loopback port, waits for
its ready line and talks to its control API (``/_ctl``) over HTTPS. It never
touches pyVmomi: tests use it to seed scenarios, inject faults, count calls
and read disk contents.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["SimInfo", "Simulator", "SimulatorError", "build_simulator", "repo_root"]

log = logging.getLogger(__name__)

DEFAULT_USERNAME = "administrator@vsphere.local"


class SimulatorError(RuntimeError):
    """The simulator could not be built, started or asked something."""


def repo_root() -> Path:
    """Return the checkout this module lives in."""
    return Path(__file__).resolve().parent.parent


def build_simulator() -> Path:
    """Build (or reuse the cached build of) the simulator and return its path.

    ``VMDK_SNAP_VCSIM`` names a prebuilt binary and skips the build.
    """
    prebuilt = os.environ.get("VMDK_SNAP_VCSIM")
    if prebuilt:
        return Path(prebuilt)
    script = repo_root() / "tests" / "vcsim" / "build.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SimulatorError(f"building the simulator failed:\n{proc.stderr.strip()}")
    return Path(proc.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class SimInfo:
    """Where a running simulator listens and how to trust it."""

    url: str
    control_url: str
    ca_file: str
    thumbprint: str
    root: str
    username: str
    password: str

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or 443


class Simulator:
    """A running vcsim process and a client for its control API.

    Use as a context manager; the process is stopped and its datastores are
    removed on exit.
    """

    def __init__(self, password: str | None = None, binary: Path | None = None) -> None:
        self._binary = binary
        self._password = password or "vcsim-" + os.urandom(8).hex()
        self._proc: subprocess.Popen[str] | None = None
        self._root: str | None = None
        self.info: SimInfo | None = None

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> SimInfo:
        """Start the simulator and wait for its ready line."""
        binary = self._binary or build_simulator()
        self._root = tempfile.mkdtemp(prefix="vmdk-snap-vcsim-")
        env = dict(os.environ, VCSIM_PASSWORD=self._password, VCSIM_USERNAME=DEFAULT_USERNAME)
        # VMDK_SNAP_VCSIM_LOG=<file> keeps the simulator's log (debugging).
        log_path = os.environ.get("VMDK_SNAP_VCSIM_LOG")
        stderr: Any = open(log_path, "a") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [str(binary), "-listen", "127.0.0.1:0", "-root", self._root],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
        )
        if log_path:
            stderr.close()  # the simulator has its own descriptor
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self.stop()
            raise SimulatorError("the simulator exited before it was ready")
        ready = json.loads(line)
        self.info = SimInfo(
            url=ready["url"],
            control_url=ready["control_url"],
            ca_file=ready["ca_file"],
            thumbprint=ready["thumbprint"],
            root=ready["root"],
            username=DEFAULT_USERNAME,
            password=self._password,
        )
        log.info("simulator ready at %s", self.info.url)
        return self.info

    def stop(self) -> None:
        """Stop the process and remove its datastores."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    # -- control API -------------------------------------------------------

    def control(self) -> Control:
        """Return a client for this simulator's control API."""
        if self.info is None:
            raise SimulatorError("the simulator is not running")
        return Control(self.info.control_url, self.info.ca_file)


class Control:
    """Client for the simulator's control API (see tests/vcsim/README.md)."""

    def __init__(self, base_url: str, ca_file: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def request(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """Call the control API and return its decoded JSON answer."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: str(v) for k, v in sorted(query.items())})
        data = None if body is None else json.dumps(body, sort_keys=True).encode()
        # The URL is the simulator's own https control endpoint, never user input.
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=120) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            raise SimulatorError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc

    def scenario(self, name: str, **params: Any) -> dict[str, Any]:
        """Seed a named scenario and return what it created."""
        result: dict[str, Any] = self.request("POST", f"/scenario/{name}", **params)
        return result

    def calls(self) -> dict[str, int]:
        """SOAP calls received per method since the last reset."""
        result: dict[str, int] = self.request("GET", "/calls")
        return result

    def reset_calls(self) -> None:
        self.request("POST", "/calls/reset")

    # -- faults, timing and tools (tests/vcsim/faults.go, tasks.go, tools.go) --

    def inject_fault(
        self,
        method: str,
        kind: str = "soap",
        fault: str | None = None,
        *,
        count: int = 1,
        skip: int = 0,
        match: str | None = None,
    ) -> int:
        """Make the next ``count`` calls of ``method`` fail; return the rule's id.

        ``kind`` is ``soap``, ``task``, ``drop``, ``drop_after``,
        ``expire_sessions`` or ``http503``; ``fault`` names the vSphere fault
        type for ``soap`` and ``task``. ``count=-1`` fails every call until
        :meth:`clear_faults`.
        """
        body: dict[str, Any] = {"method": method, "kind": kind, "count": count, "skip": skip}
        if fault is not None:
            body["fault"] = fault
        if match is not None:
            body["match"] = match
        result: dict[str, int] = self.request("POST", "/faults", body)
        return result["id"]

    def faults(self) -> list[dict[str, Any]]:
        """The fault rules still active, with their remaining counts."""
        result: list[dict[str, Any]] = self.request("GET", "/faults")
        return result

    def clear_faults(self) -> None:
        self.request("DELETE", "/faults")

    def set_task_time(self, method: str, ms: float) -> None:
        """Make tasks of ``method`` take ``ms`` milliseconds (plus copy time)."""
        self.request("POST", "/timing", {"method": method, "ms": ms})

    def set_default_task_time(self, ms: float) -> None:
        self.request("POST", "/timing", {"default_ms": ms})

    def set_copy_rate(self, bytes_per_second: float) -> None:
        """Set how fast relocations and clones copy disk data."""
        self.request("POST", "/timing", {"bytes_per_second": bytes_per_second})

    def set_update_interval(self, ms: float) -> None:
        """How often a waiting ``WaitForUpdatesEx`` looks for updates (govmomi: 250 ms).

        Shorter answers a task's end sooner; updates within one interval come
        in one answer, so round-trip counts depend on it.
        """
        self.request("POST", "/timing", {"update_ms": ms})

    def reset_timing(self) -> None:
        """Back to the defaults: 20 ms per task, 64 MiB/s copies, updates every 250 ms."""
        self.request("DELETE", "/timing")

    def set_tools(self, vm: str, running: bool) -> None:
        """Set whether VMware Tools run in the VM with moref ``vm``."""
        self.request("POST", "/tools", {"vm": vm, "running": running})

    # -- disk content and files (tests/vcsim/data.go, relocate.go) ---------

    def write(self, vm: str, disk_key: int, token: str, size: int = 0) -> str:
        """Append ``token`` to the top file of a VM's disk, as its guest would.

        ``size``, when given, is the bytes of guest data the token stands for
        (a copy of the file then copies that many), so that a test can fill a
        100 GiB volume without writing 100 GiB. Returns the datastore path of
        the file written.
        """
        body: dict[str, object] = {"vm": vm, "disk": disk_key, "token": token}
        if size:
            body["bytes"] = size
        result: dict[str, str] = self.request("POST", "/write", body)
        return result["file"]

    def read_disk(self, vm: str, disk_key: int) -> dict[str, list[str]]:
        """A VM disk's chain (top first) and its tokens (base first)."""
        result: dict[str, list[str]] = self.request("GET", "/read", vm=vm, disk=disk_key)
        return result

    def read_file(self, path: str) -> dict[str, list[str]]:
        """The chain and tokens of a VMDK, following its descriptors' parent hints."""
        result: dict[str, list[str]] = self.request("GET", "/read", file=path)
        return result

    def read_snapshot(self, snapshot: str, disk_key: int) -> dict[str, list[str]]:
        """The chain and tokens of a disk as a snapshot (moref value) holds it."""
        result: dict[str, list[str]] = self.request(
            "GET", "/read", snapshot=snapshot, disk=disk_key
        )
        return result

    def files(self, datastore: str) -> list[str]:
        """Every file on a datastore, as sorted ``[ds] dir/file`` paths."""
        result: list[str] = self.request("GET", "/files", datastore=datastore)
        return result

    def chain(self, vm: str) -> dict[str, Any]:
        """Debugging view of a VM's disk chains, snapshots' included."""
        result: dict[str, Any] = self.request("GET", "/chain", vm=vm)
        return result

    def bytes_copied(self) -> dict[str, Any]:
        """Disk data bytes copied (relocations, clones, moves between datastores):
        ``{"total": n, "files": {...}}``."""
        result: dict[str, Any] = self.request("GET", "/bytes-copied")
        return result

    def reset_bytes_copied(self) -> None:
        self.request("POST", "/bytes-copied/reset")
