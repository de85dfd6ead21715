"""Connection settings for the command line: flags, environment, config file.

Precedence, highest first, setting by setting:

1. command-line flags (``--url``, ``--username``, ``--ca-file``, ``--thumbprint``,
   ``--insecure``, ``--journal``, ``--lock-dir``, ``--coordination-url``); never a
   password;
2. ``VMDK_SNAP_*`` environment variables;
3. govc's ``GOVC_URL`` (whose ``user:pass@`` part is used as govc does, before
   ``GOVC_USERNAME``/``GOVC_PASSWORD``), ``GOVC_USERNAME``, ``GOVC_PASSWORD``,
   ``GOVC_INSECURE``;
4. the config file: ``--config``, else ``$VMDK_SNAP_CONFIG``, else
   ``$XDG_CONFIG_HOME/vmdk-snap/config.ini`` (``~/.config/...``), section
   ``[vcenter]``; a password there only if the file is readable by its owner only;
   the coordination URL in section ``[coordination]``, key ``backend_url``, as in
   Cinder's ``cinder.conf``;
5. for the password only: a prompt, when standard input is a terminal.
"""

from __future__ import annotations

import configparser
import getpass
import os
import stat
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ConfigError", "Overrides", "Settings", "default_config_path", "load_settings"]

SECTION = "vcenter"
COORDINATION = "coordination"  # [coordination] backend_url, as in cinder.conf
_BACKEND_URL = "[coordination] backend_url"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(Exception):
    """The connection settings are missing or unsafe; the message says what to do."""


@dataclass(frozen=True)
class Overrides:
    """What the command line said (None: not given)."""

    url: str | None = None
    username: str | None = None
    ca_file: str | None = None
    thumbprint: str | None = None
    insecure: bool = False
    journal: str | None = None
    lock_dir: str | None = None
    coordination_url: str | None = None
    config: str | None = None


@dataclass(frozen=True)
class Settings:
    """Everything needed to open a Session, resolved."""

    url: str
    username: str
    password: str
    ca_file: str | None = None
    thumbprint: str | None = None
    insecure: bool = False
    journal: str | None = None
    lock_dir: str | None = None  # None: the library's default (vmdk_snap.workflows.locks)
    coordination_url: str | None = None  # None: this host's lock directory
    journal_setting: str = "--journal"  # where ``journal`` was given, for error messages

    def __repr__(self) -> str:  # the password never reaches a log or traceback
        return (
            f"Settings(url={self.url!r}, username={self.username!r}, password='***', "
            f"ca_file={self.ca_file!r}, thumbprint={self.thumbprint!r}, "
            f"insecure={self.insecure!r}, journal={self.journal!r}, lock_dir={self.lock_dir!r}, "
            f"coordination_url={_redact(self.coordination_url)!r})"
        )


