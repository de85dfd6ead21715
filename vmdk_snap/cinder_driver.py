"""A Cinder volume driver: Cinder's own VMDK driver, with vmdk_snap's snapshots.

In a backend section of ``cinder.conf``::

    [vmware]
    volume_driver = vmdk_snap.cinder_driver.VmdkSnapDriver
    vmware_host_ip = vc.example.org
    vmware_host_username = cinder@vsphere.local
    vmware_host_password = ...
    vmware_ca_file = /etc/cinder/vcenter-ca.pem

:class:`VmdkSnapDriver` is a subclass of Cinder's ``VMwareVcVmdkDriver``:
everything it does not override stays Cinder's own code. What it changes:

- ``create_snapshot`` of an in-use volume (Cinder's API already asked for
  ``--force``) runs our forced workflow: the volume is snapshotted attached,
  copying nothing. An attachment in transition, or several instances
  (multi-attach), is refused with ``InvalidVolume`` saying why. An available
  volume gets our detached snapshot. Either way the result has the stock COW
  shape: a vSphere snapshot named ``snapshot.name`` on the backing and no
  ``provider_location``, which Cinder's own ``create_volume_from_snapshot``
  and clones use. ``vmware_snapshot_format`` is not used for new snapshots;
  template snapshots made before keep working (their ``provider_location``
  sends them to Cinder's own code).
- ``delete_snapshot`` also while the volume is attached (the stock driver
  refuses), and ``revert_to_snapshot``; our errors become Cinder's.
- Consistent group snapshots (group types with
  ``consistent_group_snapshot_enabled``): the members attached to one instance
  are taken at one moment through one instance snapshot.
- Locks through Cinder's own coordination (``[coordination] backend_url``),
  so two backends with volumes on one instance take turns; the journal under
  Cinder's ``state_path``; interrupted workflows recovered at ``do_setup``.
- Strategies by name (``vmdk_snap_strategy_available``,
  ``vmdk_snap_strategy_in_use``), from the entry-point group
  ``vmdk_snap.strategies``, so that a package can add one.

Importing this module needs Cinder (``pip install 'vmdk-snap[cinder]'``); the
rest of vmdk_snap does not.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from cinder import coordination, exception
from cinder.volume import volume_utils
from cinder.volume.drivers.vmware import vmdk
from oslo_config import cfg
from oslo_log import log as logging

from vmdk_snap.driver import Driver
from vmdk_snap.errors import (
    AuthenticationFailed,
    FileLocked,
    InvalidInput,
    InvalidState,
    NotFound,
    VmdkSnapError,
)
from vmdk_snap.strategies import SnapshotStrategy
from vmdk_snap.volume_state import AVAILABLE, IN_USE, Volume
from vmdk_snap.vsphere.session import Session
from vmdk_snap.workflows.coordination import ToozLocks
from vmdk_snap.workflows.locks import DEFAULT_INSTANCE_WAIT

__all__ = ["STRATEGY_GROUP", "VmdkSnapDriver", "vmdk_snap_opts"]

LOG = logging.getLogger(__name__)
CONF = cfg.CONF

STRATEGY_GROUP = "vmdk_snap.strategies"

vmdk_snap_opts = [
    cfg.StrOpt(
        "vmdk_snap_strategy_available",
        default="detached",
        help="Snapshot strategy for available volumes: a name in the entry-point group "
        f"{STRATEGY_GROUP} (vmdk_snap registers 'detached' and 'attached').",
    ),
    cfg.StrOpt(
        "vmdk_snap_strategy_in_use",
        default="attached",
        help="Snapshot strategy for in-use volumes: a name in the entry-point group "
        f"{STRATEGY_GROUP}.",
    ),
    cfg.StrOpt(
        "vmdk_snap_journal",
        default=None,
        help="The workflow journal (SQLite). Default: $state_path/vmdk-snap/<backend>.sqlite.",
    ),
    cfg.FloatOpt(
        "vmdk_snap_instance_wait",
        default=DEFAULT_INSTANCE_WAIT,
        min=0,
        help="Seconds a workflow on an instance waits for another one on the same instance.",
    ),
    cfg.BoolOpt(
        "vmdk_snap_compact",
        default=True,
        help="Merge the deltas forced snapshots leave on an instance once no snapshot holds them.",
    ),
]


def strategy_named(name: str) -> SnapshotStrategy:
    """The strategy registered as ``name`` in the entry-point group :data:`STRATEGY_GROUP`."""
    found = [ep for ep in metadata.entry_points(group=STRATEGY_GROUP) if ep.name == name]
    if not found:
        known = sorted({ep.name for ep in metadata.entry_points(group=STRATEGY_GROUP)})
        raise exception.InvalidConfigurationValue(
            option=f"vmdk_snap strategy {name!r} (known: {', '.join(known) or 'none'})",
            value=name,
        )
    loaded = found[0].load()
    return loaded() if isinstance(loaded, type) else loaded  # type: ignore[no-any-return]


def _cinder_error(exc: VmdkSnapError, *, snapshot: Any = None) -> Any:
    """Our error as the Cinder exception the volume manager expects."""
    if isinstance(exc, FileLocked) and snapshot is not None:
        return exception.SnapshotIsBusy(snapshot_name=snapshot.name)
    if isinstance(exc, (InvalidState, InvalidInput)):
        return exception.InvalidVolume(reason=str(exc))
    return exception.VolumeBackendAPIException(data=str(exc))


def _attached_instance(volume: Any) -> str | None:
    """The instance an in-use volume is attached to; None when available.

    Raises:
        InvalidVolume: an attachment in transition, or several instances.
    """
    attachments = list(volume.volume_attachment or [])
    moving = [a for a in attachments if a.attach_status not in ("attached", "detached")]
    if moving:
        raise exception.InvalidVolume(
            reason=f"volume {volume.id} has an attachment {moving[0].attach_status}: "
            "snapshot it once the attachment is done"
        )
    instances = sorted(
        {a.instance_uuid for a in attachments if a.attach_status == "attached" and a.instance_uuid}
    )
    if len(instances) > 1:
        raise exception.InvalidVolume(
            reason=f"volume {volume.id} is attached to several instances ({', '.join(instances)}): "
            "a snapshot of a multi-attached volume is not consistent, so it is refused"
        )
    return instances[0] if instances else None


class VmdkSnapDriver(vmdk.VMwareVcVmdkDriver):  # type: ignore[misc]
    """Cinder's VMDK driver with vmdk_snap's snapshots of attached volumes."""

    VERSION = "1.0.0"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(vmdk_snap_opts)
        self._snap: Driver | None = None
        self._snap_session: Session | None = None

    @staticmethod
    def get_driver_options() -> list[Any]:
        return [*vmdk.VMwareVcVmdkDriver.get_driver_options(), *vmdk_snap_opts]

    # -- setup ---------------------------------------------------------------------------

    def do_setup(self, context: Any) -> None:
        """Cinder's setup, then our session, journal and locks; then recover."""
        try:
            super().do_setup(context)
        except Exception as exc:
            if "InvalidLogin" in str(exc) or "incorrect user name or password" in str(exc):
                raise exception.VolumeBackendAPIException(data=self._login_refused()) from exc
            raise
        self._snap = self._make_driver()
        self._recover()

    def _login_refused(self) -> str:
        c = self.configuration
        return (
            f"vCenter {c.vmware_host_ip} refused the login of {c.vmware_host_username}: "
            "check vmware_host_username and vmware_host_password in this backend's section"
        )

    def _make_driver(self) -> Driver:
        c = self.configuration
        url = f"https://{c.vmware_host_ip}:{c.vmware_host_port}/sdk"
        # vmware_ca_file wins over vmware_insecure, as Cinder documents.
        insecure = bool(c.vmware_insecure) and not c.vmware_ca_file
        session = Session(
            url,
            c.vmware_host_username,
            c.vmware_host_password,
            ca_file=c.vmware_ca_file or None,
            insecure=insecure,
        )
        try:
            session.__enter__()
        except AuthenticationFailed as exc:
            raise exception.VolumeBackendAPIException(data=self._login_refused()) from exc
        except VmdkSnapError as exc:
            raise exception.VolumeBackendAPIException(data=f"vmdk_snap: {exc}") from exc
        self._snap_session = session
        backend = c.config_group or "default"
        journal = c.safe_get("vmdk_snap_journal") or os.path.join(
            CONF.state_path, "vmdk-snap", f"{backend}.sqlite"
        )
        strategies = {
            AVAILABLE: strategy_named(c.safe_get("vmdk_snap_strategy_available") or "detached"),
            IN_USE: strategy_named(c.safe_get("vmdk_snap_strategy_in_use") or "attached"),
        }
        return Driver(
            session,
            journal_path=Path(journal),
            locks=self._cinder_locks(),
            strategies=strategies,
            instance_wait=c.safe_get("vmdk_snap_instance_wait") or DEFAULT_INSTANCE_WAIT,
            compact=bool(c.safe_get("vmdk_snap_compact")),
        )

    @staticmethod
    def _cinder_locks() -> ToozLocks:
        """Locks in Cinder's own coordinator (tooz; ``[coordination] backend_url``)."""
        if coordination.COORDINATOR.coordinator is None:
            coordination.COORDINATOR.start()  # cinder-volume has started it already
        return ToozLocks(
            coordinator=coordination.COORDINATOR.coordinator,
            description="Cinder's coordination ([coordination] backend_url)",
        )

    def _recover(self) -> None:
        assert self._snap is not None
        try:
            results = self._snap.recover()
        except VmdkSnapError as exc:
            LOG.warning("vmdk_snap: recovering interrupted workflows failed: %s", exc)
            return
        for r in results:
            log = LOG.info if r.outcome in ("finished", "rolled_back") else LOG.warning
            log(
                "vmdk_snap: recovered %s of volume %s: %s %s",
                r.kind,
                r.volume_id,
                r.outcome,
                r.detail,
            )

    @property
    def snap(self) -> Driver:
        if self._snap is None:
            raise exception.VolumeBackendAPIException(data="vmdk_snap: do_setup has not run")
        return self._snap

    # -- stats ----------------------------------------------------------------------------

    def get_volume_stats(self, refresh: bool = False) -> dict[str, Any]:
        stats: dict[str, Any] = dict(super().get_volume_stats(refresh=refresh))
        stats["consistent_group_snapshot_enabled"] = True
        stats["driver_version"] = f"{stats.get('driver_version')}+vmdk_snap-{self.VERSION}"
        return stats

    # -- snapshots --------------------------------------------------------------------------

    def _volume(self, volume: Any) -> Volume:
        instance = _attached_instance(volume)
        return Volume(volume.id, IN_USE if instance else AVAILABLE, instance)

    def create_snapshot(self, snapshot: Any) -> dict[str, Any] | None:
        """An in-use volume through the forced workflow; an available one detached."""
        volume = self._volume(snapshot.volume)
        try:
            self.snap.create_snapshot(volume, snapshot.name, force=volume.status == IN_USE)
        except NotFound as exc:
            if self.volumeops.get_backing(snapshot.volume.name, snapshot.volume.id) is None:
                LOG.info("There is no backing, so will not create snapshot: %s.", snapshot.name)
                return None
            raise _cinder_error(exc) from exc
        except VmdkSnapError as exc:
            raise _cinder_error(exc) from exc
        LOG.info(
            "vmdk_snap: created snapshot %s of volume %s (%s)",
            snapshot.name,
            volume.id,
            volume.status,
        )
        return None  # the stock COW shape: provider_location stays empty

    def delete_snapshot(self, snapshot: Any) -> None:
        """Template snapshots go to Cinder's code; ours also while attached."""
        if snapshot.provider_location:
            super().delete_snapshot(snapshot)
            return
        volume = self._volume(snapshot.volume)
        try:
            if volume.status == AVAILABLE:
                dependent = self.snap.dependent_vms(volume)
                if dependent:
                    LOG.info(
                        "vmdk_snap: snapshot %s is busy: %s build on its volume's snapshots",
                        snapshot.name,
                        ", ".join(dependent),
                    )
                    raise exception.SnapshotIsBusy(snapshot_name=snapshot.name)
            self.snap.delete_snapshot(volume, snapshot.name)
        except NotFound:
            LOG.debug("Backing or snapshot %s does not exist: nothing to delete.", snapshot.name)
        except VmdkSnapError as exc:
            raise _cinder_error(exc, snapshot=snapshot) from exc

    def revert_to_snapshot(self, context: Any, volume: Any, snapshot: Any) -> None:
        if snapshot.provider_location:
            raise exception.InvalidSnapshot(reason="Cannot revert to template based snapshot")
        try:
            self.snap.revert_to_snapshot(self._volume(volume), snapshot.name)
        except NotFound as exc:
            raise exception.InvalidSnapshot(reason=str(exc)) from exc
        except VmdkSnapError as exc:
            raise _cinder_error(exc, snapshot=snapshot) from exc

    # -- consistent group snapshots ---------------------------------------------------------

    def create_group_snapshot(
        self, context: Any, group_snapshot: Any, snapshots: Sequence[Any]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The members of each instance at one moment (one instance snapshot each).

        Members on several instances: each instance's members are taken at
        one moment, the instances one after the other (not one moment across
        instances, which vSphere cannot give). Available members get
        ordinary snapshots.
        """
        if not volume_utils.is_group_a_cg_snapshot_type(group_snapshot):
            raise NotImplementedError()  # the manager snapshots the members one by one
        by_instance: dict[str | None, list[Any]] = {}
        for snap in snapshots:
            by_instance.setdefault(_attached_instance(snap.volume), []).append(snap)
        updates: dict[str, dict[str, Any]] = {}
        failed = False
        for instance, members in sorted(by_instance.items(), key=lambda kv: kv[0] or ""):
            volumes = [
                Volume(s.volume.id, IN_USE if instance else AVAILABLE, instance) for s in members
            ]
            names = {s.volume.id: s.name for s in members}
            try:
                self.snap.create_group_snapshot(
                    volumes, f"group-snapshot-{group_snapshot.id}", force=True, names=names
                )
            except VmdkSnapError as exc:
                LOG.error(
                    "vmdk_snap: group snapshot %s on instance %s failed: %s",
                    group_snapshot.id,
                    instance,
                    exc,
                )
                failed = True
                for s in members:
                    updates[s.id] = {"id": s.id, "status": "error"}
                continue
            for s in members:
                updates[s.id] = {"id": s.id, "status": "available"}
        model = {"status": "error" if failed else "available"}
        return model, [updates[s.id] for s in snapshots]

    def delete_group_snapshot(
        self, context: Any, group_snapshot: Any, snapshots: Sequence[Any]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if not volume_utils.is_group_a_cg_snapshot_type(group_snapshot):
            raise NotImplementedError()
        updates = []
        failed = False
        for snap in snapshots:
            try:
                self.delete_snapshot(snap)
                updates.append({"id": snap.id, "status": "deleted"})
            except exception.CinderException as exc:
                LOG.error(
                    "vmdk_snap: deleting %s of group snapshot %s failed: %s",
                    snap.name,
                    group_snapshot.id,
                    exc,
                )
                failed = True
                updates.append({"id": snap.id, "status": "error_deleting"})
        return {"status": "error_deleting" if failed else "deleted"}, updates

    def create_group(self, context: Any, group: Any) -> dict[str, Any]:
        """A group is Cinder's bookkeeping only: nothing in vCenter."""
        return {"status": "available"}

    def delete_group(
        self, context: Any, group: Any, volumes: Iterable[Any]
    ) -> tuple[dict[str, Any], list[Any]]:
        """Deleting a group with its volumes deletes each volume (Cinder's own delete)."""
        updates = []
        for volume in volumes:
            self.delete_volume(volume)
            updates.append({"id": volume.id, "status": "deleted"})
        return {"status": "deleted"}, updates

    def update_group(
        self, context: Any, group: Any, add_volumes: Any = None, remove_volumes: Any = None
    ) -> tuple[None, None, None]:
        return None, None, None
