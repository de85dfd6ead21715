"""vCenter-internal methods pyVmomi lacks: ``DisableMethods`` and ``EnableMethods``.

vCenter lets a client disable methods on an entity under a source id of its
own (``AuthorizationManager.DisableMethods``): calls of them then fail with
``MethodDisabled``, naming the source, and the entity's ``disabledMethod``
lists them, until that source enables them again. vSphere's backup
integrations use it (VDDK's ``PrepareForAccess`` disables ``RelocateVM_Task``;
govc ``object.method``; VMware's VIC disables ``Destroy_Task``). The methods
live in the ``urn:internalvim25`` namespace, as govmomi sends them
(``object/authorization_manager_internal.go``), and no pyVmomi release has
them (9.1.1 and 8.0.3 checked), so the request is written here and posted on
the session's own connection and cookie.

:class:`InternalMethods` looks like a pyVmomi managed object to
:meth:`vmdk_snap.vsphere.session.Session.invoke` (a method per call that
raises the server's fault as pyVmomi would), so these calls get the same
re-login, bounded retries, counting and fault translation as every other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from http.client import HTTPException
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pyVmomi.SoapAdapter import SoapResponseDeserializer

from vmdk_snap.types import Moref

__all__ = ["InternalMethods"]

_ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    "<soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
)


def _ref(tag: str, ref: Moref) -> str:
    return f"<{tag} type={quoteattr(ref.type)}>{escape(ref.value)}</{tag}>"


class InternalMethods:
    """``AuthorizationManager``'s internal methods, on a session's SOAP stub."""

    def __init__(self, stub: Callable[[], Any], manager: Callable[[], Moref]) -> None:
        self._stub = stub
        self._manager = manager
        self._moId = "AuthorizationManager"  # read by the session's error messages

    def DisableMethods(
        self, entities: Sequence[Moref], methods: Sequence[tuple[str, str]], source: str
    ) -> None:
        """Disable ``methods`` ((name, reason id) pairs) on ``entities`` as ``source``."""
        items = "".join(
            f"<method><method>{escape(m)}</method><reasonId>{escape(r)}</reasonId></method>"
            for m, r in methods
        )
        self._post("DisableMethods", entities, items, source)

    def EnableMethods(self, entities: Sequence[Moref], methods: Sequence[str], source: str) -> None:
        """Enable again ``methods`` that ``source`` disabled on ``entities``."""
        items = "".join(f"<method>{escape(m)}</method>" for m in methods)
        self._post("EnableMethods", entities, items, source)

    def _post(self, method: str, entities: Sequence[Moref], items: str, source: str) -> None:
        stub = self._stub()
        body = (
            f'<{method} xmlns="urn:internalvim25">'
            + _ref("_this", self._manager())
            + "".join(_ref("entity", e) for e in entities)
            + items
            + f"<sourceId>{escape(source)}</sourceId></{method}>"
        )
        headers = {
            "Cookie": stub.cookie,
            "SOAPAction": stub.versionId,
            "Content-Type": "text/xml; charset=UTF-8",
        }
        conn = stub.GetConnection()
        try:
            conn.request("POST", stub.path, _ENVELOPE.format(body=body).encode(), headers)
            resp = conn.getresponse()
        except Exception:
            conn.close()
            stub.DropConnections()
            raise
        if resp.status == 500:
            deserializer = SoapResponseDeserializer(stub)  # type: ignore[no-untyped-call]
            fault = deserializer.Deserialize(resp, None)  # type: ignore[no-untyped-call]
            resp.read()
            stub.ReturnConnection(conn)
            if isinstance(fault, Exception):
                raise fault
            raise RuntimeError(f"{method}: HTTP 500 without a fault")
        resp.read()
        stub.ReturnConnection(conn)
        if resp.status != 200:
            raise HTTPException(f"{resp.status} {resp.reason}")
