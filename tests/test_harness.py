"""The test harness itself: the real-vCenter seeder and the suite's Fetch check."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cassettes import scan
from tests.conftest import Target
from tests.realvc import NEEDS_CTL, RealVCenterControl, RecordTarget
from tests.vsphere import connect, disk_paths, props
from vmdk_snap.testing import Simulator, repo_root


def _env_for(sim: Simulator) -> dict[str, str]:
    assert sim.info is not None
    return {
        "VMDK_SNAP_RECORD_URL": sim.info.url,
        "VMDK_SNAP_RECORD_USERNAME": sim.info.username,
        "VMDK_SNAP_RECORD_PASSWORD": sim.info.password,
        "VMDK_SNAP_RECORD_CA_FILE": sim.info.ca_file,
    }


def test_record_target_reads_the_environment() -> None:
    assert RecordTarget.from_env({}) is None
    with pytest.raises(ValueError, match="VMDK_SNAP_RECORD_PASSWORD"):
        RecordTarget.from_env({"VMDK_SNAP_RECORD_URL": "vc.example.org"})
    target = RecordTarget.from_env(
        {
            "VMDK_SNAP_RECORD_URL": "vc.example.org",
            "VMDK_SNAP_RECORD_USERNAME": "rec@vsphere.local",
            "VMDK_SNAP_RECORD_PASSWORD": "pw",
            "VMDK_SNAP_RECORD_INSECURE": "1",
            "VMDK_SNAP_RECORD_DATASTORE": "nfs-1",
        }
    )
    assert target is not None
    assert (target.url, target.host_name, target.port) == (
        "https://vc.example.org/sdk",
        "vc.example.org",
        443,
    )
    assert target.insecure
    assert target.placement() == {
        "datacenter": "DC0",
        "cluster": "DC0_C0",
        "datastore": "nfs-1",
        "host": "",
    }


@pytest.mark.live
def test_real_vcenter_seeder_builds_cinder_scenarios(vc: Target, simulator: Simulator) -> None:
    """The seeder used against a real vCenter, run here against the simulator's SOAP.

    It only uses what vCenter offers (CreateVM_Task, ReconfigVM_Task,
    PowerOnVM_Task, Destroy_Task, the property collector), so the simulator
    stands in for the real vCenter there is none of in this test.
    """
    target = RecordTarget.from_env(_env_for(simulator))
    assert target is not None
    seeder = RealVCenterControl(target, "test_harness/seeder")
    try:
        available = seeder.scenario("available-volume")
        attached = seeder.scenario("attached-volume")
        two = seeder.scenario("instance-two-volumes")
        # The simulator's own seeding returns the same shape.
        reference = vc.ctl.scenario("attached-volume")
        for got in (attached, two):
            assert got.keys() == reference.keys()
            assert got["instances"][0].keys() == reference["instances"][0].keys()
            assert got["volumes"][0].keys() == reference["volumes"][0].keys()
        assert len(available["volumes"]) == 1
        assert available["instances"] == []
        assert len(two["volumes"]) == 2

        with connect(vc) as si:
            index = si.RetrieveContent().searchIndex
            for scenario in (available, attached, two):
                for vol in scenario["volumes"]:
                    backing = index.FindByUuid(None, vol["id"], True, True)
                    assert backing is not None
                    got = props(si, backing, "name", "config.instanceUuid", "runtime.powerState")
                    assert got == {
                        "name": f"volume-{vol['id']}",
                        "config.instanceUuid": vol["id"],
                        "runtime.powerState": "poweredOff",
                    }
                    assert disk_paths(si, backing) == [vol["vmdk"]]
                    assert vol["vmdk"] == (
                        f"[ds-shared-1] volume-{vol['id']}/volume-{vol['id']}.vmdk"
                    )
            for scenario in (attached, two):
                inst = scenario["instances"][0]
                instance = index.FindByUuid(None, inst["uuid"], True, True)
                assert instance is not None
                got = props(si, instance, "name", "runtime.powerState", "config.extraConfig")
                assert got["name"] == inst["name"]
                assert got["runtime.powerState"] == "poweredOn"
                extra = {o.key: o.value for o in got["config.extraConfig"]}
                paths = disk_paths(si, instance)
                assert paths[0] == inst["root_vmdk"]
                assert paths[1:] == [v["vmdk"] for v in scenario["volumes"]]
                for vol in scenario["volumes"]:
                    assert vol["attached_to"] == inst["uuid"]
                    assert extra[vol["name"]] == vol["disk_uuid"]
        # The files are real files on the datastore (the simulator shows them).
        files = vc.ctl.files("ds-shared-1")
        for vol in available["volumes"] + two["volumes"]:
            assert vol["vmdk"] in files
        # Everything the simulator alone can do skips the test instead.
        inst, vol = two["instances"][0], two["volumes"][0]
        for call in (
            lambda: seeder.write(inst["moref"], 2000, "t"),
            lambda: seeder.read_disk(inst["moref"], 2000),
            lambda: seeder.inject_fault("CreateSnapshot_Task", "task", "FileLocked"),
            lambda: seeder.set_task_time("RelocateVM_Task", 100),
            seeder.calls,
            lambda: seeder.files("ds-shared-1"),
            lambda: seeder.scenario("workflow2"),
            lambda: seeder.scenario("many-vms", count=2),
        ):
            with pytest.raises(pytest.skip.Exception, match="needs the simulator's control API"):
                call()
    finally:
        seeder.close()
    # What the seeder made is gone again, files included.
    left = vc.ctl.files("ds-shared-1")
    for scenario in (available, attached, two):
        for vol in scenario["volumes"]:
            assert not any(f"volume-{vol['id']}/" in f for f in left)
        for inst in scenario["instances"]:
            assert not any(f"{inst['name']}/" in f for f in left)
    assert NEEDS_CTL.startswith("needs the simulator's control API")


LAZY_TEST = """
from pyVmomi import vim

