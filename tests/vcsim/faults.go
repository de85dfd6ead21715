package main

// Fault injection: tests ask for the next calls of a SOAP method to fail the
// way vCenter calls fail in the field (POST /_ctl/faults, see README.md).
// Rules apply to any SOAP method, stock or intercepted, in the middleware,
// before the method runs.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Fault kinds.
const (
	kindSOAP           = "soap"            // answer with a SOAP fault; the call is not executed
	kindTask           = "task"            // return a task that ends in error; the call is not executed
	kindDrop           = "drop"            // close the connection without answering; not executed
	kindDropAfter      = "drop_after"      // execute the call, then close the connection unanswered
	kindExpireSessions = "expire_sessions" // every session seen so far becomes invalid
	kindHTTP503        = "http503"         // answer HTTP 503 Service Unavailable; not executed
)

var faultKinds = map[string]bool{
	kindSOAP: true, kindTask: true, kindDrop: true, kindDropAfter: true, kindExpireSessions: true, kindHTTP503: true,
}

// faultRule is one injected fault, as posted and as listed by GET /faults.
type faultRule struct {
	ID     int    `json:"id"`
	Method string `json:"method"`          // SOAP method name, or "*" for every method
	Kind   string `json:"kind"`            // one of faultKinds
	Fault  string `json:"fault,omitempty"` // vSphere fault type, for soap and task
	Count  int    `json:"count"`           // calls left to fail; -1 = until cleared
	Skip   int    `json:"skip"`            // matching calls still to let through first
	Match  string `json:"match,omitempty"` // only requests whose body contains this
	Fired  int    `json:"fired"`           // calls this rule has failed so far
}

type faultSet struct {
	mu     sync.Mutex
	nextID int
	rules  []*faultRule
}

// take returns a copy of the first rule that fires for this call, consuming
// one of its counts, or nil.
func (f *faultSet) take(method string, body []byte) *faultRule {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, r := range f.rules {
		if r.Method != "*" && r.Method != method {
			continue
		}
		if r.Match != "" && !strings.Contains(string(body), r.Match) {
			continue
		}
		if r.Skip > 0 {
			r.Skip--
			continue
		}
		r.Fired++
		if r.Count > 0 {
			r.Count--
			if r.Count == 0 {
				f.rules = append(f.rules[:i], f.rules[i+1:]...)
			}
		}
		fired := *r
		return &fired
	}
	return nil
}

// newFault makes an instance of the named vSphere fault type, with the
// references it must carry filled in so that clients can decode it.
func newFault(name string, this types.ManagedObjectReference) (types.BaseMethodFault, error) {
	t, ok := types.TypeFunc()(name)
	if !ok {
		return nil, fmt.Errorf("unknown vSphere type %q", name)
	}
	if t.Kind() != reflect.Struct {
		return nil, fmt.Errorf("%q is not a fault type", name)
	}
	v := reflect.New(t)
	fault, ok := v.Interface().(types.BaseMethodFault)
	if !ok {
		return nil, fmt.Errorf("%q is not a fault type (no MethodFault)", name)
	}
	fillRefs(v.Elem(), this)
	return fault, nil
}

// fillRefs sets empty managed object references in a fault: Task fields to
// a task reference (clients type-check them), the others to the object the
// call was made on, as vCenter names it in NoPermission.object.
func fillRefs(v reflect.Value, this types.ManagedObjectReference) {
	refType := reflect.TypeOf(types.ManagedObjectReference{})
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		sf := v.Type().Field(i)
		switch {
		case f.Type() == refType:
			if f.Interface().(types.ManagedObjectReference).Type != "" {
				continue
			}
			ref := this
			if sf.Name == "Task" {
				ref = types.ManagedObjectReference{Type: "Task", Value: "task-injected"}
			}
			if ref.Type == "" {
				ref = types.ManagedObjectReference{Type: "ServiceInstance", Value: "ServiceInstance"}
			}
			f.Set(reflect.ValueOf(ref))
		case f.Kind() == reflect.Struct && sf.Anonymous:
			fillRefs(f, this)
		}
	}
}

