package main

// VMware Tools state per VM, set by tests (POST /_ctl/tools) and kept on the
// VM's own guest fields so that vSphere clients see it too:
// guest.toolsRunningStatus, guest.toolsStatus and summary.guest.toolsStatus.
// Quiesced snapshots need the tools running (see toolsRunning).

import (
	"encoding/json"
	"net/http"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// toolsRunning reports whether a VM's tools are running. Callers hold the
// VM's lock or run inside a task.
func toolsRunning(vm *simulator.VirtualMachine) bool {
	return vm.Guest != nil &&
		vm.Guest.ToolsRunningStatus == string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
}

// setTools sets a VM's tools state and notifies property collectors.
func setTools(vm *simulator.VirtualMachine, running bool) {
	runningStatus := types.VirtualMachineToolsRunningStatusGuestToolsNotRunning
	status := types.VirtualMachineToolsStatusToolsNotRunning
	version := "0"
	if running {
		runningStatus = types.VirtualMachineToolsRunningStatusGuestToolsRunning
		status = types.VirtualMachineToolsStatusToolsOk
		version = "11365"
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Guest == nil {
			vm.Guest = &types.GuestInfo{}
		}
		if vm.Summary.Guest == nil {
			vm.Summary.Guest = &types.VirtualMachineGuestSummary{}
		}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "guest.toolsRunningStatus", Val: string(runningStatus)},
			{Name: "guest.toolsStatus", Val: status},
			{Name: "guest.toolsVersion", Val: version},
			{Name: "summary.guest.toolsRunningStatus", Val: string(runningStatus)},
			{Name: "summary.guest.toolsStatus", Val: status},
		})
	})
}

// controlTools serves POST /_ctl/tools {"vm": "vm-42", "running": true}.
func (s *sim) controlTools(w http.ResponseWriter, r *http.Request) {
	var req struct {
		VM      string `json:"vm"`
		Running *bool  `json:"running"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.VM == "" || req.Running == nil {
		ctlError(w, http.StatusBadRequest, `tools: the body must be {"vm": "<VM moref>", "running": true|false}`)
		return
	}
	vm, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: req.VM}).(*simulator.VirtualMachine)
	if !ok {
		ctlError(w, http.StatusNotFound, "tools: no VM "+req.VM+"; pass a VirtualMachine moref such as the scenario's instances[].moref")
		return
	}
	setTools(vm, *req.Running)
	var out struct {
		VM                 string `json:"vm"`
		ToolsRunningStatus string `json:"toolsRunningStatus"`
		ToolsStatus        string `json:"toolsStatus"`
	}
	simulator.Map.WithLock(vm, func() {
		out.VM, out.ToolsRunningStatus, out.ToolsStatus = req.VM, vm.Guest.ToolsRunningStatus, string(vm.Guest.ToolsStatus)
	})
	writeJSON(w, http.StatusOK, out)
}
