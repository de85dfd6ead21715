package main

import (
	"context"
	"crypto/sha1"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// Inventory names. Two datastores are shared by both cluster hosts; the
// third is mounted on the first host only, so relocating a VM there with the
// second host must be refused.
const (
	dsShared1 = "ds-shared-1"
	dsShared2 = "ds-shared-2"
	dsLocal   = "ds-local-h0"
	host0     = "DC0_C0_H0"
	host1     = "DC0_C0_H1"
)

// seeded describes what a scenario created, for tests and the demo.
type seeded struct {
	Scenario  string           `json:"scenario"`
	Instances []seededInstance `json:"instances"`
	Volumes   []seededVolume   `json:"volumes"`
}

type seededInstance struct {
	Name     string `json:"name"`
	UUID     string `json:"uuid"`
	Moref    string `json:"moref"`
	Host     string `json:"host"`
	RootVMDK string `json:"root_vmdk"`
}

type seededVolume struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	Moref      string `json:"moref"`
	VMDK       string `json:"vmdk"`
	AttachedTo string `json:"attached_to,omitempty"` // instance uuid
	DiskUUID   string `json:"disk_uuid"`
}

// scenario seeds objects into the running simulator. n is the scenario's
// sequence number on this simulator, used to keep names unique.
type scenario func(ctx context.Context, s *sim, b *builder, params map[string]string) error

var scenarios = map[string]scenario{
	"available-volume": func(ctx context.Context, s *sim, b *builder, _ map[string]string) error {
		_, err := b.volume(ctx, dsShared1, "vol")
		return err
	},
	// A running Nova instance with its root disk only (Cinder's tests
	// create and attach their own volumes).
	"instance": func(ctx context.Context, s *sim, b *builder, _ map[string]string) error {
		_, err := b.instance(ctx, host0, dsShared1, "inst")
		return err
	},
	"attached-volume": func(ctx context.Context, s *sim, b *builder, _ map[string]string) error {
		inst, err := b.instance(ctx, host0, dsShared1, "inst")
		if err != nil {
			return err
		}
		vol, err := b.volume(ctx, dsShared1, "vol")
		if err != nil {
			return err
		}
		return b.attach(ctx, inst, vol)
	},
	"instance-two-volumes": func(ctx context.Context, s *sim, b *builder, _ map[string]string) error {
		return twoVolumes(ctx, b)
	},
	// A root disk and three volumes (a database's data, log and temp
	// volumes): the group snapshot's scenario. Option: volumes (1 to 8, the
	// number of volumes, default 3).
	"instance-three-volumes": func(ctx context.Context, s *sim, b *builder, params map[string]string) error {
		n := 3
		if v := params["volumes"]; v != "" {
			parsed, err := strconv.Atoi(v)
			if err != nil || parsed < 1 || parsed > 8 {
				return fmt.Errorf("volumes: %q is not a number from 1 to 8", v)
			}
			n = parsed
		}
		roles := make([]string, n)
		for i := range roles {
			roles[i] = fmt.Sprintf("vol-%c", 'a'+i)
		}
		return volumes(ctx, b, roles...)
	},
	// Blueprint Work Flow 2: the instance (root disk and two attached
	// volumes) was storage-vMotioned from ds-shared-1 to ds-shared-2 after
	// "pre-move:<id>" tokens were written, then got "post-move:<id>": each
	// volume's backing still points at its old copy on ds-shared-1 (seed,
	// pre-move) and the instance's copies on ds-shared-2 have diverged
	// (seed, pre-move, post-move).
	"workflow2": func(ctx context.Context, s *sim, b *builder, _ map[string]string) error {
		if err := twoVolumes(ctx, b); err != nil {
			return err
		}
		return b.movedAfterWrites(&b.out.Instances[0], dsShared2, placement{})
	},
	// The same with one attached volume. Options: volume_datastore (where
	// the volume was created, default ds-shared-1), host (the move is also
	// a vMotion to that host) and pool (the instance moves into a child
	// resource pool of that name under the cluster's, created if missing).
	"attached-volume-moved": func(ctx context.Context, s *sim, b *builder, params map[string]string) error {
		volDS := dsShared1
		if v := params["volume_datastore"]; v != "" {
			if datastoreByName(v) == nil {
				return fmt.Errorf("volume_datastore: no datastore %q (%s, %s or %s)", v, dsShared1, dsShared2, dsLocal)
			}
			volDS = v
		}
		inst, err := b.instance(ctx, host0, dsShared1, "inst")
		if err != nil {
			return err
		}
		vol, err := b.volume(ctx, volDS, "vol")
		if err != nil {
			return err
		}
		if err := b.attach(ctx, inst, vol); err != nil {
			return err
		}
		to, err := b.placement(ctx, params["host"], params["pool"])
		if err != nil {
			return err
		}
		return b.movedAfterWrites(inst, dsShared2, to)
	},
	"many-vms": func(ctx context.Context, s *sim, b *builder, params map[string]string) error {
		count, err := strconv.Atoi(params["count"])
		if err != nil || count < 1 {
			count = 10
		}
		for i := 0; i < count; i++ {
			if _, err := b.instance(ctx, host1, dsShared2, fmt.Sprintf("filler%d", i)); err != nil {
				return err
			}
		}
		return nil
	},
}

