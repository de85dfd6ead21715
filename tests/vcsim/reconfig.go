package main

// ReconfigVM_Task with disk chains, as vCenter does it:
//   - add with no fileOperation attaches an existing VMDK: its descriptor and
//     data file must exist (FileNotFound), and so must every parent named by
//     the descriptors' parentFileNameHint; the backing's parent chain is
//     rebuilt from them;
//   - add with fileOperation=create makes a new base disk;
//   - a controller unit already in use is refused (InvalidDeviceSpec);
//   - remove with no fileOperation detaches and keeps the files, and is
//     refused (InvalidDeviceSpec) when the disk's file or one of its parents
//     is part of one of this VM's snapshots;
//   - remove with fileOperation=destroy deletes the disk's files that no other
//     chain uses, and is refused with FileLocked when another VM (or one of
//     this VM's snapshots) uses the top file;
//   - every change of a spec is checked before any is applied: they apply
//     together or not at all; extraConfig, name and annotation of the same
//     spec are applied with them.
//
// Specs with anything else (other device types, edits, CPU, memory…) go to
// the stock handler unchanged.

import (
	"fmt"
	"path"
	"reflect"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	interceptors["ReconfigVM_Task"] = reconfigVM
}

// reconfigOwnFields are the ConfigSpec fields this model applies.
var reconfigOwnFields = map[string]bool{
	"DeviceChange": true, "ExtraConfig": true, "Name": true, "Annotation": true, "ChangeVersion": true,
}

// modelledSpec reports whether this model handles the whole spec.
func modelledSpec(spec *types.VirtualMachineConfigSpec) bool {
	v := reflect.ValueOf(spec).Elem()
	for i := 0; i < v.NumField(); i++ {
		if !reconfigOwnFields[v.Type().Field(i).Name] && !v.Field(i).IsZero() {
			return false
		}
	}
	for _, c := range spec.DeviceChange {
		ds := c.GetVirtualDeviceConfigSpec()
		disk, ok := ds.Device.(*types.VirtualDisk)
		if !ok {
			return false
		}
		switch ds.Operation {
		case types.VirtualDeviceConfigSpecOperationAdd:
			if flatBacking(disk) == nil {
				return false
			}
			if ds.FileOperation != "" && ds.FileOperation != types.VirtualDeviceConfigSpecFileOperationCreate {
				return false
			}
		case types.VirtualDeviceConfigSpecOperationRemove:
		default:
			return false
		}
	}
	return true
}

func reconfigVM(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	vm, fault := vmOf(call.This)
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}
	req := call.Body.(*types.ReconfigVM_Task)
	if !modelledSpec(&req.Spec) {
		return types.ManagedObjectReference{}, &passThrough{}
	}
	spec := req.Spec
	return s.startTask(vm.Self, call.Name, 0, func() (types.AnyType, types.BaseMethodFault) {
		var plan *reconfigPlan
		var fault types.BaseMethodFault
		simulator.Map.WithLock(vm, func() {
			plan, fault = s.planReconfig(vm, &spec)
		})
		if fault != nil {
			return nil, fault
		}
		return nil, s.applyReconfig(vm, &spec, plan)
	}), nil
}

// reconfigPlan is a checked spec: the new device list, new disk files to
// create and files to delete.
type reconfigPlan struct {
	devices []types.BaseVirtualDevice
	create  []newDiskFile
	destroy []string // descriptor paths
}

type newDiskFile struct {
	path   string
	sizeKB int64
}

// maxUnits is how many units a controller has (unit 7 of SCSI is its own).
func maxUnits(c types.BaseVirtualController) int32 {
	switch c.(type) {
	case types.BaseVirtualSCSIController:
		return 16
	case *types.VirtualIDEController:
		return 2
	case types.BaseVirtualSATAController:
		return 30
	case *types.VirtualNVMEController:
		return 15
	}
	return 16
}

// reservedUnit: the SCSI controller's own unit. vCenter sets
// scsiCtlrUnitNumber to 7 when a controller is added without one (Cinder's
// backings are made so); the stock simulator leaves it 0, which in Go we
// cannot tell from unset, so 0 is read as 7.
func reservedUnit(c types.BaseVirtualController, unit int32) bool {
	if scsi, ok := c.(types.BaseVirtualSCSIController); ok {
		own := scsi.GetVirtualSCSIController().ScsiCtlrUnitNumber
		if own == 0 {
			own = 7
		}
		return unit == own
	}
	return false
}

