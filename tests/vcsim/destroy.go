package main

// Destroy_Task of a VM with the chain model: the VM's disk files (its
// current disks, its snapshots' disks, and their parents) and its home
// files are deleted, except files another VM's chains still use. The stock
// simulator deletes the VM's whole home directory, so a delta another VM
// was given (the blueprint gives the volume backing the instance's delta)
// would vanish with the instance, and keeps every disk outside it.

import (
	"context"
	"os"
	"path/filepath"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	interceptors["Destroy_Task"] = destroyVM
}

func destroyVM(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	if call.This.Type != "VirtualMachine" {
		return destroyOther(s, call)
	}
	vm, fault := vmOf(call.This)
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}
	return s.startTask(vm.Self, call.Name, 0, func() (types.AnyType, types.BaseMethodFault) {
		return nil, s.destroy(vm)
	}), nil
}

// destroyOther runs the stock Destroy of a non-VM entity through the
// in-process client, as a task of ours.
func destroyOther(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	ref := call.This
	if simulator.Map.Get(ref) == nil {
		return types.ManagedObjectReference{}, &types.ManagedObjectNotFound{Obj: ref}
	}
	return s.startTask(ref, call.Name, 0, func() (types.AnyType, types.BaseMethodFault) {
		task, err := object.NewCommon(s.client, ref).Destroy(context.Background())
		if err == nil {
			err = task.Wait(context.Background())
		}
		if err != nil {
			return nil, &types.SystemError{Reason: err.Error()}
		}
		return nil, nil
	}), nil
}

// destroy deletes a VM and the files no other VM uses (inside the task,
// under modelMu).
func (s *sim) destroy(vm *simulator.VirtualMachine) types.BaseMethodFault {
	home := vmHome(vm)
	own := vmFiles(vm)
	idx := fileUsersIndex()
	usedByOthers := func(p string) bool {
		for _, u := range idx[descriptorOf(p)] {
			if u.VM != vm.Self {
				return true
			}
		}
		return false
	}
	// The stock Destroy removes the home directory: keep what others use.
	kept := map[string][]byte{}
	if lp, err := s.localPath(home); err == nil {
		entries, _ := os.ReadDir(lp)
		for _, e := range entries {
			p := dsJoin(home, e.Name())
			if e.IsDir() || !usedByOthers(p) {
				continue
			}
			for _, f := range s.diskFiles(p) {
				if l, err := s.localPath(f); err == nil {
					if data, err := os.ReadFile(l); err == nil {
						kept[l] = data
					}
				}
			}
		}
	}
	task, err := object.NewVirtualMachine(s.client, vm.Self).Destroy(context.Background())
	if err == nil {
		err = task.Wait(context.Background())
	}
	for l, data := range kept {
		_ = os.MkdirAll(filepath.Dir(l), 0o755)
		_ = os.WriteFile(l, data, 0o644)
	}
	if err != nil {
		return &types.SystemError{Reason: err.Error()}
	}
	for _, p := range own {
		if !usedByOthers(p) && s.exists(p) {
			_ = s.deleteDiskFiles(p)
		}
	}
	s.updateDatastoreVMs()
	return nil
}
