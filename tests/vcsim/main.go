// Command vcsim is vmdk_snap's test bed: govmomi's vCenter simulator (0.24.2)
// with a Cinder-shaped inventory, a control API for tests and our own model
// of disk chains, storage vMotion, task timing and faults.
//
// It listens on the loopback address it is given, serves HTTPS with a
// certificate it makes for 127.0.0.1 and localhost (the CA is written next to
// the datastores), and prints one JSON line with its URL when it is ready.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	_ "github.com/vmware/govmomi/pbm/simulator" // the PBM endpoint at /pbm (RegisterEndpoints)
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
)

// ready is the line printed on stdout once the server accepts requests.
type ready struct {
	URL        string `json:"url"`
	ControlURL string `json:"control_url"`
	CAFile     string `json:"ca_file"`
	Thumbprint string `json:"thumbprint"`
	Root       string `json:"root"`
	PID        int    `json:"pid"`
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "loopback address to listen on")
	root := flag.String("root", "", "directory for datastores and the CA (default: a new temp dir)")
	user := flag.String("user", "", "user name accepted by Login (default $VCSIM_USERNAME or 'administrator@vsphere.local')")
	flag.Parse()

	if err := run(*listen, *root, *user); err != nil {
		log.Fatalf("vcsim: %v", err)
	}
}

func run(listen, root, user string) error {
	if root == "" {
		dir, err := os.MkdirTemp("", "vmdk-snap-vcsim-")
		if err != nil {
			return err
		}
		root = dir
	}
	root, _ = filepath.Abs(root)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	if user == "" {
		user = envOr("VCSIM_USERNAME", "administrator@vsphere.local")
	}
	// The password is never a flag: flags show up in `ps`.
	password := envOr("VCSIM_PASSWORD", "vcsim-password")

	certs, err := makeCerts(root)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}

	model := simulator.VPX()
	model.Datacenter = 1
	model.Cluster = 1
	model.ClusterHost = 2
	model.Host = 0
	model.Datastore = 0 // our own, with stable names, made below
	model.Machine = 0
	model.Autostart = false
	model.Portgroup = 0
	if err := model.Create(); err != nil {
		return fmt.Errorf("model: %w", err)
	}
	defer model.Remove()

	model.Service.Listen = &url.URL{Host: listen, User: url.UserPassword(user, password)}
	model.Service.TLS = certs.serverTLS
	model.Service.RegisterEndpoints = true

	ctx := context.Background()
	// In-process client for seeding: it does not go through HTTP, so seeding
	// is neither counted nor subject to injected faults.
	client, err := vim25.NewClient(ctx, model.Service)
	if err != nil {
		return err
	}

	sim := newSim(root, client)
	if err := sim.createInventory(ctx); err != nil {
		return fmt.Errorf("inventory: %w", err)
	}

	server := model.Service.NewServer()
	defer server.Close()
	server.Config.Handler = sim.middleware(server.Config.Handler)

	u := *server.URL
	u.User = nil
	info := ready{
		URL:        u.String(),
		ControlURL: fmt.Sprintf("%s://%s/_ctl", u.Scheme, u.Host),
		CAFile:     certs.caFile,
		Thumbprint: certs.thumbprint,
		Root:       root,
		PID:        os.Getpid(),
	}
	line, _ := json.Marshal(info)
	fmt.Println(string(line))
	_ = os.Stdout.Sync()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
