"""Cinder's own VMDK driver against the simulator, in a process of its own.

Eventlet-patched first, as cinder-volume is. Reads one JSON request on stdin,
``{"url", "username", "password", "ca_file", "wsdl", "calls": [...]}``,
configures a backend section as an operator would (the ``vmware_*`` options,
``vmware_wsdl_location`` the generated WSDL), runs
``VMwareVcVmdkDriver.do_setup`` and then each call, and prints one JSON
document: each call's result or the exception it raised. Calls:
``["stats"]``: ``get_volume_stats(refresh=True)``.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402 - after the patch, as in cinder-volume
import sys  # noqa: E402
import urllib.parse  # noqa: E402
from typing import Any  # noqa: E402

from cinder import context  # noqa: E402
from cinder.volume import configuration  # noqa: E402
from cinder.volume.drivers.vmware import vmdk  # noqa: E402
from oslo_config import cfg  # noqa: E402

BACKEND = "vmdk-sim"


def driver(request: dict[str, Any]) -> Any:
    url = urllib.parse.urlsplit(request["url"])
    conf = cfg.CONF
    conf([], project="cinder")
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
    }
    for key, value in options.items():
        conf.set_override(key, value, group=BACKEND)
    return vmdk.VMwareVcVmdkDriver(
        configuration=configuration.Configuration(vmdk.vmdk_opts, config_group=BACKEND)
    )


def main() -> int:
    request = json.loads(sys.stdin.read())
    d = driver(request)
    d.do_setup(context.get_admin_context())
    results: list[dict[str, Any]] = [
        {"result": {"vc_version": d._vc_version, "storage_policy": d._storage_policy_enabled}}
    ]
    for call in request["calls"]:
        try:
            if call[0] == "stats":
                results.append({"result": d.get_volume_stats(refresh=True)})
            else:
                raise ValueError(f"unknown call {call[0]!r}")
        except Exception as exc:  # noqa: BLE001 - reported to the test
            results.append({"error": type(exc).__name__, "message": str(exc)})
    print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
