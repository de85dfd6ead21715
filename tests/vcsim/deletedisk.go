package main

// VirtualDiskManager.DeleteVirtualDisk_Task with the chain model: deletes
// a disk file's descriptor and the data file its descriptor names (a base's
// "-flat.vmdk" or a delta's "-delta.vmdk"; the stock simulator only knows
// "-flat.vmdk" and fails on deltas with FileNotFound). A file that any
// VM's chain (current disks or snapshots) uses is refused with FileLocked,
// so a test cannot silently break a chain.

import (
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	interceptors["DeleteVirtualDisk_Task"] = deleteVirtualDisk
}

func deleteVirtualDisk(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	req, ok := call.Body.(*types.DeleteVirtualDisk_Task)
	if !ok {
		return types.ManagedObjectReference{}, &types.InvalidRequest{}
	}
	return s.diskFileTask(call, req.Name, func(p string) types.BaseMethodFault {
		if users := fileUsers(p); len(users) > 0 {
			return fileLocked(p, users)
		}
		if err := s.deleteDiskFiles(p); err != nil {
			return &types.CannotDeleteFile{FileFault: types.FileFault{File: p}}
		}
		return nil
	})
}

// diskFileTask starts a VirtualDiskManager task on the disk file name (a
// datastore path, refused at call time otherwise): do runs with the path of
// the file's descriptor, which must exist (FileNotFound).
func (s *sim) diskFileTask(call *soapCall, name string, do func(p string) types.BaseMethodFault) (types.ManagedObjectReference, types.BaseMethodFault) {
	if _, _, ok := splitDSPath(name); !ok {
		return types.ManagedObjectReference{}, &types.InvalidDatastorePath{DatastorePath: name}
	}
	return s.startTask(call.This, call.Name, 0, func() (types.AnyType, types.BaseMethodFault) {
		p := descriptorOf(name)
		if !s.exists(p) {
			return nil, &types.FileNotFound{FileFault: types.FileFault{File: p}}
		}
		return nil, do(p)
	}), nil
}
