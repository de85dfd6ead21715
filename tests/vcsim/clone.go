package main

// VirtualMachine.CloneVM_Task on the disk model. The stock simulator's
// clone rewrites the source VM's disk backings (it clears their file names
// in place), ignores diskMoveType and the snapshot, creates empty disks and
// panics when the relocate spec names another host. Cinder's driver clones
// backings for template snapshots, volumes from snapshots (full and
// linked), cloned volumes and, for an attached volume, the instance with
// every other disk removed; so a clone here is modelled as vCenter does it:
//
//   - The source is read, never changed: from spec.snapshot's disks when
//     given (a snapshot of the source, else InvalidArgument), else from its
//     current disks (a running source is cloned as it runs).
//   - Full clone (diskMoveType moveAllDiskBackingsAndDisallowSharing, the
//     default, or moveAllDiskBackingsAndAllowSharing): each disk's chain is
//     consolidated into one new flat disk in the clone's directory, holding
//     the chain's data; the bytes are counted in /_ctl/bytes-copied and
//     the task lasts as long as the copy rate says (tasks.go). A chain file
//     another running VM writes (its exclusive top) cannot be read:
//     FileLocked, as for a relocation.
//   - Linked clone (createNewChildDiskBacking): a new delta in the clone's
//     directory on the snapshot's disk; nothing is copied. Only from a
//     snapshot (vSphere API: "only valid when cloning from a snapshot"),
//     else InvalidArgument. moveChildMostDiskBacking is not modelled
//     (NotSupported, saying so).
//   - spec.config.deviceChange may remove devices (the clone does not get
//     them; nothing is destroyed); other changes there are not modelled
//     (NotSupported). spec.config.extraConfig is merged over the source's,
//     instanceUuid and managedBy are taken.
//   - spec.location: datastore (the clone's directory "[ds] <name>", or
//     "<name>_1" when taken), per-disk locators (datastore, thin flag),
//     host and pool (default the source's; a template has no pool: then
//     the pool must be given, InvalidArgument). Every datastore the clone
//     uses must be mounted on its host (InvalidArgument).
//   - The name must be new in the folder (DuplicateName); spec.template
//     marks the clone as a template; spec.powerOn powers it on.
//
// The new disks get new UUIDs. A failure removes what the clone created.

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	interceptors["CloneVM_Task"] = cloneVM
	rawInterceptors["MarkAsTemplate"] = markAsTemplate
}

// markAsTemplate: VirtualMachine.MarkAsTemplate. The stock one leaves the
// template in its resource pool's vm list while clearing its pool, so the
// pool still lists it once it is destroyed, and every traversal through
// pools (Cinder's do_setup) then fails with ManagedObjectNotFound. Refused
// as vCenter does: a template already (NotSupported), a VM not powered
// off (InvalidPowerState).
func markAsTemplate(s *sim, call *soapCall) (string, types.BaseMethodFault) {
	vm, fault := vmOf(call.This)
	if fault != nil {
		return "", fault
	}
	s.modelMu.Lock()
	defer s.modelMu.Unlock()
	if vm.Config.Template {
		return "", notModelled("alreadyTemplate", vm.Name+" is already a template")
	}
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		return "", &types.InvalidPowerState{
			RequestedState: types.VirtualMachinePowerStatePoweredOff,
			ExistingState:  vm.Runtime.PowerState,
		}
	}
	markTemplate(vm)
	return "", nil
}

// markTemplate makes a VM a template: out of its resource pool.
func markTemplate(vm *simulator.VirtualMachine) {
	if vm.ResourcePool != nil {
		if pool, ok := simulator.Map.Get(*vm.ResourcePool).(*simulator.ResourcePool); ok {
			simulator.Map.RemoveReference(pool, &pool.Vm, vm.Self)
		}
	}
	simulator.Map.WithLock(vm, func() {
		vm.Config.Template = true
		vm.Summary.Config.Template = true
		vm.ResourcePool = nil
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "config.template", Val: true},
			{Name: "summary.config.template", Val: true},
			{Name: "resourcePool", Val: nil},
		})
	})
}

