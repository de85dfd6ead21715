package main

// Shared helpers of the disk-chain model: where files live, who uses them,
// deep copies of backings and device lists, path rewriting and the VMDK
// descriptor and data files.
//
// A disk is a chain of backings (types.VirtualDiskFlatVer2BackingInfo,
// linked by Parent). Each file in a chain is a descriptor "<name>.vmdk"
// (real descriptor text: createType, parentFileNameHint, one extent) and a
// data file (the extent: "<name>-flat.vmdk" for a base, "<name>-delta.vmdk"
// for a delta). Data files hold tokens, one per line, standing in for the
// blocks a guest writes.

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// controlRoutes holds control endpoints registered by model files, keyed by
// path under /_ctl (e.g. "/read"); sim.control consults it for paths its
// own switch does not serve.
var controlRoutes = map[string]func(*sim, http.ResponseWriter, *http.Request){}

// ---------------------------------------------------------------------------
// Datastore paths

// splitDSPath splits "[ds] dir/file.vmdk" into "ds" and "dir/file.vmdk".
func splitDSPath(p string) (string, string, bool) {
	var dp object.DatastorePath
	if !dp.FromString(p) {
		return "", "", false
	}
	return dp.Datastore, dp.Path, true
}

// dsPath builds "[ds] rel".
func dsPath(ds, rel string) string {
	return (&object.DatastorePath{Datastore: ds, Path: rel}).String()
}

// dsOfPath is the datastore name of a datastore path ("" if malformed).
func dsOfPath(p string) string {
	ds, _, _ := splitDSPath(p)
	return ds
}

// dsDir is the directory of a datastore path: "[ds] a/b.vmdk" -> "[ds] a".
func dsDir(p string) string {
	ds, rel, _ := splitDSPath(p)
	d := path.Dir(rel)
	if d == "." {
		d = ""
	}
	return dsPath(ds, d)
}

// dsJoin joins a datastore directory and a file name.
func dsJoin(dir, name string) string {
	ds, rel, _ := splitDSPath(dir)
	return dsPath(ds, path.Join(rel, name))
}

// datastoreByName returns the datastore object of that name, or nil.
func datastoreByName(name string) *simulator.Datastore {
	for _, e := range simulator.Map.All("Datastore") {
		if ds, ok := e.(*simulator.Datastore); ok && ds.Name == name {
			return ds
		}
	}
	return nil
}

// localPath maps a datastore path to the file on this machine.
func (s *sim) localPath(p string) (string, error) {
	ds, rel, ok := splitDSPath(p)
	if !ok {
		return "", fmt.Errorf("not a datastore path: %q", p)
	}
	root := filepath.Join(s.root, ds)
	if obj := datastoreByName(ds); obj != nil {
		root = obj.Info.GetDatastoreInfo().Url
	}
	clean := filepath.Clean("/" + rel)
	return filepath.Join(root, clean), nil
}

// exists reports whether the file at a datastore path exists.
func (s *sim) exists(p string) bool {
	lp, err := s.localPath(p)
	if err != nil {
		return false
	}
	_, err = os.Stat(lp)
	return err == nil
}

// vmHome is the VM's directory ("[ds] dir") from config.files.vmPathName.
func vmHome(vm *simulator.VirtualMachine) string {
	p := vm.Config.Files.VmPathName
	if strings.HasSuffix(p, ".vmx") {
		return dsDir(p)
	}
	return strings.TrimRight(p, "/")
}

// ---------------------------------------------------------------------------
// Chains and their users

// flatBacking returns a disk's flat backing, or nil for other kinds.
func flatBacking(d *types.VirtualDisk) *types.VirtualDiskFlatVer2BackingInfo {
	b, _ := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	return b
}

// disksOf lists the virtual disks with flat backings in a device list.
func disksOf(devices []types.BaseVirtualDevice) []*types.VirtualDisk {
	var out []*types.VirtualDisk
	for _, d := range devices {
		if disk, ok := d.(*types.VirtualDisk); ok && flatBacking(disk) != nil {
			out = append(out, disk)
		}
	}
	return out
}

// independent reports whether a disk is left out of snapshots.
func independent(b *types.VirtualDiskFlatVer2BackingInfo) bool {
	return strings.HasPrefix(b.DiskMode, "independent")
}