func invalidDevice(i int, msg string) types.BaseMethodFault {
	f := &types.InvalidDeviceSpec{DeviceIndex: int32(i)}
	f.FaultMessage = []types.LocalizableMessage{{Key: "vmdk_snap.invalidDeviceSpec", Message: msg}}
	return f
}

func fileNotFound(p, msg string) types.BaseMethodFault {
	f := &types.FileNotFound{FileFault: types.FileFault{File: p}}
	f.FaultMessage = []types.LocalizableMessage{{Key: "vmdk_snap.fileNotFound", Message: msg}}
	return f
}

// planReconfig checks every device change against the VM's current devices
// and the files on the datastores, without changing anything.
func (s *sim) planReconfig(vm *simulator.VirtualMachine, spec *types.VirtualMachineConfigSpec) (*reconfigPlan, types.BaseMethodFault) {
	plan := &reconfigPlan{devices: copyDevices(vm.Config.Hardware.Device)}
	byKey := func(key int32) (int, types.BaseVirtualDevice) {
		for i, d := range plan.devices {
			if d.GetVirtualDevice().Key == key {
				return i, d
			}
		}
		return -1, nil
	}
	// Removals first, so that a spec may free a unit and reuse it.
	removed := map[string]bool{}
	for i, c := range spec.DeviceChange {
		ds := c.GetVirtualDeviceConfigSpec()
		if ds.Operation != types.VirtualDeviceConfigSpecOperationRemove {
			continue
		}
		key := ds.Device.GetVirtualDevice().Key
		at, dev := byKey(key)
		disk, ok := dev.(*types.VirtualDisk)
		if at < 0 || !ok || flatBacking(disk) == nil {
			return nil, invalidDevice(i, fmt.Sprintf("deviceChange[%d]: VM %s has no disk with key %d", i, vm.Name, key))
		}
		plan.devices = append(plan.devices[:at], plan.devices[at+1:]...)
		if _, ctl := byKey(disk.ControllerKey); ctl != nil {
			c := ctl.(types.BaseVirtualController).GetVirtualController()
			c.Device = removeKey(c.Device, key)
		}
		chain := chainPaths(flatBacking(disk))
		if ds.FileOperation != types.VirtualDeviceConfigSpecFileOperationDestroy {
			if snap, held := ownSnapshotHolding(chain, vm.Self); snap != "" {
				return nil, invalidDevice(i, fmt.Sprintf("Cannot remove virtual disk %s from the virtual "+
					"machine because it or one of its parent disks is part of a snapshot of the virtual machine "+
					"(%s holds %s); remove it with fileOperation=destroy or remove the snapshot first",
					chain[0], snap, held))
			}
			continue
		}
		if users := s.otherChainUsers(chain[0], vm.Self, key); len(users) > 0 {
			return nil, fileLocked(chain[0], users)
		}
		for _, p := range chain {
			if len(s.otherChainUsers(p, vm.Self, key)) > 0 || removed[p] {
				break // its parents are shared too
			}
			removed[p] = true
			plan.destroy = append(plan.destroy, p)
		}
	}
	for i, c := range spec.DeviceChange {
		ds := c.GetVirtualDeviceConfigSpec()
		if ds.Operation != types.VirtualDeviceConfigSpecOperationAdd {
			continue
		}
		disk := deepCopy(ds.Device).(*types.VirtualDisk)
		if fault := s.planAdd(vm, plan, i, disk, ds.FileOperation, byKey); fault != nil {
			return nil, fault
		}
		plan.devices = append(plan.devices, disk)
	}
	return plan, nil
}

// otherChainUsers lists the users of a disk file other than the given disk
// of the VM's current configuration: other VMs, and this VM's snapshots.
func (s *sim) otherChainUsers(p string, vm types.ManagedObjectReference, key int32) []fileUser {
	var out []fileUser
	for _, u := range fileUsers(p) {
		if u.VM == vm && u.Snapshot == "" && u.Disk == key {
			continue
		}
		out = append(out, u)
	}
	return out
}

