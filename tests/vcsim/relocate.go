package main

// RelocateVM_Task like vCenter: host, pool, datastore, per-disk locators
// and diskMoveType are honoured, disk and home files are copied to the
// target datastores (into the VM's directory there, as storage vMotion
// does), every path in every chain of the moved VM (current disks, parents,
// snapshot configs, descriptors' parent hints) is rewritten, and the
// source files are removed unless another VM still uses them. That is how
// a volume's old copy stays with its backing VM after the instance it is
// attached to is storage-vMotioned.
//
// diskMoveType (the spec's, or a disk locator's for its disk):
//   - moveAllDiskBackingsAndDisallowSharing (the default): a chain that
//     moves is copied whole into the VM's directory on the target, even
//     files already on the target datastore;
//   - moveAllDiskBackingsAndAllowSharing: files already on the target
//     datastore stay where they are (shared parents stay shared);
//   - moveChildMostDiskBacking: only the top file of each current disk
//     moves; its parents stay where they are.
// A disk whose whole chain is already on its target datastore is not
// copied. A target host that cannot see a datastore the VM would use is
// refused with InvalidArgument, before anything changes. A copy whose name
// is taken on the target gets a suffix (x_1.vmdk, x_1-000002.vmdk); a file
// another running VM writes to (its current top) cannot be copied: FileLocked.

import (
	"fmt"
	"net/http"
	"os"
	"path"
	"reflect"
	"sort"
	"strings"
	"sync"
	"unsafe"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	interceptors["RelocateVM_Task"] = relocateVM
	controlRoutes["/bytes-copied"] = (*sim).controlBytesCopied
	controlRoutes["/bytes-copied/reset"] = (*sim).controlBytesCopiedReset
}

// copied counts the bytes of disk data copied by relocations.
var copied = struct {
	sync.Mutex
	total int64
	files map[string]int64
}{files: map[string]int64{}}

func (s *sim) controlBytesCopied(w http.ResponseWriter, r *http.Request) {
	copied.Lock()
	defer copied.Unlock()
	files := make(map[string]int64, len(copied.files))
	for k, v := range copied.files {
		files[k] = v
	}
	writeJSON(w, http.StatusOK, map[string]interface{}{"total": copied.total, "files": files})
}

func (s *sim) controlBytesCopiedReset(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		ctlError(w, http.StatusMethodNotAllowed, "bytes-copied/reset: use POST")
		return
	}
	copied.Lock()
	copied.total = 0
	copied.files = map[string]int64{}
	copied.Unlock()
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

func relocateVM(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	req, ok := call.Body.(*types.RelocateVM_Task)
	if !ok {
		return types.ManagedObjectReference{}, &types.InvalidRequest{}
	}
	vm, fault := vmOf(call.This)
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}
	s.modelMu.Lock()
	plan, fault := s.planRelocation(vm, req.Spec)
	s.modelMu.Unlock()
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}
	return s.startTask(vm.Self, call.Name, plan.bytes, func() (types.AnyType, types.BaseMethodFault) {
		return nil, s.relocate(vm, req.Spec)
	}), nil
}

// fileMove is one disk file to copy.
type fileMove struct {
	Src, Dst string
}

// relocation is the plan of a RelocateVM.
type relocation struct {
	host     *simulator.HostSystem
	pool     *types.ManagedObjectReference
	homeFrom string // "[ds] dir"
	homeTo   string
	moves    []fileMove
	moved    map[string]string // src -> dst
	parentOf map[string]string // every file of the VM's chains -> its parent
	bytes    int64
}

// targetDatastore resolves a datastore reference to its name.
func datastoreName(ref *types.ManagedObjectReference) (string, types.BaseMethodFault) {
	if ref == nil {
		return "", nil
	}
	ds, ok := simulator.Map.Get(*ref).(*simulator.Datastore)
	if !ok {
		return "", &types.ManagedObjectNotFound{Obj: *ref}
	}
	return ds.Name, nil
}

