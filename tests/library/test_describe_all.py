"""``check --all`` (Driver.describe_all): every volume in a number of reads that
does not grow with the number of volumes, and the same answer as describing
each volume alone.

On a simulator of this module's own, so the inventory (and so the count) is
exactly what the test seeded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import make_driver, vm
from vmdk_snap.driver import Driver
from vmdk_snap.testing import Simulator
from vmdk_snap.vsphere.session import Session
from vmdk_snap.vsphere.volumeops import VolumeOps

SCENARIOS = ("available-volume", "attached-volume", "workflow2", "attached-volume-moved")


@pytest.fixture
def own(tier: str) -> Iterator[Target]:
    if tier != "live":
        pytest.skip("live only: counts reads on an inventory of the test's own")
    with Simulator() as sim:
        yield Target.of(sim)


def _seed(vc: Target) -> list[str]:
    volumes = []
    for name in SCENARIOS:
        volumes += [v["id"] for v in vc.ctl.scenario(name)["volumes"]]
    return volumes


def _counted(vc: Target, driver: Driver) -> tuple[dict[str, int], list[Any], list[Any]]:
    vc.ctl.reset_calls()
    states, errors = driver.describe_all()
    return vc.ctl.calls(), states, errors


@pytest.mark.live
def test_every_volume_in_reads_that_do_not_grow_with_the_volumes(
    own: Target, tmp_path: Path
) -> None:
    first = _seed(own)
    with Session(own.url, own.username, own.password, ca_file=own.ca_file) as session:
        driver = make_driver(VolumeOps(session, task_timeout=60), tmp_path)
        calls, states, errors = _counted(own, driver)
        assert errors == []
        assert sorted(s.volume_id for s in states) == sorted(first)
        # Each volume as `check VOLUME` shows it.
        for state in states:
            alone = driver.describe(state.volume_id)
            assert state == alone, state.volume_id
        assert any(s.duplicated for s in states)
        assert any(s.instance is None for s in states)
        hosts = {h for s in states for h in (s.backing.host, s.instance and s.instance.host) if h}
        # One read finds every backing and instance, one reads them, then
        # one per host for its name (and compaction's reads for an instance
        # vCenter says needs consolidating: none here).
        assert not any(s.consolidation_needed for s in states)
        assert calls == {"RetrievePropertiesEx": 2 + len(hosts)}, calls

        more = [v for _ in range(3) for v in _seed(own)]
        calls_after, states, errors = _counted(own, driver)
        assert errors == []
        assert sorted(s.volume_id for s in states) == sorted(first + more)
        assert len(states) == 4 * len(first)
        hosts = {h for s in states for h in (s.backing.host, s.instance and s.instance.host) if h}
        assert calls_after == {"RetrievePropertiesEx": 2 + len(hosts)}, calls_after


@pytest.mark.live
def test_a_volume_that_cannot_be_described_is_reported_and_the_others_go_on(
    own: Target, tmp_path: Path
) -> None:
    vol = own.ctl.scenario("available-volume")["volumes"][0]
    seeded = own.ctl.scenario("attached-volume")
    bad = seeded["volumes"][0]
    own.ctl.scenario("instance")  # nothing of it is a volume
    with Session(own.url, own.username, own.password, ca_file=own.ca_file) as session:
        ops = VolumeOps(session, task_timeout=60)
        # A backing without its disk is not a Cinder backing: an error for it alone.
        backing = ops.get_vm(vm(bad["moref"]))
        ops.reconfigure_disks(backing.ref, remove=[(backing.disks[0], False)])
        states, errors = make_driver(ops, tmp_path).describe_all()
    assert [s.volume_id for s in states] == [vol["id"]]
    assert [vid for vid, _ in errors] == [bad["id"]]
    assert "has 0 disks" in str(errors[0][1])