// ownSnapshotHolding names the VM's snapshot that uses a file of chain, and
// that file ("", "" if none).
func ownSnapshotHolding(chain []string, vm types.ManagedObjectReference) (string, string) {
	for _, p := range chain {
		for _, u := range fileUsers(p) {
			if u.VM == vm && u.Snapshot != "" {
				return u.Snapshot, p
			}
		}
	}
	return "", ""
}

func removeKey(keys []int32, key int32) []int32 {
	out := keys[:0]
	for _, k := range keys {
		if k != key {
			out = append(out, k)
		}
	}
	return out
}

// planAdd checks one added disk and completes it: key, unit, backing chain.
func (s *sim) planAdd(vm *simulator.VirtualMachine, plan *reconfigPlan, i int, disk *types.VirtualDisk,
	fileOp types.VirtualDeviceConfigSpecFileOperation, byKey func(int32) (int, types.BaseVirtualDevice)) types.BaseMethodFault {
	d := disk.GetVirtualDevice()
	_, ctlDev := byKey(d.ControllerKey)
	ctl, ok := ctlDev.(types.BaseVirtualController)
	if !ok {
		return invalidDevice(i, fmt.Sprintf("deviceChange[%d]: VM %s has no controller with key %d", i, vm.Name, d.ControllerKey))
	}
	used := map[int32]bool{}
	for _, other := range plan.devices {
		o := other.GetVirtualDevice()
		if o.ControllerKey == d.ControllerKey && o.UnitNumber != nil {
			used[*o.UnitNumber] = true
		}
	}
	if d.UnitNumber == nil {
		for u := int32(0); u < maxUnits(ctl); u++ {
			if !used[u] && !reservedUnit(ctl, u) {
				unit := u
				d.UnitNumber = &unit
				break
			}
		}
		if d.UnitNumber == nil {
			return invalidDevice(i, fmt.Sprintf("deviceChange[%d]: controller %d of VM %s has no free unit", i, d.ControllerKey, vm.Name))
		}
	}
	unit := *d.UnitNumber
	switch {
	case unit < 0 || unit >= maxUnits(ctl) || reservedUnit(ctl, unit):
		return invalidDevice(i, fmt.Sprintf("deviceChange[%d]: unit %d is not a disk unit of controller %d", i, unit, d.ControllerKey))
	case used[unit]:
		return invalidDevice(i, fmt.Sprintf("deviceChange[%d]: unit %d of controller %d of VM %s is already in use", i, unit, d.ControllerKey, vm.Name))
	}
	// A new key unless the given one is free (vCenter numbers disks from 2000).
	if _, taken := byKey(d.Key); d.Key <= 0 || taken != nil {
		d.Key = 2000
		for {
			if _, t := byKey(d.Key); t == nil {
				break
			}
			d.Key++
		}
	}
	ctl.GetVirtualController().Device = append(ctl.GetVirtualController().Device, d.Key)

	b := flatBacking(disk)
	if b.DiskMode == "" {
		b.DiskMode = string(types.VirtualDiskModePersistent)
	}
	for _, p := range []**bool{&b.ThinProvisioned, &b.EagerlyScrub, &b.WriteThrough, &b.Split, &b.DigestEnabled} {
		if *p == nil {
			*p = types.NewBool(false)
		}
	}
	if fileOp == types.VirtualDeviceConfigSpecFileOperationCreate {
		return s.planCreate(vm, plan, i, disk, b)
	}
	return s.planAttach(vm, i, disk, b)
}

// planCreate names and sizes a new base disk.
func (s *sim) planCreate(vm *simulator.VirtualMachine, plan *reconfigPlan, i int, disk *types.VirtualDisk,
	b *types.VirtualDiskFlatVer2BackingInfo) types.BaseMethodFault {
	p := b.FileName
	if _, rel, _ := splitDSPath(p); rel == "" {
		dir := vmHome(vm)
		if ds := dsOfPath(p); ds != "" && ds != dsOfPath(dir) {
			dir = dsPath(ds, vm.Name)
		}
		for n := 0; ; n++ {
			name := vm.Name + ".vmdk"
			if n > 0 {
				name = fmt.Sprintf("%s_%d.vmdk", vm.Name, n)
			}
			p = dsJoin(dir, name)
			if !s.exists(p) && !planned(plan, p) {
				break
			}
		}
	}
	if datastoreByName(dsOfPath(p)) == nil {
		return invalidDevice(i, fmt.Sprintf("deviceChange[%d]: no datastore %q for %s", i, dsOfPath(p), p))
	}
	if s.exists(p) || planned(plan, p) {
		f := &types.FileAlreadyExists{FileFault: types.FileFault{File: p}}
		return f
	}
	sizeKB := disk.CapacityInKB
	if sizeKB == 0 {
		sizeKB = disk.CapacityInBytes / 1024
	}
	b.FileName = p
	b.Parent = nil
	setBackingDatastore(b)
	if b.Uuid == "" {
		b.Uuid = stableUUID("disk", p)
	}
	disk.CapacityInKB, disk.CapacityInBytes = sizeKB, sizeKB*1024
	plan.create = append(plan.create, newDiskFile{path: p, sizeKB: sizeKB})
	return nil
}

