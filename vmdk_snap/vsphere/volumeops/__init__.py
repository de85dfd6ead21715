"""Typed vSphere operations for vmdk_snap (the only layer above the session
that touches pyVmomi): reads with explicit property paths, task-starting
operations with event-driven waits. See :class:`VolumeOps`.
"""

from __future__ import annotations

from vmdk_snap.vsphere.volumeops.ops import DEFAULT_TASK_TIMEOUT, Attachments, VolumeOps

__all__ = ["DEFAULT_TASK_TIMEOUT", "Attachments", "VolumeOps"]
