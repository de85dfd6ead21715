package main

// Keyed property paths in RetrieveProperties(Ex), as vCenter answers them:
// config.extraConfig["volume-<id>"] names one entry of an option list (Nova
// and Cinder's driver read one key this way). The stock collector refuses
// such paths (InvalidProperty). flattenTraversal (traversal.go) takes them
// out of the request; the stock collector answers the rest, and each
// object's keyed entries are added to its properties: the OptionValue whose
// key is the one asked for, under the path as asked. An entry that is not
// there is left out, as an unset property is. Simplification: only the
// quoted-key form on lists of OptionValue (extraConfig and the like).

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"

	"github.com/vmware/govmomi/vim25/types"
)

var keyedPathRE = regexp.MustCompile(`^(.+)\["(.*)"\]$`)

// serveKeyed answers a rewritten RetrieveProperties(Ex) (r's body) with the
// stock answer plus the keyed paths' values.
func serveKeyed(next http.Handler, w http.ResponseWriter, r *http.Request, method string, keyed *keyedRequest) {
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	resp := rec.Body.Bytes()
	if rec.Code == http.StatusOK {
		resp = spliceKeyed(method, resp, keyed)
	}
	for k, v := range rec.Header() {
		if k != "Content-Length" {
			w.Header()[k] = v
		}
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(resp)
}

func spliceKeyed(method string, resp []byte, keyed *keyedRequest) []byte {
	seen := map[types.ManagedObjectReference]bool{}
	for _, ref := range keyed.objects {
		if seen[ref] {
			continue
		}
		seen[ref] = true
		var props strings.Builder
		for kind, paths := range keyed.paths {
			if !isA(ref, kind) {
				continue
			}
			for _, path := range paths {
				props.WriteString(keyedProp(ref, path))
			}
		}
		if props.Len() == 0 {
			continue
		}
		obj := fmt.Sprintf(`<obj type="%s">%s</obj>`, escaped(ref.Type), escaped(ref.Value))
		if i := bytes.Index(resp, []byte(obj)); i >= 0 {
			at := i + len(obj)
			resp = append(resp[:at:at], append([]byte(props.String()), resp[at:]...)...)
			continue
		}
		content := obj + props.String()
		if method == "RetrievePropertiesEx" {
			content = "<objects>" + content + "</objects>"
			if i := bytes.Index(resp, []byte("<returnval>")); i >= 0 {
				at := i + len("<returnval>")
				resp = append(resp[:at:at], append([]byte(content), resp[at:]...)...)
				continue
			}
		}
		end := []byte("</" + method + "Response>")
		if i := bytes.Index(resp, end); i >= 0 {
			resp = append(resp[:i:i], append([]byte("<returnval>"+content+"</returnval>"), resp[i:]...)...)
		}
	}
	return resp
}

// keyedProp is one <propSet> for path on the object, or "" when unset.
func keyedProp(ref types.ManagedObjectReference, path string) string {
	m := keyedPathRE.FindStringSubmatch(path)
	if m == nil {
		return ""
	}
	v := propertyOf(ref, m[1]) // traversal.go
	if !v.IsValid() {
		return ""
	}
	options, ok := v.Interface().([]types.BaseOptionValue)
	if !ok {
		return ""
	}
	for _, o := range options {
		ov := o.GetOptionValue()
		if ov == nil || ov.Key != m[2] {
			continue
		}
		return fmt.Sprintf(`<propSet><name>%s</name><val xsi:type="OptionValue"><key>%s</key>`+
			`<value xsi:type="xsd:string">%s</value></val></propSet>`,
			escaped(path), escaped(ov.Key), escaped(fmt.Sprint(ov.Value)))
	}
	return ""
}