// planRelocation works out what a relocation copies, refusing what vCenter
// refuses. It changes nothing.
func (s *sim) planRelocation(vm *simulator.VirtualMachine, spec types.VirtualMachineRelocateSpec) (*relocation, types.BaseMethodFault) {
	plan := &relocation{moved: map[string]string{}, parentOf: map[string]string{}, pool: spec.Pool}
	hostRef := vm.Runtime.Host
	if spec.Host != nil {
		hostRef = spec.Host
	}
	if hostRef == nil {
		return nil, &types.InvalidArgument{InvalidProperty: "host"}
	}
	host, ok := simulator.Map.Get(*hostRef).(*simulator.HostSystem)
	if !ok {
		return nil, &types.ManagedObjectNotFound{Obj: *hostRef}
	}
	plan.host = host
	target, fault := datastoreName(spec.Datastore)
	if fault != nil {
		return nil, fault
	}
	defaultMove := spec.DiskMoveType
	if defaultMove == "" {
		defaultMove = string(types.VirtualMachineRelocateDiskMoveOptionsMoveAllDiskBackingsAndDisallowSharing)
	}
	locators := map[int32]string{}
	moveTypes := map[int32]string{}
	for _, loc := range spec.Disk {
		name, fault := datastoreName(&loc.Datastore)
		if fault != nil {
			return nil, fault
		}
		locators[loc.DiskId] = name
		if loc.DiskMoveType != "" {
			moveTypes[loc.DiskId] = loc.DiskMoveType
		}
	}

	plan.homeFrom = vmHome(vm)
	plan.homeTo = plan.homeFrom
	homeDS, homeRel, _ := splitDSPath(plan.homeFrom)
	if target != "" && target != homeDS {
		plan.homeTo = dsPath(target, homeRel)
	}

	chains := vmChains(vm)
	for _, c := range chains {
		nodes := chainOf(c.Backing())
		for i := 0; i+1 < len(nodes); i++ {
			plan.parentOf[nodes[i].FileName] = nodes[i+1].FileName
		}
		if len(nodes) > 0 {
			if _, ok := plan.parentOf[nodes[len(nodes)-1].FileName]; !ok {
				plan.parentOf[nodes[len(nodes)-1].FileName] = ""
			}
		}
	}
	dstUsed := map[string]string{}
	idx := fileUsersIndex()
	addMove := func(src, ds string) types.BaseMethodFault {
		if _, done := plan.moved[src]; done {
			return nil
		}
		_, rel, _ := splitDSPath(src)
		dst := dsJoin(dsPath(ds, homeRel), path.Base(rel))
		if dst == src {
			return nil
		}
		// A file another running VM writes to (the top of its current
		// chain) is locked exclusively: it cannot be read for a copy.
		for _, u := range idx[src] {
			if u.VM != vm.Self && u.Snapshot == "" && u.Top && poweredOn(u.VM) {
				return fileLocked(src, []fileUser{u})
			}
		}
		// A name taken on the target (by a file, or by another copy of
		// this relocation) gets a suffix, as vCenter names copies: x_1.vmdk.
		// A delta keeps its -NNNNNN ending (x_1-000002.vmdk).
		stem, tail := strings.TrimSuffix(dst, ".vmdk"), ".vmdk"
		if isDelta(dst) {
			i := strings.LastIndex(stem, "-")
			stem, tail = stem[:i], stem[i:]+".vmdk"
		}
		for n := 1; ; n++ {
			other, planned := dstUsed[dst]
			taken := (planned && other != src) || s.exists(dst) || s.exists(s.dataFileAt(src, dst))
			if !taken {
				break
			}
			dst = fmt.Sprintf("%s_%d%s", stem, n, tail)
		}
		dstUsed[dst] = src
		plan.moved[src] = dst
		plan.moves = append(plan.moves, fileMove{Src: src, Dst: dst})
		plan.bytes += s.dataBytes(s.dataFile(src))
		return nil
	}
	for _, c := range chains {
		ds := target
		if l, ok := locators[c.Disk.Key]; ok {
			ds = l
		}
		moveType := defaultMove
		if m, ok := moveTypes[c.Disk.Key]; ok {
			moveType = m
		}
		if ds == "" {
			continue
		}
		nodes := chainOf(c.Backing())
		if c.Snapshot != nil && moveType == string(types.VirtualMachineRelocateDiskMoveOptionsMoveChildMostDiskBacking) {
			continue
		}
		onTarget := true
		for _, n := range nodes {
			if dsOfPath(n.FileName) != ds {
				onTarget = false
			}
		}
		if onTarget {
			continue
		}
		for i, n := range nodes {
			switch moveType {
			case string(types.VirtualMachineRelocateDiskMoveOptionsMoveChildMostDiskBacking):
				if i > 0 {
					continue
				}
			case string(types.VirtualMachineRelocateDiskMoveOptionsMoveAllDiskBackingsAndAllowSharing):
				if dsOfPath(n.FileName) == ds {
					continue
				}
			}
			if fault := addMove(n.FileName, ds); fault != nil {
				return nil, fault
			}
		}
	}

	// Every datastore the VM would use must be visible from the host.
	visible := map[string]bool{}
	for _, ref := range host.Datastore {
		if ds, ok := simulator.Map.Get(ref).(*simulator.Datastore); ok {
			visible[ds.Name] = true
		}
	}
	need := []string{dsOfPath(plan.homeTo)}
	for p := range plan.parentOf {
		if to, ok := plan.moved[p]; ok {
			p = to
		}
		need = append(need, dsOfPath(p))
	}
	sort.Strings(need)
	for _, ds := range need {
		if !visible[ds] {
			f := &types.InvalidArgument{InvalidProperty: "spec.host"}
			f.FaultMessage = []types.LocalizableMessage{{
				Key: "vmdk_snap.datastoreNotVisible",
				Message: fmt.Sprintf("Host %s cannot access datastore %s, which %s would use; choose a host that mounts it or another datastore.",
					host.Name, ds, vm.Name),
			}}
			return nil, f
		}
	}
	return plan, nil
}

