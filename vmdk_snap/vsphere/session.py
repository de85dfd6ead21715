"""One authenticated connection to vCenter, through which every SOAP call goes.

The session owns what the layers above must not see: TLS trust, login and
re-login, bounded retries of transient failures, and the count of round trips
per method (``session.calls``). Only this module, :mod:`vmdk_snap.vsphere.tasks` and
:mod:`vmdk_snap.vsphere.volumeops` import pyVmomi.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import tenacity
from pyVim.connect import SmartStubAdapter
from pyVmomi import VmomiSupport, vim, vmodl

from vmdk_snap.errors import (
    AuthenticationFailed,
    CertificateError,
    ConnectionFailed,
    TransientError,
    VmdkSnapError,
    fault_name,
    translate,
)
from vmdk_snap.types import Moref
from vmdk_snap.vsphere.internal import InternalMethods
from vmdk_snap.vsphere.tasks import DEFAULT_WAIT_SECONDS, SessionRenewed, TaskWatcher

__all__ = ["RetryPolicy", "Session", "StartedCheck"]

log = logging.getLogger(__name__)

# Faults vSphere answers before doing anything, that a later attempt may not get.
TRANSIENT_FAULTS = frozenset({"HostCommunication", "TaskInProgress"})

# A check run before repeating a task-starting call whose first attempt may
# have reached vCenter: given the (estimated) server time the first attempt was
# sent, it returns the task that call started, or None if it never started.
StartedCheck = Callable[[datetime], Any]


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried: bounded in attempts and in time."""

    attempts: int = 4
    total_seconds: float = 60.0
    initial_delay: float = 1.0
    max_delay: float = 10.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)


class _Ambiguous(Exception):
    """The connection broke after the request was sent: it may have run."""