// The element may carry a namespace prefix (suds, i.e. oslo.vmware and
// Cinder, sends <ns0:_this type="VirtualMachine">vm-1</ns0:_this>).
var thisRE = regexp.MustCompile(`<(?:[\w-]+:)?_this[^>]*\stype="([^"]+)"[^>]*>([^<]+)</(?:[\w-]+:)?_this>`)

// thisOf returns the _this reference of a SOAP request, without decoding it.
func thisOf(body []byte) types.ManagedObjectReference {
	m := thisRE.FindSubmatch(body)
	if m == nil {
		return types.ManagedObjectReference{}
	}
	return types.ManagedObjectReference{Type: string(m[1]), Value: strings.TrimSpace(string(m[2]))}
}

// notAuthenticated is the fault vCenter answers a call without a valid
// session with.
func notAuthenticated(body []byte) *types.NotAuthenticated {
	obj := thisOf(body)
	if obj.Type == "" {
		obj = types.ManagedObjectReference{Type: "ServiceInstance", Value: "ServiceInstance"}
	}
	return &types.NotAuthenticated{NoPermission: types.NoPermission{Object: obj, PrivilegeId: "System.View"}}
}

// taskEntity is the entity a task of a call on this object reports: the VM
// for snapshot methods, as vCenter does.
func taskEntity(this types.ManagedObjectReference) types.ManagedObjectReference {
	if snap, ok := simulator.Map.Get(this).(*simulator.VirtualMachineSnapshot); ok {
		return snap.Vm
	}
	return this
}

// injectFault fails the call as rule says. serve runs the call normally
// (for drop_after). It reports whether the call was answered.
func (s *sim) injectFault(next http.Handler, w http.ResponseWriter, r *http.Request, method string, body []byte,
	rule *faultRule, serve func(http.ResponseWriter)) bool {
	this := thisOf(body)
	switch rule.Kind {
	case kindSOAP:
		fault, err := newFault(rule.Fault, this)
		if err != nil {
			fault = &types.SystemError{Reason: err.Error()}
		}
		writeFault(w, injectedMessage(rule), fault)
	case kindTask:
		if !authenticated(next, r) {
			writeFault(w, "The session is not authenticated.", notAuthenticated(body))
			return true
		}
		if simulator.Map.Get(this) == nil {
			writeFault(w, "The object has already been deleted or has not been completely created",
				&types.ManagedObjectNotFound{Obj: this})
			return true
		}
		fault, err := newFault(rule.Fault, this)
		if err != nil {
			fault = &types.SystemError{Reason: err.Error()}
		}
		ref := s.startTask(taskEntity(this), method, 0, func() (types.AnyType, types.BaseMethodFault) {
			return nil, fault
		})
		writeReturnRef(w, method, ref)
	case kindDrop:
		dropConnection(w)
	case kindDropAfter:
		serve(httptest.NewRecorder())
		dropConnection(w)
	case kindHTTP503:
		http.Error(w, "503 Service Unavailable (injected by the simulator)", http.StatusServiceUnavailable)
	case kindExpireSessions:
		s.sessions.expireAll()
		return false // the call goes on, with its now expired session
	}
	return true
}

func injectedMessage(rule *faultRule) string {
	return fmt.Sprintf("%s (injected by the simulator, rule %d)", rule.Fault, rule.ID)
}

// dropConnection closes the client's TCP connection without an answer.
func dropConnection(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler) // the server closes the connection
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}

// sessionTracker remembers the session cookies clients use, so that
// expire_sessions can invalidate every session at once: requests carrying an
// expired cookie get NotAuthenticated, as from vCenter after a session
// timeout; a new Login gives a new, valid session.
type sessionTracker struct {
	mu      sync.Mutex
	seen    map[string]bool
	expired map[string]bool
}

func newSessionTracker() *sessionTracker {
	return &sessionTracker{seen: map[string]bool{}, expired: map[string]bool{}}
}

// note records a session cookie value.
func (t *sessionTracker) note(value string) {
	if value == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.expired[value] {
		t.seen[value] = true
	}
}

