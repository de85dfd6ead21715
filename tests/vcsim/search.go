package main

// SearchIndex.FindAllByUuid, which Cinder's driver (through oslo.vmware)
// uses to find an instance by its instance UUID; govmomi 0.24.2 has only
// FindByUuid. Every VM whose BIOS UUID (config.uuid) or, with
// instanceUuid=true, whose instance UUID (config.instanceUuid) is the one
// asked for; hosts by their hardware UUID when vmSearch is false.
// Simplification: the datacenter argument is not checked (there is one).

import (
	"fmt"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	rawInterceptors["FindAllByUuid"] = findAllByUuid
}

func findAllByUuid(s *sim, call *soapCall) (string, types.BaseMethodFault) {
	req, ok := call.Body.(*types.FindAllByUuid)
	if !ok {
		return "", &types.InvalidRequest{}
	}
	var out strings.Builder
	if !req.VmSearch {
		for _, e := range simulator.Map.All("HostSystem") {
			if h, ok := e.(*simulator.HostSystem); ok && h.Summary.Hardware != nil &&
				strings.EqualFold(h.Summary.Hardware.Uuid, req.Uuid) {
				fmt.Fprintf(&out, `<returnval type="HostSystem">%s</returnval>`, escaped(h.Self.Value))
			}
		}
		return out.String(), nil
	}
	instance := req.InstanceUuid != nil && *req.InstanceUuid
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok || vm.Config == nil {
			continue
		}
		uuid := vm.Config.Uuid
		if instance {
			uuid = vm.Config.InstanceUuid
		}
		if uuid != "" && strings.EqualFold(uuid, req.Uuid) {
			fmt.Fprintf(&out, `<returnval type="VirtualMachine">%s</returnval>`, escaped(vm.Self.Value))
		}
	}
	return out.String(), nil
}
