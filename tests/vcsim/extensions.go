package main

// ExtensionManager's FindExtension, RegisterExtension and
// UnregisterExtension, which Cinder's driver calls in do_setup (it registers
// "org.openstack.storage" when it is missing); govmomi 0.24.2 has no
// ExtensionManager object behind the service content's reference.
// Registered extensions live for the simulator's lifetime. Simplification:
// ExtensionManager.extensionList is not published as a property;
// registering a key twice is refused with InvalidArgument, as vCenter does.

import (
	"bytes"
	"sync"

	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

var extensions = struct {
	sync.Mutex
	byKey map[string]types.Extension
}{byKey: map[string]types.Extension{}}

func init() {
	rawInterceptors["FindExtension"] = findExtension
	rawInterceptors["RegisterExtension"] = registerExtension
	rawInterceptors["UnregisterExtension"] = unregisterExtension
}

func findExtension(s *sim, call *soapCall) (string, types.BaseMethodFault) {
	req, ok := call.Body.(*types.FindExtension)
	if !ok {
		return "", &types.InvalidRequest{}
	}
	extensions.Lock()
	ext, found := extensions.byKey[req.ExtensionKey]
	extensions.Unlock()
	if !found {
		return "", nil // no returnval: not registered
	}
	var out bytes.Buffer
	enc := xml.NewEncoder(&out)
	if err := enc.EncodeElement(ext, xml.StartElement{Name: xml.Name{Local: "returnval"}}); err != nil {
		return "", &types.InvalidRequest{}
	}
	_ = enc.Flush()
	return out.String(), nil
}

func registerExtension(s *sim, call *soapCall) (string, types.BaseMethodFault) {
	req, ok := call.Body.(*types.RegisterExtension)
	if !ok {
		return "", &types.InvalidRequest{}
	}
	extensions.Lock()
	defer extensions.Unlock()
	if _, taken := extensions.byKey[req.Extension.Key]; taken {
		return "", &types.InvalidArgument{InvalidProperty: "extension.key"}
	}
	extensions.byKey[req.Extension.Key] = req.Extension
	return "", nil
}

func unregisterExtension(s *sim, call *soapCall) (string, types.BaseMethodFault) {
	req, ok := call.Body.(*types.UnregisterExtension)
	if !ok {
		return "", &types.InvalidRequest{}
	}
	extensions.Lock()
	defer extensions.Unlock()
	if _, found := extensions.byKey[req.ExtensionKey]; !found {
		return "", &types.NotFound{}
	}
	delete(extensions.byKey, req.ExtensionKey)
	return "", nil
}