// cloneDisk is one disk of a clone: the source chain (top first) and the
// file the clone gets.
type cloneDisk struct {
	device *types.VirtualDisk // the clone's device (a copy), backing rewritten at run time
	chain  []string
	dst    string
	linked bool
	thin   *bool
}

// clonePlan is what a CloneVM_Task will do, worked out at call time.
type clonePlan struct {
	src     *simulator.VirtualMachine
	folder  types.ManagedObjectReference
	name    string
	host    *simulator.HostSystem
	pool    types.ManagedObjectReference
	home    string // "[ds] dir"
	devices []types.BaseVirtualDevice
	disks   []*cloneDisk
	bytes   int64
	spec    types.VirtualMachineCloneSpec
}

func cloneVM(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault) {
	req, ok := call.Body.(*types.CloneVM_Task)
	if !ok {
		return types.ManagedObjectReference{}, &types.InvalidRequest{}
	}
	src, fault := vmOf(call.This)
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}
	s.modelMu.Lock()
	plan, fault := s.planClone(src, req)
	s.modelMu.Unlock()
	if fault != nil {
		return types.ManagedObjectReference{}, fault
	}
	return s.startTask(src.Self, call.Name, plan.bytes, func() (types.AnyType, types.BaseMethodFault) {
		// The world may have changed while the task waited: plan again.
		plan, fault := s.planClone(src, req)
		if fault != nil {
			return nil, fault
		}
		return s.clone(plan)
	}), nil
}

// notModelled is a NotSupported fault that says what the model lacks.
func notModelled(key, msg string) types.BaseMethodFault {
	f := &types.NotSupported{}
	f.FaultMessage = []types.LocalizableMessage{{Key: "vmdk_snap." + key, Message: msg}}
	return f
}

// invalidArgument is an InvalidArgument fault with its reason.
func invalidArgument(property, key, msg string) types.BaseMethodFault {
	f := &types.InvalidArgument{InvalidProperty: property}
	f.FaultMessage = []types.LocalizableMessage{{Key: "vmdk_snap." + key, Message: msg}}
	return f
}