def default_config_path(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/vmdk-snap/config.ini``, ``~/.config/...`` by default."""
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or "~", ".config")
    return Path(os.path.expanduser(base)) / "vmdk-snap" / "config.ini"


_URL_FORM = "give https://HOST[:PORT]/sdk, an IPv6 HOST in brackets, PORT from 1 to 65535"


def normalize_url(raw: str, where: str = "vCenter URL") -> tuple[str, str | None, str | None]:
    """Return (url without user info, user, password) for a govc-style URL.

    ``vc.example.org`` becomes ``https://vc.example.org/sdk``, as govc does.
    ``where`` names the setting the URL came from, for the error message.

    Raises:
        ConfigError: the URL cannot be parsed (unclosed ``[``, bad port) or has no host.
    """
    text = raw.strip()
    if "://" not in text:
        text = "https://" + text
    shown = _without_userinfo(raw)
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
        if port == 0:
            raise ValueError("Port out of range 1-65535")
    except ValueError as exc:
        problem = _url_problem(text, exc)
        raise ConfigError(
            f"{where} {shown!r} is not a valid vCenter URL ({problem}): {_URL_FORM}"
        ) from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"vCenter URL {shown!r} is not valid: use https://HOST/sdk or HOST")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port:
        netloc += f":{port}"
    path = parts.path if parts.path not in ("", "/") else "/sdk"
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, "", "")), user, password


def _url_problem(text: str, exc: ValueError) -> str:
    """What urllib's ValueError means, in the user's terms."""
    if "IPv6" in str(exc):
        return "an IPv6 address without its closing ']'"
    # Everything after the host (and its brackets) is the port.
    host_port = text.partition("://")[2].split("/", 1)[0].rpartition("@")[2]
    port = host_port.rpartition("]")[2].partition(":")[2]
    if "range" in str(exc):
        return f"port {port} is out of range"
    return f"port {port!r} is not a number"


def _without_userinfo(url: str) -> str:
    """The URL with any ``user:password@`` replaced, so that it can be shown."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


def _flag(value: str, where: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{where}={value!r} is not a yes/no value: use 1 or 0")


def _has_password(url: str) -> bool:
    try:
        return bool(urllib.parse.urlsplit(url if "://" in url else "https://" + url).password)
    except ValueError:  # unparsable: normalize_url says what is wrong with it
        return ":" in url.split("://", 1)[-1].rpartition("@")[0]


def _read_file(path: Path, explicit: bool) -> dict[str, str]:
    if not path.exists():
        if explicit:
            raise ConfigError(
                f"config file {path} does not exist: create it with a [{SECTION}] section "
                "or leave out --config/VMDK_SNAP_CONFIG"
            )
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} cannot be read ({reason}): fix it") from exc
    if not parser.has_section(SECTION):
        raise ConfigError(f"config file {path} has no [{SECTION}] section: add one")
    values = dict(parser.items(SECTION))
    if parser.has_option(COORDINATION, "backend_url"):
        values[_BACKEND_URL] = parser.get(COORDINATION, "backend_url")
    secret = _has_password(values.get(_BACKEND_URL, "") or "https://x")
    if values.get("password") or _has_password(values.get("url", "")) or secret:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"config file {path} holds a password but is readable by others "
                f"(mode {mode:04o}): run 'chmod 600 {path}'"
            )
    return values


def _redact(url: str | None) -> str | None:
    """A URL without its password (a Redis or etcd URL may hold one)."""
    if not url or not _has_password(url):
        return url
    scheme, _, rest = url.partition("://")
    cred, _, host = rest.rpartition("@")
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"


def _first(*candidates: tuple[str, str | None]) -> tuple[str, str] | None:
    """The first ``(where, value)`` that has a value."""
    return next(((where, value) for where, value in candidates if value), None)


def _prompt(username: str, url: str) -> str:
    return getpass.getpass(f"Password for {username} at {url}: ")


def load_settings(
    flags: Overrides,
    env: Mapping[str, str],
    *,
    interactive: bool | None = None,
    prompt: Callable[[str, str], str] = _prompt,
) -> Settings:
    """Resolve the connection settings (see the module docstring for the order).

    Raises:
        ConfigError: a setting is missing, malformed or unsafe.
    """
    if flags.url and _has_password(flags.url):
        raise ConfigError(
            "--url holds a password, which other users can see in the process list: "
            "put it in VMDK_SNAP_PASSWORD or an owner-only config file instead"
        )
    explicit = flags.config or env.get("VMDK_SNAP_CONFIG")
    path = Path(os.path.expanduser(explicit)) if explicit else default_config_path(env)
    file = _read_file(path, explicit=bool(explicit))

    found_url = _first(
        ("--url", flags.url),
        ("VMDK_SNAP_URL", env.get("VMDK_SNAP_URL")),
        ("GOVC_URL", env.get("GOVC_URL")),
        (f"url in {path}", file.get("url")),
    )
    if found_url is None:
        raise ConfigError(
            "no vCenter URL: pass --url, set VMDK_SNAP_URL (or GOVC_URL), "
            f"or put url = ... in the [{SECTION}] section of {path}"
        )
    url, url_user, url_password = normalize_url(found_url[1], found_url[0])

    username = (
        flags.username
        or env.get("VMDK_SNAP_USERNAME")
        or url_user
        or env.get("GOVC_USERNAME")
        or file.get("username")
    )
    if not username:
        raise ConfigError(
            "no vCenter user name: pass --username or set VMDK_SNAP_USERNAME (or GOVC_USERNAME)"
        )
    password = (
        env.get("VMDK_SNAP_PASSWORD")
        or url_password
        or env.get("GOVC_PASSWORD")
        or file.get("password")
    )
    if not password:
        if interactive is None:
            interactive = sys.stdin.isatty()
        if not interactive:
            raise ConfigError(
                f"no password for {username}: set VMDK_SNAP_PASSWORD, put password = ... "
                f"in an owner-only {path}, or run on a terminal to be asked"
            )
        password = prompt(username, url)

    insecure = flags.insecure
    if not insecure:
        named = next((n for n in ("VMDK_SNAP_INSECURE", "GOVC_INSECURE") if n in env), None)
        if named is not None:
            insecure = _flag(env[named], named)
        elif "insecure" in file:
            insecure = _flag(file["insecure"], f"{path}: insecure")

    ca_file = flags.ca_file or env.get("VMDK_SNAP_CA_FILE") or file.get("ca_file")
    if ca_file and not Path(os.path.expanduser(ca_file)).is_file():
        raise ConfigError(f"CA file {ca_file} does not exist: give the path of a PEM bundle")
    journal_setting, journal = _first(
        ("--journal", flags.journal),
        ("VMDK_SNAP_JOURNAL", env.get("VMDK_SNAP_JOURNAL")),
        (f"journal in {path}", file.get("journal")),
    ) or ("--journal", None)
    return Settings(
        url=url,
        username=username,
        password=password,
        ca_file=os.path.expanduser(ca_file) if ca_file else None,
        thumbprint=flags.thumbprint or env.get("VMDK_SNAP_THUMBPRINT") or file.get("thumbprint"),
        insecure=insecure,
        journal=journal,
        journal_setting=journal_setting,
        lock_dir=flags.lock_dir or env.get("VMDK_SNAP_LOCK_DIR") or file.get("lock_dir"),
        coordination_url=flags.coordination_url
        or env.get("VMDK_SNAP_COORDINATION_URL")
        or file.get(_BACKEND_URL),
    )