// twoVolumes seeds an instance with a root disk and two attached volumes.
func twoVolumes(ctx context.Context, b *builder) error {
	return volumes(ctx, b, "vol-a", "vol-b")
}

// volumes seeds an instance on ds-shared-1 with one attached volume per role.
func volumes(ctx context.Context, b *builder, roles ...string) error {
	inst, err := b.instance(ctx, host0, dsShared1, "inst")
	if err != nil {
		return err
	}
	for _, role := range roles {
		vol, err := b.volume(ctx, dsShared1, role)
		if err != nil {
			return err
		}
		if err := b.attach(ctx, inst, vol); err != nil {
			return err
		}
	}
	return nil
}

func (s *sim) seedScenario(w http.ResponseWriter, r *http.Request, name string) {
	sc, ok := scenarios[name]
	if !ok {
		ctlError(w, http.StatusNotFound, "unknown scenario "+strconv.Quote(name)+"; GET /_ctl/scenarios lists them")
		return
	}
	params := map[string]string{}
	for k, v := range r.URL.Query() {
		params[k] = v[0]
	}
	s.mu.Lock()
	s.seq++
	n := s.seq
	s.mu.Unlock()

	ctx := r.Context()
	b, err := s.newBuilder(ctx, name, n)
	if err == nil {
		err = sc(ctx, s, b, params)
	}
	if err != nil {
		ctlError(w, http.StatusInternalServerError, fmt.Sprintf("scenario %s: %v", name, err))
		return
	}
	writeJSON(w, http.StatusOK, b.out)
}

// builder creates Cinder-shaped objects through the in-process client.
type builder struct {
	s       *sim
	prefix  string // scenario + sequence, keeps UUIDs unique and stable
	finder  *find.Finder
	folders *object.DatacenterFolders
	dc      *object.Datacenter
	out     seeded
}

func (s *sim) newBuilder(ctx context.Context, name string, n int) (*builder, error) {
	finder := find.NewFinder(s.client, false)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return nil, err
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return nil, err
	}
	return &builder{
		s: s, prefix: fmt.Sprintf("%s/%d", name, n), finder: finder, folders: folders, dc: dc,
		out: seeded{Scenario: name, Instances: []seededInstance{}, Volumes: []seededVolume{}},
	}, nil
}

// stableUUID derives a UUID from the scenario prefix and a role, so that the
// same sequence of scenarios yields the same ids (cassettes rely on this).
func stableUUID(parts ...string) string {
	h := sha1.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	sum := h.Sum(nil)
	sum[6] = (sum[6] & 0x0f) | 0x50
	sum[8] = (sum[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:16])
}

func (s *sim) createInventory(ctx context.Context) error {
	finder := find.NewFinder(s.client, false)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return err
	}
	finder.SetDatacenter(dc)
	h0, err := finder.HostSystem(ctx, "*/"+host0)
	if err != nil {
		return err
	}
	h1, err := finder.HostSystem(ctx, "*/"+host1)
	if err != nil {
		return err
	}
	mounts := []struct {
		name  string
		hosts []*object.HostSystem
	}{
		{dsShared1, []*object.HostSystem{h0, h1}},
		{dsShared2, []*object.HostSystem{h0, h1}},
		{dsLocal, []*object.HostSystem{h0}},
	}
	for _, m := range mounts {
		dir := filepath.Join(s.root, m.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for _, h := range m.hosts {
			dss, err := h.ConfigManager().DatastoreSystem(ctx)
			if err != nil {
				return err
			}
			ds, err := dss.CreateLocalDatastore(ctx, m.name, dir)
			if err != nil {
				return fmt.Errorf("datastore %s on %s: %w", m.name, h.Name(), err)
			}
			// vCenter reports whether more than one host mounts it, and
			// its free space (a fixed 1 TiB here: sizes are not modelled).
			if mo, ok := simulator.Map.Get(ds.Reference()).(*simulator.Datastore); ok {
				shared := len(m.hosts) > 1
				simulator.Map.WithLock(mo, func() {
					mo.Summary.MultipleHostAccess = &shared
					mo.Summary.FreeSpace = 1 << 40
				})
			}
		}
		// As vCenter shows a datastore on block storage: of type VMFS,
		// with every host that mounts it in Datastore.host (the stock
		// local datastore keeps only the last host that created it).
		if mo := datastoreByName(m.name); mo != nil {
			var mounted []types.DatastoreHostMount
			for _, h := range m.hosts {
				mounted = append(mounted, types.DatastoreHostMount{
					Key: h.Reference(),
					MountInfo: types.HostMountInfo{
						Path:       dir,
						AccessMode: string(types.HostMountModeReadWrite),
						Mounted:    types.NewBool(true),
						Accessible: types.NewBool(true),
					},
				})
			}
			simulator.Map.WithLock(mo, func() {
				mo.Host = mounted
				mo.Summary.Type = string(types.HostFileSystemVolumeFileSystemTypeVMFS)
			})
		}
	}
	return nil
}