from tests.vsphere import connect


def test_reads_a_name_lazily(vc):
    with connect(vc) as si:
        folder = si.RetrieveContent().rootFolder
        assert folder.name  # a lazy accessor: pyVmomi sends Fetch
"""


@pytest.mark.live
def test_a_lazy_fetch_fails_the_run_visibly(tmp_path: Path, simulator: Simulator) -> None:
    """The session's Fetch check turns a passing run into a failed one."""
    (tmp_path / "test_lazy.py").write_text(textwrap.dedent(LAZY_TEST))
    env = dict(os.environ, PYTHONPATH=str(repo_root()))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "-ra",
            "--tier=live",
            str(tmp_path / "test_lazy.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    # The test itself passed; the session check failed it, in the summary.
    last = out.strip().splitlines()[-1]
    assert "1 passed" in last, out
    assert "1 error" in last, out
    summary = out.split("short test summary info", 1)[1]
    assert "ERROR test_lazy.py::test_reads_a_name_lazily[live] - Failed: Fetch check" in summary
    checks = out.split("suite checks", 1)[1]
    assert "FAILED Fetch check: 1 lazy pyVmomi property fetch(es) reached the simulator" in checks


def _seeder(env: dict[str, str], namespace: str) -> RealVCenterControl:
    target = RecordTarget.from_env(env)
    assert target is not None
    return RealVCenterControl(target, namespace)


@pytest.mark.live
def test_real_vcenter_seeder_pins_a_thumbprint(simulator: Simulator) -> None:
    assert simulator.info is not None
    env = _env_for(simulator)
    del env["VMDK_SNAP_RECORD_CA_FILE"]
    # Neither a CA nor a pin: the simulator's certificate is not trusted.
    with pytest.raises(ssl.SSLCertVerificationError):
        _seeder(env, "pin/none").scenario("available-volume")
    wrong = dict(env, VMDK_SNAP_RECORD_THUMBPRINT="AB:" * 31 + "AB")
    with pytest.raises(ssl.SSLCertVerificationError, match="not the pinned"):
        _seeder(wrong, "pin/wrong").scenario("available-volume")
    right = dict(env, VMDK_SNAP_RECORD_THUMBPRINT=simulator.info.thumbprint)
    seeder = _seeder(right, "pin/right")
    try:
        assert len(seeder.scenario("available-volume")["volumes"]) == 1
    finally:
        seeder.close()


RECORDED_TESTS = """
import pytest

from tests.vsphere import connect, disk_paths, props


@pytest.mark.cassette
def test_seeded_on_the_vcenter(vc):
    seeded = vc.ctl.scenario("attached-volume")
    inst, vol = seeded["instances"][0], seeded["volumes"][0]
    with connect(vc) as si:
        index = si.RetrieveContent().searchIndex
        instance = index.FindByUuid(None, inst["uuid"], True, True)
        assert vol["vmdk"] in disk_paths(si, instance)
        assert props(si, instance, "runtime.powerState")["runtime.powerState"] == "poweredOn"


@pytest.mark.cassette
def test_needs_the_control_api(vc):
    vol = vc.ctl.scenario("available-volume")["volumes"][0]
    vc.ctl.write(vol["moref"], 2000, "t1")
"""


def _pytest(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*command, "-rs", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.live
def test_record_from_a_real_vcenter_then_replay(tmp_path: Path, simulator: Simulator) -> None:
    """``--record`` with VMDK_SNAP_RECORD_*: the conftest path, end to end.

    The session's simulator stands in for the real vCenter (it speaks the
    same SOAP); cassettes go to a temporary VMDK_SNAP_CASSETTE_DIR.
    """
    assert simulator.info is not None
    (tmp_path / "test_tiny.py").write_text(RECORDED_TESTS)
    cassettes = tmp_path / "cassettes"
    env = dict(
        os.environ,
        PYTHONPATH=str(repo_root()),
        VMDK_SNAP_CASSETTE_DIR=str(cassettes),
        **_env_for(simulator),
    )
    recorded = _pytest(["--tier=live", "--record", "-m", "cassette", "test_tiny.py"], tmp_path, env)
    out = recorded.stdout
    assert recorded.returncode == 0, out + recorded.stderr
    assert f"recording against the real vCenter {simulator.info.url}" in out
    assert "1 passed, 1 skipped" in out
    assert "needs the simulator's control API (a real vCenter has none): POST /_ctl/write" in out

    cassette = cassettes / "test_tiny" / "test_seeded_on_the_vcenter.yaml"
    meta = json.loads(cassette.with_suffix(".meta.json").read_text())
    assert meta["seeder"] == "vcenter"
    assert meta["thumbprint"] == simulator.info.thumbprint
    text = cassette.read_text()
    assert "CreateVM_Task" in text  # the seeding is in the cassette
    assert "Destroy_Task" in text  # and so is the clean-up
    files = sorted(cassettes.rglob("*.yaml")) + sorted(cassettes.rglob("*.json"))
    assert scan(files, secrets=[simulator.info.password]) == []
    assert not list(cassettes.rglob("*.recording.yaml"))

    # Replay: no vCenter, no password; the skipped test skips again.
    for name in ("VMDK_SNAP_RECORD_URL", "VMDK_SNAP_RECORD_PASSWORD"):
        env.pop(name)
    replayed = _pytest(["--tier=replay", "test_tiny.py"], tmp_path, env)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "1 passed, 1 skipped" in replayed.stdout
    assert "needs the simulator's control API" in replayed.stdout
