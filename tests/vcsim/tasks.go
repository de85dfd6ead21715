package main

// Tasks like vCenter's: they run asynchronously for a configurable time,
// report info.progress while running, and carry the VM as info.entity (the
// stock simulator puts the snapshot there, which pyVmomi 9 cannot decode).
// Our modelled change to the inventory happens when the task completes.

import (
	"fmt"
	"log"
	"runtime/debug"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/vmware/govmomi/simulator"
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
		task.Info.EntityName = name
	})
	d := s.timing.duration(method, copyBytes)
	s.tasksWG.Add(1)
	go func() {
		defer s.tasksWG.Done()
		simulator.Map.Update(task, []types.PropertyChange{
			{Name: "info.state", Val: types.TaskInfoStateRunning},
			{Name: "info.startTime", Val: time.Now()},
			{Name: "info.progress", Val: int32(0)},
		})
		const steps = 4
		for i := 1; i < steps; i++ {
			time.Sleep(d / steps)
			simulator.Map.Update(task, []types.PropertyChange{
				{Name: "info.progress", Val: int32(i * 100 / steps)},
			})
		}
		time.Sleep(d / steps)
		s.modelMu.Lock()
		defer s.modelMu.Unlock()
		task.Run()
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
