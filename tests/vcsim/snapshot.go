package main

// CreateSnapshot_Task like vCenter: every non-independent disk gets a new
// delta disk in the VM's own directory, the disk's backing becomes that
// delta with parent = the old backing, and the snapshot's config keeps a
// deep copy of the devices as they were. The stock simulator only writes a
// .vmsn file and leaves the backings as they are.

import (
	"fmt"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// maxSnapshotDepth is vSphere's limit on the length of a snapshot chain.
const maxSnapshotDepth = 32

func init() {
	interceptors["CreateSnapshot_Task"] = createSnapshot
}

func createSnapshot(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	req, ok := call.Body.(*types.CreateSnapshot_Task)
	if !ok {
		return types.ManagedObjectReference{}, &types.InvalidRequest{}
	}
	vm, fault := vmOf(call.This)
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}
	return s.startTask(vm.Self, call.Name, 0, func() (types.AnyType, types.BaseMethodFault) {
		ref, fault := s.snapshotVM(vm, req.Name, req.Description, req.Quiesce)
		if fault != nil {
			return nil, fault
		}
		return ref, nil
	}), nil
}

// snapshotVM takes a snapshot of vm: the model change of CreateSnapshot.
func (s *sim) snapshotVM(vm *simulator.VirtualMachine, name, description string, quiesce bool) (types.ManagedObjectReference, types.BaseMethodFault) {
	var none types.ManagedObjectReference
	if vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
		if depth := len(treePath(vm.Snapshot.RootSnapshotList, *vm.Snapshot.CurrentSnapshot)); depth >= maxSnapshotDepth {
			f := &types.TooManySnapshotLevels{}
			f.FaultMessage = []types.LocalizableMessage{{
				Key:     "vmdk_snap.tooManySnapshotLevels",
				Message: fmt.Sprintf("Exceeded the maximum number of permitted snapshots (%d levels) for %s.", maxSnapshotDepth, vm.Name),
			}}
			return none, f
		}
	}
	// vSphere limits the delta chain of a disk too, not only the snapshot
	// tree: a disk whose chain was grown by snapshots that were removed
	// without consolidation counts every delta still in it.
	for _, disk := range disksOf(vm.Config.Hardware.Device) {
		b := flatBacking(disk)
		if b == nil || independent(b) {
			continue
		}
		if deltas := len(chainOf(b)) - 1; deltas >= maxSnapshotDepth {
			f := &types.TooManySnapshotLevels{}
			f.FaultMessage = []types.LocalizableMessage{{
				Key:     "vmdk_snap.tooManySnapshotLevels",
				Message: fmt.Sprintf("Exceeded the maximum number of permitted delta disks (%d) in the chain of %s on %s.", maxSnapshotDepth, b.FileName, vm.Name),
			}}
			return none, f
		}
	}
	// A snapshot makes the VM's disks read-only parents of new deltas: a
	// file another running VM writes to (its current top) is locked.
	for _, disk := range disksOf(vm.Config.Hardware.Device) {
		b := flatBacking(disk)
		if b == nil || independent(b) {
			continue
		}
		for _, u := range fileUsers(b.FileName) {
			if u.VM != vm.Self && u.Snapshot == "" && u.Top && poweredOn(u.VM) {
				return none, fileLocked(b.FileName, []fileUser{u})
			}
		}
	}
	if quiesce && !toolsRunning(vm) {
		f := &types.ToolsUnavailable{}
		f.FaultMessage = []types.LocalizableMessage{{
			Key:     "vmdk_snap.toolsUnavailable",
			Message: fmt.Sprintf("Cannot create a quiesced snapshot of %s because VMware Tools are not running in the guest.", vm.Name),
		}}
		return none, f
	}

	home := vmHome(vm)
	var fault types.BaseMethodFault
	var snapRef types.ManagedObjectReference
	simulator.Map.WithLock(vm, func() {
		snap := &simulator.VirtualMachineSnapshot{}
		snap.Vm = vm.Self
		snap.Config = *deepCopy(vm.Config).(*types.VirtualMachineConfigInfo)

		devices := copyDevices(vm.Config.Hardware.Device)
		var created []string
		for _, disk := range disksOf(devices) {
			old := flatBacking(disk)
			if independent(old) {
				continue
			}
			delta, err := s.newDelta(home, old, disk.CapacityInKB)
			if err != nil {
				for _, p := range created {
					_ = s.deleteDiskFiles(p)
				}
				fault = &types.CannotCreateFile{FileFault: types.FileFault{File: err.Error()}}
				return
			}
			created = append(created, delta.FileName)
			disk.Backing = delta
		}

		simulator.Map.Put(snap)
		snapRef = snap.Self
		if vm.Snapshot == nil {
			vm.Snapshot = &types.VirtualMachineSnapshotInfo{}
		}
		node := types.VirtualMachineSnapshotTree{
			Snapshot:        snap.Self,
			Vm:              vm.Self,
			Name:            name,
			Description:     description,
			Id:              nextSnapshotID(vm.Snapshot.RootSnapshotList),
			CreateTime:      time.Now(),
			State:           vm.Runtime.PowerState,
			Quiesced:        quiesce,
			ReplaySupported: types.NewBool(false),
		}
		tree := deepCopy(vm.Snapshot.RootSnapshotList).([]types.VirtualMachineSnapshotTree)
		if cur := vm.Snapshot.CurrentSnapshot; cur != nil {
			if n := findNode(tree, *cur); n != nil {
				n.ChildSnapshotList = append(n.ChildSnapshotList, node)
			} else {
				tree = append(tree, node)
			}
		} else {
			tree = append(tree, node)
		}
		publishDevices(vm, devices)
		publishSnapshots(vm, tree, &snapRef)
	})
	if fault != nil {
		return none, fault
	}
	return snapRef, nil
}

