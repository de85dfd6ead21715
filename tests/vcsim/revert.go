package main

// RevertToSnapshot_Task and RevertToCurrentSnapshot_Task like vCenter: the
// VM's devices return to the snapshot's, each non-independent disk with a
// fresh delta on top of the snapshot's backing (in the VM's directory), and
// the deltas this discards are deleted when no chain of any VM or snapshot
// uses them. The task's entity is the VM.

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	interceptors["RevertToSnapshot_Task"] = revertToSnapshot
	interceptors["RevertToCurrentSnapshot_Task"] = revertToCurrentSnapshot
}

func revertToSnapshot(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	snap, ok := simulator.Map.Get(call.This).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return types.ManagedObjectReference{}, &types.ManagedObjectNotFound{Obj: call.This}
	}
	vm, fault := vmOf(snap.Vm)
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}
	return s.startTask(vm.Self, call.Name, 0, func() (types.AnyType, types.BaseMethodFault) {
		return nil, s.revert(vm, snap.Self)
	}), nil
}

func revertToCurrentSnapshot(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	vm, fault := vmOf(call.This)
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}
	if vm.Snapshot == nil || vm.Snapshot.CurrentSnapshot == nil {
		return types.ManagedObjectReference{}, &types.NotFound{}
	}
	return s.startTask(vm.Self, call.Name, 0, func() (types.AnyType, types.BaseMethodFault) {
		if vm.Snapshot == nil || vm.Snapshot.CurrentSnapshot == nil {
			return nil, &types.NotFound{}
		}
		return nil, s.revert(vm, *vm.Snapshot.CurrentSnapshot)
	}), nil
}

// revert returns vm to a snapshot.
func (s *sim) revert(vm *simulator.VirtualMachine, ref types.ManagedObjectReference) types.BaseMethodFault {
	snap, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return &types.ManagedObjectNotFound{Obj: ref}
	}
	home := vmHome(vm)
	var old []string
	for _, d := range disksOf(vm.Config.Hardware.Device) {
		old = append(old, chainPaths(flatBacking(d))...)
	}
	currentDisks := map[int32]*types.VirtualDisk{}
	for _, d := range disksOf(vm.Config.Hardware.Device) {
		currentDisks[d.Key] = d
	}

	devices := copyDevices(snap.Config.Hardware.Device)
	inSnap := map[int32]bool{}
	var created []string
	for _, disk := range disksOf(devices) {
		inSnap[disk.Key] = true
		b := flatBacking(disk)
		if independent(b) {
			// Not part of snapshots: the disk keeps its current state.
			if cur, ok := currentDisks[disk.Key]; ok {
				disk.Backing = copyBacking(flatBacking(cur))
			}
			continue
		}
		delta, err := s.newDelta(home, b, disk.CapacityInKB)
		if err != nil {
			for _, p := range created {
				_ = s.deleteDiskFiles(p)
			}
			return &types.CannotCreateFile{FileFault: types.FileFault{File: err.Error()}}
		}
		created = append(created, delta.FileName)
		disk.Backing = delta
	}
	// Independent disks added after the snapshot stay.
	for key, d := range currentDisks {
		if !inSnap[key] && independent(flatBacking(d)) {
			devices = append(devices, deepCopy(d).(*types.VirtualDisk))
		}
	}

	simulator.Map.WithLock(vm, func() {
		publishDevices(vm, devices)
		publishSnapshots(vm, vm.Snapshot.RootSnapshotList, &ref)
	})
	s.deleteUnused(old)
	return nil
}
