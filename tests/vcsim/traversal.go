package main

// RetrieveProperties(Ex) with traversal specs, as vCenter walks them: a
// TraversalSpec applies only to objects of its type, "skip" leaves the
// starting object out, and a selectSet names the specs to apply next (a
// SelectionSpec by name, a TraversalSpec in place). The stock collector of
// govmomi 0.24.2 ignores TraversalSpec.type and follows every path on every
// object, so oslo.vmware's traversal (the one Cinder's driver sends through
// vim_util.get_objects, whose specs point at each other) recurses until the
// simulator dies of a stack overflow. We walk the specs here, then ask the
// stock collector for the properties of each object found, with no
// traversal: the answer's shape stays the stock one.

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// keyedRequest is what a RetrieveProperties(Ex) asked of keyed property
// paths (keyed.go), which the stock collector does not know.
type keyedRequest struct {
	paths   map[string][]string // managed type -> keyed paths asked for it
	objects []types.ManagedObjectReference
}

// flattenTraversal rewrites a RetrieveProperties(Ex) body with traversal
// specs or keyed paths into one without (one object spec per object found,
// the keyed paths left out and returned, to be answered by keyed.go); other
// bodies come back unchanged, with no keyed request.
func flattenTraversal(method string, body []byte) ([]byte, *keyedRequest) {
	if method != "RetrievePropertiesEx" && method != "RetrieveProperties" {
		return body, nil
	}
	decoded, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil {
		return body, nil
	}
	var specs []types.PropertyFilterSpec
	var options *types.RetrieveOptions
	switch req := decoded.Body.(type) {
	case *types.RetrievePropertiesEx:
		specs, options = req.SpecSet, &req.Options
	case *types.RetrieveProperties:
		specs = req.SpecSet
	default:
		return body, nil
	}
	rewrite := false
	for _, spec := range specs {
		for _, o := range spec.ObjectSet {
			if simulator.Map.Get(o.Obj) == nil {
				// A session's own object (a container view): the stock
				// collector knows it, and its one-level specs do not loop.
				return body, nil
			}
			rewrite = rewrite || len(o.SelectSet) > 0
		}
		for _, p := range spec.PropSet {
			for _, path := range p.PathSet {
				rewrite = rewrite || keyedPathRE.MatchString(path)
			}
		}
	}
	if !rewrite {
		return body, nil
	}
	keyed := &keyedRequest{paths: map[string][]string{}}
	var out bytes.Buffer
	fmt.Fprintf(&out, `%s<%s xmlns="urn:vim25"><_this type="%s">%s</_this>`,
		soapEnvelopeStart, method, decoded.This.Type, escaped(decoded.This.Value))
	for _, spec := range specs {
		out.WriteString("<specSet>")
		for _, p := range spec.PropSet {
			fmt.Fprintf(&out, "<propSet><type>%s</type>", escaped(p.Type))
			if p.All != nil {
				fmt.Fprintf(&out, "<all>%t</all>", *p.All)
			}
			for _, path := range p.PathSet {
				if keyedPathRE.MatchString(path) {
					keyed.paths[p.Type] = append(keyed.paths[p.Type], path)
					continue
				}
				fmt.Fprintf(&out, "<pathSet>%s</pathSet>", escaped(path))
			}
			out.WriteString("</propSet>")
		}
		for _, ref := range walkObjects(spec.ObjectSet) {
			keyed.objects = append(keyed.objects, ref)
			fmt.Fprintf(&out, `<objectSet><obj type="%s">%s</obj><skip>false</skip></objectSet>`,
				escaped(ref.Type), escaped(ref.Value))
		}
		out.WriteString("</specSet>")
	}
	if options != nil {
		out.WriteString("<options>")
		if options.MaxObjects != 0 {
			fmt.Fprintf(&out, "<maxObjects>%d</maxObjects>", options.MaxObjects)
		}
		out.WriteString("</options>")
	}
	fmt.Fprintf(&out, "</%s>%s", method, soapEnvelopeEnd)
	if len(keyed.paths) == 0 {
		keyed = nil
	}
	return out.Bytes(), keyed
}