// vm creates a VM with one new disk of capacityKB at [ds] name/name.vmdk,
// whose data holds one token, "seed:<seed>", so base files are never empty.
func (b *builder) vm(ctx context.Context, name, uuid, hostName, ds string, capacityKB int64, powerOn bool, seed string) (*object.VirtualMachine, string, string, error) {
	host, err := b.finder.HostSystem(ctx, "*/"+hostName)
	if err != nil {
		return nil, "", "", err
	}
	pool, err := host.ResourcePool(ctx)
	if err != nil {
		return nil, "", "", err
	}
	var devices object.VirtualDeviceList
	scsi, err := devices.CreateSCSIController("pvscsi")
	if err != nil {
		return nil, "", "", err
	}
	devices = append(devices, scsi)
	vmdk := fmt.Sprintf("[%s] %s/%s.vmdk", ds, name, name)
	disk := devices.CreateDisk(scsi.(types.BaseVirtualController), types.ManagedObjectReference{}, vmdk)
	disk.CapacityInKB = capacityKB
	disk.Key = 2000 // stable device keys, so recorded control calls replay
	diskUUID := stableUUID(b.prefix, name, "disk")
	disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo).Uuid = diskUUID
	devices = append(devices, disk)
	change, err := devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		return nil, "", "", err
	}
	change[1].GetVirtualDeviceConfigSpec().FileOperation = types.VirtualDeviceConfigSpecFileOperationCreate
	spec := types.VirtualMachineConfigSpec{
		Name:         name,
		GuestId:      string(types.VirtualMachineGuestOsIdentifierOtherGuest),
		InstanceUuid: uuid,
		Files:        &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s]", ds)},
		DeviceChange: change,
	}
	task, err := b.folders.VmFolder.CreateVM(ctx, spec, pool, host)
	if err != nil {
		return nil, "", "", err
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return nil, "", "", err
	}
	vm := object.NewVirtualMachine(b.s.client, info.Result.(types.ManagedObjectReference))
	if err := b.s.createDisk(vmdk, "", capacityKB); err != nil {
		return nil, "", "", err
	}
	if err := b.s.appendTokens(b.s.dataFile(vmdk), "seed:"+seed); err != nil {
		return nil, "", "", err
	}
	if powerOn {
		t, err := vm.PowerOn(ctx)
		if err != nil {
			return nil, "", "", err
		}
		if err := t.Wait(ctx); err != nil {
			return nil, "", "", err
		}
	}
	return vm, vmdk, diskUUID, nil
}

// instance creates a powered-on Nova instance with a root disk.
func (b *builder) instance(ctx context.Context, hostName, ds, role string) (*seededInstance, error) {
	uuid := stableUUID(b.prefix, role)
	name := fmt.Sprintf("instance-%s", uuid[:8])
	vm, vmdk, _, err := b.vm(ctx, name, uuid, hostName, ds, 2048, true, uuid)
	if err != nil {
		return nil, err
	}
	b.out.Instances = append(b.out.Instances, seededInstance{
		Name: name, UUID: uuid, Moref: vm.Reference().Value, Host: hostName, RootVMDK: vmdk,
	})
	return &b.out.Instances[len(b.out.Instances)-1], nil
}

// volume creates a powered-off backing VM volume-<id> with one disk.
func (b *builder) volume(ctx context.Context, ds, role string) (*seededVolume, error) {
	id := stableUUID(b.prefix, role)
	name := "volume-" + id
	vm, vmdk, diskUUID, err := b.vm(ctx, name, id, host0, ds, 1024, false, id)
	if err != nil {
		return nil, err
	}
	b.out.Volumes = append(b.out.Volumes, seededVolume{
		ID: id, Name: name, Moref: vm.Reference().Value, VMDK: vmdk, DiskUUID: diskUUID,
	})
	return &b.out.Volumes[len(b.out.Volumes)-1], nil
}

