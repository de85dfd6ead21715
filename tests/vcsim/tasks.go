package main

// Tasks like vCenter's: they run asynchronously for a configurable time,
// report info.progress while running, and carry the VM as info.entity (the
// stock simulator puts the snapshot there, which pyVmomi 9 cannot decode).
// Our modelled change to the inventory happens when the task completes.

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// timing holds task durations: a base time per method plus, for methods
// that copy disks, the bytes copied at bytesPerSecond.
type timing struct {
	mu             sync.Mutex
	base           map[string]time.Duration
	defaultBase    time.Duration
	bytesPerSecond float64
}

func newTiming() *timing {
	return &timing{
		base:           map[string]time.Duration{},
		defaultBase:    20 * time.Millisecond,
		bytesPerSecond: 64 << 20,
	}
}

// duration of a task of the given method that copies copyBytes.
func (t *timing) duration(method string, copyBytes int64) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	d, ok := t.base[method]
	if !ok {
		d = t.defaultBase
	}
	if copyBytes > 0 && t.bytesPerSecond > 0 {
		d += time.Duration(float64(copyBytes) / t.bytesPerSecond * float64(time.Second))
	}
	return d
}

// taskID turns "CreateSnapshot_Task" into "createSnapshot", the id vCenter
// uses in info.descriptionId ("VirtualMachine.createSnapshot").
func taskID(method string) string {
	id := strings.TrimSuffix(method, "_Task")
	if id == "" {
		return method
	}
	r := []rune(id)
	r[0] = unicode.ToLower(r[0])
	return string(r)
}

// descriptionIDs are vCenter's info.descriptionId of the tasks we run
// (others get "<entity type>.<taskID>").
var descriptionIDs = map[string]string{
	"CreateSnapshot_Task":          "VirtualMachine.createSnapshot",
	"RemoveSnapshot_Task":          "vm.Snapshot.remove",
	"RevertToSnapshot_Task":        "vm.Snapshot.revert",
	"RevertToCurrentSnapshot_Task": "VirtualMachine.revertToCurrentSnapshot",
	"RemoveAllSnapshots_Task":      "VirtualMachine.removeAllSnapshots",
	"ConsolidateVMDisks_Task":      "VirtualMachine.consolidateDisks",
	"RelocateVM_Task":              "VirtualMachine.relocate",
	"CloneVM_Task":                 "VirtualMachine.clone",
	"ReconfigVM_Task":              "VirtualMachine.reconfigure",
	"PowerOnVM_Task":               "VirtualMachine.powerOn",
	"PowerOffVM_Task":              "VirtualMachine.powerOff",
	"Destroy_Task":                 "VirtualMachine.destroy",
}

// startTask creates a task on entity and runs it in the background: it is
// "running" at once, reports progress, and after its duration calls run,
// whose result or fault completes the task. run changes the model; it must
// take the simulator's locks for the objects it changes.
func (s *sim) startTask(entity types.ManagedObjectReference, method string, copyBytes int64,
	run func() (types.AnyType, types.BaseMethodFault)) types.ManagedObjectReference {
	obj := simulator.Map.Get(entity)
	task := simulator.CreateTask(obj, taskID(method), func(*simulator.Task) (res types.AnyType, fault types.BaseMethodFault) {
		// A bug in our model must fail the task, not kill the simulator.
		defer func() {
			if r := recover(); r != nil {
				log.Printf("task %s on %s panicked: %v\n%s", method, entity.Value, r, debug.Stack())
				res, fault = nil, &types.SystemError{Reason: fmt.Sprint(r)}
			}
		}()
		return run()
	})
	name := entityName(entity)
	simulator.Map.WithLock(task, func() {
		if task.Info.Entity != nil {
			task.Info.EntityName = name
		}
		task.Info.Name = method
		if id, ok := descriptionIDs[method]; ok {
			task.Info.DescriptionId = id
		}
	})
	d := s.timing.duration(method, copyBytes)
	update := func(changes ...types.PropertyChange) {
		simulator.Map.WithLock(task, func() { simulator.Map.Update(task, changes) })
	}
	// Running before the call returns, as vCenter's tasks usually are.
	update(
		types.PropertyChange{Name: "info.state", Val: types.TaskInfoStateRunning},
		types.PropertyChange{Name: "info.startTime", Val: time.Now()},
		types.PropertyChange{Name: "info.progress", Val: int32(0)},
	)
	s.tasksWG.Add(1)
	go func() {
		defer s.tasksWG.Done()
		const steps = 4
		for i := 1; i < steps; i++ {
			time.Sleep(d / steps)
			update(types.PropertyChange{Name: "info.progress", Val: int32(i * 100 / steps)})
		}
		time.Sleep(d / steps)
		// Not task.Run(): it would set info.startTime again, to now.
		s.modelMu.Lock()
		res, fault := task.Execute(task)
		s.modelMu.Unlock()
		state := types.TaskInfoStateSuccess
		var lmf interface{}
		if fault != nil {
			state = types.TaskInfoStateError
			lmf = types.LocalizedMethodFault{Fault: fault, LocalizedMessage: faultMessage(fault)}
		}
		changes := []types.PropertyChange{
			{Name: "info.completeTime", Val: time.Now()},
			{Name: "info.state", Val: state},
			{Name: "info.result", Val: res},
			{Name: "info.error", Val: lmf},
		}
		if fault == nil {
			changes = append(changes, types.PropertyChange{Name: "info.progress", Val: int32(100)})
		}
		update(changes...)
	}()
	return task.Self
}

