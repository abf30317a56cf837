// Package clusters holds the desired state of guest clusters — their node
// pools, VNIs and nodes — in a kv.Store (bbolt or etcd), the HTTP handlers
// that change it, and the level-triggered reconciler that places nodes,
// builds each cluster's VXLAN overlay on the hosts holding its nodes, and
// creates and deletes the nodes' domains.
package clusters

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"caretaker/internal/overlayspec"
	"caretaker/internal/who"
)

// Roles of a node pool.
const (
	RoleMaster = "master"
	RoleWorker = "worker"
)

// Node states.
const (
	NodePending  = "pending"  // to be placed or created
	NodeCreating = "creating" // CreateNode was called and has not answered
	NodeRunning  = "running"
	NodeFailed   = "failed"   // placement or creation failed; Error says why
	NodeDeleting = "deleting" // surplus after a scale-down, or the cluster is deleted
)

// Cluster phases.
const (
	PhaseCreating = "creating" // some nodes are not running yet, or surplus ones not yet deleted
	PhaseReady    = "ready"    // every node runs
	PhaseDegraded = "degraded" // some node failed
	PhaseDeleting = "deleting"
)

// Limits on a spec. The name limit comes from the bridge br-<name> and the
// VXLAN device vx-<name>: interface names hold at most 15 bytes.
const (
	MaxNameLen     = 12
	maxPoolNameLen = 20 // node names <cluster>-<pool>-<n> stay well under 63
	MaxNodes       = 1000
	maxVCPUs       = 256
	minMemory      = 64 << 20
	maxMemory      = 4 << 40
	maxDisk        = 2 << 40 // an agent's default --guests.max-disk-bytes
	maxBaseImage   = 1024
	mib            = 1 << 20
)

// Pool is a group of identical nodes.
type Pool struct {
	Name        string `json:"name"`
	Role        string `json:"role"`
	Count       int    `json:"count"`
	VCPUs       int    `json:"vcpus"`
	MemoryBytes uint64 `json:"memory_bytes"`
	DiskBytes   uint64 `json:"disk_bytes"`
}

// Spec is what an operator asks for.
type Spec struct {
	Name  string `json:"name"`
	Pools []Pool `json:"pools"`
	// BaseImage is the volume the nodes' disks are overlays of: "" means
	// the server's default, else it must be declared (BaseImages).
	BaseImage string `json:"base_image,omitempty"`
}

