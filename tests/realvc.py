"""Recording against a real vCenter: its settings and a scenario seeder.

``./dev record`` records from the simulator, or, when
``VMDK_SNAP_RECORD_URL``, ``VMDK_SNAP_RECORD_USERNAME`` and
``VMDK_SNAP_RECORD_PASSWORD`` are set, from that vCenter. A real vCenter has
no control API (``/_ctl``), so :class:`RealVCenterControl` stands in for
:class:`vmdk_snap.testing.Control`: ``scenario(name)`` builds the scenarios
that plain vSphere calls can build (backing VMs, instances, attachments as
Nova makes them) and every other control method skips the test, saying it
needs the simulator's control API.

Every request the seeder sends is deterministic (names and UUIDs derive from
the test and a sequence number), so a cassette recorded this way replays.
What the seeder created is destroyed when the test ends, so recording twice
against the same vCenter works.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from vmdk_snap.testing import Control

log = logging.getLogger(__name__)

NEEDS_CTL = "needs the simulator's control API (a real vCenter has none)"

# Scenarios plain vSphere calls can build; the others need /_ctl (tokens,
# storage vMotion after writes, fillers at scale).
REAL_SCENARIOS = ("available-volume", "attached-volume", "instance-two-volumes")

_SCSI_KEY = 1000
_ROOT_KB = 2048
_VOLUME_KB = 1024


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class RecordTarget:
    """A real vCenter to record cassettes from, and where to seed in it."""

    url: str
    username: str
    password: str
    ca_file: str = ""
    thumbprint: str = ""
    insecure: bool = False
    datacenter: str = "DC0"
    cluster: str = "DC0_C0"
    datastore: str = "ds-shared-1"
    host: str = ""  # empty: the cluster's first host by name

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> RecordTarget | None:
        """The target named by ``VMDK_SNAP_RECORD_*``, or None when unset.

        Raises:
            ValueError: the URL is set but the user name or password is not.
        """
        env = dict(os.environ) if env is None else env
        url = env.get("VMDK_SNAP_RECORD_URL", "")
        if not url:
            return None
        username = env.get("VMDK_SNAP_RECORD_USERNAME", "")
        password = env.get("VMDK_SNAP_RECORD_PASSWORD", "")
        if not username or not password:
            raise ValueError(
                "VMDK_SNAP_RECORD_URL is set: set VMDK_SNAP_RECORD_USERNAME and "
                "VMDK_SNAP_RECORD_PASSWORD too (or unset the URL to record from the simulator)"
            )
        if "://" not in url:
            url = "https://" + url
        if urllib.parse.urlsplit(url).path in ("", "/"):
            url = url.rstrip("/") + "/sdk"
        return cls(
            url=url,
            username=username,
            password=password,
            ca_file=env.get("VMDK_SNAP_RECORD_CA_FILE", ""),
            thumbprint=env.get("VMDK_SNAP_RECORD_THUMBPRINT", ""),
            insecure=_flag(env.get("VMDK_SNAP_RECORD_INSECURE")),
            datacenter=env.get("VMDK_SNAP_RECORD_DATACENTER", "DC0"),
            cluster=env.get("VMDK_SNAP_RECORD_CLUSTER", "DC0_C0"),
            datastore=env.get("VMDK_SNAP_RECORD_DATASTORE", "ds-shared-1"),
            host=env.get("VMDK_SNAP_RECORD_HOST", ""),
        )

    @property
    def host_name(self) -> str:
        """The vCenter's host name, from the URL."""
        return urllib.parse.urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or 443

    def placement(self) -> dict[str, str]:
        """Where the seeder builds (kept in a cassette's metadata for replay)."""
        return {
            k: v
            for k, v in asdict(self).items()
            if k in ("datacenter", "cluster", "datastore", "host")
        }


class _PinnedContext(ssl.SSLContext):
    """Trusts exactly the certificate whose SHA-256 digest is ``pinned``."""

    pinned = ""

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        got = hashlib.sha256(sock.getpeercert(binary_form=True) or b"").hexdigest()
        if got != self.pinned:
            sock.close()
            raise ssl.SSLCertVerificationError(
                f"the vCenter's certificate has SHA-256 {got}, not the pinned "
                "VMDK_SNAP_RECORD_THUMBPRINT"
            )
        return sock


