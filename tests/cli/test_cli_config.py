"""Connection settings: precedence of flags, environment, govc's variables, config file."""

from __future__ import annotations

import io
import json
import os
import urllib.parse
from pathlib import Path

import pytest

from tests.conftest import Target
from vmdk_snap.cli.config import ConfigError, Overrides, load_settings, normalize_url
from vmdk_snap.cli.main import main

URL = "https://vc.example.org/sdk"


def write_config(path: Path, body: str, mode: int = 0o600) -> Path:
    path.write_text("[vcenter]\n" + body)
    os.chmod(path, mode)
    return path


def test_flags_beat_environment_which_beats_govc_which_beats_the_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.ini", "url = file.example.org\nusername = file-user\n")
    env = {
        "VMDK_SNAP_CONFIG": str(cfg),
        "GOVC_URL": "govc.example.org",
        "GOVC_USERNAME": "govc-user",
        "GOVC_PASSWORD": "govc-pw",
    }
    s = load_settings(Overrides(), env, interactive=False)
    assert (s.url, s.username, s.password) == (
        "https://govc.example.org/sdk",
        "govc-user",
        "govc-pw",
    )

    env |= {"VMDK_SNAP_URL": "https://env.example.org/sdk", "VMDK_SNAP_USERNAME": "env-user"}
    s = load_settings(Overrides(), env, interactive=False)
    assert (s.url, s.username) == ("https://env.example.org/sdk", "env-user")

    s = load_settings(Overrides(url="flag.example.org:8443", username="flag-user"), env)
    assert (s.url, s.username, s.password) == (
        "https://flag.example.org:8443/sdk",
        "flag-user",
        "govc-pw",
    )

    del env["GOVC_URL"], env["VMDK_SNAP_URL"]
    assert load_settings(Overrides(), env).url == "https://file.example.org/sdk"


def test_lock_dir_from_the_flag_environment_or_file_else_the_librarys(tmp_path: Path) -> None:
    body = f"url = {URL}\nusername = u\npassword = p\n"
    cfg = write_config(tmp_path / "c.ini", body + "lock_dir = /file/locks\n")
    env = {"VMDK_SNAP_CONFIG": str(cfg)}
    assert load_settings(Overrides(), env).lock_dir == "/file/locks"
    env |= {"VMDK_SNAP_LOCK_DIR": "/env/locks"}
    assert load_settings(Overrides(), env).lock_dir == "/env/locks"
    assert load_settings(Overrides(lock_dir="/flag/locks"), env).lock_dir == "/flag/locks"
    bare = {"VMDK_SNAP_CONFIG": str(write_config(tmp_path / "bare.ini", body))}
    assert load_settings(Overrides(), bare).lock_dir is None  # Driver's default_lock_dir()


def test_coordination_url_from_the_flag_environment_or_cinders_section(tmp_path: Path) -> None:
    """``[coordination] backend_url``: the section and key of Cinder's cinder.conf."""
    body = f"url = {URL}\nusername = u\npassword = p\n"
    section = "\n[coordination]\nbackend_url = etcd3+http://file:2379\n"
    cfg = write_config(tmp_path / "c.ini", body + section)
    env = {"VMDK_SNAP_CONFIG": str(cfg)}
    assert load_settings(Overrides(), env).coordination_url == "etcd3+http://file:2379"
    env |= {"VMDK_SNAP_COORDINATION_URL": "etcd3+http://env:2379"}
    assert load_settings(Overrides(), env).coordination_url == "etcd3+http://env:2379"
    flag = Overrides(coordination_url="etcd3+http://flag:2379")
    assert load_settings(flag, env).coordination_url == "etcd3+http://flag:2379"
    bare = {"VMDK_SNAP_CONFIG": str(write_config(tmp_path / "bare.ini", body))}
    assert load_settings(Overrides(), bare).coordination_url is None  # the lock directory
    # A URL with a password (Redis) never shows in a log or traceback.
    secret = Overrides(coordination_url="redis://u:hunter2@redis:6379")
    assert "hunter2" not in repr(load_settings(secret, bare))


