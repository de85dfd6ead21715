"""Cinder's real VolumeManager with our driver, on a SQLite database (issue 16, tier 2).

Eventlet-patched first, as cinder-volume is. Reads one JSON request on stdin
(as :mod:`tests.cinder.cinder_child`, plus ``state_path``), builds
``cinder.volume.manager.VolumeManager`` for a backend whose ``volume_driver``
is ``vmdk_snap.cinder_driver.VmdkSnapDriver``, sets its driver up
(``do_setup``, then initialized, as ``init_host`` does), and runs each call
through the manager on rows of a real Cinder database (the schema made by
Cinder's own migrations). Prints, per call, the statuses the database ends
with. Notifications go nowhere (no notification driver, oslo.messaging's
default; the transport is its in-memory ``fake``).

Calls (volumes as in cinder_child; ``"attached_to"`` makes attachment rows):
``["create_snapshot", snapshot]`` -> the snapshot's status;
``["delete_snapshot", snapshot]`` -> ``"deleted"`` or its status;
``["revert_to_snapshot", snapshot]`` -> the volume's status;
``["create_group_snapshot", {"id", "group_type", "snapshots": [...]}]`` ->
the group snapshot's and each member's status.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

warnings.simplefilter("ignore")

from cinder import context, exception, objects, rpc  # noqa: E402
from cinder.db import api as db  # noqa: E402

objects.register_all()  # before the manager's module, whose annotations name them

import oslo_messaging as messaging  # noqa: E402
from cinder.objects import fields  # noqa: E402
from cinder.volume import manager  # noqa: E402
from oslo_config import cfg  # noqa: E402

from tests.cinder.cinder_child import BACKEND, _database, _volume_types, driver  # noqa: E402

HOST = f"cinder-sim@{BACKEND}#{BACKEND}"


class Rows:
    """Database rows for the calls' JSON."""

    def __init__(self, ctx: Any, types: dict[str, str]) -> None:
        self.ctx = ctx
        self.types = types

    def volume(self, v: dict[str, Any], group_id: str | None = None) -> Any:
        try:
            return objects.Volume.get_by_id(self.ctx, v["id"])
        except exception.VolumeNotFound:
            pass
        attached = v.get("attached_to", [])
        # Through the database API: the id must be the volume's (its backing's).
        db.volume_create(
            self.ctx,
            {
                "id": v["id"],
                "size": v["size"],
                "status": v.get("status", "in-use" if attached else "available"),
                "attach_status": "attached" if attached else "detached",
                "project_id": "project-sim",
                "user_id": "user-sim",
                "display_name": v["id"][:8],
                "host": HOST,
                "volume_type_id": self.types[v.get("volume_type") or "full"],
                "group_id": group_id,
            },
        )
        volume = objects.Volume.get_by_id(self.ctx, v["id"])
        for uuid in attached:
            objects.VolumeAttachment(
                self.ctx,
                volume_id=volume.id,
                instance_uuid=uuid,
                attach_status=v.get("attach_status", "attached"),
                attach_mode="rw",
                mountpoint="/dev/sdb",
            ).create()
        return objects.Volume.get_by_id(self.ctx, volume.id)

    def snapshot(self, s: dict[str, Any], **fields_: Any) -> Any:
        try:
            return objects.Snapshot.get_by_id(self.ctx, s["id"])
        except exception.SnapshotNotFound:
            pass
        volume = self.volume(s["volume"], fields_.pop("group_id", None))
        db.snapshot_create(
            self.ctx,
            {
                "id": s["id"],
                "volume_id": volume.id,
                "volume_size": volume.size,
                "status": fields.SnapshotStatus.CREATING,
                "display_name": "snap",
                "project_id": volume.project_id,
                "user_id": "user-sim",
                "volume_type_id": volume.volume_type_id,
                **fields_,
            },
        )
        return objects.Snapshot.get_by_id(self.ctx, s["id"])


def status_of(ctx: Any, snapshot_id: str) -> str:
    try:
        return str(objects.Snapshot.get_by_id(ctx, snapshot_id).status)
    except exception.SnapshotNotFound:
        return "deleted"