// newDelta creates a delta disk over parent in dir ("[ds] vmdir") and
// returns its backing: "<name>-00000N.vmdk", N unused in that directory.
func (s *sim) newDelta(dir string, parent *types.VirtualDiskFlatVer2BackingInfo, capacityKB int64) (*types.VirtualDiskFlatVer2BackingInfo, error) {
	base := diskBaseName(parent.FileName)
	users := fileUsersIndex()
	var p string
	for n := 1; ; n++ {
		p = dsJoin(dir, fmt.Sprintf("%s-%06d.vmdk", base, n))
		data := dsJoin(dir, fmt.Sprintf("%s-%06d-delta.vmdk", base, n))
		if !s.exists(p) && !s.exists(data) && len(users[p]) == 0 {
			break
		}
	}
	if err := s.createDisk(p, parent.FileName, capacityKB); err != nil {
		return nil, err
	}
	b := *parent
	b.FileName = p
	b.Parent = copyBacking(parent)
	b.ContentId = fmt.Sprintf("%08x", hashString(p+time.Now().String()))
	b.ChangeId = ""
	if ds := datastoreByName(dsOfPath(p)); ds != nil {
		ref := ds.Self
		b.Datastore = &ref
	}
	return &b, nil
}

// ---------------------------------------------------------------------------
// Snapshot tree helpers (our own; the stock ones are unexported)

// findNode returns the node of a snapshot in a tree, or nil.
func findNode(tree []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference) *types.VirtualMachineSnapshotTree {
	for i := range tree {
		if tree[i].Snapshot == ref {
			return &tree[i]
		}
		if n := findNode(tree[i].ChildSnapshotList, ref); n != nil {
			return n
		}
	}
	return nil
}

// treePath lists the snapshots from a root down to ref (empty if absent).
func treePath(tree []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference) []types.ManagedObjectReference {
	for _, n := range tree {
		if n.Snapshot == ref {
			return []types.ManagedObjectReference{ref}
		}
		if sub := treePath(n.ChildSnapshotList, ref); len(sub) > 0 {
			return append([]types.ManagedObjectReference{n.Snapshot}, sub...)
		}
	}
	return nil
}

// nextSnapshotID is one more than the largest id in the tree.
func nextSnapshotID(tree []types.VirtualMachineSnapshotTree) int32 {
	var max int32
	var walk func([]types.VirtualMachineSnapshotTree)
	walk = func(t []types.VirtualMachineSnapshotTree) {
		for _, n := range t {
			if n.Id > max {
				max = n.Id
			}
			walk(n.ChildSnapshotList)
		}
	}
	walk(tree)
	return max + 1
}

// withoutNode returns a copy of the tree without ref; its children take
// its place unless removeChildren.
func withoutNode(tree []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference, removeChildren bool) []types.VirtualMachineSnapshotTree {
	var out []types.VirtualMachineSnapshotTree
	for _, n := range tree {
		if n.Snapshot == ref {
			if !removeChildren {
				out = append(out, n.ChildSnapshotList...)
			}
			continue
		}
		n.ChildSnapshotList = withoutNode(n.ChildSnapshotList, ref, removeChildren)
		out = append(out, n)
	}
	return out
}

// publishSnapshots sets a VM's snapshot tree and current snapshot, keeps
// each snapshot's childSnapshot and the VM's rootSnapshot in step, and
// tells property collectors. The caller holds the VM's lock.
func publishSnapshots(vm *simulator.VirtualMachine, tree []types.VirtualMachineSnapshotTree, current *types.ManagedObjectReference) {
	var sync func([]types.VirtualMachineSnapshotTree)
	sync = func(t []types.VirtualMachineSnapshotTree) {
		for _, n := range t {
			if snap, ok := simulator.Map.Get(n.Snapshot).(*simulator.VirtualMachineSnapshot); ok {
				var children []types.ManagedObjectReference
				for _, c := range n.ChildSnapshotList {
					children = append(children, c.Snapshot)
				}
				snap.ChildSnapshot = children
			}
			sync(n.ChildSnapshotList)
		}
	}
	sync(tree)
	var roots []types.ManagedObjectReference
	for _, n := range tree {
		roots = append(roots, n.Snapshot)
	}
	if len(tree) == 0 {
		vm.Snapshot = &types.VirtualMachineSnapshotInfo{}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "snapshot", Val: nil},
			{Name: "rootSnapshot", Val: roots},
		})
		return
	}
	if vm.Snapshot == nil {
		vm.Snapshot = &types.VirtualMachineSnapshotInfo{}
	}
	var cur *types.ManagedObjectReference
	if current != nil {
		c := *current
		cur = &c
	}
	simulator.Map.Update(vm, []types.PropertyChange{
		{Name: "snapshot.rootSnapshotList", Val: tree},
		{Name: "snapshot.currentSnapshot", Val: cur},
		{Name: "rootSnapshot", Val: roots},
	})
}
