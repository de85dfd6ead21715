package main

// RemoveSnapshot_Task and RemoveAllSnapshots_Task like vCenter, with
// consolidation of the deltas a VM no longer needs.
//
// The model: a VM needs, as separate files, the top of each of its chains
// (its current disks and the disks of each of its snapshots). A file it
// does not need as a top and that has exactly one child in the VM's chains
// gets that child merged into it: the child's tokens are appended to its
// data file, the child's files deleted and every chain that went through
// the child now goes through the parent. Merging into or deleting a file
// that another powered-on VM has open fails with FileLocked, and nothing
// changes; a powered-off VM holds no lock (see checkMerges).

import (
	"sort"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	interceptors["RemoveSnapshot_Task"] = removeSnapshot
	interceptors["RemoveAllSnapshots_Task"] = removeAllSnapshots
}

func removeSnapshot(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	req, ok := call.Body.(*types.RemoveSnapshot_Task)
	if !ok {
		return types.ManagedObjectReference{}, &types.InvalidRequest{}
	}
	snap, ok := simulator.Map.Get(call.This).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return types.ManagedObjectReference{}, &types.ManagedObjectNotFound{Obj: call.This}
	}
	vm, fault := vmOf(snap.Vm)
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}
	consolidate := req.Consolidate == nil || *req.Consolidate
	return s.startTask(vm.Self, call.Name, 0, func() (types.AnyType, types.BaseMethodFault) {
		if simulator.Map.Get(snap.Self) == nil {
			return nil, &types.ManagedObjectNotFound{Obj: snap.Self}
		}
		tree := withoutNode(vm.Snapshot.RootSnapshotList, snap.Self, req.RemoveChildren)
		return nil, s.removeSnapshots(vm, tree, consolidate, false)
	}), nil
}

func removeAllSnapshots(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	req, ok := call.Body.(*types.RemoveAllSnapshots_Task)
	if !ok {
		return types.ManagedObjectReference{}, &types.InvalidRequest{}
	}
	vm, fault := vmOf(call.This)
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}
	consolidate := req.Consolidate == nil || *req.Consolidate
	return s.startTask(vm.Self, call.Name, 0, func() (types.AnyType, types.BaseMethodFault) {
		return nil, s.removeSnapshots(vm, nil, consolidate, true)
	}), nil
}

// removeSnapshots replaces vm's snapshot tree by tree (the old one less
// the removed snapshots), consolidating when asked: the deltas the removed
// snapshots left unneeded, or, with all, every delta the VM does not need
// (merges left pending by earlier removals too). On a fault nothing has
// changed.
func (s *sim) removeSnapshots(vm *simulator.VirtualMachine, tree []types.VirtualMachineSnapshotTree, consolidate, all bool) types.BaseMethodFault {
	var oldTree []types.VirtualMachineSnapshotTree
	var current *types.ManagedObjectReference
	if vm.Snapshot != nil {
		oldTree = vm.Snapshot.RootSnapshotList
		current = vm.Snapshot.CurrentSnapshot
	}
	kept := map[types.ManagedObjectReference]bool{}
	for _, r := range snapshotRefs(tree) {
		kept[r] = true
	}
	var removed []types.ManagedObjectReference
	for _, r := range snapshotRefs(oldTree) {
		if !kept[r] {
			removed = append(removed, r)
		}
	}
	// The current snapshot becomes its nearest surviving ancestor.
	if current != nil && !kept[*current] {
		path := treePath(oldTree, *current)
		current = nil
		for i := len(path) - 1; i >= 0; i-- {
			if kept[path[i]] {
				c := path[i]
				current = &c
				break
			}
		}
	}

	before := vmFiles(vm)
	var merges []merge
	if consolidate {
		// Only the files the removed snapshots held may take merges, unless
		// all: earlier pending merges are ConsolidateVMDisks' business.
		var only map[string]bool
		if !all {
			only = map[string]bool{}
			for _, c := range vmChains(vm) {
				if c.Snapshot != nil && !kept[c.Snapshot.Self] {
					only[c.Backing().FileName] = true
				}
			}
		}
		chains := chainsAfter(vm, kept)
		merges = planMerges(chains, only)
		if fault := checkMerges(vm, merges); fault != nil {
			return fault
		}
	}

	simulator.Map.WithLock(vm, func() {
		publishSnapshots(vm, tree, current)
		if consolidate {
			s.applyMerges(vm, merges)
			pending := planMerges(chainsAfter(vm, kept), nil)
			setConsolidationNeeded(vm, len(pending) > 0)
		} else if len(removed) > 0 {
			setConsolidationNeeded(vm, true)
		}
	})
	for _, r := range removed {
		simulator.Map.Remove(r)
	}
	if consolidate {
		s.deleteUnused(before)
	}
	return nil
}