def _pinned_context(thumbprint: str) -> ssl.SSLContext:
    digest = thumbprint.replace(":", "").lower()
    if len(digest) != 64:
        raise ValueError("VMDK_SNAP_RECORD_THUMBPRINT must be a SHA-256 digest (64 hex digits)")
    context = _PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the digest check above replaces it
    context.pinned = digest
    return context


def stable_uuid(*parts: str) -> str:
    """A name-based UUID, derived as the simulator derives its ids."""
    h = hashlib.sha1(usedforsecurity=False)
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    b = bytearray(h.digest())
    b[6] = (b[6] & 0x0F) | 0x50
    b[8] = (b[8] & 0x3F) | 0x80
    x = b[:16].hex()
    return f"{x[0:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:32]}"


class RealVCenterControl(Control):
    """``vc.ctl`` when recording against a real vCenter.

    ``scenario(name)`` builds :data:`REAL_SCENARIOS` with plain pyVmomi and
    returns the simulator's shape (``instances`` and ``volumes``; no
    ``seed:<id>`` token is written: disk content needs the control API).
    Every other control call skips the test with :data:`NEEDS_CTL`.

    Args:
        target: the vCenter and where to build in it.
        namespace: what makes this test's names unique (the cassette's
            ``module/test``), so tests do not collide on one vCenter.
    """

    def __init__(self, target: RecordTarget, namespace: str) -> None:
        super().__init__("realvc:/_ctl", None)
        self.target = target
        self.namespace = namespace
        self._seq = 0
        self._si: Any = None
        self._content: Any = None
        self._where: dict[str, Any] | None = None
        self._created: list[tuple[str, Any]] = []  # ("instance" | "volume", vm)

    # -- everything the simulator alone can do --------------------------------

    def request(self, method: str, path: str, body: Any = None, **query: Any) -> NoReturn:
        pytest.skip(f"{NEEDS_CTL}: {method} /_ctl{path}")

    def scenario(self, name: str, **params: Any) -> dict[str, Any]:
        if name not in REAL_SCENARIOS or params:
            pytest.skip(f"{NEEDS_CTL}: scenario {name!r} {params or ''}".rstrip())
        self._seq += 1
        prefix = f"{self.namespace}/{name}/{self._seq}"
        out: dict[str, Any] = {"scenario": name, "instances": [], "volumes": []}
        if name == "available-volume":
            out["volumes"].append(self._volume(prefix, "vol"))
            return out
        inst = self._instance(prefix, "inst")
        out["instances"].append(inst)
        roles = ["vol"] if name == "attached-volume" else ["vol-a", "vol-b"]
        for role in roles:
            vol = self._volume(prefix, role)
            self._attach(inst, vol)
            out["volumes"].append(vol)
        return out

    # -- connection and inventory ---------------------------------------------

    def _connect(self) -> Any:
        if self._si is not None:
            return self._si
        t = self.target
        kwargs: dict[str, Any] = {}
        if t.insecure:
            kwargs["disableSslCertValidation"] = True
        elif t.thumbprint:
            # pyVim's version probe ignores its thumbprint argument: pin here.
            kwargs["sslContext"] = _pinned_context(t.thumbprint)
        else:
            kwargs["sslContext"] = ssl.create_default_context(cafile=t.ca_file or None)
        path = urllib.parse.urlsplit(t.url).path or "/sdk"
        self._si = SmartConnect(
            host=t.host_name,
            port=t.port,
            user=t.username,
            pwd=t.password,
            path=path,
            **kwargs,
        )
        self._content = self._si.RetrieveContent()
        return self._si

    def _service_content(self) -> Any:
        self._connect()
        return self._content

    def _props(self, obj: Any, *paths: str) -> dict[str, Any]:
        """Read property paths of one object in one call (no lazy Fetch)."""
        pc = self._service_content().propertyCollector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False)],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=type(obj), pathSet=list(paths), all=False
                )
            ],
        )
        result = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
        out: dict[str, Any] = {p: None for p in paths}
        for oc in result.objects if result else []:
            for prop in oc.propSet or []:
                out[prop.name] = prop.val
        return out

    def _named(self, kind: Any, name: str) -> Any:
        """The one object of a type with that name, found with a container view."""
        content = self._service_content()
        view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
        try:
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[
                    vmodl.query.PropertyCollector.ObjectSpec(
                        obj=view,
                        skip=True,
                        selectSet=[
                            vmodl.query.PropertyCollector.TraversalSpec(
                                name="view", type=vim.view.ContainerView, path="view", skip=False
                            )
                        ],
                    )
                ],
                propSet=[
                    vmodl.query.PropertyCollector.PropertySpec(
                        type=kind, pathSet=["name"], all=False
                    )
                ],
            )
            result = content.propertyCollector.RetrievePropertiesEx(
                [spec], vmodl.query.PropertyCollector.RetrieveOptions()
            )
        finally:
            view.DestroyView()
        found = sorted(
            (str(oc.propSet[0].val), oc.obj) for oc in (result.objects if result else [])
        )
        for obj_name, obj in found:
            if obj_name == name:
                return obj
        names = ", ".join(n for n, _ in found) or "none"
        raise LookupError(
            f"no {kind.__name__} named {name!r} on {self.target.url} (found: {names}); "
            "set the VMDK_SNAP_RECORD_DATACENTER/_CLUSTER/_DATASTORE/_HOST variables"
        )

    def _placement(self) -> dict[str, Any]:
        if self._where is not None:
            return self._where
        t = self.target
        dc = self._named(vim.Datacenter, t.datacenter)
        cluster = self._named(vim.ClusterComputeResource, t.cluster)
        self._named(vim.Datastore, t.datastore)  # fail early, with the names found
        cprops = self._props(cluster, "resourcePool", "host")
        hosts = sorted((str(self._props(h, "name")["name"]), h) for h in cprops["host"] or [])
        if not hosts:
            raise LookupError(f"cluster {t.cluster!r} has no hosts")
        host_name, host = hosts[0]
        if t.host:
            matches = [(n, h) for n, h in hosts if n == t.host]
            if not matches:
                raise LookupError(f"no host {t.host!r} in cluster {t.cluster!r}")
            host_name, host = matches[0]
        self._where = {
            "folder": self._props(dc, "vmFolder")["vmFolder"],
            "pool": cprops["resourcePool"],
            "host": host,
            "host_name": host_name,
        }
        return self._where

    def _wait(self, task: Any) -> Any:
        """Wait for a task with a property-collector filter; return its result.

        ``maxWaitSeconds`` is fixed, so the requests are the same on replay.
        """
        pc = self._service_content().propertyCollector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task, skip=False)],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.Task, pathSet=["info.state"], all=False
                )
            ],
        )
        pc_filter = pc.CreateFilter(spec, partialUpdates=False)
        version, state = "", ""
        try:
            for _ in range(600):
                options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=10)
                update = pc.WaitForUpdatesEx(version, options)
                if update is None:
                    continue
                version = update.version
                for fs in update.filterSet or []:
                    for oc in fs.objectSet or []:
                        for change in oc.changeSet or []:
                            state = str(change.val)
                if state in ("success", "error"):
                    break
        finally:
            pc_filter.DestroyPropertyFilter()
        info = self._props(task, "info.state", "info.error", "info.result")
        if info["info.state"] != "success":
            raise RuntimeError(f"seeding task failed: {info['info.error']}")
        return info["info.result"]

    # -- building -------------------------------------------------------------

    def _devices(self, vm: Any) -> list[Any]:
        devices: list[Any] = (
            self._props(vm, "config.hardware.device")["config.hardware.device"] or []
        )
        return devices

    def _disks(self, vm: Any) -> list[Any]:
        return [d for d in self._devices(vm) if isinstance(d, vim.vm.device.VirtualDisk)]

    def _scsi_key(self, vm: Any) -> int:
        """The key vCenter gave the VM's SCSI controller (it may renumber)."""
        return next(
            int(d.key)
            for d in self._devices(vm)
            if isinstance(d, vim.vm.device.VirtualSCSIController)
        )

    def _vm(self, name: str, uuid: str, size_kb: int, power_on: bool) -> tuple[Any, Any]:
        """A VM with a SCSI controller and one new disk ``[ds] name/name.vmdk``.

        The disk is added by a reconfiguration after the VM is created: the
        simulator models disk files on reconfiguration, and vCenter does the
        same either way.
        """
        where = self._placement()
        ds = self.target.datastore
        controller = vim.vm.device.VirtualDeviceSpec(
            operation="add",
            device=vim.vm.device.ParaVirtualSCSIController(
                key=_SCSI_KEY, busNumber=0, sharedBus="noSharing", scsiCtlrUnitNumber=7
            ),
        )
        config = vim.vm.ConfigSpec(
            name=name,
            instanceUuid=uuid,
            guestId="otherGuest64",
            numCPUs=1,
            memoryMB=128,
            files=vim.vm.FileInfo(vmPathName=f"[{ds}]"),
            deviceChange=[controller],
        )
        vm = self._wait(
            where["folder"].CreateVM_Task(config=config, pool=where["pool"], host=where["host"])
        )
        self._created.append(("instance" if power_on else "volume", vm))
        disk = vim.vm.device.VirtualDisk(
            key=2000,
            controllerKey=self._scsi_key(vm),
            unitNumber=0,
            capacityInKB=size_kb,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=f"[{ds}] {name}/{name}.vmdk", diskMode="persistent"
            ),
        )
        add = vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)
        self._wait(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[add])))
        if power_on:
            self._wait(vm.PowerOnVM_Task())
        return vm, self._disks(vm)[0]

    def _instance(self, prefix: str, role: str) -> dict[str, Any]:
        uuid = stable_uuid(prefix, role)
        name = f"instance-{uuid[:8]}"
        vm, disk = self._vm(name, uuid, _ROOT_KB, power_on=True)
        return {
            "name": name,
            "uuid": uuid,
            "moref": vm._moId,
            "host": self._placement()["host_name"],
            "root_vmdk": str(disk.backing.fileName),
        }

    def _volume(self, prefix: str, role: str) -> dict[str, Any]:
        vid = stable_uuid(prefix, role)
        name = f"volume-{vid}"
        vm, disk = self._vm(name, vid, _VOLUME_KB, power_on=False)
        return {
            "id": vid,
            "name": name,
            "moref": vm._moId,
            "vmdk": str(disk.backing.fileName),
            "disk_uuid": str(disk.backing.uuid),
        }

    def _attach(self, inst: dict[str, Any], vol: dict[str, Any]) -> None:
        """Attach as Nova does: the volume's VMDK by path, extraConfig names it."""
        vm = vim.VirtualMachine(inst["moref"], self._connect()._stub)
        disks = self._disks(vm)
        scsi = self._scsi_key(vm)
        used = {d.unitNumber for d in disks if d.controllerKey == scsi}
        unit = next(u for u in range(16) if u != 7 and u not in used)
        disk = vim.vm.device.VirtualDisk(
            key=2000 + len(disks),
            controllerKey=scsi,
            unitNumber=unit,
            capacityInKB=_VOLUME_KB,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=vol["vmdk"], diskMode="persistent"
            ),
        )
        spec = vim.vm.ConfigSpec(
            deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=disk)],
            extraConfig=[vim.option.OptionValue(key=vol["name"], value=vol["disk_uuid"])],
        )
        self._wait(vm.ReconfigVM_Task(spec=spec))
        vol["attached_to"] = inst["uuid"]

    # -- clean-up -------------------------------------------------------------

    def close(self) -> None:
        """Destroy what this seeder created (instances first) and log out.

        Failures are logged, not raised: a test may have destroyed a VM
        itself, or left files vCenter will not delete.
        """
        if self._si is None:
            return
        ordered = [vm for kind, vm in self._created if kind == "instance"]
        ordered += [vm for kind, vm in self._created if kind == "volume"]
        for vm in ordered:
            try:
                if self._props(vm, "runtime.powerState")["runtime.powerState"] == "poweredOn":
                    self._wait(vm.PowerOffVM_Task())
                self._wait(vm.Destroy_Task())
            except (vmodl.MethodFault, RuntimeError) as exc:
                log.warning("could not destroy seeded VM %s: %s", vm._moId, exc)
        self._created.clear()
        Disconnect(self._si)
        self._si = None
        self._content = None
        self._where = None