// NodeState is one node's desired identity and observed progress.
type NodeState struct {
	Name  string `json:"name"` // <cluster>-<pool>-<index>, stable for the node's life
	Pool  string `json:"pool"`
	Role  string `json:"role"`
	Host  string `json:"host,omitempty"` // "" until placed
	UUID  string `json:"uuid"`
	MAC   string `json:"mac"`
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

// Cluster is a spec with what the reconciler has made of it.
type Cluster struct {
	Spec
	VNI   int         `json:"vni"`
	Nodes []NodeState `json:"nodes"`
	// Overlays maps each host whose overlay was ensured to the overlay it
	// was ensured with, as it was PUT to the host's agent (peers named),
	// so membership changes are noticed and unchanged overlays are left
	// alone.
	Overlays HostOverlays `json:"overlays,omitempty"`
	Phase    string       `json:"phase"`
	Created  time.Time    `json:"created"`
	Updated  time.Time    `json:"updated"`
	// CreatedBy is who created the cluster through the API: the token's
	// name and role, and when; ChangedBy who last scaled it or asked for
	// its deletion. Absent for clusters created before they were
	// recorded, or not through the API.
	CreatedBy *who.By `json:"created_by,omitempty"`
	ChangedBy *who.By `json:"changed_by,omitempty"`
}

// HostOverlays maps a host to the cluster's overlay there.
type HostOverlays map[string]overlayspec.Overlay

// UnmarshalJSON also reads the form records had before overlays were
// recorded whole: each host's peer addresses, ["10.0.0.2", …]. Such an
// overlay differs from every desired one, so the next reconciliation
// puts it again and records it whole.
func (h *HostOverlays) UnmarshalJSON(data []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	out := make(HostOverlays, len(raw))
	for host, v := range raw {
		var addrs []string
		if err := json.Unmarshal(v, &addrs); err == nil {
			o := overlayspec.Overlay{Peers: []overlayspec.Peer{}}
			for _, a := range addrs {
				o.Peers = append(o.Peers, overlayspec.Peer{Address: a})
			}
			out[host] = o
			continue
		}
		var o overlayspec.Overlay
		if err := json.Unmarshal(v, &o); err != nil {
			return fmt.Errorf("overlay on %s: %w", host, err)
		}
		out[host] = o
	}
	*h = out
	return nil
}

// Validate reports every problem in s, each naming its field.
func (s Spec) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if err := dnsLabel(s.Name, MaxNameLen); err != nil {
		add("name %q: %v, so that the bridge br-<name> fits the 15-byte interface name limit", s.Name, err)
	}
	if len(s.Pools) == 0 {
		add("pools: empty, need at least one pool")
	}
	seen := map[string]int{}
	total := 0
	for i, p := range s.Pools {
		f := fmt.Sprintf("pools[%d]", i)
		if err := dnsLabel(p.Name, maxPoolNameLen); err != nil {
			add("%s.name %q: %v", f, p.Name, err)
		} else if j, ok := seen[p.Name]; ok {
			add("%s.name %q: also the name of pools[%d]", f, p.Name, j)
		}
		seen[p.Name] = i
		if p.Role != RoleMaster && p.Role != RoleWorker {
			add("%s.role %q: must be %q or %q", f, p.Role, RoleMaster, RoleWorker)
		}
		switch {
		case p.Count < 0:
			add("%s.count: %d, must not be negative", f, p.Count)
		case p.Count > MaxNodes:
			add("%s.count: %d, must be at most %d", f, p.Count, MaxNodes)
		default:
			total += p.Count
		}
		switch {
		case p.VCPUs < 1:
			add("%s.vcpus: %d, must be at least 1", f, p.VCPUs)
		case p.VCPUs > maxVCPUs:
			add("%s.vcpus: %d, must be at most %d", f, p.VCPUs, maxVCPUs)
		}
		switch {
		case p.MemoryBytes < minMemory:
			add("%s.memory_bytes: %d, must be at least %d (64 MiB)", f, p.MemoryBytes, minMemory)
		case p.MemoryBytes > maxMemory:
			add("%s.memory_bytes: %d, must be at most %d (4 TiB)", f, p.MemoryBytes, uint64(maxMemory))
		case p.MemoryBytes%mib != 0:
			add("%s.memory_bytes: %d, must be a whole number of MiB (%d bytes)", f, p.MemoryBytes, mib)
		}
		switch {
		case p.DiskBytes < mib:
			add("%s.disk_bytes: %d, must be at least %d (1 MiB)", f, p.DiskBytes, mib)
		case p.DiskBytes > maxDisk:
			add("%s.disk_bytes: %d, must be at most %d (2 TiB, what agents allow by default)", f, p.DiskBytes, uint64(maxDisk))
		case p.DiskBytes%mib != 0:
			add("%s.disk_bytes: %d, must be a whole number of MiB (%d bytes)", f, p.DiskBytes, mib)
		}
	}
	if len(s.Pools) > 0 && total == 0 && len(errs) == 0 {
		add("pools: no nodes, need a count of at least 1 in some pool")
	}
	if total > MaxNodes {
		add("pools: %d nodes in all, must be at most %d", total, MaxNodes)
	}
	switch {
	case len(s.BaseImage) > maxBaseImage:
		add("base_image: %d bytes, must be at most %d", len(s.BaseImage), maxBaseImage)
	case strings.ContainsFunc(s.BaseImage, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		add("base_image %q: contains control characters", s.BaseImage)
	}
	return errors.Join(errs...)
}

// dnsLabel checks an RFC 1123 label that also starts with a letter, as a
// hostname part and an interface name suffix should.
func dnsLabel(s string, maxLen int) error {
	const rule = "must be lowercase letters, digits and '-', start with a letter and not end with '-'"
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > maxLen:
		return fmt.Errorf("%d characters, must be at most %d", len(s), maxLen)
	case s[0] < 'a' || s[0] > 'z', s[len(s)-1] == '-':
		return errors.New(rule)
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return errors.New(rule)
		}
	}
	return nil
}

