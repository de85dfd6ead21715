package main

// ConsolidateVMDisks_Task: the merge that a RemoveSnapshot with
// consolidate=false left pending (the stock simulator lacks the method).
// The same rules as RemoveSnapshot's consolidation apply (remove.go): only
// deltas the VM no longer needs are merged, and a merge into or of a file
// another powered-on VM has open fails with FileLocked, changing nothing.

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	interceptors["ConsolidateVMDisks_Task"] = consolidateVMDisks
}

func consolidateVMDisks(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	vm, fault := vmOf(call.This)
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}
	return s.startTask(vm.Self, call.Name, 0, func() (types.AnyType, types.BaseMethodFault) {
		return nil, s.consolidate(vm)
	}), nil
}

// consolidate merges every delta vm no longer needs and clears
// runtime.consolidationNeeded.
func (s *sim) consolidate(vm *simulator.VirtualMachine) types.BaseMethodFault {
	kept := map[types.ManagedObjectReference]bool{}
	for _, snap := range snapshotsOf(vm) {
		kept[snap.Self] = true
	}
	before := vmFiles(vm)
	merges := planMerges(chainsAfter(vm, kept), nil)
	if fault := checkMerges(vm, merges); fault != nil {
		return fault
	}
	simulator.Map.WithLock(vm, func() {
		s.applyMerges(vm, merges)
		setConsolidationNeeded(vm, false)
	})
	s.deleteUnused(before)
	return nil
}

// setConsolidationNeeded sets runtime.consolidationNeeded and tells
// property collectors. The caller holds the VM's lock.
func setConsolidationNeeded(vm *simulator.VirtualMachine, needed bool) {
	vm.Runtime.ConsolidationNeeded = types.NewBool(needed)
	simulator.Map.Update(vm, []types.PropertyChange{{Name: "runtime", Val: vm.Runtime}})
}
