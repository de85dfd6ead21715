package main

// Disk content for tests: POST /_ctl/write appends a token to the top file
// of a VM's disk, as the guest would; GET /_ctl/read returns a chain and
// its tokens base to top (of a VM's disk, a snapshot's disk, or a file by
// following the descriptors' parent hints); GET /_ctl/files lists a
// datastore's files; GET /_ctl/chain shows a VM's chains for debugging.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	controlRoutes["/write"] = (*sim).controlWrite
	controlRoutes["/read"] = (*sim).controlRead
	controlRoutes["/files"] = (*sim).controlFiles
	controlRoutes["/chain"] = (*sim).controlChain
}

// vmByValue finds a VM by moref value ("vm-42").
func vmByValue(value string) *simulator.VirtualMachine {
	vm, _ := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: value}).(*simulator.VirtualMachine)
	return vm
}

// diskByKey finds a disk in a device list by device key.
func diskByKey(devices []types.BaseVirtualDevice, key int32) *types.VirtualDisk {
	for _, d := range disksOf(devices) {
		if d.Key == key {
			return d
		}
	}
	return nil
}

func (s *sim) controlWrite(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		ctlError(w, http.StatusMethodNotAllowed, "write: use POST")
		return
	}
	var req struct {
		VM    string `json:"vm"`
		Disk  int32  `json:"disk"`
		Token string `json:"token"`
		Bytes int64  `json:"bytes"` // the guest data the token stands for (0: its own size)
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.VM == "" || req.Token == "" ||
		strings.ContainsAny(req.Token, "\t\n") || req.Bytes < 0 {
		ctlError(w, http.StatusBadRequest, `write: the body must be {"vm": "vm-42", "disk": 2001, "token": "t1"} and may add "bytes": 1073741824 (the guest data the token stands for); a token has no tab or newline`)
		return
	}
	if req.Bytes > 0 {
		req.Token = fmt.Sprintf("%s\t%d", req.Token, req.Bytes)
	}
	s.modelMu.Lock()
	defer s.modelMu.Unlock()
	vm := vmByValue(req.VM)
	if vm == nil {
		ctlError(w, http.StatusNotFound, "write: no VM "+req.VM)
		return
	}
	top, err := s.write(vm, req.Disk, req.Token)
	if err != nil {
		ctlError(w, http.StatusNotFound, "write: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"file": top})
}

// write appends a token to the top file of a VM's disk and returns that
// file's path. The caller holds modelMu.
func (s *sim) write(vm *simulator.VirtualMachine, key int32, token string) (string, error) {
	disk := diskByKey(vm.Config.Hardware.Device, key)
	if disk == nil {
		return "", fmt.Errorf("%s has no disk with key %d", vm.Self.Value, key)
	}
	top := flatBacking(disk).FileName
	return top, s.appendTokens(s.dataFile(top), token)
}

// readChain reads the tokens of a chain given top first, returned base
// first.
func (s *sim) readChain(chain []string) ([]string, error) {
	tokens := []string{}
	for i := len(chain) - 1; i >= 0; i-- {
		t, err := s.readTokens(s.dataFile(chain[i]))
		if err != nil {
			return nil, err
		}
		tokens = append(tokens, t...)
	}
	return tokens, nil
}

func (s *sim) controlRead(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.modelMu.Lock()
	defer s.modelMu.Unlock()
	var chain []string
	key, _ := strconv.Atoi(q.Get("disk"))
	switch {
	case q.Get("file") != "":
		p := descriptorOf(q.Get("file"))
		seen := map[string]bool{}
		for p != "" && !seen[p] {
			seen[p] = true
			d, err := s.readDescriptor(p)
			if err != nil {
				ctlError(w, http.StatusNotFound, "read: "+p+": "+err.Error())
				return
			}
			chain = append(chain, p)
			p = d.Parent
		}
	case q.Get("vm") != "":
		vm := vmByValue(q.Get("vm"))
		if vm == nil {
			ctlError(w, http.StatusNotFound, "read: no VM "+q.Get("vm"))
			return
		}
		disk := diskByKey(vm.Config.Hardware.Device, int32(key))
		if disk == nil {
			ctlError(w, http.StatusNotFound, "read: "+q.Get("vm")+" has no disk with key "+q.Get("disk"))
			return
		}
		chain = chainPaths(flatBacking(disk))
	case q.Get("snapshot") != "":
		ref := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: q.Get("snapshot")}
		snap, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot)
		if !ok {
			ctlError(w, http.StatusNotFound, "read: no snapshot "+ref.Value)
			return
		}
		disk := diskByKey(snap.Config.Hardware.Device, int32(key))
		if disk == nil {
			ctlError(w, http.StatusNotFound, "read: snapshot "+ref.Value+" has no disk with key "+q.Get("disk"))
			return
		}
		chain = chainPaths(flatBacking(disk))
	default:
		ctlError(w, http.StatusBadRequest, "read: give vm=&disk=, snapshot=&disk= or file=")
		return
	}
	tokens, err := s.readChain(chain)
	if err != nil {
		ctlError(w, http.StatusNotFound, "read: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]interface{}{"chain": chain, "tokens": tokens})
}

func (s *sim) controlFiles(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("datastore")
	ds := datastoreByName(name)
	if ds == nil {
		ctlError(w, http.StatusNotFound, "files: no datastore "+strconv.Quote(name))
		return
	}
	root := ds.Info.GetDatastoreInfo().Url
	files := []string{}
	err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		files = append(files, dsPath(name, filepath.ToSlash(rel)))
		return nil
	})
	if err != nil {
		ctlError(w, http.StatusInternalServerError, "files: "+err.Error())
		return
	}
	sort.Strings(files)
	writeJSON(w, http.StatusOK, files)
}

// chainView is a disk chain for /_ctl/chain.
type chainView struct {
	Snapshot string   `json:"snapshot,omitempty"`
	Disk     int32    `json:"disk"`
	Chain    []string `json:"chain"`
	Tokens   []string `json:"tokens"`
}

func (s *sim) controlChain(w http.ResponseWriter, r *http.Request) {
	s.modelMu.Lock()
	defer s.modelMu.Unlock()
	vm := vmByValue(r.URL.Query().Get("vm"))
	if vm == nil {
		ctlError(w, http.StatusNotFound, "chain: no VM "+strconv.Quote(r.URL.Query().Get("vm")))
		return
	}
	out := []chainView{}
	for _, c := range vmChains(vm) {
		v := chainView{Disk: c.Disk.Key, Chain: chainPaths(c.Backing())}
		if c.Snapshot != nil {
			v.Snapshot = c.Snapshot.Self.Value
		}
		v.Tokens, _ = s.readChain(v.Chain)
		out = append(out, v)
	}
	needed := vm.Runtime.ConsolidationNeeded != nil && *vm.Runtime.ConsolidationNeeded
	writeJSON(w, http.StatusOK, map[string]interface{}{
		"vm": vm.Self.Value, "home": vmHome(vm), "consolidation_needed": needed, "disks": out,
	})
}
