"""What the Cinder-driver tests share: the driver's calls in a child process,
volumes and snapshots as the child takes them, a Nova-style attach, and what
a user would look at on the simulator (backings, files, tokens)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyVmomi import vim, vmodl

from tests.cinder.children import run_child
from tests.conftest import Target
from tests.vsphere import add_disk_change, connect, moref, props, remove_disk_change, run_task

__all__ = [
    "COW",
    "EAGER",
    "CinderVolume",
    "backing",
    "cinder",
    "cinder_attached",
    "cinder_ok",
    "disk_of",
    "files",
    "nova_attach",
    "nova_detach",
    "snapdriver",
    "snapdriver_ok",
    "snapshot_names",
    "tokens",
]

DATASTORES = ("ds-shared-1", "ds-shared-2", "ds-local-h0")
# Backend options: backings made at create_volume (not at first attach), and
# the COW snapshot format on top of that (Cinder's default is template).
EAGER = {"vmware_lazy_create": False}
COW = {**EAGER, "vmware_snapshot_format": "COW"}


@dataclass
class CinderVolume:
    """A volume as the child builds it (``cinder_child.Objects``)."""

    size: int = 1
    volume_type: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    attached_to: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"volume-{self.id}"

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "size": self.size, "attached_to": self.attached_to}
        if self.volume_type:
            out["volume_type"] = self.volume_type
        return out

    def snapshot(
        self, snapshot_id: str | None = None, provider_location: str | None = None
    ) -> dict[str, Any]:
        """A snapshot of this volume as the child takes it."""
        return {
            "id": snapshot_id or str(uuid.uuid4()),
            "volume": self.json(),
            "provider_location": provider_location,
        }


def cinder(vc: Target, *calls: list[Any], **options: Any) -> list[dict[str, Any]]:
    """do_setup, then ``calls``, in a child process; the setup's and the calls' results."""
    return run_child("tests.cinder.cinder_child", vc, list(calls), timeout=300, options=options)


def snapdriver(vc: Target, state: Path, *calls: list[Any], **options: Any) -> list[dict[str, Any]]:
    """Like :func:`cinder`, with our ``VmdkSnapDriver``; ``state`` is cinder-volume's
    ``state_path`` (our journal, Cinder's file locks), kept between calls."""
    return run_child(
        "tests.cinder.cinder_child",
        vc,
        list(calls),
        timeout=300,
        options=options,
        extra={"driver": "vmdk_snap", "state_path": str(state)},
    )


def snapdriver_ok(vc: Target, state: Path, *calls: list[Any], **options: Any) -> list[Any]:
    """Like :func:`snapdriver`, asserting that the setup and every call succeeded."""
    results = snapdriver(vc, state, *calls, **options)
    assert "error" not in results[0], results[0]
    for call, result in zip(calls, results[1:], strict=True):
        assert "error" not in result, (call[0], result)
    return [r["result"] for r in results[1:]]


def cinder_ok(vc: Target, *calls: list[Any], **options: Any) -> list[Any]:
    """Like :func:`cinder`, asserting that every call succeeded; their results."""
    results = cinder(vc, *calls, **options)[1:]
    for call, result in zip(calls, results, strict=True):
        assert "error" not in result, (call[0], result)
    return [r["result"] for r in results]


def backing(vc: Target, name: str) -> str | None:
    """The moref of the VM named ``name`` (a backing, a template), or None."""
    with connect(vc) as si:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        collector = vmodl.query.PropertyCollector
        spec = collector.FilterSpec(
            objectSet=[
                collector.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        collector.TraversalSpec(
                            name="view", type=vim.view.ContainerView, path="view", skip=False
                        )
                    ],
                )
            ],
            propSet=[collector.PropertySpec(type=vim.VirtualMachine, pathSet=["name"], all=False)],
        )
        try:
            result = content.propertyCollector.RetrievePropertiesEx(
                [spec], collector.RetrieveOptions()
            )
            found = []
            while result:
                found += [oc for oc in result.objects if oc.propSet[0].val == name]
                token = result.token
                result = (
                    content.propertyCollector.ContinueRetrievePropertiesEx(token) if token else None
                )
        finally:
            view.DestroyView()
    assert len(found) <= 1, found
    return str(found[0].obj._moId) if found else None