// entityName is the name of a managed entity, or its moref value.
func entityName(ref types.ManagedObjectReference) string {
	if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
		return vm.Name
	}
	return ref.Value
}

// controlTiming serves /_ctl/timing: POST sets durations, DELETE restores
// the defaults, GET shows them.
func (s *sim) controlTiming(w http.ResponseWriter, r *http.Request) {
	t := s.timing
	switch r.Method {
	case http.MethodPost:
		var req struct {
			Method         string   `json:"method"`
			MS             *float64 `json:"ms"`
			DefaultMS      *float64 `json:"default_ms"`
			BytesPerSecond *float64 `json:"bytes_per_second"`
			UpdateMS       *float64 `json:"update_ms"`
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			ctlError(w, http.StatusBadRequest, "timing: the body must be a JSON object like "+
				`{"method": "RelocateVM_Task", "ms": 200}, {"default_ms": 20} or {"bytes_per_second": 1048576}: `+err.Error())
			return
		}
		switch {
		case (req.Method == "") != (req.MS == nil):
			ctlError(w, http.StatusBadRequest, `timing: "method" and "ms" go together`)
			return
		case req.MS == nil && req.DefaultMS == nil && req.BytesPerSecond == nil && req.UpdateMS == nil:
			ctlError(w, http.StatusBadRequest, `timing: give "method" and "ms", "default_ms", "bytes_per_second" or "update_ms"`)
			return
		case (req.MS != nil && *req.MS < 0) || (req.DefaultMS != nil && *req.DefaultMS < 0) ||
			(req.BytesPerSecond != nil && *req.BytesPerSecond <= 0):
			ctlError(w, http.StatusBadRequest, "timing: durations must not be negative and the copy rate must be positive")
			return
		case req.UpdateMS != nil && (*req.UpdateMS < 1 || *req.UpdateMS > 1000):
			ctlError(w, http.StatusBadRequest, "timing: update_ms must be between 1 and 1000")
			return
		}
		ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
		t.mu.Lock()
		if req.MS != nil {
			t.base[req.Method] = ms(*req.MS)
		}
		if req.DefaultMS != nil {
			t.defaultBase = ms(*req.DefaultMS)
		}
		if req.BytesPerSecond != nil {
			t.bytesPerSecond = *req.BytesPerSecond
		}
		if req.UpdateMS != nil {
			simulator.SetUpdateInterval(ms(*req.UpdateMS))
		}
		t.mu.Unlock()
		writeJSON(w, http.StatusOK, t.snapshot())
	case http.MethodDelete:
		def := newTiming()
		t.mu.Lock()
		t.base, t.defaultBase, t.bytesPerSecond = def.base, def.defaultBase, def.bytesPerSecond
		simulator.SetUpdateInterval(simulator.DefaultUpdateInterval)
		t.mu.Unlock()
		writeJSON(w, http.StatusOK, t.snapshot())
	case http.MethodGet:
		writeJSON(w, http.StatusOK, t.snapshot())
	default:
		ctlError(w, http.StatusMethodNotAllowed, "timing: use GET, POST or DELETE")
	}
}

// snapshot is the timing settings as the control API shows them.
func (t *timing) snapshot() map[string]interface{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	methods := map[string]float64{}
	for m, d := range t.base {
		methods[m] = float64(d) / float64(time.Millisecond)
	}
	return map[string]interface{}{
		"default_ms":       float64(t.defaultBase) / float64(time.Millisecond),
		"methods":          methods,
		"bytes_per_second": t.bytesPerSecond,
		"update_ms":        float64(simulator.UpdateInterval()) / float64(time.Millisecond),
	}
}

// taskEntityFixer corrects the entity of tasks the stock handlers create on
// objects that are not managed entities (snapshots, the file and virtual disk
// managers): pyVmomi 9 refuses to decode such a TaskInfo. Snapshot tasks get
// their VM, as on vCenter; the others get no entity.
type taskEntityFixer struct{}

func (taskEntityFixer) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VmdkSnapTaskEntityFixer", Value: "fixer"}
}

func (taskEntityFixer) PutObject(obj mo.Reference) {
	task, ok := obj.(*simulator.Task)
	if !ok || task.Info.Entity == nil {
		return
	}
	switch ref := *task.Info.Entity; ref.Type {
	case "VirtualMachineSnapshot":
		vm := taskEntity(ref)
		task.Info.Entity = &vm
		task.Info.EntityName = entityName(vm)
	case "FileManager", "VirtualDiskManager", "VcenterVStorageObjectManager", "HostDatastoreBrowser":
		task.Info.Entity = nil
		task.Info.EntityName = ""
	}
}

func (taskEntityFixer) UpdateObject(mo.Reference, []types.PropertyChange) {}

func (taskEntityFixer) RemoveObject(types.ManagedObjectReference) {}
