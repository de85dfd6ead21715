"""Which Cinder volumes vCenter holds: kept for callers of the first version.

The operation is :meth:`vmdk_snap.vsphere.volumeops.VolumeOps.list_volumes`; this
module only forwards to it.
"""

from __future__ import annotations

from vmdk_snap.types import VolumeInventory
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.volumeops.ops import VolumeOps

__all__ = ["Inventory", "read_inventory"]

Inventory = VolumeInventory


def read_inventory(session: Session) -> VolumeInventory:
    """Every backing (VM named ``volume-<id>``) and every attached volume (one read)."""
    return VolumeOps(session).list_volumes()
