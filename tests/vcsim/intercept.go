package main

// Interception: SOAP methods whose stock behaviour is not like vCenter's are
// handled here, in front of the stock handler. We never wrap or replace the
// simulator's own objects (its code type-asserts them); we change the model
// the same way its handlers do, under its locks, and answer the SOAP call.

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// soapCall is a decoded SOAP request for an intercepted method.
type soapCall struct {
	Name string                       // e.g. "CreateSnapshot_Task"
	This types.ManagedObjectReference // the object the method is called on
	Body interface{}                  // e.g. *types.CreateSnapshot_Task
}

// interceptor handles one SOAP method. It returns the value of the
// response's returnval (only managed object references are supported) or a
// fault, sent as a SOAP fault.
type interceptor func(s *sim, call *soapCall) (types.ManagedObjectReference, types.BaseMethodFault)

// passThrough is what an interceptor returns, as its fault, for a call it
// leaves to the stock handler (e.g. a ReconfigVM_Task spec with settings we
// do not model).
type passThrough struct{ types.MethodFault }

// interceptors maps SOAP method names to our handlers. Files that model a
// behaviour register theirs in an init function.
var interceptors = map[string]interceptor{}

// rawInterceptor handles a method whose answer is not one reference: it
// returns the response element's content (e.g. several <returnval>s).
type rawInterceptor func(s *sim, call *soapCall) (string, types.BaseMethodFault)

var rawInterceptors = map[string]rawInterceptor{}

const soapEnvelopeStart = `<?xml version="1.0" encoding="UTF-8"?>` +
	`<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" ` +
	`xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" ` +
	`xmlns:xsd="http://www.w3.org/2001/XMLSchema" ` +
	`xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`

const soapEnvelopeEnd = `</soapenv:Body></soapenv:Envelope>`

// authenticated asks the stock handler whether the request's session is
// valid, with a cheap call carrying the same cookies.
func authenticated(next http.Handler, r *http.Request) bool {
	probe := soapEnvelopeStart +
		`<CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime>` +
		soapEnvelopeEnd
	req := httptest.NewRequest(http.MethodPost, r.URL.Path, strings.NewReader(probe))
	for _, c := range r.Cookies() {
		req.AddCookie(c)
	}
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, req)
	return rec.Code == http.StatusOK
}

// intercept serves an intercepted method; it reports false when the method
// is not intercepted and the stock handler should run.
func (s *sim) intercept(next http.Handler, w http.ResponseWriter, r *http.Request, method string, body []byte) bool {
	handler, ok := interceptors[method]
	raw, isRaw := rawInterceptors[method]
	if !ok && !isRaw {
		return false
	}
	if !authenticated(next, r) {
		writeFault(w, "The session is not authenticated.", &types.NotAuthenticated{})
		return true
	}
	decoded, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil {
		writeFault(w, err.Error(), &types.InvalidRequest{})
		return true
	}
	call := &soapCall{Name: method, This: decoded.This, Body: decoded.Body}
	if isRaw {
		content, fault := raw(s, call)
		if fault != nil {
			writeFault(w, faultMessage(fault), fault)
			return true
		}
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		fmt.Fprintf(w, `%s<%sResponse xmlns="urn:vim25">%s</%sResponse>%s`,
			soapEnvelopeStart, method, content, method, soapEnvelopeEnd)
		return true
	}
	ref, fault := handler(s, call)
	if _, ok := fault.(*passThrough); ok {
		return false
	}
	if fault != nil {
		writeFault(w, faultMessage(fault), fault)
		return true
	}
	writeReturnRef(w, method, ref)
	return true
}

// writeReturnRef answers a SOAP call whose returnval is a managed object
// reference (a task, for the methods we model).
func writeReturnRef(w http.ResponseWriter, method string, ref types.ManagedObjectReference) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, `%s<%sResponse xmlns="urn:vim25"><returnval type="%s">%s</returnval></%sResponse>%s`,
		soapEnvelopeStart, method, ref.Type, ref.Value, method, soapEnvelopeEnd)
}

// faultMessage is the faultstring for a fault: its type name, as vCenter
// puts a localized message there and clients show it.
func faultMessage(fault types.BaseMethodFault) string {
	if f := fault.GetMethodFault(); f != nil && len(f.FaultMessage) > 0 {
		return f.FaultMessage[0].Message
	}
	return reflect.TypeOf(fault).Elem().Name()
}

// writeFault answers with a SOAP fault whose detail is the vSphere fault,
// named "<Type>Fault" with xsi:type, as vCenter does.
func writeFault(w http.ResponseWriter, msg string, fault types.BaseMethodFault) {
	kind := reflect.TypeOf(fault).Elem().Name()
	var detail bytes.Buffer
	enc := xml.NewEncoder(&detail)
	start := xml.StartElement{
		Name: xml.Name{Local: kind + "Fault"},
		Attr: []xml.Attr{
			{Name: xml.Name{Local: "xmlns"}, Value: "urn:vim25"},
			{Name: xml.Name{Local: "xsi:type"}, Value: kind},
		},
	}
	if err := enc.EncodeElement(fault, start); err != nil {
		detail.Reset()
	}
	_ = enc.Flush()
	var esc bytes.Buffer
	_ = xml.EscapeText(&esc, []byte(msg))
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `%s<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail>%s</detail></soapenv:Fault>%s`,
		soapEnvelopeStart, esc.String(), detail.String(), soapEnvelopeEnd)
}

// vmOf returns the simulator's VM for a reference, or a fault.
func vmOf(ref types.ManagedObjectReference) (*simulator.VirtualMachine, types.BaseMethodFault) {
	obj := simulator.Map.Get(ref)
	vm, ok := obj.(*simulator.VirtualMachine)
	if !ok {
		return nil, &types.ManagedObjectNotFound{Obj: ref}
	}
	return vm, nil
}
