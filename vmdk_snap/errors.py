"""The errors vmdk_snap raises, and the one translation of vSphere faults into them.

Every error says what went wrong (``str(exc)``) and what to do about it
(``exc.hint``). Errors that come from vSphere keep the original fault
(``exc.fault``) and, when a task failed, the task (``exc.task``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmdk_snap.types import TaskRef

__all__ = [
    "AuthenticationFailed",
    "Busy",
    "CertificateError",
    "ConnectionFailed",
    "FileLocked",
    "InvalidInput",
    "InvalidState",
    "JournalError",
    "NoDiskSpace",
    "NotFound",
    "QuiesceFailed",
    "TaskFailed",
    "TaskTimeout",
    "TransientError",
    "VmdkSnapError",
    "VsphereFault",
    "fault_name",
    "translate",
]


class VmdkSnapError(Exception):
    """Base of every error vmdk_snap raises.

    Attributes:
        hint: what the user should do about it ('' when nothing useful).
        fault: the original vSphere fault (a pyVmomi ``MethodFault``), if any.
        task: the task that failed, if the fault came from a task.
    """

    default_hint = ""
    # A group snapshot's member records when it failed
    # (vmdk_snap.group_snapshots.MemberResult), else None.
    members: tuple[Any, ...] | None = None

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        fault: Any = None,
        task: TaskRef | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint
        self.fault = fault
        self.task = task

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class NotFound(VmdkSnapError):
    """An object or file that should exist does not."""


class InvalidState(VmdkSnapError):
    """The object is not in a state that allows the operation."""


class InvalidInput(VmdkSnapError):
    """vSphere rejected an argument (bad device spec, host cannot see datastore, ...)."""


class JournalError(VmdkSnapError):
    """The journal file cannot be used: not a vmdk-snap journal, damaged, or not creatable.

    Nothing was written to it. ``path`` is the file; ``problem`` says what is
    wrong with it and ``remedy`` what to do, with ``{setting}`` standing for
    where the path was given (``journal_path`` for the library).
    """

    def __init__(
        self, path: Path, problem: str, remedy: str, setting: str = "journal_path"
    ) -> None:
        super().__init__(f"journal {path} {problem}", hint=remedy.format(setting=setting))
        self.path = path
        self.problem = problem
        self.remedy = remedy

    def naming(self, setting: str) -> JournalError:
        """The same error, its remedy naming ``setting`` (e.g. ``--journal``)."""
        return JournalError(self.path, self.problem, self.remedy, setting)


class Busy(VmdkSnapError):
    """Another operation holds the object; retry later."""

    default_hint = "another operation is using it; retry when it has finished"


class ConnectionFailed(VmdkSnapError):
    """vCenter could not be reached, or the connection was lost."""


class CertificateError(ConnectionFailed):
    """vCenter's certificate is not trusted."""


class AuthenticationFailed(VmdkSnapError):
    """vCenter rejected the credentials."""

    default_hint = "check VMDK_SNAP_USERNAME/VMDK_SNAP_PASSWORD"


class TransientError(VmdkSnapError):
    """A temporary failure that outlasted the retries."""

    default_hint = "vCenter or a host is temporarily unavailable; retry later"


class VsphereFault(VmdkSnapError):
    """A vSphere fault with no more specific meaning to us; ``fault`` keeps it."""


class TaskFailed(VmdkSnapError):
    """A vSphere task ended in error; ``fault`` and ``task`` keep the details."""


class FileLocked(TaskFailed, Busy):
    """A disk file is locked by another VM or host."""

    default_hint = (
        "a disk file is in use by another VM or host; "
        "retry when the other operation has finished, or find the VM holding it"
    )


class NoDiskSpace(TaskFailed):
    default_hint = "free space on the datastore or pick another one"


class QuiesceFailed(TaskFailed):
    default_hint = "check VMware Tools in the guest, or snapshot without quiescing"


class TaskTimeout(TaskFailed):
    """A task did not finish in time. It may still be running in vCenter."""

    default_hint = "it may still be running: check the task in vCenter before retrying"


# vSphere fault type name -> our class. Faults not listed here are looked up
# by their base classes (FileLocked is a FileFault, ...), then fall back.
_REGISTRY: dict[str, type[VmdkSnapError]] = {
    "ManagedObjectNotFound": NotFound,
    "FileNotFound": NotFound,
    "NotFound": NotFound,
    "InvalidState": InvalidState,
    "InvalidPowerState": InvalidState,
    "InvalidVmState": InvalidState,
    "TooManySnapshotLevels": InvalidState,
    "ToolsUnavailable": InvalidState,
    "InvalidArgument": InvalidInput,
    "InvalidDeviceSpec": InvalidInput,
    "InvalidRequest": InvalidInput,
    "InvalidType": InvalidInput,
    "TaskInProgress": Busy,
    "ConcurrentAccess": Busy,
    "FileLocked": FileLocked,
    "NoDiskSpace": NoDiskSpace,
    "ApplicationQuiesceFault": QuiesceFailed,
    "FilesystemQuiesceFault": QuiesceFailed,
    "InvalidLogin": AuthenticationFailed,
    "NotAuthenticated": AuthenticationFailed,
    "NoPermission": AuthenticationFailed,
    "HostCommunication": TransientError,
    "HostNotConnected": TransientError,
}

_HINTS: dict[str, str] = {
    "ManagedObjectNotFound": "the object was deleted meanwhile; look it up again",
    "FileNotFound": "the file is gone from the datastore; check the volume's backing",
    "TooManySnapshotLevels": "delete old snapshots first (vSphere allows 32 levels)",
    "ToolsUnavailable": "start VMware Tools in the guest, or snapshot without quiescing",
    "InvalidPowerState": "power the VM off or on as the operation needs",
    "NoPermission": "the vCenter user lacks a privilege for this operation",
}


def fault_name(fault: Any) -> str:
    """The vSphere type name of a pyVmomi fault, e.g. ``FileLocked``."""
    name = getattr(type(fault), "_wsdlName", None)
    return str(name) if name else type(fault).__name__


def _fault_message(fault: Any) -> str:
    msg = getattr(fault, "msg", None) or ""
    if not msg or msg == fault_name(fault):
        msg = getattr(fault, "reason", None) or ""
    if not msg:
        for item in getattr(fault, "faultMessage", None) or []:
            msg = getattr(item, "message", "") or ""
            if msg:
                break
    return str(msg)


def _lookup(fault: Any) -> tuple[str, type[VmdkSnapError] | None]:
    for klass in type(fault).__mro__:
        name = getattr(klass, "_wsdlName", None) or klass.__name__
        if name in _REGISTRY:
            return name, _REGISTRY[name]
    return fault_name(fault), None


def translate(fault: Any, task: TaskRef | None = None, doing: str = "") -> VmdkSnapError:
    """Turn a vSphere fault into our error, keeping the fault and the task.

    Args:
        fault: a pyVmomi ``MethodFault`` (raised by a call, or a task's error).
        task: the task that failed, when the fault came from one.
        doing: what we were doing, e.g. ``"CreateSnapshot_Task on vm-42"``.

    Returns:
        The error to raise (``raise translate(f) from f``).
    """
    name = fault_name(fault)
    matched, klass = _lookup(fault)
    what = doing or (task.description if task else "")
    text = _fault_message(fault)
    message = f"{what} failed: {name}" if what else f"vSphere fault {name}"
    if text and text != name:
        message += f": {text}"
    hint = _HINTS.get(name) or _HINTS.get(matched)
    if klass is None:
        klass = TaskFailed if task is not None else VsphereFault
    return klass(message, hint=hint, fault=fault, task=task)