func (t *sessionTracker) expireAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for v := range t.seen {
		t.expired[v] = true
	}
	t.seen = map[string]bool{}
}

func (t *sessionTracker) isExpired(value string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.expired[value]
}

// sessionFree lists the methods a client may call without a session.
var sessionFree = map[string]bool{
	"RetrieveServiceContent": true, "Login": true, "LoginByToken": true,
	"LoginExtensionByCertificate": true, "LoginExtensionBySubjectName": true,
}

// checkSession notes the request's session cookie and reports whether the
// session has been expired. For the methods that need no session, an
// expired cookie is removed so that, for example, Login starts afresh.
func (s *sim) checkSession(r *http.Request, method string) (expired bool) {
	c, err := r.Cookie(soap.SessionCookieName)
	if err != nil {
		return false
	}
	if !s.sessions.isExpired(c.Value) {
		s.sessions.note(c.Value)
		return false
	}
	if !sessionFree[method] {
		return true
	}
	kept := make([]*http.Cookie, 0)
	for _, other := range r.Cookies() {
		if other.Name != soap.SessionCookieName {
			kept = append(kept, other)
		}
	}
	r.Header.Del("Cookie")
	for _, other := range kept {
		r.AddCookie(other)
	}
	return false
}

// noteNewSessions records the session cookie a Login answer sets.
func (s *sim) noteNewSessions(w http.ResponseWriter) {
	for _, c := range (&http.Response{Header: w.Header()}).Cookies() {
		if c.Name == soap.SessionCookieName {
			s.sessions.note(c.Value)
		}
	}
}

// controlFaults serves /_ctl/faults.
func (s *sim) controlFaults(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		s.faults.mu.Lock()
		out := make([]faultRule, 0, len(s.faults.rules))
		for _, rule := range s.faults.rules {
			out = append(out, *rule)
		}
		s.faults.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	case http.MethodDelete:
		s.faults.mu.Lock()
		s.faults.rules = nil
		s.faults.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	case http.MethodPost:
		rule := faultRule{Count: 1}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rule); err != nil {
			ctlError(w, http.StatusBadRequest, "faults: the body must be a JSON object "+
				`like {"method": "CreateSnapshot_Task", "kind": "soap", "fault": "FileLocked"}: `+err.Error())
			return
		}
		if msg := validateRule(&rule); msg != "" {
			ctlError(w, http.StatusBadRequest, "faults: "+msg)
			return
		}
		s.faults.mu.Lock()
		s.faults.nextID++
		rule.ID = s.faults.nextID
		rule.Fired = 0
		s.faults.rules = append(s.faults.rules, &rule)
		s.faults.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]int{"id": rule.ID})
	default:
		ctlError(w, http.StatusMethodNotAllowed, "faults: use GET, POST or DELETE")
	}
}

// validateRule checks a posted rule and says what is wrong with it.
func validateRule(rule *faultRule) string {
	if rule.Method == "" {
		return `"method" is required (a SOAP method name such as "CreateSnapshot_Task", or "*")`
	}
	if !faultKinds[rule.Kind] {
		return fmt.Sprintf("unknown kind %q; use one of soap, task, drop, drop_after, expire_sessions, http503", rule.Kind)
	}
	if rule.Count == 0 || rule.Count < -1 {
		return `"count" must be a positive number of calls, or -1 for every call until DELETE /faults`
	}
	if rule.Skip < 0 {
		return `"skip" must not be negative`
	}
	switch rule.Kind {
	case kindSOAP, kindTask:
		if rule.Fault == "" {
			return fmt.Sprintf(`kind %q needs "fault", a vSphere fault type such as "FileLocked"`, rule.Kind)
		}
		if _, err := newFault(rule.Fault, types.ManagedObjectReference{}); err != nil {
			return err.Error()
		}
		if rule.Kind == kindTask && !strings.HasSuffix(rule.Method, "_Task") {
			return fmt.Sprintf("kind task needs a method that returns a task (…_Task), not %q", rule.Method)
		}
	default:
		if rule.Fault != "" {
			return fmt.Sprintf(`kind %q takes no "fault"`, rule.Kind)
		}
	}
	return ""
}
