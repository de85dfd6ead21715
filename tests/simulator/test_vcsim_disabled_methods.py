"""AuthorizationManager.DisableMethods / EnableMethods and MethodDisabled, as vCenter has them.

vmdk-snap disables ``ConsolidateVMDisks_Task`` on an instance while a backing
snapshot holds files of its chains (vSphere's Consolidate would merge into
them). The simulator models the internal methods (tests/vcsim/disabled.go);
this is what a client sees.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Target
from tests.workflow_checks import vm
from vmdk_snap.errors import VmdkSnapError, fault_name

CONSOLIDATE = "ConsolidateVMDisks_Task"


@pytest.mark.live
def test_a_disabled_method_fails_naming_its_source_until_every_source_enables_it(
    clean_sim: Target, ops: Any
) -> None:
    seeded = clean_sim.ctl.scenario("attached-volume")
    inst = vm(seeded["instances"][0]["moref"])
    ops.disable_methods(inst, [CONSOLIDATE], "vmdk-snap", "vmdk-snap.snapshots-hold-files")
    ops.disable_methods(inst, [CONSOLIDATE], "vmdk-snap", "again")  # idempotent for us
    assert ops.disabled_methods(inst) == (CONSOLIDATE,)
    with pytest.raises(VmdkSnapError) as err:
        ops.consolidate_disks(inst)
    assert fault_name(err.value.fault) == "MethodDisabled"
    assert err.value.fault.source == "vmdk-snap"
    # Another source disables it too: ours enabling it leaves theirs.
    ops.disable_methods(inst, [CONSOLIDATE], "someone-else", "theirs")
    ops.enable_methods(inst, [CONSOLIDATE], "vmdk-snap")
    assert ops.disabled_methods(inst) == (CONSOLIDATE,)
    with pytest.raises(VmdkSnapError) as err:
        ops.consolidate_disks(inst)
    assert err.value.fault.source == "someone-else"
    ops.enable_methods(inst, [CONSOLIDATE], "someone-else")
    assert ops.disabled_methods(inst) == ()
    ops.consolidate_disks(inst)  # allowed again
    # Enabling what is not disabled changes nothing and is no error.
    ops.enable_methods(inst, [CONSOLIDATE], "vmdk-snap")


@pytest.mark.live
def test_disabling_on_an_object_that_does_not_exist_is_refused(clean_sim: Target, ops: Any) -> None:
    with pytest.raises(VmdkSnapError) as err:
        ops.disable_methods(vm("vm-does-not-exist"), [CONSOLIDATE], "vmdk-snap", "x")
    assert fault_name(err.value.fault) == "ManagedObjectNotFound"
