package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

// sim holds our additions to the stock simulator: the call counter, the
// scenario registry and the control API.
type sim struct {
	root   string
	client *vim25.Client

	mu    sync.Mutex
	calls map[string]int // SOAP method name -> calls received over HTTP since the last reset
	total map[string]int // the same, never reset (the suite checks Fetch stays 0)
	seq   int            // scenarios seeded so far, for unique names

	timing   *timing
	faults   *faultSet
	sessions *sessionTracker
	tasksWG  sync.WaitGroup
	// modelMu serialises our changes to the model (disk chains, files,
	// relocations), which span several VMs and datastores at once.
	modelMu sync.Mutex
}

func newSim(root string, client *vim25.Client) *sim {
	simulator.Map.AddHandler(taskEntityFixer{})
	return &sim{root: root, client: client, calls: map[string]int{}, total: map[string]int{}, timing: newTiming(),
		faults: &faultSet{}, sessions: newSessionTracker()}
}

var soapMethodRE = regexp.MustCompile(`<(?:[\w-]+:)?Body[^>]*>\s*<(?:[\w-]+:)?([A-Za-z_][\w]*)`)

// soapMethod returns the name of the SOAP method a request body calls.
func soapMethod(body []byte) string {
	m := soapMethodRE.FindSubmatch(body)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// middleware routes /_ctl/ to the control API; every SOAP call is counted,
// checked against expired sessions and injected faults, then served by our
// interceptor for its method or by the stock handler.
func (s *sim) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/_ctl/") {
			s.control(w, r)
			return
		}
		if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/sdk") {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		body = unprefixTypes(body) // suds.go
		method := soapMethod(body)
		s.mu.Lock()
		s.calls[method]++
		s.total[method]++
		s.mu.Unlock()
		serve := func(w http.ResponseWriter) {
			if s.checkSession(r, method) {
				writeFault(w, "The session is not authenticated.", notAuthenticated(body))
				return
			}
			body, keyed := flattenTraversal(method, body) // traversal.go
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
			if keyed != nil {
				serveKeyed(next, w, r, method, keyed) // keyed.go
				return
			}
			if method == "DisableMethods" || method == "EnableMethods" {
				if !authenticated(next, r) {
					writeFault(w, "The session is not authenticated.", &types.NotAuthenticated{})
				} else {
					s.serveMethodToggles(w, method, body)
				}
				return
			}
			if fault := disabledFault(method, body); fault != nil {
				writeFault(w, faultMessage(fault), fault)
				return
			}
			if !s.intercept(next, w, r, method, body) {
				next.ServeHTTP(w, r)
			}
			s.noteNewSessions(w)
		}
		if rule := s.faults.take(method, body); rule != nil {
			if s.injectFault(next, w, r, method, body, rule, serve) {
				return
			}
		}
		serve(w)
	})
}

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func ctlError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// control serves the test control API (documented in README.md).
func (s *sim) control(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/_ctl")
	switch {
	case path == "/health":
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	case path == "/calls" && r.Method == http.MethodGet:
		s.mu.Lock()
		src := s.calls
		if r.URL.Query().Get("total") != "" {
			src = s.total
		}
		out := make(map[string]int, len(src))
		for k, v := range src {
			out[k] = v
		}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	case path == "/calls/reset" && r.Method == http.MethodPost:
		s.mu.Lock()
		s.calls = map[string]int{}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	case path == "/scenarios" && r.Method == http.MethodGet:
		names := make([]string, 0, len(scenarios))
		for n := range scenarios {
			names = append(names, n)
		}
		sort.Strings(names)
		writeJSON(w, http.StatusOK, names)
	case strings.HasPrefix(path, "/scenario/") && r.Method == http.MethodPost:
		s.seedScenario(w, r, strings.TrimPrefix(path, "/scenario/"))
	case path == "/faults":
		s.controlFaults(w, r)
	case path == "/timing":
		s.controlTiming(w, r)
	case path == "/tools" && r.Method == http.MethodPost:
		s.controlTools(w, r)
	default:
		if route, ok := controlRoutes[path]; ok {
			route(s, w, r)
			return
		}
		ctlError(w, http.StatusNotFound, "no such control endpoint: "+r.Method+" "+r.URL.Path)
	}
}
