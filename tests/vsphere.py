"""Plain pyVmomi helpers for tests that check the simulator directly.

Tests read with the property collector and explicit paths, never with
pyVmomi's lazy accessors: the suite checks that no ``Fetch`` reaches the
simulator.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from tests.conftest import Target


@contextmanager
def connect(target: Target) -> Iterator[Any]:
    """Log in to the target with plain pyVmomi, verifying its certificate."""
    context = ssl.create_default_context(cafile=target.ca_file)
    si = SmartConnect(
        host=target.host,
        port=target.port,
        user=target.username,
        pwd=target.password,
        sslContext=context,
    )
    try:
        yield si
    finally:
        Disconnect(si)


def moref(si: Any, kind: str, value: str) -> Any:
    """A managed object of the given type bound to the session."""
    return getattr(vim, kind)(value, si._stub)


def props(si: Any, obj: Any, *paths: str) -> dict[str, Any]:
    """Read the given property paths of one object in one call."""
    content = si.RetrieveContent()
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False)],
        propSet=[
            vmodl.query.PropertyCollector.PropertySpec(
                type=type(obj), pathSet=list(paths), all=False
            )
        ],
    )
    result = content.propertyCollector.RetrievePropertiesEx(
        [spec], vmodl.query.PropertyCollector.RetrieveOptions()
    )
    out: dict[str, Any] = {p: None for p in paths}
    for oc in result.objects:
        for prop in oc.propSet or []:
            out[prop.name] = prop.val
    return out


def disk_paths(si: Any, vm: Any) -> list[str]:
    """The file names of a VM's disks, in device order."""
    devices = props(si, vm, "config.hardware.device")["config.hardware.device"]
    return [
        str(d.backing.fileName)  # type: ignore[union-attr]  # disks always have a file backing here
        for d in devices
        if isinstance(d, vim.vm.device.VirtualDisk)
    ]
