"""``check --all`` (Driver.describe_all): every volume in a number of reads that
does not grow with the number of volumes, and the same answer as describing
each volume alone.

On a simulator of the test's own (``own_vc``), so the inventory (and so the count) is
exactly what the test seeded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import make_driver, vm
from vmdk_snap.driver import Driver, Volume
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.volumeops import VolumeOps

SCENARIOS = ("available-volume", "attached-volume", "workflow2", "attached-volume-moved")


def _seed(vc: Target) -> list[str]:
    volumes = []
    for name in SCENARIOS:
        volumes += [v["id"] for v in vc.ctl.scenario(name)["volumes"]]
    return volumes


def _counted(vc: Target, driver: Driver) -> tuple[dict[str, int], list[Any], list[Any]]:
    """``describe_all``'s SOAP calls (the simulator's count) and answer."""
    vc.ctl.reset_calls()
    states, errors = driver.describe_all()
    return vc.ctl.calls(), states, errors


@pytest.mark.live
def test_every_volume_in_reads_that_do_not_grow_with_the_volumes(
    own_vc: Target, tmp_path: Path
) -> None:
    first = _seed(own_vc)
    # An instance whose redundant deltas wait for compaction (a forced
    # snapshot with compaction off): its volumes' advice needs the lookups
    # compaction makes, answered from the same read.
    waiting = own_vc.ctl.scenario("workflow2")
    inst = waiting["instances"][0]
    first += [v["id"] for v in waiting["volumes"]]
    with Session(own_vc.url, own_vc.username, own_vc.password, ca_file=own_vc.ca_file) as session:
        ops = VolumeOps(session, task_timeout=60)
        Driver(ops, journal_path=tmp_path / "j.sqlite", compact=False).create_snapshot(
            Volume(waiting["volumes"][0]["id"], "in-use", inst["uuid"]), "kept", force=True
        )
        driver = make_driver(ops, tmp_path)
        calls, states, errors = _counted(own_vc, driver)
        assert errors == []
        assert sorted(s.volume_id for s in states) == sorted(first)
        # Each volume as `check VOLUME` shows it.
        for state in states:
            assert state == driver.describe(state.volume_id), state.volume_id
        assert any(s.duplicated for s in states)
        assert any(s.instance is None for s in states)
        compacting = [s for s in states if s.compaction is not None]
        assert {s.instance.ref.value for s in compacting if s.instance} == {inst["moref"]}
        # Refused while the kept snapshot holds the instance's files: found
        # through the VMs using them, as `check VOLUME` finds it.
        assert compacting
        assert all(
            f"snapshot kept of volume-{waiting['volumes'][0]['id']} holds" in str(s.compaction)
            for s in compacting
        )
        hosts = {h for s in states for h in (s.backing.host, s.instance and s.instance.host) if h}
        # One read finds every backing and instance, one reads them, one per
        # host for its name, two per volume whose instance waits for
        # compaction (those VMs, their snapshots' disks).
        assert calls == {"RetrievePropertiesEx": 2 + len(hosts) + 2 * len(compacting)}, calls

        more = [v for _ in range(3) for v in _seed(own_vc)]
        again, states, errors = _counted(own_vc, driver)
        assert errors == []
        assert sorted(s.volume_id for s in states) == sorted(first + more)
        assert again == calls  # three times the volumes, the same reads


@pytest.mark.live
def test_a_volume_that_cannot_be_described_is_reported_and_the_others_go_on(
    own_vc: Target, tmp_path: Path
) -> None:
    vol = own_vc.ctl.scenario("available-volume")["volumes"][0]
    seeded = own_vc.ctl.scenario("attached-volume")
    bad = seeded["volumes"][0]
    own_vc.ctl.scenario("instance")  # nothing of it is a volume
    with Session(own_vc.url, own_vc.username, own_vc.password, ca_file=own_vc.ca_file) as session:
        ops = VolumeOps(session, task_timeout=60)
        # A backing without its disk is not a Cinder backing: an error for it alone.
        backing = ops.get_vm(vm(bad["moref"]))
        ops.reconfigure_disks(backing.ref, remove=[(backing.disks[0], False)])
        states, errors = make_driver(ops, tmp_path).describe_all()
    assert [s.volume_id for s in states] == [vol["id"]]
    assert [vid for vid, _ in errors] == [bad["id"]]
    assert "has 0 disks" in str(errors[0][1])