// chainOf lists a backing and its parents, top first.
func chainOf(b *types.VirtualDiskFlatVer2BackingInfo) []*types.VirtualDiskFlatVer2BackingInfo {
	var out []*types.VirtualDiskFlatVer2BackingInfo
	for ; b != nil; b = b.Parent {
		out = append(out, b)
	}
	return out
}

// chainPaths lists the descriptor paths of a chain, top first.
func chainPaths(b *types.VirtualDiskFlatVer2BackingInfo) []string {
	var out []string
	for _, n := range chainOf(b) {
		out = append(out, n.FileName)
	}
	return out
}

// allVMs lists every VM of the inventory, sorted by moref for determinism.
func allVMs() []*simulator.VirtualMachine {
	var out []*simulator.VirtualMachine
	for _, e := range simulator.Map.All("VirtualMachine") {
		if vm, ok := e.(*simulator.VirtualMachine); ok {
			out = append(out, vm)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Self.Value < out[j].Self.Value })
	return out
}

// snapshotRefs lists the snapshots of a snapshot tree, parents first.
func snapshotRefs(tree []types.VirtualMachineSnapshotTree) []types.ManagedObjectReference {
	var out []types.ManagedObjectReference
	for _, n := range tree {
		out = append(out, n.Snapshot)
		out = append(out, snapshotRefs(n.ChildSnapshotList)...)
	}
	return out
}

// snapshotsOf lists a VM's snapshot objects.
func snapshotsOf(vm *simulator.VirtualMachine) []*simulator.VirtualMachineSnapshot {
	if vm.Snapshot == nil {
		return nil
	}
	var out []*simulator.VirtualMachineSnapshot
	for _, ref := range snapshotRefs(vm.Snapshot.RootSnapshotList) {
		if snap, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot); ok {
			out = append(out, snap)
		}
	}
	return out
}

// chainRef is one disk chain: a VM's current disk, or a disk in the config
// of one of its snapshots (Snapshot set).
type chainRef struct {
	VM       *simulator.VirtualMachine
	Snapshot *simulator.VirtualMachineSnapshot
	Disk     *types.VirtualDisk
}

// Backing is the top of the chain.
func (c chainRef) Backing() *types.VirtualDiskFlatVer2BackingInfo { return flatBacking(c.Disk) }

// vmChains lists a VM's current disk chains, then those of its snapshots.
func vmChains(vm *simulator.VirtualMachine) []chainRef {
	var out []chainRef
	if vm.Config != nil {
		for _, d := range disksOf(vm.Config.Hardware.Device) {
			out = append(out, chainRef{VM: vm, Disk: d})
		}
	}
	for _, snap := range snapshotsOf(vm) {
		for _, d := range disksOf(snap.Config.Hardware.Device) {
			out = append(out, chainRef{VM: vm, Snapshot: snap, Disk: d})
		}
	}
	return out
}

// fileUser is one use of a disk file: by a VM's current disk or by a disk
// in one of its snapshots, at the top of that chain or below it.
type fileUser struct {
	VM       types.ManagedObjectReference
	VMName   string
	Snapshot string // snapshot moref value, "" for the current disk
	Disk     int32  // device key
	Top      bool   // the file is the top of this chain (written to)
}

// fileUsersIndex maps every descriptor path in every chain of every VM to
// its users.
func fileUsersIndex() map[string][]fileUser {
	idx := map[string][]fileUser{}
	for _, vm := range allVMs() {
		for _, c := range vmChains(vm) {
			u := fileUser{VM: vm.Self, VMName: vm.Name, Disk: c.Disk.Key}
			if c.Snapshot != nil {
				u.Snapshot = c.Snapshot.Self.Value
			}
			for i, p := range chainPaths(c.Backing()) {
				u.Top = i == 0
				idx[p] = append(idx[p], u)
			}
		}
	}
	return idx
}

// fileUsers lists who uses a disk file (descriptor path, e.g.
// "[ds] vol/vol.vmdk", or its data file path) across all VMs and snapshots.
func fileUsers(p string) []fileUser {
	return fileUsersIndex()[descriptorOf(p)]
}

// otherUsers lists the users of a disk file other than the given VM.
func otherUsers(p string, vm types.ManagedObjectReference) []fileUser {
	var out []fileUser
	for _, u := range fileUsers(p) {
		if u.VM != vm {
			out = append(out, u)
		}
	}
	return out
}