// Bridge is the name of the cluster's bridge on every host holding a node.
func Bridge(cluster string) string { return "br-" + cluster }

// Device is the name of the cluster's VXLAN device.
func Device(cluster string) string { return "vx-" + cluster }

// NodeName is the name of the index'th node (from 0) of a pool.
func NodeName(cluster, pool string, index int) string {
	return cluster + "-" + pool + "-" + strconv.Itoa(index)
}

// index returns the node's index in its pool, or -1 for a name that does
// not follow NodeName.
func (c Cluster) index(n NodeState) int {
	rest, ok := strings.CutPrefix(n.Name, c.Name+"-"+n.Pool+"-")
	if !ok {
		return -1
	}
	i, err := strconv.Atoi(rest)
	if err != nil || i < 0 || strconv.Itoa(i) != rest {
		return -1
	}
	return i
}

// pool returns the spec of the named pool.
func (c Cluster) pool(name string) (Pool, bool) {
	i := slices.IndexFunc(c.Pools, func(p Pool) bool { return p.Name == name })
	if i < 0 {
		return Pool{}, false
	}
	return c.Pools[i], true
}

// node returns a pointer to the named node, or nil; the pointer is into
// c.Nodes' backing array, so a change through it is seen by c's owner.
func (c Cluster) node(name string) *NodeState {
	i := slices.IndexFunc(c.Nodes, func(n NodeState) bool { return n.Name == name })
	if i < 0 {
		return nil
	}
	return &c.Nodes[i]
}

// sync makes the node list match the spec: a pending node with a fresh
// UUID and MAC for every missing index below its pool's count, and every
// node at or above it (or of a pool no longer in the spec) marked
// deleting. Names stay stable: a node keeps its index for its whole life.
func (c *Cluster) sync(ids *idSource) error {
	have := map[string]bool{}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		have[n.Name] = true
		p, ok := c.pool(n.Pool)
		if c.Phase == PhaseDeleting || !ok || c.index(*n) < 0 || c.index(*n) >= p.Count {
			n.State = NodeDeleting
		}
	}
	if c.Phase == PhaseDeleting {
		return nil
	}
	macs := map[string]bool{}
	for _, n := range c.Nodes {
		macs[n.MAC] = true
	}
	for _, p := range c.Pools {
		for i := range p.Count {
			name := NodeName(c.Name, p.Name, i)
			if have[name] {
				continue
			}
			uuid, mac, err := ids.newNode(macs)
			if err != nil {
				return err
			}
			c.Nodes = append(c.Nodes, NodeState{Name: name, Pool: p.Name, Role: p.Role, UUID: uuid, MAC: mac, State: NodePending})
		}
	}
	c.sortNodes()
	return nil
}

// sortNodes orders nodes by pool, in spec order, then by index.
func (c *Cluster) sortNodes() {
	order := func(n NodeState) int {
		i := slices.IndexFunc(c.Pools, func(p Pool) bool { return p.Name == n.Pool })
		if i < 0 {
			return len(c.Pools)
		}
		return i
	}
	slices.SortStableFunc(c.Nodes, func(a, b NodeState) int {
		return cmp.Or(cmp.Compare(order(a), order(b)), cmp.Compare(a.Pool, b.Pool), cmp.Compare(c.index(a), c.index(b)), cmp.Compare(a.Name, b.Name))
	})
}

// phase derives the cluster's phase from its nodes.
func (c Cluster) phase() string {
	if c.Phase == PhaseDeleting {
		return PhaseDeleting
	}
	ready := true
	for _, n := range c.Nodes {
		switch n.State {
		case NodeFailed:
			return PhaseDegraded
		case NodeRunning:
		default:
			ready = false
		}
	}
	if ready {
		return PhaseReady
	}
	return PhaseCreating
}

// members returns the hosts holding a node of c, sorted: the hosts that
// need its overlay.
func (c Cluster) members() []string {
	var hosts []string
	for _, n := range c.Nodes {
		if n.Host != "" && !slices.Contains(hosts, n.Host) {
			hosts = append(hosts, n.Host)
		}
	}
	slices.Sort(hosts)
	return hosts
}
