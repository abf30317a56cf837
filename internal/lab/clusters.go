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
	"slices"
	"strings"
	"sync"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/libvirtconn"
	"caretaker/internal/overlayspec"
)

// The lab's guest clusters. The server places one node of a cluster per
// host and asks each host's agent for the node and for the cluster's
// overlay, vx-<cluster> and br-<cluster>, which the agent makes in its
// host's network namespace (Config.NetNS) on the underlay (network.go).
// libvirt plugs a node's NIC in the root namespace, into the bridge the lab
// gives that host for that cluster (labNet.guestBridge), whose name the lab
// puts in the node's PUT before passing it to the agent. The nodes' disks
// are overlays of a 64 MiB empty base image in a storage pool of the lab's
// (see poolDir): the nodes boot to SeaBIOS and run, which is what the lab
// needs of them; the lab's own guests boot Linux (guestos).

// baseImage is the volume the lab's nodes are overlays of.
const baseImage = "base.qcow2"

// clusterLab holds what the lab made for guest clusters, to remove it.
type clusterLab struct {
	uri    string
	pool   string // the libvirt storage pool's name
	dir    string // its directory
	net    *labNet
	logger *slog.Logger

	mu sync.Mutex
	// nodes are the nodes PUT to each host's agent, by host: an agent
	// the lab starts again (agent-kill, power) is given them as its own.
	nodes map[string]map[string]bool
}

// noteNode records that node was PUT to host: it is host's, and no longer
// another's.
func (c *clusterLab) noteNode(host, node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nodes == nil {
		c.nodes = map[string]map[string]bool{}
	}
	for h, ns := range c.nodes {
		if h != host {
			delete(ns, node)
		}
	}
	if c.nodes[host] == nil {
		c.nodes[host] = map[string]bool{}
	}
	c.nodes[host][node] = true
}

func (c *clusterLab) hasNode(host, node string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[host][node]
}

// hostNodes are the nodes PUT to host.
func (c *clusterLab) hostNodes(host string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for n := range c.nodes[host] {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// forget drops host's nodes: it was reinstalled.
func (c *clusterLab) forget(host string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.nodes, host)
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
	if _, err := exec.LookPath("genisoimage"); err != nil {
		return errors.New("they need genisoimage (Debian: genisoimage)")
	}
	return nil
}

// setupClusters makes the storage pool with its base image, removing first
// what an earlier lab left; the network is n's.
func setupClusters(ctx context.Context, uri, dataDir, prefix string, n *labNet, logger *slog.Logger) (*clusterLab, error) {
	c := &clusterLab{uri: uri, pool: labPool(prefix), dir: poolDir(dataDir, labPool(prefix)), net: n, logger: logger}
	if err := c.teardown(ctx); err != nil {
		return nil, fmt.Errorf("remove what an earlier lab left: %w", err)
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

// teardown removes the nodes whose disks are in the lab's pool and the
// pool.
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
	errs = append(errs, removePool(conn, c.pool))
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove storage pool directory: %w", err))
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

// wrap returns host's agent handler with the lab's step before a node's
// PUT: the node's NIC goes on the bridge the lab gives host for the node's
// cluster (labNet.guestBridge), which the lab makes if need be.
func (c *clusterLab) wrap(host string, agent http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", agent)
	mux.HandleFunc("PUT /api/v1/nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		// The agent caps the body at 4 MiB; one byte more lets it say so.
		body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20+1))
		if err != nil {
			http.Error(w, "read request body: "+err.Error(), http.StatusBadRequest)
			return
		}
		body, err = c.rebridge(r.Context(), host, r.PathValue("name"), body)
		if err != nil {
			http.Error(w, "lab: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		agent.ServeHTTP(w, r)
	})
	// The agent deletes a cluster's bridge only when nothing but the
	// VXLAN device is a port: the lab's veth goes first.
	mux.HandleFunc("DELETE /api/v1/overlays/{cluster}", func(w http.ResponseWriter, r *http.Request) {
		if err := c.net.dropGuestBridge(r.Context(), host, r.PathValue("cluster")); err != nil {
			c.logger.Warn("lab: remove guest bridge", "host", host, "cluster", r.PathValue("cluster"), "err", err)
		}
		agent.ServeHTTP(w, r)
	})
	return mux
}

// rebridge puts the lab's guest bridge for the node's host and cluster in
// a node PUT's body. A body the agent will refuse is left for the agent to
// answer, as it is.
func (c *clusterLab) rebridge(ctx context.Context, host, name string, body []byte) ([]byte, error) {
	var req map[string]json.RawMessage
	var node struct{ Cluster, Bridge string }
	if json.Unmarshal(body, &req) != nil || json.Unmarshal(body, &node) != nil ||
		overlayspec.ValidIfName(node.Bridge) != nil || node.Cluster == "" {
		return body, nil
	}
	br, err := c.net.guestBridge(ctx, host, node.Cluster, node.Bridge)
	if err != nil {
		return nil, fmt.Errorf("make the bridge of %s's nodes of cluster %s: %w", host, node.Cluster, err)
	}
	req["bridge"], _ = json.Marshal(br)
	c.noteNode(host, name)
	return json.Marshal(req)
}