// fileLocked is the fault for a file another VM uses.
func fileLocked(p string, users []fileUser) *types.FileLocked {
	f := &types.FileLocked{FileFault: types.FileFault{File: p}}
	if len(users) > 0 {
		what := "disk " + fmt.Sprint(users[0].Disk)
		if users[0].Snapshot != "" {
			what = "snapshot " + users[0].Snapshot + " " + what
		}
		f.FaultMessage = []types.LocalizableMessage{{
			Key:     "vmdk_snap.fileLocked",
			Message: fmt.Sprintf("Unable to access file %s since it is locked: used by %s (%s, %s)", p, users[0].VMName, users[0].VM.Value, what),
		}}
	}
	return f
}

// ---------------------------------------------------------------------------
// Deep copies and path rewriting

// deepCopy copies a value, following pointers, slices, maps and interfaces,
// so a snapshot's config or a chain never shares nodes with another.
func deepCopy(v interface{}) interface{} {
	if v == nil {
		return nil
	}
	return copyValue(reflect.ValueOf(v)).Interface()
}

func copyValue(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Ptr:
		if v.IsNil() {
			return v
		}
		n := reflect.New(v.Elem().Type())
		n.Elem().Set(copyValue(v.Elem()))
		return n
	case reflect.Interface:
		if v.IsNil() {
			return v
		}
		n := reflect.New(v.Type()).Elem()
		n.Set(copyValue(v.Elem()))
		return n
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		n := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := 0; i < v.Len(); i++ {
			n.Index(i).Set(copyValue(v.Index(i)))
		}
		return n
	case reflect.Map:
		if v.IsNil() {
			return v
		}
		n := reflect.MakeMapWithSize(v.Type(), v.Len())
		for _, k := range v.MapKeys() {
			n.SetMapIndex(k, copyValue(v.MapIndex(k)))
		}
		return n
	case reflect.Struct:
		n := reflect.New(v.Type()).Elem()
		n.Set(v) // unexported fields (time.Time) are copied shallowly
		for i := 0; i < v.NumField(); i++ {
			if n.Field(i).CanSet() {
				n.Field(i).Set(copyValue(v.Field(i)))
			}
		}
		return n
	default:
		return v
	}
}

// copyBacking deep-copies a backing and its parents.
func copyBacking(b *types.VirtualDiskFlatVer2BackingInfo) *types.VirtualDiskFlatVer2BackingInfo {
	if b == nil {
		return nil
	}
	return deepCopy(b).(*types.VirtualDiskFlatVer2BackingInfo)
}

// copyDevices deep-copies a device list.
func copyDevices(devices []types.BaseVirtualDevice) []types.BaseVirtualDevice {
	if devices == nil {
		return nil
	}
	return deepCopy(devices).([]types.BaseVirtualDevice)
}

// rewriteChain replaces file names in a chain by moved[old] and points
// each moved node's datastore at its new datastore. It reports whether
// anything changed.
func rewriteChain(b *types.VirtualDiskFlatVer2BackingInfo, moved map[string]string) bool {
	changed := false
	for _, n := range chainOf(b) {
		if to, ok := moved[n.FileName]; ok && to != n.FileName {
			n.FileName = to
			if ds := datastoreByName(dsOfPath(to)); ds != nil {
				ref := ds.Self
				n.Datastore = &ref
			}
			changed = true
		}
	}
	return changed
}

// ---------------------------------------------------------------------------
// Descriptor and data files

var deltaRE = regexp.MustCompile(`-\d{6}$`)

// diskBaseName is the disk's name without directory, ".vmdk" or delta
// number: "[ds] d/vol-000002.vmdk" -> "vol".
func diskBaseName(p string) string {
	_, rel, _ := splitDSPath(p)
	name := strings.TrimSuffix(path.Base(rel), ".vmdk")
	return deltaRE.ReplaceAllString(name, "")
}

// isDelta reports whether a descriptor path names a delta disk.
func isDelta(p string) bool {
	_, rel, _ := splitDSPath(p)
	return deltaRE.MatchString(strings.TrimSuffix(path.Base(rel), ".vmdk"))
}

// descriptorOf maps a data file path to its descriptor path (and leaves a
// descriptor path as it is).
func descriptorOf(p string) string {
	switch {
	case strings.HasSuffix(p, "-flat.vmdk"):
		return strings.TrimSuffix(p, "-flat.vmdk") + ".vmdk"
	case strings.HasSuffix(p, "-delta.vmdk"):
		return strings.TrimSuffix(p, "-delta.vmdk") + ".vmdk"
	}
	return p
}