// attach adds the volume's VMDK to the instance, as Nova does, and records
// the device in extraConfig["volume-<id>"] = the disk's uuid.
func (b *builder) attach(ctx context.Context, inst *seededInstance, vol *seededVolume) error {
	vm := object.NewVirtualMachine(b.s.client, types.ManagedObjectReference{Type: "VirtualMachine", Value: inst.Moref})
	devices, err := vm.Device(ctx)
	if err != nil {
		return err
	}
	scsi, err := devices.FindSCSIController("")
	if err != nil {
		return err
	}
	disk := devices.CreateDisk(scsi, types.ManagedObjectReference{}, vol.VMDK)
	disk.CapacityInKB = 1024
	disk.Key = 2000 + int32(len(devices.SelectByType((*types.VirtualDisk)(nil))))
	disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo).Uuid = vol.DiskUUID
	spec := types.VirtualMachineConfigSpec{
		DeviceChange: []types.BaseVirtualDeviceConfigSpec{
			&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: disk},
		},
		ExtraConfig: []types.BaseOptionValue{
			&types.OptionValue{Key: vol.Name, Value: vol.DiskUUID},
		},
	}
	task, err := vm.Reconfigure(ctx, spec)
	if err != nil {
		return err
	}
	if err := task.Wait(ctx); err != nil {
		return err
	}
	vol.AttachedTo = inst.UUID
	return nil
}

// placement is where a move puts a VM besides its datastore: nil keeps
// its host or pool.
type placement struct {
	host     *types.ManagedObjectReference
	hostName string
	pool     *types.ManagedObjectReference
}

// placement resolves a host name and a child pool name (created under the
// cluster's root pool when missing); empty names keep the VM's.
func (b *builder) placement(ctx context.Context, hostName, poolName string) (placement, error) {
	var to placement
	if hostName != "" {
		host, err := b.finder.HostSystem(ctx, "*/"+hostName)
		if err != nil {
			return to, fmt.Errorf("host: %w (%s or %s)", err, host0, host1)
		}
		ref := host.Reference()
		to.host, to.hostName = &ref, hostName
	}
	if poolName == "" {
		return to, nil
	}
	host, err := b.finder.HostSystem(ctx, "*/"+host0)
	if err != nil {
		return to, err
	}
	root, err := host.ResourcePool(ctx)
	if err != nil {
		return to, err
	}
	if mo, ok := simulator.Map.Get(root.Reference()).(*simulator.ResourcePool); ok {
		if e := simulator.Map.FindByName(poolName, mo.ResourcePool.ResourcePool); e != nil {
			ref := e.Reference()
			to.pool = &ref
			return to, nil
		}
	}
	pool, err := root.Create(ctx, poolName, types.DefaultResourceConfigSpec())
	if err != nil {
		return to, fmt.Errorf("pool %s: %w", poolName, err)
	}
	ref := pool.Reference()
	to.pool = &ref
	return to, nil
}

// movedAfterWrites writes "pre-move:<id>" to each disk of the instance (id:
// the volume's id for an attached volume, the instance's uuid for its root
// disk), storage-vMotions it to ds (and to's host and pool) with our
// relocation model, then writes "post-move:<id>" to the instance's new copies.
func (b *builder) movedAfterWrites(inst *seededInstance, ds string, to placement) error {
	s := b.s
	s.modelMu.Lock()
	defer s.modelMu.Unlock()
	vm := vmByValue(inst.Moref)
	target := datastoreByName(ds)
	if vm == nil || target == nil {
		return fmt.Errorf("no VM %s or datastore %s", inst.Moref, ds)
	}
	ids := map[int32]string{}
	rootKey := int32(0)
	for _, d := range disksOf(vm.Config.Hardware.Device) {
		id := inst.UUID
		for _, v := range b.out.Volumes {
			if v.VMDK == flatBacking(d).FileName {
				id = v.ID
			}
		}
		if flatBacking(d).FileName == inst.RootVMDK {
			rootKey = d.Key
		}
		ids[d.Key] = id
	}
	write := func(prefix string) error {
		for key, id := range ids {
			if _, err := s.write(vm, key, prefix+id); err != nil {
				return err
			}
		}
		return nil
	}
	if err := write("pre-move:"); err != nil {
		return err
	}
	ref := target.Self
	spec := types.VirtualMachineRelocateSpec{Datastore: &ref, Host: to.host, Pool: to.pool}
	if fault := s.relocate(vm, spec); fault != nil {
		return fmt.Errorf("storage vMotion of %s to %s: %s", inst.Name, ds, faultMessage(fault))
	}
	if to.hostName != "" {
		inst.Host = to.hostName
	}
	if err := write("post-move:"); err != nil {
		return err
	}
	if d := diskByKey(vm.Config.Hardware.Device, rootKey); d != nil {
		inst.RootVMDK = flatBacking(d).FileName
	}
	return nil
}
