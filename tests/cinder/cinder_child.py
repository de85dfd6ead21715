"""Cinder's own VMDK driver against the simulator, in a process of its own.

Eventlet-patched first, as cinder-volume is. Reads one JSON request on stdin,
``{"url", "username", "password", "ca_file", "wsdl", "options", "calls"}``,
configures a backend section as an operator would (the ``vmware_*`` options,
``vmware_wsdl_location`` the generated WSDL, then ``options``), runs
``VMwareVcVmdkDriver.do_setup`` and then each call, and prints one JSON
document: the setup's and each call's result, or the exception it raised.

Volumes and snapshots are Cinder's real objects (``objects.Volume``,
``VolumeAttachment``, ``Snapshot``), described in the calls as JSON:

- a volume: ``{"id", "size", "status"?, "project_id"?, "volume_type"?,
  "attached_to"?: [instance uuid, ...]}``; ``volume_type`` names one of
  :data:`VOLUME_TYPES` (its extra specs are what the driver reads);
- a snapshot: ``{"id", "volume": <volume>, "provider_location"?}``.

Volume types live in a real Cinder database (SQLite, a file in a temporary
directory, its schema made once by Cinder's own migrations and cached).

Calls: ``["stats"]``, ``["create_volume", vol]``, ``["delete_volume", vol]``,
``["extend_volume", vol, gib]``, ``["initialize_connection", vol, connector]``,
``["create_snapshot", snap]``, ``["delete_snapshot", snap]``,
``["revert_to_snapshot", vol, snap]``,
``["create_volume_from_snapshot", vol, snap]``,
``["create_cloned_volume", vol, src]``.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402 - after the patch, as in cinder-volume
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

warnings.simplefilter("ignore")

import cinder  # noqa: E402
from cinder import context, objects  # noqa: E402
from cinder.common import config as _common_config  # noqa: E402,F401 - registers [database] etc.
from cinder.db import migration  # noqa: E402
from cinder.volume import configuration, group_types, volume_types  # noqa: E402
from cinder.volume.drivers.vmware import vmdk  # noqa: E402
from oslo_config import cfg  # noqa: E402

from vmdk_snap.testing import Control  # noqa: E402

BACKEND = "vmdk-sim"
GROUP_TYPES = {"consistent": {"consistent_group_snapshot_enabled": "<is> True"}, "plain": {}}
VOLUME_TYPES = {
    "linked": {"vmware:clone_type": "linked"},
    "full": {"vmware:clone_type": "full"},
    "thick": {"vmware:vmdk_type": "thick"},
}


def _database(workdir: Path) -> None:
    """A Cinder database in ``workdir``: a copy of one migrated once and cached."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vmdk-snap"
    template = cache / f"cinder-db-{getattr(cinder, '__version__', 'x')}.sqlite"
    db = workdir / "cinder.sqlite"
    if not template.exists():
        cache.mkdir(parents=True, exist_ok=True)
        cfg.CONF.set_override("connection", f"sqlite:///{db}", group="database")
        migration.db_sync()
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".sqlite")
        os.close(fd)
        shutil.copyfile(db, tmp)
        os.replace(tmp, template)  # atomic: parallel children may race here
    else:
        shutil.copyfile(template, db)
        cfg.CONF.set_override("connection", f"sqlite:///{db}", group="database")


def _volume_types(ctx: Any) -> dict[str, str]:
    types = {
        name: volume_types.create(ctx, name, specs)["id"] for name, specs in VOLUME_TYPES.items()
    }
    for name, specs in GROUP_TYPES.items():
        types[f"group:{name}"] = group_types.create(ctx, name, specs)["id"]
    return types


def driver(request: dict[str, Any]) -> Any:
    url = urllib.parse.urlsplit(request["url"])
    conf = cfg.CONF
    conf.register_opts(vmdk.vmdk_opts, group=BACKEND)
    options = {
        "vmware_host_ip": url.hostname,
        "vmware_host_port": url.port,
        "vmware_host_username": request["username"],
        "vmware_host_password": request["password"],
        "vmware_ca_file": request["ca_file"],
        "vmware_wsdl_location": request["wsdl"],
        "vmware_task_poll_interval": 0.1,
        "vmware_api_retry_count": 1,
        **request.get("options", {}),
    }
    opts = list(vmdk.vmdk_opts)
    cls = vmdk.VMwareVcVmdkDriver
    if request.get("driver") == "vmdk_snap":
        from vmdk_snap import cinder_driver  # noqa: PLC0415 - only when asked: it needs Cinder

        cls = cinder_driver.VmdkSnapDriver
        opts += cinder_driver.vmdk_snap_opts
        conf.register_opts(cinder_driver.vmdk_snap_opts, group=BACKEND)
    for key, value in options.items():
        conf.set_override(key, value, group=BACKEND)
    return cls(configuration=configuration.Configuration(opts, config_group=BACKEND))