// planClone checks a clone request and works out its files. It changes
// nothing. The caller holds modelMu.
func (s *sim) planClone(src *simulator.VirtualMachine, req *types.CloneVM_Task) (*clonePlan, types.BaseMethodFault) {
	spec := req.Spec
	plan := &clonePlan{src: src, folder: req.Folder, name: req.Name, spec: spec}
	folder, ok := simulator.Map.Get(req.Folder).(*simulator.Folder)
	if !ok {
		return nil, &types.ManagedObjectNotFound{Obj: req.Folder}
	}
	if strings.TrimSpace(req.Name) == "" {
		return nil, invalidArgument("name", "cloneName", "a clone needs a name")
	}
	for _, child := range folder.ChildEntity {
		if vm, ok := simulator.Map.Get(child).(*simulator.VirtualMachine); ok && vm.Name == req.Name {
			return nil, &types.DuplicateName{Name: req.Name, Object: vm.Self}
		}
	}

	devices := src.Config.Hardware.Device
	if spec.Snapshot != nil {
		var snap *simulator.VirtualMachineSnapshot
		for _, sn := range snapshotsOf(src) {
			if sn.Self == *spec.Snapshot {
				snap = sn
			}
		}
		if snap == nil {
			return nil, invalidArgument("spec.snapshot", "cloneSnapshot",
				fmt.Sprintf("%s is not a snapshot of %s", spec.Snapshot.Value, src.Name))
		}
		devices = snap.Config.Hardware.Device
	}
	devices = copyDevices(devices)

	// Devices the clone leaves out.
	var changes []types.BaseVirtualDeviceConfigSpec
	changes = append(changes, spec.Location.DeviceChange...)
	if spec.Config != nil {
		changes = append(changes, spec.Config.DeviceChange...)
	}
	for i, c := range changes {
		dc := c.GetVirtualDeviceConfigSpec()
		if dc.Operation != types.VirtualDeviceConfigSpecOperationRemove {
			return nil, notModelled("cloneDeviceChange", fmt.Sprintf(
				"deviceChange[%d]: the model of CloneVM_Task handles only removals (got %q)", i, dc.Operation))
		}
		if dc.FileOperation != "" {
			f := &types.InvalidDeviceSpec{InvalidVmConfig: types.InvalidVmConfig{Property: "deviceChange"}, DeviceIndex: int32(i)}
			f.FaultMessage = []types.LocalizableMessage{{Key: "vmdk_snap.cloneDestroy",
				Message: "a clone cannot destroy the source's files: remove the device without a file operation"}}
			return nil, f
		}
		key := dc.Device.GetVirtualDevice().Key
		at := -1
		for j, d := range devices {
			if d.GetVirtualDevice().Key == key {
				at = j
			}
		}
		if at < 0 {
			f := &types.InvalidDeviceSpec{InvalidVmConfig: types.InvalidVmConfig{Property: "deviceChange"}, DeviceIndex: int32(i)}
			f.FaultMessage = []types.LocalizableMessage{{Key: "vmdk_snap.cloneNoDevice",
				Message: fmt.Sprintf("%s has no device with key %d", src.Name, key)}}
			return nil, f
		}
		devices = append(devices[:at], devices[at+1:]...)
	}
	plan.devices = devices

	// Where the clone runs.
	hostRef := src.Runtime.Host
	if spec.Location.Host != nil {
		hostRef = spec.Location.Host
	}
	if hostRef == nil {
		return nil, invalidArgument("spec.location.host", "cloneHost", "no host for the clone")
	}
	host, ok := simulator.Map.Get(*hostRef).(*simulator.HostSystem)
	if !ok {
		return nil, &types.ManagedObjectNotFound{Obj: *hostRef}
	}
	plan.host = host
	switch {
	case spec.Location.Pool != nil:
		if _, ok := simulator.Map.Get(*spec.Location.Pool).(*simulator.ResourcePool); !ok {
			return nil, &types.ManagedObjectNotFound{Obj: *spec.Location.Pool}
		}
		plan.pool = *spec.Location.Pool
	case src.ResourcePool != nil && !src.Config.Template:
		plan.pool = *src.ResourcePool
	default:
		return nil, invalidArgument("spec.location.pool", "clonePool",
			fmt.Sprintf("%s is a template: a clone of it needs spec.location.pool", src.Name))
	}

	// The clone's directory.
	target, fault := datastoreName(spec.Location.Datastore)
	if fault != nil {
		return nil, fault
	}
	if target == "" {
		target = dsOfPath(vmHome(src))
	}
	dir := req.Name
	for n := 1; s.exists(dsPath(target, dir)); n++ {
		dir = fmt.Sprintf("%s_%d", req.Name, n)
	}
	plan.home = dsPath(target, dir)

	defaultMove := spec.Location.DiskMoveType
	if defaultMove == "" {
		defaultMove = string(types.VirtualMachineRelocateDiskMoveOptionsMoveAllDiskBackingsAndDisallowSharing)
	}
	locators := map[int32]types.VirtualMachineRelocateSpecDiskLocator{}
	for _, loc := range spec.Location.Disk {
		locators[loc.DiskId] = loc
	}
	idx := fileUsersIndex()
	need := map[string]bool{target: true}
	for i, disk := range disksOf(plan.devices) {
		b := flatBacking(disk)
		if b == nil {
			return nil, notModelled("cloneBacking", fmt.Sprintf("disk %d of %s is not a flat VMDK", disk.Key, src.Name))
		}
		cd := &cloneDisk{device: disk, chain: chainPaths(b)}
		moveType, ds := defaultMove, target
		if loc, ok := locators[disk.Key]; ok {
			name, fault := datastoreName(&loc.Datastore)
			if fault != nil {
				return nil, fault
			}
			ds = name
			if loc.DiskMoveType != "" {
				moveType = loc.DiskMoveType
			}
			if fb, ok := loc.DiskBackingInfo.(*types.VirtualDiskFlatVer2BackingInfo); ok && fb.ThinProvisioned != nil {
				cd.thin = fb.ThinProvisioned
			}
		}
		stem := req.Name
		if i > 0 {
			stem = fmt.Sprintf("%s_%d", req.Name, i)
		}
		switch moveType {
		case string(types.VirtualMachineRelocateDiskMoveOptionsMoveAllDiskBackingsAndDisallowSharing),
			string(types.VirtualMachineRelocateDiskMoveOptionsMoveAllDiskBackingsAndAllowSharing):
			cd.dst = dsJoin(dsPath(ds, dir), stem+".vmdk")
			for _, p := range cd.chain {
				for _, u := range idx[p] {
					if u.VM != src.Self && u.Snapshot == "" && u.Top && poweredOn(u.VM) {
						return nil, fileLocked(p, []fileUser{u})
					}
				}
				plan.bytes += s.dataBytes(s.dataFile(p))
			}
		case string(types.VirtualMachineRelocateDiskMoveOptionsCreateNewChildDiskBacking):
			if spec.Snapshot == nil {
				return nil, invalidArgument("spec.location.diskMoveType", "cloneLinked",
					"createNewChildDiskBacking (a linked clone) is only valid when cloning from a snapshot: give spec.snapshot")
			}
			cd.dst = dsJoin(dsPath(ds, dir), stem+"-000001.vmdk")
			cd.linked = true
			for _, p := range cd.chain {
				need[dsOfPath(p)] = true
			}
		default:
			return nil, notModelled("cloneMoveType", fmt.Sprintf("diskMoveType %q is not modelled by CloneVM_Task here", moveType))
		}
		need[ds] = true
		plan.disks = append(plan.disks, cd)
	}

	visible := map[string]bool{}
	for _, ref := range host.Datastore {
		if ds, ok := simulator.Map.Get(ref).(*simulator.Datastore); ok {
			visible[ds.Name] = true
		}
	}
	for ds := range need {
		if !visible[ds] {
			return nil, invalidArgument("spec.location.host", "datastoreNotVisible", fmt.Sprintf(
				"Host %s cannot access datastore %s, which the clone %s would use; choose a host that mounts it or another datastore.",
				host.Name, ds, req.Name))
		}
	}
	return plan, nil
}

