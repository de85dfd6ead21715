package main

// Requests as suds (oslo.vmware, Cinder) writes them. suds qualifies the
// vim25 namespace with a prefix of its own and names polymorphic values'
// types with it (xsi:type="ns0:TraversalSpec", "ns0:VirtualDisk"); vCenter
// resolves the prefix. govmomi 0.24.2's decoder looks types up by the bare
// name and decodes such values as nil (a traversal spec, a device change
// lost). So the prefix bound to urn:vim25 is taken out of xsi:type values
// before any handler reads the body.
//
// And suds writes Python's naive datetimes as xsd:dateTime values without a
// time zone (Cinder's extension's lastHeartbeatTime), which XML Schema allows
// and vCenter takes; govmomi's decoder wants RFC 3339 with a zone and fails
// the call. Such values are read as UTC.

import (
	"bytes"
	"regexp"
)

var vim25Prefix = regexp.MustCompile(`xmlns:([A-Za-z_][\w.-]*)="urn:vim25"`)

var zonelessTime = regexp.MustCompile(`>(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?)<`)

// unprefixTypes rewrites xsi:type="<p>:Name" to xsi:type="Name" for each
// prefix <p> the body binds to urn:vim25, and gives zoneless times "Z".
func unprefixTypes(body []byte) []byte {
	for _, m := range vim25Prefix.FindAllSubmatch(body, -1) {
		body = bytes.ReplaceAll(body, []byte(`xsi:type="`+string(m[1])+`:`), []byte(`xsi:type="`))
	}
	return zonelessTime.ReplaceAll(body, []byte(`>${1}Z<`))
}
