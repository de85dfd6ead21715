"""Recording and replaying vCenter SOAP traffic with vcrpy.

pyVmomi binds ``HTTPConnection``/``HTTPSConnection`` into its own modules at
import time, so vcrpy's default patches of ``http.client`` miss them: they
are patched here too. Requests are matched in order on method, path and the
SOAP body after scrubbing. Passwords, session cookies and session keys are
scrubbed before anything is written, and :func:`scan` proves it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyVim.connect
import pyVmomi.five
import pyVmomi.SoapAdapter
import vcr
from vcr.stubs import VCRHTTPConnection, VCRHTTPSConnection

# VMDK_SNAP_CASSETTE_DIR records into (and replays from) another directory,
# e.g. a dry run that must not touch the committed cassettes.
CASSETTE_DIR = Path(
    os.environ.get("VMDK_SNAP_CASSETTE_DIR") or Path(__file__).resolve().parent.parent / "cassettes"
).resolve()
SCRUBBED = "**scrubbed**"
SCRUBBED_COOKIE = 'vmware_soap_session="scrubbed"'

_PASSWORD_RE = re.compile(rb"(<password\b[^>]*>)(.*?)(</password>)", re.S)
_LOGIN_KEY_RE = re.compile(rb"(<returnval>\s*<key>)(.*?)(</key>)", re.S)
_COOKIE_RE = re.compile(r"vmware_soap_session=(\"[^\"]*\"|[^;\s]*)")
_DROP_REQUEST_HEADERS = ("cookie", "authorization", "vmware-api-session-id")


def _as_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode()
    return bytes(body)


def scrub_body(body: Any) -> bytes:
    """Return a SOAP body with passwords and session keys replaced."""
    data = _PASSWORD_RE.sub(rb"\1" + SCRUBBED.encode() + rb"\3", _as_bytes(body))
    if b"LoginResponse" in data:
        data = _LOGIN_KEY_RE.sub(rb"\1" + SCRUBBED.encode() + rb"\3", data)
    return data


def scrub_request(request: Any) -> Any:
    """vcrpy hook: scrub a request before it is written."""
    request.body = scrub_body(request.body)
    for name in list(request.headers):
        if name.lower() in _DROP_REQUEST_HEADERS:
            del request.headers[name]
    return request


def scrub_response(response: dict[str, Any]) -> dict[str, Any]:
    """vcrpy hook: scrub a response before it is written."""
    headers = response.get("headers", {})
    for name in list(headers):
        if name.lower() == "set-cookie":
            headers[name] = [_COOKIE_RE.sub(SCRUBBED_COOKIE, v) for v in headers[name]]
    body = response.get("body", {})
    if "string" in body:
        body["string"] = scrub_body(body["string"])
    return response


def _soap_body_matcher(r1: Any, r2: Any) -> None:
    if scrub_body(r1.body) != scrub_body(r2.body):
        raise AssertionError("SOAP bodies differ")


def make_vcr(record_mode: str) -> vcr.VCR:
    """A VCR that records pyVmomi's traffic and scrubs it."""
    patches: list[tuple[Any, str, Any]] = []
    for module in (pyVmomi.SoapAdapter, pyVim.connect, pyVmomi.five):
        patches.append((module, "HTTPConnection", VCRHTTPConnection))
        patches.append((module, "HTTPSConnection", VCRHTTPSConnection))
    recorder = vcr.VCR(
        record_mode=record_mode,
        match_on=["method", "path", "query", "soap_body"],
        custom_patches=tuple(patches),
        before_record_request=scrub_request,
        before_record_response=scrub_response,
        decode_compressed_response=True,
    )
    recorder.register_matcher("soap_body", _soap_body_matcher)
    return recorder


# -- the scanner -------------------------------------------------------------

_CREDENTIAL_PATTERNS = [
    (re.compile(r"<password\b[^>]*>(?!\*\*scrubbed\*\*</password>)"), "an unscrubbed <password>"),
    (re.compile(r"vmware_soap_session=(?!\"scrubbed\")"), "a session cookie"),
    (
        re.compile(r"(?im)^\s*-?\s*['\"]?(cookie|authorization)['\"]?\s*:"),
        "a Cookie/Authorization header",
    ),
    (re.compile(r"vcsim-[0-9a-f]{16}"), "a simulator password"),
]


def scan(paths: Iterable[Path], secrets: Iterable[str] = ()) -> list[str]:
    """Return one finding per credential found in the given cassette files.

    Args:
        paths: cassette files to read.
        secrets: literal strings that must not appear (e.g. the password in
            ``VMDK_SNAP_RECORD_PASSWORD`` when recording against a real vCenter).
    """
    literal = [s for s in secrets if s]
    findings = []
    for path in paths:
        text = path.read_text(errors="replace")
        for pattern, what in _CREDENTIAL_PATTERNS:
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                findings.append(f"{path}:{line}: {what}")
        for secret in literal:
            if secret in text:
                findings.append(f"{path}: contains a known secret")
    return findings
