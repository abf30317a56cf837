package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/libvirtconn"
)

// The lab's guest clusters. The server places one node of a cluster per
// host and asks each host's agent for the node and for the cluster's
// overlay, vx-<cluster> and br-<cluster>. All lab hosts share one machine,
// so:
//   - every host's agent makes its overlay in a network namespace of its
//     own (Config.NetNS), with lo as underlay and its agent address
//     127.0.0.N as VTEP: each host's device has the peers the server gave
//     it, and no two agents rewrite one shared device back and forth (in
//     the root namespace they would: one vx-<cluster>, six different
//     local addresses and peer lists);
//   - the nodes' NICs are plugged by libvirt in the root namespace, where
//     the lab makes br-<cluster> before passing a node's PUT to the agent.
//     That bridge joins the lab's nodes directly; the overlays carry
//     nothing here, there is no second machine to reach.
//   - the nodes' disks are overlays of a 64 MiB empty base image in a
//     storage pool of the lab's (see poolDir): the nodes boot to SeaBIOS
//     and run, which is what the lab needs of them.

// baseImage is the volume the lab's nodes are overlays of.
const baseImage = "base.qcow2"

// clusterLab holds what the lab made for guest clusters, to remove it.
type clusterLab struct {
	uri    string
	pool   string // the libvirt storage pool's name
	dir    string // its directory
	netns  map[string]string
	logger *slog.Logger

	mu      sync.Mutex
	bridges map[string]bool // root-namespace bridges the lab made
}

// labPool is the lab's storage pool name: one per guest prefix, so that a
// test's lab never touches the pool of a lab someone runs.
func labPool(prefix string) string {
	return "caretaker-" + strings.TrimSuffix(prefix, "-")
}

// netnsName is a host's network namespace.
func netnsName(prefix, host string) string {
	return "caretaker-" + prefix + host
}

// libvirtImages is where Debian's libvirt keeps disk images: a directory
// QEMU, running as its own user, can reach.
const libvirtImages = "/var/lib/libvirt/images"

// poolDir is the directory of the lab's storage pool: under libvirt's
// images, since QEMU (uid libvirt-qemu) cannot reach into the lab's data
// directory, private to root (0700, or a test's temporary directory).
// Without libvirt's images directory, the data directory's pool/ then.
func poolDir(dataDir, pool string) string {
	if fi, err := os.Stat(libvirtImages); err == nil && fi.IsDir() {
		return filepath.Join(libvirtImages, pool)
	}
	return filepath.Join(dataDir, "pool")
}

// checkClusters says why the lab cannot make clusters here, nil if it can.
func checkClusters() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, bridges)")
	}
	for _, tool := range []string{"ip", "genisoimage"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s (Debian: iproute2, genisoimage)", tool)
		}
	}
	return nil
}

// setupClusters makes the storage pool with its base image and a network
// namespace per host, removing first what an earlier lab left.
func setupClusters(ctx context.Context, uri, dataDir, prefix string, hosts []*host, logger *slog.Logger) (*clusterLab, error) {
	c := &clusterLab{uri: uri, pool: labPool(prefix), dir: poolDir(dataDir, labPool(prefix)),
		netns: map[string]string{}, logger: logger, bridges: map[string]bool{}}
	for _, h := range hosts {
		c.netns[h.name] = netnsName(prefix, h.name)
	}
	if err := c.teardown(ctx); err != nil {
		return nil, fmt.Errorf("remove what an earlier lab left: %w", err)
	}
	for _, ns := range c.netns {
		if err := runCommand(ctx, "ip", "netns", "add", ns); err != nil {
			return c, err
		}
		if err := runCommand(ctx, "ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
			return c, err
		}
	}
	if err := os.MkdirAll(c.dir, 0o711); err != nil {
		return c, fmt.Errorf("create storage pool directory: %w", err)
	}
	conn, err := libvirtconn.Dial(uri)
	if err != nil {
		return c, fmt.Errorf("connect to %s: %w", uri, err)
	}
	defer conn.Disconnect()
	px, err := (&libvirtxml.StoragePool{Type: "dir", Name: c.pool,
		Target: &libvirtxml.StoragePoolTarget{Path: c.dir}}).Marshal()
	if err != nil {
		return c, err
	}
	// Transient: the pool goes when the lab destroys it, or libvirtd stops.
	pool, err := conn.StoragePoolCreateXML(px, 0)
	if err != nil {
		return c, fmt.Errorf("create storage pool %s: %w", c.pool, err)
	}
	vx, err := (&libvirtxml.StorageVolume{Name: baseImage,
		Capacity: &libvirtxml.StorageVolumeSize{Value: 64, Unit: "MiB"},
		Target:   &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}}}).Marshal()
	if err != nil {
		return c, err
	}
	if _, err := conn.StorageVolCreateXML(pool, vx, 0); err != nil {
		return c, fmt.Errorf("create base image %s in pool %s: %w", baseImage, c.pool, err)
	}
	return c, nil
}