// dataFileAt is where src's data file lands when src is copied to dst.
func (s *sim) dataFileAt(src, dst string) string {
	return dsJoin(dsDir(dst), defaultDescriptor(dst).Extent)
}

// homeFiles lists the files in a VM's home directory that are not disk
// files of any chain (.vmx, .nvram, logs, .vmsn, ...).
func (s *sim) homeFiles(home string) []string {
	lp, err := s.localPath(home)
	if err != nil {
		return nil
	}
	entries, err := os.ReadDir(lp)
	if err != nil {
		return nil
	}
	idx := fileUsersIndex()
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		p := dsJoin(home, e.Name())
		if len(idx[descriptorOf(p)]) > 0 {
			continue
		}
		out = append(out, p)
	}
	return out
}

// relocate carries out a relocation (inside the task, under modelMu).
func (s *sim) relocate(vm *simulator.VirtualMachine, spec types.VirtualMachineRelocateSpec) types.BaseMethodFault {
	plan, fault := s.planRelocation(vm, spec)
	if fault != nil {
		return fault
	}
	var homeMoves []fileMove
	if plan.homeTo != plan.homeFrom {
		for _, p := range s.homeFiles(plan.homeFrom) {
			_, rel, _ := splitDSPath(p)
			homeMoves = append(homeMoves, fileMove{Src: p, Dst: dsJoin(plan.homeTo, path.Base(rel))})
		}
	}
	// Copy first; on an error remove the copies and change nothing else.
	var done []string
	undo := func() {
		for _, p := range done {
			if lp, err := s.localPath(p); err == nil {
				_ = os.Remove(lp)
			}
		}
	}
	copiedFiles := map[string]int64{}
	for _, m := range plan.moves {
		parent := plan.parentOf[m.Src]
		if to, ok := plan.moved[parent]; ok {
			parent = to
		}
		n, err := s.copyDisk(m.Src, m.Dst, parent)
		done = append(done, m.Dst, s.dataFile(m.Dst))
		if err != nil {
			undo()
			return &types.FileFault{File: m.Src}
		}
		copiedFiles[s.dataFile(m.Dst)] = n
	}
	for _, m := range homeMoves {
		if _, err := s.copyFile(m.Src, m.Dst); err != nil {
			undo()
			return &types.FileFault{File: m.Src}
		}
		done = append(done, m.Dst)
	}

	simulator.Map.WithLock(vm, func() {
		for _, c := range vmChains(vm) {
			rewriteChain(c.Backing(), plan.moved)
		}
		// Files that stay but whose parent moved get the new hint.
		for src, parent := range plan.parentOf {
			if _, movedToo := plan.moved[src]; movedToo || parent == "" {
				continue
			}
			if to, ok := plan.moved[parent]; ok && len(otherUsers(src, vm.Self)) == 0 {
				s.setParentHint(src, to)
			}
		}
		files := rewriteFiles(vm.Config.Files, plan.homeFrom, plan.homeTo)
		vm.Config.Files = files
		for _, snap := range snapshotsOf(vm) {
			snap.Config.Files = rewriteFiles(snap.Config.Files, plan.homeFrom, plan.homeTo)
		}
		publishDevices(vm, vm.Config.Hardware.Device)
		changes := []types.PropertyChange{
			{Name: "config.files", Val: files},
			{Name: "summary.config.vmPathName", Val: files.VmPathName},
			{Name: "datastore", Val: s.vmDatastores(vm, plan.homeTo)},
		}
		if oldHost := vm.Runtime.Host; oldHost == nil || *oldHost != plan.host.Self {
			if oldHost != nil {
				if h, ok := simulator.Map.Get(*oldHost).(*simulator.HostSystem); ok {
					simulator.Map.RemoveReference(h, &h.Vm, vm.Self)
				}
			}
			simulator.Map.AddReference(plan.host, &plan.host.Vm, vm.Self)
			ref := plan.host.Self
			changes = append(changes,
				types.PropertyChange{Name: "runtime.host", Val: &ref},
				types.PropertyChange{Name: "summary.runtime.host", Val: &ref})
		}
		if plan.pool != nil && (vm.ResourcePool == nil || *vm.ResourcePool != *plan.pool) {
			if vm.ResourcePool != nil {
				if p, ok := simulator.Map.Get(*vm.ResourcePool).(*simulator.ResourcePool); ok {
					simulator.Map.RemoveReference(p, &p.Vm, vm.Self)
				}
			}
			if p, ok := simulator.Map.Get(*plan.pool).(*simulator.ResourcePool); ok {
				simulator.Map.AddReference(p, &p.Vm, vm.Self)
			}
			ref := *plan.pool
			changes = append(changes, types.PropertyChange{Name: "resourcePool", Val: &ref})
		}
		simulator.Map.Update(vm, changes)
	})

	// Sources go unless another chain still uses them.
	idx := fileUsersIndex()
	for _, m := range plan.moves {
		if len(idx[m.Src]) == 0 {
			_ = s.deleteDiskFiles(m.Src)
		}
	}
	for _, m := range homeMoves {
		if lp, err := s.localPath(m.Src); err == nil {
			_ = os.Remove(lp)
		}
	}
	if plan.homeTo != plan.homeFrom {
		if lp, err := s.localPath(plan.homeFrom); err == nil {
			_ = os.Remove(lp) // only if empty
		}
		if lp, err := s.localPath(dsJoin(plan.homeTo, "vmware.log")); err == nil {
			setVMLog(vm, lp)
		}
	}
	s.updateDatastoreVMs()

	copied.Lock()
	for f, n := range copiedFiles {
		copied.total += n
		copied.files[f] += n
	}
	copied.Unlock()
	return nil
}