class _Retryable(Exception):
    """Wraps a failure that is safe to retry; ``cause`` is the original."""

    def __init__(self, cause: BaseException, ambiguous: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.ambiguous = ambiguous


class _PinnedContext(ssl.SSLContext):
    """A TLS context that trusts exactly one certificate, by its SHA-256 digest.

    Verification by CA is off (the certificate may be self-signed); instead
    every handshake compares the peer's certificate with the pinned digest.
    """

    pinned = ""

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        der = sock.getpeercert(binary_form=True) or b""
        got = hashlib.sha256(der).hexdigest()
        if got != self.pinned:
            sock.close()
            raise ssl.SSLCertVerificationError(
                f"certificate SHA-256 thumbprint {_colons(got)} is not the pinned one"
            )
        return sock


def _colons(hexdigest: str) -> str:
    return ":".join(hexdigest[i : i + 2] for i in range(0, len(hexdigest), 2)).upper()


def _normalize_thumbprint(thumbprint: str) -> str:
    value = thumbprint.replace(":", "").strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise CertificateError(
            f"thumbprint {thumbprint!r} is not a SHA-256 digest",
            hint="give the 64 hex digits (colons allowed) of the certificate's SHA-256",
        )
    return value


def _parse_url(url_or_host: str, port: int | None) -> tuple[str, int, str]:
    text = url_or_host if "://" in url_or_host else f"https://{url_or_host}"
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "https":
        raise ConnectionFailed(
            f"refusing to talk to vCenter over {parts.scheme}://",
            hint="use an https:// URL",
        )
    host = parts.hostname or ""
    if not host:
        raise ConnectionFailed(f"no host in {url_or_host!r}", hint="give https://<vcenter>/sdk")
    return host, port or parts.port or 443, parts.path.rstrip("/") or "/sdk"


def _is_transient_http(exc: BaseException) -> bool:
    return isinstance(exc, http.client.HTTPException) and str(exc).startswith("503")


class Session:
    """An authenticated, thread-safe connection to vCenter.

    Use as a context manager; it logs in on entry and out on exit::

        with Session("https://vc.example.com/sdk", user, password, ca_file=ca) as s:
            ops = VolumeOps(s)

    Args:
        url_or_host: ``https://host[:port][/sdk]`` or a host name.
        username, password: vCenter credentials (the password is never logged).
        port: overrides the URL's port.
        ca_file: PEM bundle to verify the server with (default: system CAs).
        thumbprint: SHA-256 of the server certificate to pin instead of CAs.
        insecure: skip verification entirely (logged as a warning).
        retry: how transient failures are retried.
        wait_seconds: ``maxWaitSeconds`` of each task wait (fixed, so requests
            are the same on every run; a task timeout shorter than it uses
            ``ceil(timeout)`` instead).
        http_timeout: socket timeout of each request, in seconds.
        prepare_tasks: set up the task watcher at login (4 round trips), so
            that every task operation costs the same; ``False`` defers that
            to the first task wait (for sessions that only read).
    """

    def __init__(
        self,
        url_or_host: str,
        username: str,
        password: str,
        *,
        port: int | None = None,
        ca_file: str | None = None,
        thumbprint: str | None = None,
        insecure: bool = False,
        retry: RetryPolicy | None = None,
        wait_seconds: int = DEFAULT_WAIT_SECONDS,
        http_timeout: float = 900.0,
        prepare_tasks: bool = True,
    ) -> None:
        self.host, self.port, self.path = _parse_url(url_or_host, port)
        self.url = f"https://{self.host}:{self.port}{self.path}"
        self.username = username
        self._password = password
        self._ca_file = ca_file
        self._thumbprint = _normalize_thumbprint(thumbprint) if thumbprint else None
        self._insecure = insecure
        self.retry = retry or RetryPolicy()
        self.wait_seconds = wait_seconds
        self._http_timeout = http_timeout
        self._stub: Any = None
        self._content: Any = None
        self._calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()
        self._login_lock = threading.Lock()
        self._generation = 0
        self._clock_offset = timedelta(0)
        self._watcher: TaskWatcher | None = None
        self._watcher_lock = threading.Lock()
        self._prepare_tasks = prepare_tasks
        self._own_tasks: set[str] = set()  # tasks our calls got back (see started_by_us)

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Session:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._thumbprint:
            pinned = _PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
            pinned.check_hostname = False
            pinned.verify_mode = ssl.CERT_NONE
            pinned.pinned = self._thumbprint
            return pinned
        if self._insecure:
            log.warning(
                "certificate verification is OFF for %s: anyone on the path can read "
                "the credentials; pass a CA file or a pinned thumbprint instead",
                self.url,
            )
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        try:
            return ssl.create_default_context(cafile=self._ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(
                f"cannot read the CA file {self._ca_file}: {exc}",
                hint="pass --ca-file/VMDK_SNAP_CA_FILE with a PEM bundle",
            ) from exc

    def connect(self) -> None:
        """Negotiate the API version and log in."""
        context = self._ssl_context()
        try:
            self._stub = SmartStubAdapter(
                host=self.host,
                port=self.port,
                path=self.path,
                sslContext=context,
                httpConnectionTimeout=self._http_timeout,
            )
        except Exception as exc:
            raise self._connection_error(exc) from exc
        instance = vim.ServiceInstance("ServiceInstance", self._stub)
        try:
            self._content = self.invoke(instance, "RetrieveServiceContent")
            self._login()
        except BaseException:
            # Not logged in: nothing to log out of, only sockets to close.
            self._stub.DropConnections()
            self._stub = self._content = None
            raise
        log.info("logged in to %s as %s", self.url, self.username)
        if self._prepare_tasks:
            try:
                self.watcher.prepare()
            except BaseException:
                self.close()
                raise

    def _login(self) -> None:
        before = datetime.now(UTC)
        try:
            user_session = self._raw_call(
                self._content.sessionManager, "Login", (self.username, self._password), {}
            )
        except vim.fault.InvalidLogin as exc:
            raise AuthenticationFailed(
                f"vCenter {self.url} rejected the user name or password for {self.username!r}",
                fault=exc,
            ) from exc
        except Exception as exc:
            raise self._connection_error(exc) from exc
        login_time = getattr(user_session, "loginTime", None)
        if isinstance(login_time, datetime) and login_time.tzinfo is not None:
            self._clock_offset = login_time - before
        self._generation += 1

    def close(self) -> None:
        """Destroy the task watcher and log out (best effort: errors are logged)."""
        if self._stub is None:
            return
        try:
            with self._watcher_lock:
                watcher, self._watcher = self._watcher, None
            if watcher is not None:
                watcher.close()
        finally:
            try:
                self._raw_call(self._content.sessionManager, "Logout", (), {})
            except Exception as exc:  # noqa: BLE001 - logout failing must not hide the real error
                log.debug("logout from %s failed: %s", self.url, exc)
            self._stub.DropConnections()
            self._stub = None

    # -- what the layers above use -----------------------------------------

    @property
    def content(self) -> Any:
        """The ``ServiceContent`` read at connect time."""
        if self._content is None:
            raise ConnectionFailed(
                "the session is not connected", hint="use it as `with Session(...)`"
            )
        return self._content

    @property
    def calls(self) -> Counter[str]:
        """SOAP round trips per method name since connect (a copy)."""
        with self._calls_lock:
            return Counter(self._calls)

    def reset_calls(self) -> None:
        with self._calls_lock:
            self._calls.clear()

    @property
    def generation(self) -> int:
        """How many times this session logged in (objects of older logins are gone)."""
        return self._generation

    def server_now(self) -> datetime:
        """vCenter's clock, estimated from the login time it reported."""
        return datetime.now(UTC) + self._clock_offset

    def mo(self, ref: Moref) -> Any:
        """The pyVmomi managed object for a :class:`Moref`, bound to this session."""
        klass = VmomiSupport.GetWsdlType("urn:vim25", ref.type)
        return klass(ref.value, self._stub)

    @property
    def internal(self) -> InternalMethods:
        """vCenter-internal methods pyVmomi lacks, to call through :meth:`invoke`."""

        def stub() -> Any:
            if self._stub is None:
                raise ConnectionFailed("the session is closed", hint="open a new Session")
            return self._stub

        def manager() -> Moref:
            return Moref("AuthorizationManager", self.content.authorizationManager._moId)

        return InternalMethods(stub, manager)

    @property
    def watcher(self) -> TaskWatcher:
        """The session's long-lived task watcher (see :mod:`vmdk_snap.vsphere.tasks`)."""
        with self._watcher_lock:
            if self._watcher is None:
                self._watcher = TaskWatcher(self, self.wait_seconds)
            return self._watcher

    def invoke(
        self,
        obj: Any,
        method: str,
        /,
        *args: Any,
        started: StartedCheck | None = None,
        session_bound: bool = False,
        repeat_if_lost: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Call ``obj.method(*args, **kwargs)`` with re-login and bounded retries.

        Args:
            obj: a pyVmomi managed object of this session.
            method: the vSphere method name, e.g. ``"CreateSnapshot_Task"``.
            started: for task-starting calls: how to tell whether an attempt
                whose answer was lost did start the task. Without it such a
                call is not repeated after a dropped connection.
            session_bound: the call works on objects of this login (filters,
                views): after a re-login it is not repeated, and
                :class:`SessionRenewed` is raised instead.
            repeat_if_lost: False for calls whose lost answer cannot be asked
                for again (``WaitForUpdatesEx``: the collector moved on to the
                version it answered, and a repeat waits for the *next* change):
                a dropped connection after sending raises TransientError at
                once, and the caller rebuilds what it was waiting on.

        Raises:
            VmdkSnapError: the fault translated (``exc.fault`` keeps it), or
                ConnectionFailed / TransientError when retries ran out.
        """
        policy = self.retry
        sent_at = self.server_now()
        state = {"ambiguous": False}

        def attempt() -> Any:
            if state["ambiguous"] and method.endswith("_Task"):
                if started is None:
                    raise TransientError(
                        f"lost the answer to {method}; it may have started a task",
                        hint="check the recent tasks in vCenter before retrying",
                    )
                task = started(sent_at)
                if task is not None:
                    log.info("%s had started before the connection dropped; not repeating", method)
                    return task
            try:
                result = self._call_relogin(obj, method, args, kwargs, session_bound)
            except _Ambiguous as exc:
                state["ambiguous"] = True
                if not repeat_if_lost:
                    raise TransientError(
                        f"lost the answer to {method}: {_short(exc.__cause__ or exc)}",
                        hint="check that vCenter is up",
                    ) from exc
                raise _Retryable(exc.__cause__ or exc, ambiguous=True) from exc
            if method.endswith("_Task") and result is not None:
                self._remember_task(result)
            return result

        def before_sleep(rs: tenacity.RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            delay = rs.next_action.sleep if rs.next_action else 0.0
            log.warning(
                "%s failed (%s), attempt %d of %d; retrying in %.1f s",
                method,
                exc,
                rs.attempt_number,
                policy.attempts,
                delay,
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.attempts)
            | tenacity.stop_after_delay(policy.total_seconds),
            wait=tenacity.wait_exponential(
                multiplier=policy.initial_delay, min=policy.initial_delay, max=policy.max_delay
            ),
            retry=tenacity.retry_if_exception_type(_Retryable),
            before_sleep=before_sleep,
            sleep=policy.sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retryable as exc:
            cause = exc.cause
            if isinstance(cause, vmodl.MethodFault):
                raise translate(cause, doing=f"{method} on {_describe(obj)}") from cause
            raise TransientError(
                f"{method} to {self.url} kept failing: {_short(cause)}",
                hint=f"gave up after {policy.attempts} attempts; check that vCenter is up",
            ) from cause

    # -- internals -----------------------------------------------------------

    def _remember_task(self, task: Any) -> None:
        value = getattr(task, "_moId", None)
        if value:
            with self._calls_lock:
                self._own_tasks.add(str(value))

    def started_by_us(self, task_value: str) -> bool:
        """Whether a task-starting call of this session got this task back.

        A lost answer is never matched to such a task: it is another call's.
        """
        with self._calls_lock:
            return task_value in self._own_tasks

    def _count(self, method: str) -> None:
        with self._calls_lock:
            self._calls[method] += 1

    def _raw_call(
        self, obj: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._stub is None:
            raise ConnectionFailed("the session is closed", hint="open a new Session")
        self._count(method)
        return getattr(obj, method)(*args, **kwargs)

    def _call_relogin(
        self,
        obj: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        session_bound: bool = False,
    ) -> Any:
        generation = self._generation
        try:
            return self._call_once(obj, method, args, kwargs)
        except vim.fault.NotAuthenticated as exc:
            if method in ("RetrieveServiceContent", "Login"):
                raise translate(exc, doing=method) from exc
            with self._login_lock:
                # Another thread may have logged in again already.
                if self._generation == generation:
                    log.info("session to %s expired; logging in again", self.url)
                    # Log in as a new session: vCenter refuses Login on a
                    # session it still knows.
                    self._stub.cookie = ""
                    self._login()
        if session_bound:
            raise SessionRenewed(f"{method}: the session was renewed; its objects are gone")
        try:
            return self._call_once(obj, method, args, kwargs)
        except vim.fault.NotAuthenticated as exc:
            raise AuthenticationFailed(
                f"{method}: vCenter refused the session right after a new login",
                hint="check that the user may use the API (VMDK_SNAP_USERNAME)",
                fault=exc,
            ) from exc

    def _call_once(
        self, obj: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return self._raw_call(obj, method, args, kwargs)
        except vim.fault.NotAuthenticated:
            raise
        except vmodl.MethodFault as exc:
            if fault_name(exc) in TRANSIENT_FAULTS:
                raise _Retryable(exc, ambiguous=False) from exc
            raise translate(exc, doing=f"{method} on {_describe(obj)}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise self._connection_error(exc) from exc
        except (ConnectionRefusedError, socket.gaierror) as exc:
            raise self._connection_error(exc) from exc
        except http.client.HTTPException as exc:
            if _is_transient_http(exc):
                # A 503 comes from a proxy or a busy vpxd before the call ran.
                raise _Retryable(exc, ambiguous=False) from exc
            if isinstance(exc, http.client.RemoteDisconnected | http.client.BadStatusLine):
                raise _Ambiguous(str(exc)) from exc
            raise ConnectionFailed(f"{method} to {self.url}: HTTP {exc}") from exc
        except (ConnectionError, TimeoutError) as exc:
            raise _Ambiguous(str(exc)) from exc

    def _connection_error(self, exc: BaseException) -> VmdkSnapError:
        """A one-line error for a failure to reach or trust vCenter."""
        if isinstance(exc, VmdkSnapError):
            return exc
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = getattr(exc, "verify_message", "") or str(exc)
            seen = _server_thumbprint(self.host, self.port)
            pin = f" (its SHA-256 is {seen})" if seen else ""
            return CertificateError(
                f"the certificate of {self.url} is not trusted: {reason}",
                hint="pass --ca-file/VMDK_SNAP_CA_FILE with the CA that signed it, or pin its "
                f"thumbprint with --thumbprint/VMDK_SNAP_THUMBPRINT{pin} after checking it",
            )
        if isinstance(exc, ConnectionRefusedError):
            return ConnectionFailed(
                f"cannot reach {self.url}: connection refused",
                hint="check the URL/port and that vCenter is up",
            )
        if isinstance(exc, socket.gaierror):
            return ConnectionFailed(
                f"cannot resolve {self.host}: {exc.strerror or exc}",
                hint="check the host name in the URL",
            )
        if isinstance(exc, TimeoutError | socket.timeout):
            return ConnectionFailed(
                f"cannot reach {self.url}: timed out",
                hint="check the URL/port, firewalls and that vCenter is up",
            )
        return ConnectionFailed(
            f"cannot talk to {self.url}: {_short(exc)}",
            hint="check the URL/port and that it is a vCenter SDK endpoint",
        )


def _server_thumbprint(host: str, port: int) -> str:
    """The SHA-256 of the certificate the server presents, for the error message."""
    try:
        pem = ssl.get_server_certificate((host, port), timeout=5)
    except (OSError, ssl.SSLError):
        return ""
    return _colons(hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest())


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _describe(obj: Any) -> str:
    moid = getattr(obj, "_moId", None)
    return str(moid) if moid else type(obj).__name__