// flatten writes the data of a chain (top first) into one base disk dst.
func (s *sim) flatten(chain []string, dst string, sizeKB int64) error {
	if err := s.createDisk(dst, "", sizeKB); err != nil {
		return err
	}
	out, err := s.localPath(s.dataFile(dst))
	if err != nil {
		return err
	}
	var data []byte
	for i := len(chain) - 1; i >= 0; i-- {
		lp, err := s.localPath(s.dataFile(chain[i]))
		if err != nil {
			return err
		}
		b, err := os.ReadFile(lp)
		if err != nil {
			return err
		}
		data = append(data, b...)
		if len(b) > 0 && b[len(b)-1] != '\n' {
			data = append(data, '\n')
		}
	}
	return os.WriteFile(out, data, 0o644)
}

// clone carries out a plan. The caller (the task) holds modelMu.
func (s *sim) clone(plan *clonePlan) (types.AnyType, types.BaseMethodFault) {
	var created []string
	undo := func() {
		for _, p := range created {
			_ = s.deleteDiskFiles(p)
		}
		if lp, err := s.localPath(plan.home); err == nil {
			_ = os.Remove(lp) // only if empty
		}
	}
	copiedFiles := map[string]int64{}
	for _, cd := range plan.disks {
		created = append(created, cd.dst)
		var err error
		if cd.linked {
			err = s.createDisk(cd.dst, cd.chain[0], cd.device.CapacityInKB)
		} else {
			err = s.flatten(cd.chain, cd.dst, cd.device.CapacityInKB)
			copiedFiles[s.dataFile(cd.dst)] = s.dataBytes(s.dataFile(cd.dst))
		}
		if err != nil {
			undo()
			return nil, &types.CannotCreateFile{FileFault: types.FileFault{File: cd.dst}}
		}
		old := flatBacking(cd.device)
		nb := copyBacking(old)
		nb.FileName = cd.dst
		nb.Uuid = stableUUID("clone", cd.dst, plan.name)
		nb.ContentId = ""
		nb.ChangeId = ""
		if cd.linked {
			nb.Parent = copyBacking(old)
		} else {
			nb.Parent = nil
		}
		if cd.thin != nil {
			nb.ThinProvisioned = cd.thin
		}
		setBackingDatastore(nb)
		cd.device.Backing = nb
	}

	// The VM itself, through the stock CreateVM (in process: not counted),
	// with the disks attached to the files made above.
	defaults := object.VirtualDeviceList(esx.VirtualDevice)
	all := object.VirtualDeviceList(plan.devices)
	config := types.VirtualMachineConfigSpec{
		Name:              plan.name,
		GuestId:           plan.src.Config.GuestId,
		NumCPUs:           plan.src.Config.Hardware.NumCPU,
		MemoryMB:          int64(plan.src.Config.Hardware.MemoryMB),
		NumCoresPerSocket: plan.src.Config.Hardware.NumCoresPerSocket,
		Files:             &types.VirtualMachineFileInfo{VmPathName: dsJoin(plan.home, plan.name+".vmx")},
		ExtraConfig:       copyOptions(plan.src.Config.ExtraConfig),
	}
	if c := plan.spec.Config; c != nil {
		config.ExtraConfig = mergeExtraConfig(config.ExtraConfig, c.ExtraConfig)
		config.InstanceUuid = c.InstanceUuid
		config.ManagedBy = c.ManagedBy
	}
	var disks []types.BaseVirtualDevice
	for _, d := range plan.devices {
		if _, ok := d.(*types.VirtualDisk); ok {
			disks = append(disks, d) // added below: stock CreateVM wants a "-flat.vmdk" for every disk
			continue
		}
		if defaults.Find(all.Name(d)) != nil {
			continue // CreateVM adds its own
		}
		config.DeviceChange = append(config.DeviceChange, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd,
			Device:    d,
		})
	}
	ctx := context.Background()
	folder := object.NewFolder(s.client, plan.folder)
	hostRef := plan.host.Reference()
	task, err := folder.CreateVM(ctx, config, object.NewResourcePool(s.client, plan.pool), object.NewHostSystem(s.client, hostRef))
	var info *types.TaskInfo
	if err == nil {
		info, err = task.WaitForResult(ctx, nil)
	}
	if err != nil {
		undo()
		log.Printf("clone %s: creating the VM: %v", plan.name, err)
		return nil, &types.SystemError{Reason: "clone: creating the VM: " + err.Error()}
	}
	ref := info.Result.(types.ManagedObjectReference)
	vm, fault := vmOf(ref)
	if fault != nil {
		undo()
		return nil, fault
	}
	simulator.Map.WithLock(vm, func() {
		devices := append(vm.Config.Hardware.Device, disks...)
		for _, d := range disks {
			disk := d.(*types.VirtualDisk)
			for _, c := range devices {
				if ctl, ok := c.(types.BaseVirtualController); ok && c.GetVirtualDevice().Key == disk.ControllerKey {
					ctl.GetVirtualController().Device = append(ctl.GetVirtualController().Device, disk.Key)
				}
			}
		}
		vm.Summary.Config.NumVirtualDisks = int32(len(disks))
		publishDevices(vm, devices)
		if ds := vmDatastores(vm, vm.Config.Hardware.Device); ds != nil {
			simulator.Map.Update(vm, []types.PropertyChange{{Name: "datastore", Val: ds}})
		}
	})
	if plan.spec.Template {
		markTemplate(vm)
	}
	s.updateDatastoreVMs()
	if plan.spec.PowerOn && !plan.spec.Template {
		t, err := object.NewVirtualMachine(s.client, ref).PowerOn(ctx)
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil {
			return nil, &types.SystemError{Reason: "clone: powering on: " + err.Error()}
		}
	}
	copied.Lock()
	for f, n := range copiedFiles {
		copied.total += n
		copied.files[f] += n
	}
	copied.Unlock()
	return ref, nil
}

// copyOptions copies an extraConfig list.
func copyOptions(opts []types.BaseOptionValue) []types.BaseOptionValue {
	out := make([]types.BaseOptionValue, 0, len(opts))
	for _, o := range opts {
		v := o.GetOptionValue()
		out = append(out, &types.OptionValue{Key: v.Key, Value: v.Value})
	}
	return out
}
