package main

// AuthorizationManager.DisableMethods / EnableMethods and MethodDisabled.
//
// vCenter lets a client (an extension, a backup tool) disable methods on an
// entity under a source id of its own: the methods then fail with
// MethodDisabled (its `source` naming who disabled them) until that source
// enables them again; ManagedEntity.disabledMethod lists them by their SOAP
// names (e.g. "ConsolidateVMDisks_Task"). The methods are vCenter-internal
// (namespace urn:internalvim25, as govmomi's object/authorization_manager_internal.go
// sends them; govc object.method; VIC disables Destroy_Task this way), so
// neither the stock simulator nor its types know them: the requests are
// decoded here. Each (entity, method) keeps its sources: a method stays
// disabled while any source disables it, and a source disabling it again
// gets MethodAlreadyDisabledFault.

import (
	"encoding/xml"
	"net/http"
	"sort"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

type disabledKey struct {
	entity types.ManagedObjectReference
	method string
}

type disabledSet struct {
	sync.Mutex
	sources map[disabledKey]map[string]string // source id -> reason id
}

var disabledMethods = &disabledSet{sources: map[disabledKey]map[string]string{}}

type moref struct {
	Type  string `xml:"type,attr"`
	Value string `xml:",chardata"`
}

func (m moref) ref() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: m.Type, Value: m.Value}
}

type disableMethodsBody struct {
	Entity []moref `xml:"Body>DisableMethods>entity"`
	Method []struct {
		Method   string `xml:"method"`
		ReasonID string `xml:"reasonId"`
	} `xml:"Body>DisableMethods>method"`
	SourceID string `xml:"Body>DisableMethods>sourceId"`
}

type enableMethodsBody struct {
	Entity   []moref  `xml:"Body>EnableMethods>entity"`
	Method   []string `xml:"Body>EnableMethods>method"`
	SourceID string   `xml:"Body>EnableMethods>sourceId"`
}

// serveMethodToggles answers DisableMethods and EnableMethods; false for any
// other method.
func (s *sim) serveMethodToggles(w http.ResponseWriter, method string, body []byte) bool {
	var entities []moref
	var apply func(types.ManagedObjectReference) types.BaseMethodFault
	switch method {
	case "DisableMethods":
		var req disableMethodsBody
		if err := xml.Unmarshal(body, &req); err != nil {
			writeFault(w, err.Error(), &types.InvalidRequest{})
			return true
		}
		entities = req.Entity
		apply = func(e types.ManagedObjectReference) types.BaseMethodFault {
			for _, m := range req.Method {
				if fault := disabledMethods.disable(e, m.Method, req.SourceID, m.ReasonID); fault != nil {
					return fault
				}
			}
			return nil
		}
	case "EnableMethods":
		var req enableMethodsBody
		if err := xml.Unmarshal(body, &req); err != nil {
			writeFault(w, err.Error(), &types.InvalidRequest{})
			return true
		}
		entities = req.Entity
		apply = func(e types.ManagedObjectReference) types.BaseMethodFault {
			for _, m := range req.Method {
				disabledMethods.enable(e, m, req.SourceID)
			}
			return nil
		}
	default:
		return false
	}
	for _, e := range entities {
		if _, ok := simulator.Map.Get(e.ref()).(mo.Entity); !ok {
			writeFault(w, "The object has already been deleted or has not been completely created",
				&types.ManagedObjectNotFound{Obj: e.ref()})
			return true
		}
	}
	for _, e := range entities {
		if fault := apply(e.ref()); fault != nil {
			writeFault(w, faultMessage(fault), fault)
			return true
		}
		publishDisabled(e.ref())
	}
	writeEmptyResponse(w, method)
	return true
}

func (d *disabledSet) disable(e types.ManagedObjectReference, method, source, reason string) types.BaseMethodFault {
	d.Lock()
	defer d.Unlock()
	k := disabledKey{e, method}
	if d.sources[k] == nil {
		d.sources[k] = map[string]string{}
	}
	if _, ok := d.sources[k][source]; ok {
		return &types.MethodAlreadyDisabledFault{SourceId: source}
	}
	d.sources[k][source] = reason
	return nil
}

func (d *disabledSet) enable(e types.ManagedObjectReference, method, source string) {
	d.Lock()
	defer d.Unlock()
	k := disabledKey{e, method}
	delete(d.sources[k], source)
	if len(d.sources[k]) == 0 {
		delete(d.sources, k)
	}
}

// of returns the methods disabled on e, sorted, and for one method its sources.
func (d *disabledSet) of(e types.ManagedObjectReference) []string {
	d.Lock()
	defer d.Unlock()
	var methods []string
	for k := range d.sources {
		if k.entity == e {
			methods = append(methods, k.method)
		}
	}
	sort.Strings(methods)
	return methods
}

// source returns one source that disabled method on e (the first by name) and its reason.
func (d *disabledSet) source(e types.ManagedObjectReference, method string) (string, string, bool) {
	d.Lock()
	defer d.Unlock()
	reasons := d.sources[disabledKey{e, method}]
	names := make([]string, 0, len(reasons))
	for s := range reasons {
		names = append(names, s)
	}
	if len(names) == 0 {
		return "", "", false
	}
	sort.Strings(names)
	return names[0], reasons[names[0]], true
}

// publishDisabled sets the entity's disabledMethod and tells property collectors.
func publishDisabled(e types.ManagedObjectReference) {
	obj := simulator.Map.Get(e)
	ent, ok := obj.(mo.Entity)
	if !ok {
		return
	}
	methods := disabledMethods.of(e)
	simulator.Map.WithLock(obj, func() {
		ent.Entity().DisabledMethod = methods
		simulator.Map.Update(obj, []types.PropertyChange{{Name: "disabledMethod", Val: methods}})
	})
}

// disabledFault is the MethodDisabled fault for a call of a method some
// source disabled on the object it is called on, or nil.
func disabledFault(method string, body []byte) types.BaseMethodFault {
	this := thisOf(body)
	if this.Value == "" {
		return nil
	}
	source, reason, ok := disabledMethods.source(this, method)
	if !ok {
		return nil
	}
	fault := &types.MethodDisabled{Source: source}
	fault.FaultMessage = []types.LocalizableMessage{{
		Key:     reason,
		Message: "The method " + method + " is disabled by '" + source + "': " + reason,
	}}
	return fault
}

func writeEmptyResponse(w http.ResponseWriter, method string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(soapEnvelopeStart + "<" + method + `Response xmlns="urn:internalvim25"></` +
		method + "Response>" + soapEnvelopeEnd))
}