def test_a_coordination_service_that_does_not_answer_is_a_connection_error(
    vc: Target, tmp_path: Path
) -> None:
    """Nothing is changed in vCenter: the locks come before any change."""
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    out, err = io.StringIO(), io.StringIO()
    env = {
        "HOME": str(tmp_path),
        "VMDK_SNAP_URL": vc.url,
        "VMDK_SNAP_USERNAME": vc.username,
        "VMDK_SNAP_PASSWORD": vc.password,
        "VMDK_SNAP_CA_FILE": vc.ca_file,
        "VMDK_SNAP_JOURNAL": str(tmp_path / "j.sqlite"),
        "VMDK_SNAP_COORDINATION_URL": "etcd3+http://127.0.0.1:9?timeout=2",  # nothing listens
    }
    vc.ctl.reset_calls()
    code = main(
        ["snapshot", vol["id"], "--name", "s1"], env=env, stdout=out, stderr=err, interactive=False
    )
    assert code == 6, err.getvalue()
    assert "cannot reach the coordination service etcd3+http://127.0.0.1:9" in err.getvalue()
    assert not [m for m in vc.ctl.calls() if m.endswith("_Task")]


def test_govc_url_with_credentials_is_used_as_govc_does() -> None:
    env = {"GOVC_URL": "admin%40vsphere.local:s%3Acret@vc.example.org", "GOVC_USERNAME": "other"}
    s = load_settings(Overrides(), env, interactive=False)
    assert s.url == URL
    assert s.username == "admin@vsphere.local"
    assert s.password == "s:cret"
    assert "s:cret" not in repr(s)  # never in a log line or traceback


def test_normalize_url_defaults_scheme_and_path_like_govc() -> None:
    assert normalize_url("vc.example.org")[0] == URL
    assert normalize_url("https://vc.example.org/")[0] == URL
    assert normalize_url("https://[::1]:8989/sdk") == ("https://[::1]:8989/sdk", None, None)
    with pytest.raises(ConfigError, match="not valid"):
        normalize_url("ftp://vc.example.org")


def test_insecure_from_environment_and_file(tmp_path: Path) -> None:
    env = {"VMDK_SNAP_URL": URL, "VMDK_SNAP_USERNAME": "u", "VMDK_SNAP_PASSWORD": "p"}
    assert load_settings(Overrides(), env).insecure is False
    assert load_settings(Overrides(), env | {"GOVC_INSECURE": "1"}).insecure is True
    # Our own variable wins over govc's, also to switch it off.
    both = env | {"GOVC_INSECURE": "1", "VMDK_SNAP_INSECURE": "false"}
    assert load_settings(Overrides(), both).insecure is False
    assert load_settings(Overrides(insecure=True), both).insecure is True
    cfg = write_config(tmp_path / "c.ini", "insecure = yes\n", mode=0o644)
    assert load_settings(Overrides(config=str(cfg)), env).insecure is True
    with pytest.raises(ConfigError, match="not a yes/no value"):
        load_settings(Overrides(), env | {"VMDK_SNAP_INSECURE": "maybe"})


def test_password_in_an_owner_only_file_is_used(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.ini", f"url = {URL}\nusername = u\npassword = from-file\n")
    s = load_settings(Overrides(config=str(cfg)), {}, interactive=False)
    assert s.password == "from-file"


def test_prompt_only_on_a_terminal() -> None:
    env = {"VMDK_SNAP_URL": URL, "VMDK_SNAP_USERNAME": "u"}
    asked: list[tuple[str, str]] = []

    def prompt(user: str, url: str) -> str:
        asked.append((user, url))
        return "typed"

    assert load_settings(Overrides(), env, interactive=True, prompt=prompt).password == "typed"
    assert asked == [("u", URL)]
    with pytest.raises(ConfigError, match="no password for u"):
        load_settings(Overrides(), env, interactive=False, prompt=prompt)
    assert len(asked) == 1


def run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, env=env, stdout=out, stderr=err, interactive=False)
    return code, out.getvalue(), err.getvalue()


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert "Traceback" not in text
    return lines[0]