def disk_of(vc: Target, vm: str) -> Any:
    """The one disk device of a VM (a backing)."""
    with connect(vc) as si:
        devices = props(si, moref(si, "VirtualMachine", vm), "config.hardware.device")
    disks = [
        d for d in devices["config.hardware.device"] if isinstance(d, vim.vm.device.VirtualDisk)
    ]
    assert len(disks) == 1, disks
    return disks[0]


def tokens(vc: Target, vm: str, key: int | None = None) -> list[str]:
    """The tokens a VM's disk holds (its only disk unless ``key``)."""
    if key is None:
        key = int(disk_of(vc, vm).key)
    return list(vc.ctl.read_disk(vm, key)["tokens"])


def snapshot_names(vc: Target, vm: str) -> list[str]:
    """The names in a VM's snapshot tree, depth first."""
    with connect(vc) as si:
        snap = props(si, moref(si, "VirtualMachine", vm), "snapshot")["snapshot"]

    def walk(nodes: list[Any]) -> list[str]:
        return [n for node in nodes for n in [str(node.name), *walk(node.childSnapshotList)]]

    return walk(snap.rootSnapshotList) if snap else []


def files(vc: Target) -> set[str]:
    """Every file on the simulator's datastores."""
    return {f for ds in DATASTORES for f in vc.ctl.files(ds)}


def nova_attach(vc: Target, instance: str, volume: CinderVolume, connection: dict[str, Any]) -> int:
    """Attach a volume to an instance as Nova's vmwareapi driver does.

    Given Cinder's ``initialize_connection`` answer: the backing's VMDK is
    added to the instance (no file operation) on its SCSI controller, and
    ``extraConfig["volume-<id>"]`` records the device's disk uuid. Returns
    the instance's device key of the volume.
    """
    with connect(vc) as si:
        backing_vm = moref(si, "VirtualMachine", connection["data"]["volume"])
        disk = disk_of(vc, backing_vm._moId)
        inst = moref(si, "VirtualMachine", instance)
        devices = props(si, inst, "config.hardware.device")["config.hardware.device"]
        scsi = next(d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController))
        used = {d.unitNumber for d in devices if getattr(d, "controllerKey", None) == scsi.key}
        unit = next(u for u in range(16) if u != 7 and u not in used)
        change = add_disk_change(
            scsi.key, disk.backing.fileName, unit, capacity_kb=disk.capacityInKB
        )
        spec = vim.vm.ConfigSpec(
            deviceChange=[change],
            extraConfig=[
                vim.option.OptionValue(key=f"volume-{volume.id}", value=disk.backing.uuid)
            ],
        )
        run_task(si, inst.ReconfigVM_Task(spec))
        devices = props(si, inst, "config.hardware.device")["config.hardware.device"]
    volume.attached_to = [_instance_uuid(vc, instance)]
    added = next(
        d
        for d in devices
        if isinstance(d, vim.vm.device.VirtualDisk)
        and d.controllerKey == scsi.key
        and d.unitNumber == unit
    )
    return int(added.key)


def cinder_attached(vc: Target, instance: dict[str, Any], volume: CinderVolume) -> tuple[str, int]:
    """Cinder makes the volume (eagerly) and answers initialize_connection, Nova
    attaches it: (its backing's moref, the instance's disk key)."""
    (_, connection) = cinder_ok(
        vc,
        ["create_volume", volume.json()],
        ["initialize_connection", volume.json(), {"instance": instance["moref"]}],
        **EAGER,
    )
    key = nova_attach(vc, instance["moref"], volume, connection)
    moref = backing(vc, volume.name)
    assert moref is not None
    return moref, key


def nova_detach(vc: Target, instance: str, volume: CinderVolume, key: int) -> None:
    """Detach as Nova does: remove the device (files kept), drop the extraConfig key."""
    with connect(vc) as si:
        inst = moref(si, "VirtualMachine", instance)
        devices = props(si, inst, "config.hardware.device")["config.hardware.device"]
        disk = next(d for d in devices if d.key == key)
        spec = vim.vm.ConfigSpec(
            deviceChange=[remove_disk_change(disk)],
            extraConfig=[vim.option.OptionValue(key=f"volume-{volume.id}", value="")],
        )
        run_task(si, inst.ReconfigVM_Task(spec))
    volume.attached_to = []


def _instance_uuid(vc: Target, instance: str) -> str:
    with connect(vc) as si:
        return str(
            props(si, moref(si, "VirtualMachine", instance), "config.instanceUuid")[
                "config.instanceUuid"
            ]
        )