// teardown removes the nodes whose disks are in the lab's pool, the
// bridges the lab made, the pool and the network namespaces.
func (c *clusterLab) teardown(ctx context.Context) error {
	var errs []error
	conn, err := libvirtconn.Dial(c.uri)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", c.uri, err)
	}
	defer conn.Disconnect()
	n, err := removeNodes(conn, c.pool)
	if err != nil {
		errs = append(errs, err)
	}
	if n > 0 {
		c.logger.Info("removed cluster nodes", "nodes", n)
	}
	c.mu.Lock()
	for br := range c.bridges {
		if err := runCommand(ctx, "ip", "link", "del", br); err != nil {
			errs = append(errs, err)
		}
		delete(c.bridges, br)
	}
	c.mu.Unlock()
	errs = append(errs, removePool(conn, c.pool))
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove storage pool directory: %w", err))
	}
	for _, ns := range c.netns {
		if _, err := os.Stat(filepath.Join("/var/run/netns", ns)); err == nil {
			errs = append(errs, runCommand(ctx, "ip", "netns", "del", ns))
		}
	}
	return errors.Join(errs...)
}

// removeNodes destroys and undefines every domain with a disk in pool.
func removeNodes(conn *libvirt.Libvirt, pool string) (int, error) {
	doms, _, err := conn.ConnectListAllDomains(1, 0)
	if err != nil {
		return 0, fmt.Errorf("list domains: %w", err)
	}
	var errs []error
	n := 0
	for _, dom := range doms {
		if !inPool(conn, dom, pool) {
			continue
		}
		if dom.ID != -1 {
			if err := conn.DomainDestroy(dom); err != nil && !libvirtconn.IsCode(err, libvirt.ErrOperationInvalid) {
				errs = append(errs, fmt.Errorf("destroy %s: %w", dom.Name, err))
			}
		}
		if err := conn.DomainUndefine(dom); err != nil {
			errs = append(errs, fmt.Errorf("undefine %s: %w", dom.Name, err))
		} else {
			n++
		}
	}
	return n, errors.Join(errs...)
}

func inPool(conn *libvirt.Libvirt, dom libvirt.Domain, pool string) bool {
	s, err := conn.DomainGetXMLDesc(dom, libvirt.DomainXMLInactive)
	if err != nil {
		return false
	}
	var d libvirtxml.Domain
	if d.Unmarshal(s) != nil || d.Devices == nil {
		return false
	}
	for _, disk := range d.Devices.Disks {
		if disk.Source != nil && disk.Source.Volume != nil && disk.Source.Volume.Pool == pool {
			return true
		}
	}
	return false
}

// removePool deletes the pool's volumes and destroys it (undefining it
// too, should someone have made it persistent).
func removePool(conn *libvirt.Libvirt, name string) error {
	pool, err := conn.StoragePoolLookupByName(name)
	if libvirtconn.IsCode(err, libvirt.ErrNoStoragePool) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up storage pool %s: %w", name, err)
	}
	var errs []error
	if active, _ := conn.StoragePoolIsActive(pool); active == 1 {
		_ = conn.StoragePoolRefresh(pool, 0) // lists volumes made behind libvirt's back too
		vols, _, err := conn.StoragePoolListAllVolumes(pool, 1, 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("list volumes of pool %s: %w", name, err))
		}
		for _, v := range vols {
			if err := conn.StorageVolDelete(v, 0); err != nil {
				errs = append(errs, fmt.Errorf("delete volume of pool %s: %w", name, err))
			}
		}
		if err := conn.StoragePoolDestroy(pool); err != nil {
			errs = append(errs, fmt.Errorf("destroy storage pool %s: %w", name, err))
		}
	}
	if persistent, _ := conn.StoragePoolIsPersistent(pool); persistent == 1 {
		if err := conn.StoragePoolUndefine(pool); err != nil {
			errs = append(errs, fmt.Errorf("undefine storage pool %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// bridgeRe is what the lab accepts as a bridge name to make: the agent
// validates the request again.
var bridgeRe = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,15}$`)

// wrap returns the agent's handler with the lab's step before a node's
// PUT: the node's bridge made in the root namespace.
func (c *clusterLab) wrap(agent http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", agent)
	mux.HandleFunc("PUT /api/v1/nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		// The agent caps the body at 4 MiB; one byte more lets it say so.
		body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20+1))
		if err != nil {
			http.Error(w, "read request body: "+err.Error(), http.StatusBadRequest)
			return
		}
		var req struct {
			Bridge string `json:"bridge"`
		}
		// A body the agent will refuse is left for the agent to answer.
		if json.Unmarshal(body, &req) == nil {
			if bridgeRe.MatchString(req.Bridge) {
				if err := c.ensureBridge(r.Context(), req.Bridge); err != nil {
					c.logger.Warn("lab: make node bridge", "bridge", req.Bridge, "err", err)
				}
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		agent.ServeHTTP(w, r)
	})
	return mux
}

// ensureBridge makes the bridge in the root namespace unless it is there.
func (c *clusterLab) ensureBridge(ctx context.Context, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := os.Stat(filepath.Join("/sys/class/net", name)); err == nil {
		return nil
	}
	if err := runCommand(ctx, "ip", "link", "add", name, "type", "bridge"); err != nil {
		return err
	}
	c.bridges[name] = true
	return runCommand(ctx, "ip", "link", "set", name, "up")
}