func planned(plan *reconfigPlan, p string) bool {
	for _, c := range plan.create {
		if c.path == p {
			return true
		}
	}
	return false
}

func setBackingDatastore(b *types.VirtualDiskFlatVer2BackingInfo) {
	if ds := datastoreByName(dsOfPath(b.FileName)); ds != nil {
		ref := ds.Self
		b.Datastore = &ref
	}
}

// planAttach checks that an existing VMDK and its parents exist and
// rebuilds the backing's parent chain from the descriptors.
func (s *sim) planAttach(vm *simulator.VirtualMachine, i int, disk *types.VirtualDisk,
	b *types.VirtualDiskFlatVer2BackingInfo) types.BaseMethodFault {
	p := b.FileName
	if _, rel, ok := splitDSPath(p); !ok || rel == "" || path.Ext(rel) != ".vmdk" {
		return invalidDevice(i, fmt.Sprintf("deviceChange[%d]: backing.fileName %q is not a VMDK path; "+
			"give \"[datastore] dir/name.vmdk\" or fileOperation=create", i, p))
	}
	if strings.HasSuffix(p, "-flat.vmdk") || strings.HasSuffix(p, "-delta.vmdk") {
		return invalidDevice(i, fmt.Sprintf("deviceChange[%d]: %s is a data file; attach its descriptor %s", i, p, descriptorOf(p)))
	}
	// Each node keeps what the client gave for the top; parents take the
	// top's disk mode, as vCenter reports them.
	node := b
	seen := map[string]bool{}
	for {
		if seen[node.FileName] {
			return fileNotFound(node.FileName, fmt.Sprintf("%s: the chain of %s loops", node.FileName, p))
		}
		seen[node.FileName] = true
		if !s.exists(node.FileName) {
			return fileNotFound(node.FileName, fmt.Sprintf("File %s was not found", node.FileName))
		}
		desc, _ := s.readDescriptor(node.FileName)
		if data := dsJoin(dsDir(node.FileName), desc.Extent); !s.exists(data) {
			return fileNotFound(data, fmt.Sprintf("File %s (the data of %s) was not found", data, node.FileName))
		}
		setBackingDatastore(node)
		if node.Uuid == "" {
			node.Uuid = s.diskUUID(node.FileName)
		}
		if desc.Parent == "" {
			node.Parent = nil
			if disk.CapacityInKB == 0 && desc.SizeKB > 0 {
				disk.CapacityInKB = desc.SizeKB
			}
			break
		}
		parent := desc.Parent
		if !strings.HasPrefix(parent, "[") {
			// ESX writes a parent in the same directory by its bare name.
			parent = dsJoin(dsDir(node.FileName), parent)
		}
		node.Parent = &types.VirtualDiskFlatVer2BackingInfo{
			VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: parent},
			DiskMode:                     b.DiskMode,
			ThinProvisioned:              types.NewBool(false),
		}
		node = node.Parent
	}
	if disk.CapacityInBytes == 0 {
		disk.CapacityInBytes = disk.CapacityInKB * 1024
	}
	if disk.CapacityInKB == 0 {
		disk.CapacityInKB = disk.CapacityInBytes / 1024
	}
	// A powered-on VM cannot open a file another running VM has open.
	if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
		for _, u := range fileUsers(p) {
			if u.Snapshot != "" || u.VM == vm.Self {
				continue
			}
			if other, ok := simulator.Map.Get(u.VM).(*simulator.VirtualMachine); ok &&
				other.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
				return fileLocked(p, []fileUser{u})
			}
		}
	}
	return nil
}