class Objects:
    """Cinder objects from the calls' JSON, built without database rows."""

    def __init__(self, ctx: Any, types: dict[str, str]) -> None:
        self.ctx = ctx
        self.types = types

    def volume(self, v: dict[str, Any]) -> Any:
        attached = v.get("attached_to", [])
        attach_status = v.get(
            "attach_status", "attached"
        )  # "attaching", "detaching": in transition
        attachments = objects.VolumeAttachmentList(
            objects=[
                objects.VolumeAttachment(
                    self.ctx,
                    id=f"{i:08d}-0000-4000-8000-{v['id'][-12:]}",
                    volume_id=v["id"],
                    instance_uuid=uuid,
                    attach_status=attach_status,
                    attach_mode="rw",
                    attached_host=None,
                    mountpoint="/dev/sdb",
                )
                for i, uuid in enumerate(attached)
            ]
        )
        return objects.Volume(
            self.ctx,
            id=v["id"],
            _name_id=None,
            size=v["size"],
            status=v.get("status", "in-use" if attached else "available"),
            attach_status="attached" if attached else "detached",
            project_id=v.get("project_id", "project-sim"),
            user_id="user-sim",
            display_name=v.get("display_name", v["id"][:8]),
            volume_type_id=self.types[v["volume_type"]] if v.get("volume_type") else None,
            provider_location=None,
            volume_attachment=attachments,
            multiattach=False,
        )

    def snapshot(self, s: dict[str, Any]) -> Any:
        volume = self.volume(s["volume"])
        return objects.Snapshot(
            self.ctx,
            id=s["id"],
            volume_id=volume.id,
            volume=volume,
            volume_size=volume.size,
            status="creating",
            display_name=s.get("display_name", "snap"),
            display_description=s.get("display_description"),
            provider_location=s.get("provider_location"),
            project_id=volume.project_id,
        )

    def group_snapshot(self, g: dict[str, Any]) -> tuple[Any, list[Any]]:
        """A group snapshot ``{"id", "group_type", "snapshots": [...]}`` and its snapshots."""
        group = objects.GroupSnapshot(
            self.ctx,
            id=g["id"],
            group_id=g.get("group_id", g["id"]),
            group_type_id=self.types[f"group:{g['group_type']}"],
            name=g.get("name", "group"),
            status="creating",
            project_id="project-sim",
        )
        return group, [self.snapshot(s) for s in g["snapshots"]]


def call(d: Any, o: Objects, name: str, args: list[Any]) -> Any:
    """Run one driver call on the objects its JSON arguments describe."""
    v, snap = o.volume, o.snapshot
    calls: dict[str, Any] = {
        "stats": lambda: d.get_volume_stats(refresh=True),
        "create_volume": lambda: d.create_volume(v(args[0])),
        "delete_volume": lambda: d.delete_volume(v(args[0])),
        "extend_volume": lambda: d.extend_volume(v(args[0]), args[1]),
        "initialize_connection": lambda: d.initialize_connection(v(args[0]), args[1]),
        "create_snapshot": lambda: d.create_snapshot(snap(args[0])),
        "delete_snapshot": lambda: d.delete_snapshot(snap(args[0])),
        "revert_to_snapshot": lambda: d.revert_to_snapshot(o.ctx, v(args[0]), snap(args[1])),
        "create_volume_from_snapshot": lambda: d.create_volume_from_snapshot(
            v(args[0]), snap(args[1])
        ),
        "create_cloned_volume": lambda: d.create_cloned_volume(v(args[0]), v(args[1])),
        "create_group_snapshot": lambda: d.create_group_snapshot(o.ctx, *o.group_snapshot(args[0])),
        "delete_group_snapshot": lambda: d.delete_group_snapshot(o.ctx, *o.group_snapshot(args[0])),
    }
    if name not in calls:
        raise ValueError(f"unknown call {name!r}")
    return calls[name]()


def main() -> int:
    request = json.loads(sys.stdin.read())
    objects.register_all()
    cfg.CONF([], project="cinder", default_config_files=[])
    with tempfile.TemporaryDirectory(prefix="cinder-child-") as workdir:
        # cinder-volume's own directories: our journal, Cinder's file locks.
        cfg.CONF.set_override("state_path", request.get("state_path") or workdir)
        if request.get("coordination_url"):  # cinder.conf's [coordination] backend_url
            cfg.CONF.set_override("backend_url", request["coordination_url"], group="coordination")
        _database(Path(workdir))
        ctx = context.get_admin_context()
        o = Objects(ctx, _volume_types(ctx))
        d = driver(request)
        try:
            d.do_setup(ctx)
        except Exception as exc:  # noqa: BLE001 - the setup's failure is the test's result
            print(json.dumps([{"error": type(exc).__name__, "message": str(exc)}]))
            return 0
        results: list[dict[str, Any]] = [
            {"result": {"vc_version": d._vc_version, "storage_policy": d._storage_policy_enabled}}
        ]
        # With "count_calls", each call's SOAP round trips as the simulator
        # counts them (its control API; the benchmark runs alone).
        ctl = None
        if request.get("count_calls"):
            ctl = Control(request["url"].rsplit("/sdk", 1)[0] + "/_ctl", request["ca_file"])
        for name, *args in request["calls"]:
            if ctl is not None:
                ctl.reset_calls()
            start = time.monotonic()
            try:
                results.append({"result": call(d, o, name, args)})
            except Exception as exc:  # noqa: BLE001 - reported to the test
                results.append({"error": type(exc).__name__, "message": str(exc)})
            results[-1]["seconds"] = round(time.monotonic() - start, 3)
            if ctl is not None:
                results[-1]["soap_calls"] = sum(ctl.calls().values())
    print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