func escaped(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// walkObjects returns the objects the object specs select, in the order
// found, each once: the starting objects unless skipped, and every object
// reached through the traversal specs that apply to the type of the object
// they start from.
func walkObjects(set []types.ObjectSpec) []types.ManagedObjectReference {
	var found []types.ManagedObjectReference
	seen := map[types.ManagedObjectReference]bool{}
	for _, o := range set {
		named := map[string]*types.TraversalSpec{}
		collectNamed(o.SelectSet, named)

		visited := map[string]bool{} // "spec/object": each spec once per object
		var visit func(ref types.ManagedObjectReference, skip bool, selects []types.BaseSelectionSpec)
		visit = func(ref types.ManagedObjectReference, skip bool, selects []types.BaseSelectionSpec) {
			if !skip && !seen[ref] {
				seen[ref] = true
				found = append(found, ref)
			}
			for _, sel := range selects {
				ts := resolveSpec(sel, named)
				if ts == nil || !isA(ref, ts.Type) {
					continue // a traversal applies to objects of its type (or a subtype) only
				}
				key := ts.Name + "/" + ts.Path + "/" + ref.Type + ":" + ref.Value
				if visited[key] {
					continue
				}
				visited[key] = true
				for _, next := range pathRefs(ref, ts.Path) {
					visit(next, ts.Skip != nil && *ts.Skip, ts.SelectSet)
				}
			}
		}
		visit(o.Obj, o.Skip != nil && *o.Skip, o.SelectSet)
	}
	return found
}

// isA tells whether the object is of the managed type kind or of one derived
// from it (a ClusterComputeResource is a ComputeResource): the simulator's
// objects embed their types' structs, down to ManagedEntity.
func isA(ref types.ManagedObjectReference, kind string) bool {
	if ref.Type == kind {
		return true
	}
	obj := simulator.Map.Get(ref)
	if obj == nil {
		return false
	}
	return embeds(reflect.TypeOf(obj), kind, 0)
}

func embeds(t reflect.Type, kind string, depth int) bool {
	for t.Kind() == reflect.Ptr {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || depth > 8 {
		return false
	}
	if t.Name() == kind {
		return true
	}
	for i := 0; i < t.NumField(); i++ {
		if f := t.Field(i); f.Anonymous && embeds(f.Type, kind, depth+1) {
			return true
		}
	}
	return false
}

// collectNamed indexes every named traversal spec under set, recursively.
func collectNamed(set []types.BaseSelectionSpec, named map[string]*types.TraversalSpec) {
	for _, sel := range set {
		if ts := asTraversal(sel); ts != nil {
			if ts.Name != "" && named[ts.Name] == nil {
				named[ts.Name] = ts
				collectNamed(ts.SelectSet, named)
			} else if ts.Name == "" {
				collectNamed(ts.SelectSet, named)
			}
		}
	}
}

// asTraversal is the selection as a traversal spec, if it is one.
func asTraversal(sel types.BaseSelectionSpec) *types.TraversalSpec {
	if ts, ok := sel.(*types.TraversalSpec); ok && ts != nil {
		return ts
	}
	return nil
}

// resolveSpec is the traversal a selection names (or is).
func resolveSpec(sel types.BaseSelectionSpec, named map[string]*types.TraversalSpec) *types.TraversalSpec {
	if ts := asTraversal(sel); ts != nil {
		return ts
	}
	if sel == nil || reflect.ValueOf(sel).IsNil() {
		return nil
	}
	if spec := sel.GetSelectionSpec(); spec != nil {
		return named[spec.Name]
	}
	return nil
}

// propertyOf reads a property of an object by its dotted vSphere path
// (config.extraConfig), through pointers and embedded structs; the zero
// Value when the object or a step of the path is not there.
func propertyOf(ref types.ManagedObjectReference, path string) reflect.Value {
	obj := simulator.Map.Get(ref)
	if obj == nil {
		return reflect.Value{}
	}
	v := reflect.ValueOf(obj)
	for _, part := range strings.Split(path, ".") {
		for v.Kind() == reflect.Ptr || v.Kind() == reflect.Interface {
			if v.IsNil() {
				return reflect.Value{}
			}
			v = v.Elem()
		}
		if v.Kind() != reflect.Struct {
			return reflect.Value{}
		}
		if v = fieldNamed(v, part); !v.IsValid() {
			return reflect.Value{}
		}
	}
	return v
}

// pathRefs reads a property holding references (one or a list) of an object.
func pathRefs(ref types.ManagedObjectReference, path string) []types.ManagedObjectReference {
	v := propertyOf(ref, path)
	if !v.IsValid() {
		return nil
	}
	var out []types.ManagedObjectReference
	switch val := v.Interface().(type) {
	case types.ManagedObjectReference:
		out = append(out, val)
	case *types.ManagedObjectReference:
		if val != nil {
			out = append(out, *val)
		}
	case []types.ManagedObjectReference:
		out = append(out, val...)
	}
	return out
}

// fieldNamed finds a struct field by its vSphere property name (the Go field
// with the first letter upper-cased), looking into embedded structs too.
func fieldNamed(v reflect.Value, name string) reflect.Value {
	return v.FieldByNameFunc(func(field string) bool { return strings.EqualFold(field, name) })
}