def group_snapshot(vm: Any, rows: Rows, g: dict[str, Any]) -> dict[str, Any]:
    ctx = rows.ctx
    type_id = rows.types[f"group:{g['group_type']}"]
    group = objects.Group(
        ctx,
        name="group",
        status="available",
        group_type_id=type_id,
        volume_type_ids=[rows.types["full"]],
        project_id="project-sim",
        user_id="user-sim",
        host=HOST,
    )
    group.create()
    for s in g["snapshots"]:  # the group's volumes first: a group snapshot needs them
        rows.volume(s["volume"], group.id)
    gs = objects.GroupSnapshot(
        ctx,
        group_id=group.id,
        group_type_id=type_id,
        name="group-snap",
        status=fields.GroupSnapshotStatus.CREATING,
        project_id="project-sim",
        user_id="user-sim",
    )
    gs.create()
    snaps = [rows.snapshot(s, group_id=group.id, group_snapshot_id=gs.id) for s in g["snapshots"]]
    try:
        vm.create_group_snapshot(ctx, objects.GroupSnapshot.get_by_id(ctx, gs.id))
        error = None
    except Exception as exc:  # noqa: BLE001 - reported with the statuses
        error = f"{type(exc).__name__}: {exc}"
    return {
        "group_snapshot": str(objects.GroupSnapshot.get_by_id(ctx, gs.id).status),
        "members": [status_of(ctx, s.id) for s in snaps],
        "error": error,
    }


def call(vm: Any, rows: Rows, name: str, args: list[Any]) -> Any:
    ctx = rows.ctx
    if name == "create_snapshot":
        snapshot = rows.snapshot(args[0])
        try:
            vm.create_snapshot(ctx, snapshot)
        except Exception as exc:  # noqa: BLE001 - the manager re-raises; the status is the point
            return {"status": status_of(ctx, snapshot.id), "error": f"{type(exc).__name__}: {exc}"}
        return {"status": status_of(ctx, snapshot.id)}
    if name == "delete_snapshot":
        snapshot = objects.Snapshot.get_by_id(ctx, args[0]["id"])
        snapshot.status = fields.SnapshotStatus.DELETING
        snapshot.save()
        vm.delete_snapshot(ctx, snapshot)
        return {"status": status_of(ctx, snapshot.id)}
    if name == "revert_to_snapshot":
        snapshot = objects.Snapshot.get_by_id(ctx, args[0]["id"])
        volume = objects.Volume.get_by_id(ctx, snapshot.volume_id)
        volume.status = "reverting"
        volume.save()
        snapshot.status = fields.SnapshotStatus.RESTORING
        snapshot.save()
        vm.revert_to_snapshot(ctx, volume, snapshot)
        return {"volume": str(objects.Volume.get_by_id(ctx, volume.id).status)}
    if name == "create_group_snapshot":
        return group_snapshot(vm, rows, args[0])
    raise ValueError(f"unknown call {name!r}")


def main() -> int:
    request = json.loads(sys.stdin.read())
    conf = cfg.CONF
    conf([], project="cinder", default_config_files=[])
    with tempfile.TemporaryDirectory(prefix="cinder-manager-") as workdir:
        conf.set_override("state_path", request.get("state_path") or workdir)
        messaging.get_rpc_transport(conf, url="fake:/")  # registers transport_url
        conf.set_override("transport_url", "fake:/")
        rpc.init(conf)
        _database(Path(workdir))
        ctx = context.get_admin_context()
        rows = Rows(ctx, _volume_types(ctx))
        driver({**request, "driver": "vmdk_snap"})  # registers and sets the backend's options
        vm = manager.VolumeManager(
            volume_driver="vmdk_snap.cinder_driver.VmdkSnapDriver",
            service_name=BACKEND,
            host=HOST.split("#", maxsplit=1)[0],
        )
        vm.driver.do_setup(ctx)
        vm.driver.set_initialized()
        results = []
        for name, *args in request["calls"]:
            try:
                results.append({"result": call(vm, rows, name, args)})
            except Exception as exc:  # noqa: BLE001 - reported to the test
                results.append({"error": type(exc).__name__, "message": str(exc)})
    print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
