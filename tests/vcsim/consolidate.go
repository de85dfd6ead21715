package main

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	interceptors["ConsolidateVMDisks_Task"] = consolidateVMDisks
}

// consolidateVMDisks does the merge a RemoveSnapshot with consolidate=false
// left pending, and clears runtime.consolidationNeeded.
// Not finished: the merge of pending deltas lands with the chain model
// (issue 3); for now it only clears the flag.
func consolidateVMDisks(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	vm, fault := vmOf(call.This)
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}
	return s.startTask(vm.Self, call.Name, 0, func() (types.AnyType, types.BaseMethodFault) {
		simulator.Map.WithLock(vm, func() {
			vm.Runtime.ConsolidationNeeded = types.NewBool(false)
		})
		return nil, nil
	}), nil
}
