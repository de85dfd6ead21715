"""Which Cinder volumes vCenter holds: every backing, and which are attached.

For ``vmdk-snap check --all`` and ``batch --all-attached``: one read of every
VM's name and ``config.extraConfig`` across the inventory (one round trip,
whatever its size; more only if vCenter pages the answer).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyVmomi import vim

from vmdk_snap.session import Session
from vmdk_snap.volumeops.collect import retrieve, vms_under_root

__all__ = ["Inventory", "read_inventory"]

_BACKING_RE = re.compile(r"^volume-(?P<id>[0-9A-Za-z][0-9A-Za-z-]*)$")


@dataclass(frozen=True)
class Inventory:
    """Volume ids (sorted): every backing, and those some instance has attached.

    ``instance_of`` maps an attached volume id to the moref value of the VM
    (instance) recording it, so that work on one instance can be serialized.
    """

    volumes: tuple[str, ...]
    attached: tuple[str, ...]
    instance_of: Mapping[str, str] = field(default_factory=dict)


def read_inventory(session: Session) -> Inventory:
    """Every backing VM (named ``volume-<id>``) and every ``volume-<id>`` extraConfig key."""
    vms = retrieve(
        session,
        [vms_under_root(session)],
        {vim.VirtualMachine: ["name", "config.extraConfig"]},
    )
    volumes: set[str] = set()
    recorded: dict[str, str] = {}
    for vm in vms:
        match = _BACKING_RE.match(str(vm.props.get("name", "")))
        if match:
            volumes.add(match.group("id"))
            continue  # a backing's own keys are not attachments
        for option in vm.props.get("config.extraConfig") or ():
            key = _BACKING_RE.match(str(option.key))
            if key:
                recorded.setdefault(key.group("id"), vm.ref.value)
    attached = sorted(volumes & recorded.keys())
    return Inventory(tuple(sorted(volumes)), tuple(attached), {v: recorded[v] for v in attached})
