package main

// VirtualDiskManager.ExtendVirtualDisk_Task on the disk model, which Cinder's
// driver calls to extend a volume (its backing's VMDK, the backing powered
// off). The descriptor's size and every VM's device that attaches the file
// take the new capacity; the data is not touched. Refused, changing nothing:
// a missing file (FileNotFound); a smaller size (InvalidArgument: disks only
// grow); a file a powered-on VM has open (FileLocked: a running VM's disk is
// extended through ReconfigVM); a disk in a chain, i.e. with snapshots
// (NotSupported: a delta, or a file a snapshot or a delta builds on). Sizes are not otherwise modelled (no datastore space check).

import (
	"fmt"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	interceptors["ExtendVirtualDisk_Task"] = extendVirtualDisk
}

func extendVirtualDisk(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	req, ok := call.Body.(*types.ExtendVirtualDisk_Task)
	if !ok {
		return types.ManagedObjectReference{}, &types.InvalidRequest{}
	}
	return s.diskFileTask(call, req.Name, func(p string) types.BaseMethodFault { // deletedisk.go
		d, err := s.readDescriptor(p)
		if err != nil {
			return &types.FileNotFound{FileFault: types.FileFault{File: p}}
		}
		users := fileUsers(p)
		heldBelow := false // a snapshot holds it, or another disk is a delta on it
		var running []fileUser
		for _, u := range users {
			heldBelow = heldBelow || u.Snapshot != "" || !u.Top
			if poweredOn(u.VM) {
				running = append(running, u)
			}
		}
		if d.Parent != "" || isDelta(p) || heldBelow {
			f := &types.NotSupported{}
			f.FaultMessage = []types.LocalizableMessage{{Key: "vmdk_snap.extendDelta",
				Message: fmt.Sprintf("%s is part of a disk chain (the disk has snapshots): only a disk without snapshots can be extended", p)}}
			return f
		}
		if req.NewCapacityKb < d.SizeKB {
			f := &types.InvalidArgument{InvalidProperty: "newCapacityKb"}
			f.FaultMessage = []types.LocalizableMessage{{Key: "vmdk_snap.extendShrink",
				Message: fmt.Sprintf("%s is %d KB: a disk cannot shrink to %d KB", p, d.SizeKB, req.NewCapacityKb)}}
			return f
		}
		if len(running) > 0 {
			return fileLocked(p, running)
		}
		d.SizeKB = req.NewCapacityKb
		if err := s.writeDescriptor(p, d); err != nil {
			return &types.CannotAccessFile{FileFault: types.FileFault{File: p}}
		}
		for _, vm := range allVMs() {
			simulator.Map.WithLock(vm, func() {
				for _, disk := range disksOf(vm.Config.Hardware.Device) {
					if b := flatBacking(disk); b != nil && b.FileName == p {
						disk.CapacityInKB = req.NewCapacityKb
						disk.CapacityInBytes = req.NewCapacityKb * 1024
					}
				}
			})
		}
		return nil
	})
}