// descriptor is the part of a VMDK descriptor this model uses.
type descriptor struct {
	CreateType string // "vmfs" (base, flat extent) or "vmfsSparse" (delta)
	Parent     string // parentFileNameHint: the parent's datastore path
	Extent     string // data file name, relative to the descriptor's directory
	SizeKB     int64
}

// defaultDescriptor is what a descriptor path implies by its name, used
// for files the stock simulator created empty.
func defaultDescriptor(p string) descriptor {
	_, rel, _ := splitDSPath(p)
	name := strings.TrimSuffix(path.Base(rel), ".vmdk")
	if isDelta(p) {
		return descriptor{CreateType: "vmfsSparse", Extent: name + "-delta.vmdk"}
	}
	return descriptor{CreateType: "vmfs", Extent: name + "-flat.vmdk"}
}

var (
	descCreateRE = regexp.MustCompile(`(?m)^createType="([^"]*)"`)
	descParentRE = regexp.MustCompile(`(?m)^parentFileNameHint="([^"]*)"`)
	descExtentRE = regexp.MustCompile(`(?m)^RW (\d+) \w+ "([^"]*)"`)
)

// readDescriptor reads a descriptor file; an empty or missing one gives the
// defaults its name implies (err only when the file is missing).
func (s *sim) readDescriptor(p string) (descriptor, error) {
	d := defaultDescriptor(p)
	lp, err := s.localPath(p)
	if err != nil {
		return d, err
	}
	text, err := os.ReadFile(lp)
	if err != nil {
		return d, err
	}
	if m := descCreateRE.FindSubmatch(text); m != nil {
		d.CreateType = string(m[1])
	}
	if m := descParentRE.FindSubmatch(text); m != nil {
		d.Parent = string(m[1])
	}
	if m := descExtentRE.FindSubmatch(text); m != nil {
		fmt.Sscan(string(m[1]), &d.SizeKB)
		d.SizeKB /= 2
		d.Extent = string(m[2])
	}
	return d, nil
}

// writeDescriptor writes real descriptor text.
func (s *sim) writeDescriptor(p string, d descriptor) error {
	lp, err := s.localPath(p)
	if err != nil {
		return err
	}
	parentCID := "ffffffff"
	extentType := "VMFS"
	if d.CreateType == "vmfsSparse" {
		extentType = "VMFSSPARSE"
		parentCID = fmt.Sprintf("%08x", hashString(d.Parent))
	}
	var b strings.Builder
	b.WriteString("# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\n")
	fmt.Fprintf(&b, "CID=%08x\nparentCID=%s\n", hashString(p), parentCID)
	fmt.Fprintf(&b, "createType=\"%s\"\n", d.CreateType)
	if d.Parent != "" {
		fmt.Fprintf(&b, "parentFileNameHint=\"%s\"\n", d.Parent)
	}
	b.WriteString("\n# Extent description\n")
	fmt.Fprintf(&b, "RW %d %s \"%s\"\n", d.SizeKB*2, extentType, d.Extent)
	b.WriteString("\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\nddb.virtualHWVersion = \"13\"\n")
	if err := os.MkdirAll(filepath.Dir(lp), 0o755); err != nil {
		return err
	}
	return os.WriteFile(lp, []byte(b.String()), 0o644)
}

func hashString(s string) uint32 {
	var h uint32 = 2166136261
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// dataFile is the datastore path of a descriptor's data file.
func (s *sim) dataFile(p string) string {
	d, _ := s.readDescriptor(p)
	return dsJoin(dsDir(p), d.Extent)
}

// diskFiles lists the descriptor and data file of a disk file.
func (s *sim) diskFiles(p string) []string {
	p = descriptorOf(p)
	return []string{p, s.dataFile(p)}
}

// readTokens reads the tokens of one data file (not its parents).
func (s *sim) readTokens(dataPath string) ([]string, error) {
	lp, err := s.localPath(dataPath)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(lp)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tokens := []string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if t, _ := splitToken(sc.Text()); t != "" {
			tokens = append(tokens, t)
		}
	}
	return tokens, sc.Err()
}