// vmFiles lists every file in every chain of a VM.
func vmFiles(vm *simulator.VirtualMachine) []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range vmChains(vm) {
		for _, p := range chainPaths(c.Backing()) {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// chainsAfter lists the path chains (top first) of vm's current disks and
// of the snapshots in kept.
func chainsAfter(vm *simulator.VirtualMachine, kept map[types.ManagedObjectReference]bool) [][]string {
	var out [][]string
	for _, c := range vmChains(vm) {
		if c.Snapshot != nil && !kept[c.Snapshot.Self] {
			continue
		}
		out = append(out, chainPaths(c.Backing()))
	}
	return out
}

// merge is one consolidation step: Child is merged into Parent.
type merge struct {
	Child, Parent string
}

// planMerges works out the merges that leave only the files the chains
// need: each file that is no chain's top and has exactly one child gets
// that child merged into it, until none is left. A non-nil only limits the
// files that may take a merge.
func planMerges(chains [][]string, only map[string]bool) []merge {
	work := make([][]string, len(chains))
	for i, c := range chains {
		work[i] = append([]string(nil), c...)
	}
	var out []merge
	for {
		tops := map[string]bool{}
		children := map[string]map[string]bool{}
		for _, c := range work {
			if len(c) == 0 {
				continue
			}
			tops[c[0]] = true
			for j := 0; j+1 < len(c); j++ {
				if children[c[j+1]] == nil {
					children[c[j+1]] = map[string]bool{}
				}
				children[c[j+1]][c[j]] = true
			}
		}
		var parents []string
		for p, kids := range children {
			if !tops[p] && len(kids) == 1 && (only == nil || only[p]) {
				parents = append(parents, p)
			}
		}
		if len(parents) == 0 {
			return out
		}
		sort.Strings(parents)
		p := parents[0]
		var child string
		for k := range children[p] {
			child = k
		}
		out = append(out, merge{Child: child, Parent: p})
		for i, c := range work {
			var n []string
			for _, f := range c {
				if f != child {
					n = append(n, f)
				}
			}
			work[i] = n
		}
	}
}

// checkMerges refuses merges that write into or delete a file another
// powered-on VM has open, as VMFS locks do: a running VM opens every file
// of its current disks' chains (its snapshots' chains are not open). A
// powered-off VM holds no lock, so vSphere merges into (or deletes) a file
// it uses without asking: that VM then sees the merged data, and a
// snapshot of it that held the file no longer holds what it froze. Guarding
// against that is the caller's business (vmdk_snap never merges into a file
// a snapshot holds).
func checkMerges(vm *simulator.VirtualMachine, merges []merge) types.BaseMethodFault {
	idx := fileUsersIndex()
	holders := func(p string) []fileUser {
		var out []fileUser
		for _, u := range idx[p] {
			if u.VM != vm.Self && u.Snapshot == "" && poweredOn(u.VM) {
				out = append(out, u)
			}
		}
		return out
	}
	for _, m := range merges {
		if u := holders(m.Parent); len(u) > 0 {
			return fileLocked(m.Parent, u)
		}
		if u := holders(m.Child); len(u) > 0 {
			return fileLocked(m.Child, u)
		}
	}
	return nil
}

// poweredOn tells whether a VM is running (and so holds locks on its files).
func poweredOn(ref types.ManagedObjectReference) bool {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	return ok && vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
}

// applyMerges carries out planned merges on vm's chains and files. The
// caller holds the VM's lock.
func (s *sim) applyMerges(vm *simulator.VirtualMachine, merges []merge) {
	if len(merges) == 0 {
		return
	}
	for _, m := range merges {
		tokens, _ := s.readTokens(s.dataFile(m.Child))
		_ = s.appendTokens(s.dataFile(m.Parent), tokens...)
		for _, c := range vmChains(vm) {
			top := c.Backing()
			if top.FileName == m.Child && top.Parent != nil {
				c.Disk.Backing = top.Parent
				continue
			}
			for n := top; n != nil && n.Parent != nil; n = n.Parent {
				if n.Parent.FileName == m.Child {
					n.Parent = n.Parent.Parent
					s.setParentHint(n.FileName, m.Parent)
					break
				}
			}
		}
		_ = s.deleteDiskFiles(m.Child)
	}
	publishDevices(vm, vm.Config.Hardware.Device)
}

// setParentHint rewrites a descriptor's parentFileNameHint.
func (s *sim) setParentHint(p, parent string) {
	d, err := s.readDescriptor(p)
	if err != nil {
		return
	}
	d.Parent = parent
	if parent != "" {
		d.CreateType = "vmfsSparse"
	}
	_ = s.writeDescriptor(p, d)
}

// deleteUnused deletes the delta disks among paths that no chain of any VM
// uses any more (base disks a VM stops using, e.g. one detached after a
// snapshot, are kept as vCenter keeps them).
func (s *sim) deleteUnused(paths []string) {
	idx := fileUsersIndex()
	for _, p := range paths {
		if isDelta(p) && len(idx[p]) == 0 && s.exists(p) {
			_ = s.deleteDiskFiles(p)
		}
	}
}
