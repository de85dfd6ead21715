"""oslo.vmware against the simulator, in a process of its own (as cinder-volume runs it).

Eventlet-patched first, as cinder-volume is. Reads one JSON request on stdin,
``{"url", "username", "password", "ca_file", "wsdl", "calls": [...]}``, runs
each call through oslo.vmware's ``VMwareAPISession`` and prints one JSON
document: each call's result, or the oslo.vmware exception it raised
(``{"error": class name, "message": ...}``). Calls:

- ``["objects", type, [properties]]``: ``vim_util.get_objects``, as a list of
  ``{"moref", <property>: value}``;
- ``["property", type, moref, path]``: ``vim_util.get_object_property``;
- ``["snapshot", moref, name]``: ``CreateSnapshot_Task`` and ``wait_for_task``,
  the snapshot's moref;
- ``["invoke", method, this, {arg: value}]``: any method on a service
  content object (``this``: e.g. ``searchIndex``, ``extensionManager``) with
  plain arguments, its result;
- ``["task", method, type, moref, {arg: value}]``: a task method on an
  object (type ``service``: a service content object, e.g.
  ``virtualDiskManager``), waited for with ``wait_for_task``, its state; an
  argument given as ``[type, value]`` is a managed object reference;
- ``["register_extension", key]``: ``RegisterExtension`` of an extension
  built as Cinder's driver builds its own.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import datetime  # noqa: E402 - after the patch, as in cinder-volume
import json  # noqa: E402
import sys  # noqa: E402
import urllib.parse  # noqa: E402
from typing import Any  # noqa: E402

from oslo_vmware import api, exceptions, vim_util  # noqa: E402


def _plain(value: Any) -> Any:
    """A suds value as JSON (morefs as their value)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "_type") and hasattr(value, "value"):
        return str(value.value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "__keylist__"):
        return {k: _plain(getattr(value, k)) for k in value.__keylist__}
    return str(value)


def _moref(kind: str, value: str) -> Any:
    return vim_util.get_moref(value, kind)


def _call(session: api.VMwareAPISession, call: list[Any]) -> Any:
    what = call[0]
    if what == "objects":
        _, kind, props = call
        result = session.invoke_api(vim_util, "get_objects", session.vim, kind, 100, props)
        out = []
        for obj in result.objects:
            row = {"moref": str(obj.obj.value)}
            for prop in getattr(obj, "propSet", []) or []:
                row[prop.name] = _plain(prop.val)
            out.append(row)
        return out
    if what == "property":
        _, kind, value, path = call
        got = session.invoke_api(
            vim_util, "get_object_property", session.vim, _moref(kind, value), path
        )
        return _plain(got)
    if what == "snapshot":
        _, value, name = call
        task = session.invoke_api(
            session.vim,
            "CreateSnapshot_Task",
            _moref("VirtualMachine", value),
            name=name,
            description="oslo.vmware",
            memory=False,
            quiesce=False,
        )
        return str(session.wait_for_task(task).result.value)
    if what == "invoke":
        _, method, this, kwargs = call
        target = getattr(session.vim.service_content, this)
        return _plain(session.invoke_api(session.vim, method, target, **kwargs))
    if what == "task":
        _, method, kind, value, kwargs = call
        this = (
            getattr(session.vim.service_content, value)
            if kind == "service"
            else _moref(kind, value)
        )
        # A [type, value] argument is a managed object reference.
        args = {k: _moref(*v) if isinstance(v, list) else v for k, v in kwargs.items()}
        task = session.invoke_api(session.vim, method, this, **args)
        return str(session.wait_for_task(task).state)
    if what == "register_extension":
        _, key = call
        factory = session.vim.client.factory
        ext = factory.create("ns0:Extension")
        ext.key = key
        ext.company = "OpenStack Foundation"
        ext.version = "1.0"
        ext.type = "cinder"
        description = factory.create("ns0:Description")
        description.label = key
        description.summary = "OpenStack services"
        ext.description = description
        # Naive, as oslo.vmware's register_extension (Cinder's do_setup)
        # sets it: suds writes it without a time zone.
        ext.lastHeartbeatTime = datetime.datetime.now()
        manager = session.vim.service_content.extensionManager
        return _plain(session.invoke_api(session.vim, "RegisterExtension", manager, extension=ext))
    raise ValueError(f"unknown call {what!r}")


def main() -> int:
    request = json.loads(sys.stdin.read())
    url = urllib.parse.urlsplit(request["url"])
    session = api.VMwareAPISession(
        url.hostname,
        request["username"],
        request["password"],
        1,  # api_retry_count
        0.1,  # task_poll_interval, seconds
        port=url.port,
        cacert=request["ca_file"],
        insecure=False,
        wsdl_loc=request["wsdl"],
    )
    results = []
    try:
        for call in request["calls"]:
            try:
                results.append({"result": _call(session, call)})
            except exceptions.VimException as exc:
                results.append({"error": type(exc).__name__, "message": str(exc)})
    finally:
        session.logout()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