VOLUME = "0e3a36c7-6d55-4ac8-9ac7-c1f3a9d5d2a4"


def test_password_in_a_group_readable_file_is_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.ini", f"url = {URL}\nusername = u\npassword = p\n", 0o640)
    code, out, err = run(["check", VOLUME, "--config", str(cfg)], {"HOME": str(tmp_path)})
    assert code == 2
    assert out == ""
    line = one_line(err)
    assert "readable by others (mode 0640)" in line
    assert f"chmod 600 {cfg}" in line


def test_missing_config_file_is_one_line_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ini"
    code, _, err = run(["list", VOLUME, "--config", str(missing)], {"HOME": str(tmp_path)})
    assert code == 2
    assert f"config file {missing} does not exist" in one_line(err)


def test_no_url_anywhere_says_where_to_put_one(tmp_path: Path) -> None:
    code, _, err = run(["list", VOLUME], {"HOME": str(tmp_path)})
    assert code == 2
    line = one_line(err)
    assert "no vCenter URL" in line
    assert "VMDK_SNAP_URL" in line
    assert str(tmp_path / ".config" / "vmdk-snap" / "config.ini") in line


def test_no_password_without_a_terminal(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "VMDK_SNAP_URL": URL, "VMDK_SNAP_USERNAME": "u"}
    code, _, err = run(["recover"], env)
    assert code == 2
    assert "no password for u" in one_line(err)


def test_password_in_url_flag_is_refused(tmp_path: Path) -> None:
    code, _, err = run(
        ["list", VOLUME, "--url", "https://u:secret@vc.example.org/sdk"], {"HOME": str(tmp_path)}
    )
    assert code == 2
    line = one_line(err)
    assert "process list" in line
    assert "secret" not in line


def test_config_errors_in_json_mode_are_a_json_document_too(tmp_path: Path) -> None:
    code, out, err = run(["--json", "list", VOLUME], {"HOME": str(tmp_path)})
    assert code == 2
    doc = json.loads(out)
    assert doc["schema"] == 1
    assert doc["command"] == "list"
    assert doc["error"]["kind"] == "usage"
    assert doc["error"]["exit_code"] == 2
    assert doc["error"]["message"] in err


# -- the same settings, end to end against vCenter --------------------------------


@pytest.mark.cassette
def test_govc_environment_alone_connects(vc: Target, tmp_path: Path) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    user = urllib.parse.quote(vc.username, safe="")
    password = urllib.parse.quote(vc.password, safe="")
    env = {
        "HOME": str(tmp_path),
        "GOVC_URL": f"{user}:{password}@{vc.host}:{vc.port}",
        "VMDK_SNAP_CA_FILE": vc.ca_file,
    }
    code, out, err = run(["list", vol["id"], "--json"], env)
    assert (code, err) == (0, "")
    assert json.loads(out)["name"] == f"volume-{vol['id']}"


@pytest.mark.cassette
def test_owner_only_config_file_alone_connects(vc: Target, tmp_path: Path) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    cfg = tmp_path / ".config" / "vmdk-snap" / "config.ini"
    cfg.parent.mkdir(parents=True)
    write_config(
        cfg,
        f"url = {vc.url}\nusername = {vc.username}\npassword = {vc.password}\n"
        f"ca_file = {vc.ca_file}\njournal = {tmp_path / 'journal.sqlite'}\n",
    )
    code, out, err = run(["check", vol["id"], "--json"], {"HOME": str(tmp_path)})
    assert (code, err) == (0, "")
    assert json.loads(out)["volumes"][0]["status"] == "available"


@pytest.mark.cassette
def test_pinned_thumbprint_flag_connects_without_a_ca(vc: Target, tmp_path: Path) -> None:
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    env = {
        "HOME": str(tmp_path),
        "VMDK_SNAP_URL": vc.url,
        "VMDK_SNAP_USERNAME": vc.username,
        "VMDK_SNAP_PASSWORD": vc.password,
    }
    code, _, err = run(["list", vol["id"], "--thumbprint", vc.thumbprint], env)
    assert (code, err) == (0, "")
