"""A real etcd for the live tier: Debian's ``etcd-server``, on free loopback
ports, its data in a temporary directory (installed by ``./dev``'s set-up)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LEASE_SECONDS", "running_etcd"]

# The lease of every lock in these tests (tooz's ?timeout=): a holder killed
# with SIGKILL is released within this.
LEASE_SECONDS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_etcd(workdir: Path) -> Iterator[str]:
    """Start etcd; yield its tooz URL (``etcd3+http://127.0.0.1:<port>?timeout=N``)."""
    binary = shutil.which("etcd") or next(
        (p for p in ("/usr/bin/etcd", "/usr/sbin/etcd") if Path(p).exists()), None
    )
    if binary is None:
        raise RuntimeError("etcd is not installed: ./dev test installs Debian's etcd-server")
    client, peer = _free_port(), _free_port()
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / "etcd.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            "--name=test",
            f"--data-dir={workdir / 'data'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=test={peer_url}",
            "--log-level=error",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"etcd exited ({proc.returncode}): {(workdir / 'etcd.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=2) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("etcd did not become healthy within 30 s")
            time.sleep(0.1)
        yield f"etcd3+http://127.0.0.1:{client}?timeout={LEASE_SECONDS}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