// A line of a data file is a token, optionally followed by a tab and the
// number of bytes of guest data it stands for ("db-load\t10737418240": a
// guest that wrote 10 GiB). A plain token stands for its own line's bytes.

// splitToken splits a data file line into its token and the bytes it
// stands for.
func splitToken(line string) (string, int64) {
	token, size, sized := strings.Cut(strings.TrimSpace(line), "\t")
	token = strings.TrimSpace(token)
	if token == "" {
		return "", 0
	}
	if sized {
		var n int64
		if _, err := fmt.Sscan(size, &n); err == nil && n >= 0 {
			return token, n
		}
	}
	return token, int64(len(line)) + 1
}

// dataBytes is the guest data a data file holds: what a copy of it copies.
func (s *sim) dataBytes(dataPath string) int64 {
	lp, err := s.localPath(dataPath)
	if err != nil {
		return 0
	}
	f, err := os.Open(lp)
	if err != nil {
		return 0
	}
	defer f.Close()
	var total int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		_, n := splitToken(sc.Text())
		total += n
	}
	return total
}

// appendTokens appends tokens to a data file.
func (s *sim) appendTokens(dataPath string, tokens ...string) error {
	lp, err := s.localPath(dataPath)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(lp, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	for _, t := range tokens {
		if _, err := fmt.Fprintln(f, t); err != nil {
			_ = f.Close()
			return err
		}
	}
	return f.Close()
}

// createDisk writes a new disk file (descriptor and empty data file);
// parent is "" for a base disk.
func (s *sim) createDisk(p, parent string, sizeKB int64) error {
	d := defaultDescriptor(p)
	if parent != "" {
		d.CreateType = "vmfsSparse"
		d.Parent = parent
	}
	d.SizeKB = sizeKB
	if err := s.writeDescriptor(p, d); err != nil {
		return err
	}
	lp, err := s.localPath(dsJoin(dsDir(p), d.Extent))
	if err != nil {
		return err
	}
	return os.WriteFile(lp, nil, 0o644)
}

// deleteDiskFiles removes a disk file's descriptor and data file.
func (s *sim) deleteDiskFiles(p string) error {
	for _, f := range s.diskFiles(p) {
		lp, err := s.localPath(f)
		if err != nil {
			return err
		}
		if err := os.Remove(lp); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

// copyFile copies one file between datastore paths, returning its size.
func (s *sim) copyFile(src, dst string) (int64, error) {
	ls, err := s.localPath(src)
	if err != nil {
		return 0, err
	}
	ld, err := s.localPath(dst)
	if err != nil {
		return 0, err
	}
	data, err := os.ReadFile(ls)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Dir(ld), 0o755); err != nil {
		return 0, err
	}
	return int64(len(data)), os.WriteFile(ld, data, 0o644)
}

// copyDisk copies a disk file (descriptor and data) to dst, whose parent
// hint becomes parent. It returns the bytes of guest data copied.
func (s *sim) copyDisk(src, dst, parent string) (int64, error) {
	d, err := s.readDescriptor(src)
	if err != nil {
		return 0, err
	}
	srcData := dsJoin(dsDir(src), d.Extent)
	nd := defaultDescriptor(dst)
	nd.SizeKB = d.SizeKB
	if d.CreateType == "vmfsSparse" || parent != "" {
		nd.CreateType = "vmfsSparse"
		nd.Parent = parent
	}
	if _, err := s.copyFile(srcData, dsJoin(dsDir(dst), nd.Extent)); err != nil {
		return 0, err
	}
	return s.dataBytes(srcData), s.writeDescriptor(dst, nd)
}

// publishDevices sets a VM's devices and tells property collectors, with
// layout.disk (each disk's chain, top first) kept in step. The caller holds
// the VM's lock.
func publishDevices(vm *simulator.VirtualMachine, devices []types.BaseVirtualDevice) {
	vm.Config.Hardware.Device = devices
	layout := []types.VirtualMachineFileLayoutDiskLayout{}
	for _, d := range disksOf(devices) {
		layout = append(layout, types.VirtualMachineFileLayoutDiskLayout{Key: d.Key, DiskFile: chainPaths(flatBacking(d))})
	}
	changes := []types.PropertyChange{{Name: "config.hardware.device", Val: devices}}
	if vm.Layout != nil {
		changes = append(changes, types.PropertyChange{Name: "layout.disk", Val: layout})
	}
	simulator.Map.Update(vm, changes)
}
