package main

// VirtualDiskManager.MoveVirtualDisk_Task on the disk model, which Cinder's
// driver calls to give a cloned disk to a new backing (a volume from a
// template snapshot, a clone of an attached volume). The stock simulator
// renames "<name>.vmdk" and "<name>-flat.vmdk" by name only, so a
// descriptor's extent would name a file that is gone. Here the descriptor
// is rewritten for its new name, a delta keeps its parent hint, and:
//   - a missing source: FileNotFound;
//   - a file a VM's chain uses (a current disk or a snapshot's): FileLocked
//     (detach it first, as Cinder does);
//   - a destination directory that does not exist: FileNotFound;
//   - a destination that exists: FileAlreadyExists, unless force.
// A move between datastores copies the data (counted in
// /_ctl/bytes-copied); within one datastore it is a rename.

import (
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	interceptors["MoveVirtualDisk_Task"] = moveVirtualDisk
}

func moveVirtualDisk(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	req, ok := call.Body.(*types.MoveVirtualDisk_Task)
	if !ok {
		return types.ManagedObjectReference{}, &types.InvalidRequest{}
	}
	if _, _, ok := splitDSPath(req.DestName); !ok {
		return types.ManagedObjectReference{}, &types.InvalidDatastorePath{DatastorePath: req.DestName}
	}
	return s.diskFileTask(call, req.SourceName, func(p string) types.BaseMethodFault { // deletedisk.go
		dst := descriptorOf(req.DestName)
		if users := fileUsers(p); len(users) > 0 {
			return fileLocked(p, users)
		}
		if !s.exists(dsDir(dst)) {
			return &types.FileNotFound{FileFault: types.FileFault{File: dsDir(dst)}}
		}
		if s.exists(dst) {
			if req.Force == nil || !*req.Force {
				return &types.FileAlreadyExists{FileFault: types.FileFault{File: dst}}
			}
			if users := fileUsers(dst); len(users) > 0 {
				return fileLocked(dst, users)
			}
			_ = s.deleteDiskFiles(dst)
		}
		d, err := s.readDescriptor(p)
		if err != nil {
			return &types.FileNotFound{FileFault: types.FileFault{File: p}}
		}
		n, err := s.copyDisk(p, dst, d.Parent)
		if err != nil {
			_ = s.deleteDiskFiles(dst)
			return &types.CannotAccessFile{FileFault: types.FileFault{File: p}}
		}
		if err := s.deleteDiskFiles(p); err != nil {
			return &types.CannotDeleteFile{FileFault: types.FileFault{File: p}}
		}
		if dsOfPath(p) != dsOfPath(dst) {
			copied.Lock()
			copied.total += n
			copied.files[s.dataFile(dst)] += n
			copied.Unlock()
		}
		return nil
	})
}
