"""Cassettes hold no credentials, and the scanner that says so can fail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cassettes import CASSETTE_DIR, scan, scrub_body


def _cassettes() -> list[Path]:
    return sorted(CASSETTE_DIR.rglob("*.yaml")) + sorted(CASSETTE_DIR.rglob("*.json"))


def test_recorded_cassettes_hold_no_credentials() -> None:
    files = _cassettes()
    assert files, "no cassettes recorded: run ./dev record"
    # The real vCenter's password when recording against one, and the
    # passwords vmdk-snap itself reads.
    names = ("VMDK_SNAP_RECORD_PASSWORD", "VMDK_SNAP_PASSWORD", "GOVC_PASSWORD")
    secrets = [os.environ.get(name, "") for name in names]
    assert scan(files, secrets) == []


def test_scanner_finds_a_planted_password(tmp_path: Path) -> None:
    clean = next(p for p in _cassettes() if p.suffix == ".yaml")
    text = clean.read_text()
    assert "**scrubbed**</password>" in text
    planted = tmp_path / "planted.yaml"
    planted.write_text(text.replace("**scrubbed**</password>", "hunter2</password>", 1))
    findings = scan([planted])
    assert len(findings) == 1
    assert "unscrubbed <password>" in findings[0]
    assert scan([planted], secrets=["hunter2"])[-1].endswith("contains a known secret")


def test_scanner_finds_a_session_cookie(tmp_path: Path) -> None:
    planted = tmp_path / "cookie.yaml"
    planted.write_text('Set-Cookie:\n- vmware_soap_session="52a1b2c3"; Path=/\n')
    assert any("session cookie" in f for f in scan([planted]))


def test_scanner_finds_the_record_password_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real vCenter's password is caught even where no pattern looks (a URL)."""
    planted = tmp_path / "leak.yaml"
    planted.write_text("uri: https://rec:Real-VC-pw.1@vc.example.org/sdk\n")
    assert scan([planted]) == []
    monkeypatch.setenv("VMDK_SNAP_RECORD_PASSWORD", "Real-VC-pw.1")
    monkeypatch.setattr("tests.test_cassettes._cassettes", lambda: [planted])
    with pytest.raises(AssertionError, match="contains a known secret"):
        test_recorded_cassettes_hold_no_credentials()


def test_scrub_replaces_password_and_login_key() -> None:
    body = b'<Login><userName>u</userName><password versionId="8.0">s3cret</password></Login>'
    assert b"s3cret" not in scrub_body(body)
    response = b"<LoginResponse><returnval><key>52e9-session</key></returnval></LoginResponse>"
    assert b"52e9-session" not in scrub_body(response)