// rewriteFiles moves a VM's file locations from one home to another.
func rewriteFiles(f types.VirtualMachineFileInfo, from, to string) types.VirtualMachineFileInfo {
	if from == to {
		return f
	}
	move := func(p string) string {
		if p == from || strings.HasPrefix(p, from+"/") {
			return to + strings.TrimPrefix(p, from)
		}
		// "[ds]" alone, or "[ds] dir" without the file: keep in step.
		if dsOfPath(p) == dsOfPath(from) && strings.TrimSpace(strings.TrimPrefix(p, "["+dsOfPath(p)+"]")) == "" {
			return "[" + dsOfPath(to) + "]"
		}
		return p
	}
	f.VmPathName = move(f.VmPathName)
	f.SnapshotDirectory = move(f.SnapshotDirectory)
	f.SuspendDirectory = move(f.SuspendDirectory)
	f.LogDirectory = move(f.LogDirectory)
	return f
}

// vmDatastores lists the datastores a VM's files are on.
func (s *sim) vmDatastores(vm *simulator.VirtualMachine, home string) []types.ManagedObjectReference {
	names := map[string]bool{dsOfPath(home): true}
	for _, p := range vmFiles(vm) {
		names[dsOfPath(p)] = true
	}
	var sorted []string
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	var out []types.ManagedObjectReference
	for _, n := range sorted {
		if ds := datastoreByName(n); ds != nil {
			out = append(out, ds.Self)
		}
	}
	return out
}

// updateDatastoreVMs recomputes each datastore's vm list from the VMs'
// datastore lists.
func (s *sim) updateDatastoreVMs() {
	byDS := map[types.ManagedObjectReference][]types.ManagedObjectReference{}
	for _, vm := range allVMs() {
		for _, ref := range vm.Datastore {
			byDS[ref] = append(byDS[ref], vm.Self)
		}
	}
	for _, e := range simulator.Map.All("Datastore") {
		ds, ok := e.(*simulator.Datastore)
		if !ok {
			continue
		}
		vms := byDS[ds.Self]
		simulator.Map.WithLock(ds, func() {
			simulator.Map.Update(ds, []types.PropertyChange{{Name: "vm", Val: vms}})
		})
	}
}

// setVMLog points the stock simulator's per-VM log (an unexported field it
// appends to on power operations) at the moved home, so no vmware.log
// reappears in the old directory. Without that field, it does nothing.
func setVMLog(vm *simulator.VirtualMachine, local string) {
	f := reflect.ValueOf(vm).Elem().FieldByName("log")
	if !f.IsValid() || f.Kind() != reflect.String {
		return
	}
	reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().SetString(local)
}