// diskUUID is the uuid a VMDK reports: that of a chain it tops already, or
// one derived from its path.
func (s *sim) diskUUID(p string) string {
	for _, vm := range allVMs() {
		for _, c := range vmChains(vm) {
			for _, n := range chainOf(c.Backing()) {
				if n.FileName == p && n.Uuid != "" {
					return n.Uuid
				}
			}
		}
	}
	return stableUUID("disk", p)
}

// applyReconfig makes the planned changes: files first (a failure there
// leaves the VM as it was), then the VM's configuration.
func (s *sim) applyReconfig(vm *simulator.VirtualMachine, spec *types.VirtualMachineConfigSpec, plan *reconfigPlan) types.BaseMethodFault {
	for j, c := range plan.create {
		if err := s.createDisk(c.path, "", c.sizeKB); err != nil {
			for _, done := range plan.create[:j] {
				_ = s.deleteDiskFiles(done.path)
			}
			return &types.CannotCreateFile{FileFault: types.FileFault{File: c.path}}
		}
	}
	var fault types.BaseMethodFault
	simulator.Map.WithLock(vm, func() {
		publishDevices(vm, plan.devices)
		changes := []types.PropertyChange{
			{Name: "summary.config.numVirtualDisks", Val: int32(len(disksOf(plan.devices)))},
		}
		if dss := vmDatastores(vm, plan.devices); dss != nil {
			changes = append(changes, types.PropertyChange{Name: "datastore", Val: dss})
		}
		if len(spec.ExtraConfig) > 0 {
			changes = append(changes, types.PropertyChange{Name: "config.extraConfig", Val: mergeExtraConfig(vm.Config.ExtraConfig, spec.ExtraConfig)})
		}
		if spec.Name != "" {
			changes = append(changes,
				types.PropertyChange{Name: "name", Val: spec.Name},
				types.PropertyChange{Name: "config.name", Val: spec.Name},
				types.PropertyChange{Name: "summary.config.name", Val: spec.Name})
		}
		if spec.Annotation != "" {
			changes = append(changes,
				types.PropertyChange{Name: "config.annotation", Val: spec.Annotation},
				types.PropertyChange{Name: "summary.config.annotation", Val: spec.Annotation})
		}
		simulator.Map.Update(vm, changes)
	})
	// Files of destroyed disks go once no chain refers to them any more.
	for _, p := range plan.destroy {
		if err := s.deleteDiskFiles(p); err != nil && fault == nil {
			fault = &types.CannotDeleteFile{FileFault: types.FileFault{File: p}}
		}
	}
	return fault
}

// mergeExtraConfig applies option changes as vCenter does: a key is set or
// replaced, and an empty value removes it.
func mergeExtraConfig(current, changes []types.BaseOptionValue) []types.BaseOptionValue {
	out := make([]types.BaseOptionValue, 0, len(current)+len(changes))
	out = append(out, current...)
	for _, c := range changes {
		opt := c.GetOptionValue()
		at := -1
		for i, o := range out {
			if o.GetOptionValue().Key == opt.Key {
				at = i
				break
			}
		}
		empty := opt.Value == nil || opt.Value == ""
		switch {
		case at >= 0 && empty:
			out = append(out[:at], out[at+1:]...)
		case at >= 0:
			out[at] = &types.OptionValue{Key: opt.Key, Value: opt.Value}
		case !empty:
			out = append(out, &types.OptionValue{Key: opt.Key, Value: opt.Value})
		}
	}
	return out
}

// vmDatastores adds the datastores of the devices' files to the VM's list;
// nil when nothing is new.
func vmDatastores(vm *simulator.VirtualMachine, devices []types.BaseVirtualDevice) []types.ManagedObjectReference {
	have := map[types.ManagedObjectReference]bool{}
	for _, ref := range vm.Datastore {
		have[ref] = true
	}
	out := append([]types.ManagedObjectReference{}, vm.Datastore...)
	for _, d := range disksOf(devices) {
		for _, n := range chainOf(flatBacking(d)) {
			if n.Datastore != nil && !have[*n.Datastore] {
				have[*n.Datastore] = true
				out = append(out, *n.Datastore)
			}
		}
	}
	if len(out) == len(vm.Datastore) {
		return nil
	}
	return out
}
