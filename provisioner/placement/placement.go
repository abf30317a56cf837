// Package placement decides which host each new guest node goes to. It is a
// pure function of the hosts, the nodes and the overcommit ratios: no I/O, no
// clock, the same answer for the same input in any order.
package placement

import (
	"cmp"
	"fmt"
	"math"
	"slices"
)

// Usage is what the guests already on a host take.
type Usage struct {
	VCPUs       int
	MemoryBytes uint64
}

// Host is a hypervisor host as placement sees it.
type Host struct {
	Name string
	// Zone is the host's zone label; hosts without one share the zone "".
	Zone string
	// Worker marks hosts that may run guests; others (say, the
	// appliance's own management hosts) never receive a node.
	Worker   bool
	Ready    bool
	Cordoned bool
	// CPUs and MemoryBytes are the physical resources, before overcommit.
	CPUs        int
	MemoryBytes uint64
	Used        Usage
	// Clusters holds the guest clusters that already have a node on the
	// host (true values only).
	Clusters map[string]bool
}

// Node is a guest node to be placed.
type Node struct {
	Cluster     string
	Name        string
	VCPUs       int
	MemoryBytes uint64
}

// Ratios are the overcommit ratios: a host offers CPUs×CPU vCPUs and
// MemoryBytes×Memory bytes to guests.
type Ratios struct {
	CPU    float64
	Memory float64
}

// DefaultRatios overcommits vCPUs four to one, which idle guests tolerate,
// and never memory, which the kernel's OOM killer repays with dead guests.
func DefaultRatios() Ratios { return Ratios{CPU: 4, Memory: 1} }

// Validate says which ratio is not a positive finite number.
func (r Ratios) Validate() error {
	for _, f := range []struct {
		name string
		v    float64
	}{{"cpu", r.CPU}, {"memory", r.Memory}} {
		if !(f.v > 0) || math.IsInf(f.v, 0) {
			return fmt.Errorf("%s overcommit ratio %v: must be a number above 0", f.name, f.v)
		}
	}
	return nil
}

// Plan maps each node's name to the name of the host it goes to.
type Plan map[string]string

// Capacity is what a host offers to guests under the ratios. A negative
// CPU count offers nothing.
func Capacity(h Host, r Ratios) (vcpus int, memory uint64) {
	// The small addition keeps products such as 0.29×100 from flooring to
	// 28 through binary rounding.
	c := math.Floor(float64(h.CPUs)*r.CPU + 1e-9)
	switch {
	case !(c > 0):
		vcpus = 0
	case c >= math.MaxInt:
		vcpus = math.MaxInt
	default:
		vcpus = int(c)
	}
	if r.Memory == 1 { // exact, even beyond float64's 53 bits
		return vcpus, h.MemoryBytes
	}
	m := math.Floor(float64(h.MemoryBytes) * r.Memory)
	switch {
	case !(m > 0):
		memory = 0
	case m >= math.MaxUint64:
		memory = math.MaxUint64
	default:
		memory = uint64(m)
	}
	return vcpus, memory
}

// Free is what a host still offers to guests under the ratios; a host
// already overcommitted beyond them offers nothing.
func Free(h Host, r Ratios) (vcpus int, memory uint64) {
	cpu, mem := Capacity(h, r)
	if used := max(h.Used.VCPUs, 0); used < cpu {
		vcpus = cpu - used
	}
	if h.Used.MemoryBytes < mem {
		memory = mem - h.Used.MemoryBytes
	}
	return vcpus, memory
}

// reason is why a host cannot take a node; the zero value means it can.
type reason int

const (
	fits reason = iota
	notWorker
	notReady
	cordoned
	holdsCluster
	noRoom
)

// host is a Host's working state during one Place.
type host struct {
	free           int
	freeMB         uint64
	zone           int
	usedC, usedM   float64 // capacity less free, as floats for the load
	invCPU, invMem float64 // 1/capacity, to compare loads without dividing
	static         reason  // notWorker, notReady, cordoned or fits
	capCPU         int
	capMem         uint64
	name           string
}

// Place puts every node on a host, or none: on error the plan is nil.
//
// Nodes are placed one at a time, largest first (memory, then vCPUs, then
// name), because large nodes are the hardest to fit once hosts fill up.
// A host is eligible for a node when it is a ready, uncordoned worker with
// no node of the node's cluster yet (one node of a cluster per host, as
// kvm-operator did, so one host's loss takes one node of a cluster) and
// room for the node within its capacity under the ratios.
//
// Among eligible hosts, Place spreads: it prefers the zone holding the
// fewest nodes of the node's cluster, existing ones included, so a zone's
// loss takes as few of a cluster's nodes as possible; within that, the host
// whose most loaded resource (vCPU or memory, as a fraction of capacity)
// would be least loaded after taking the node, which spreads load in
// proportion to host size and keeps room on every host for what comes next;
// ties go to the host whose name sorts first. The result does not depend
// on the order of hosts or nodes.
//
// The greedy order finds a plan in the common case but, like any heuristic
// for bin packing, can miss one that exists when hosts are nearly full.
func Place(hosts []Host, nodes []Node, r Ratios) (Plan, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	if err := validate(hosts, nodes); err != nil {
		return nil, err
	}

	order := make([]int, len(hosts))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(hosts[a].Name, hosts[b].Name) })
	todo := slices.Clone(nodes)
	slices.SortFunc(todo, func(a, b Node) int {
		return cmp.Or(cmp.Compare(b.MemoryBytes, a.MemoryBytes), cmp.Compare(b.VCPUs, a.VCPUs), cmp.Compare(a.Name, b.Name))
	})

	clusterOf := map[string]int{}
	var clusterNames []string
	for _, n := range todo {
		if _, ok := clusterOf[n.Cluster]; !ok {
			clusterOf[n.Cluster] = len(clusterNames)
			clusterNames = append(clusterNames, n.Cluster)
		}
	}
	held := make([][]int32, len(clusterNames)) // host indexes with a node of each cluster

	zoneOf := map[string]int{}
	st := make([]host, len(hosts))
	var candidates []int32 // hosts that are ready, uncordoned workers
	for i, oi := range order {
		h := hosts[oi]
		z, ok := zoneOf[h.Zone]
		if !ok {
			z = len(zoneOf)
			zoneOf[h.Zone] = z
		}
		s := host{name: h.Name, zone: z}
		switch {
		case !h.Worker:
			s.static = notWorker
		case !h.Ready:
			s.static = notReady
		case h.Cordoned:
			s.static = cordoned
		default:
			candidates = append(candidates, int32(i))
		}
		s.capCPU, s.capMem = Capacity(h, r)
		s.free, s.freeMB = Free(h, r)
		s.usedC, s.usedM = float64(s.capCPU-s.free), float64(s.capMem-s.freeMB)
		if s.capCPU > 0 {
			s.invCPU = 1 / float64(s.capCPU)
		}
		if s.capMem > 0 {
			s.invMem = 1 / float64(s.capMem)
		}
		st[i] = s
		for c, ok := range h.Clusters {
			if ci, want := clusterOf[c]; ok && want {
				held[ci] = append(held[ci], int32(i))
			}
		}
	}

	if err := enoughHosts(todo, clusterNames, clusterOf, held, st, len(candidates)); err != nil {
		return nil, err
	}

	plan := make(Plan, len(todo))
	mark := make([]int, len(st)) // mark[h] == i+1: h holds a node of todo[i]'s cluster
	zoneCount := make([]int, len(zoneOf))
	for i, n := range todo {
		stamp := i + 1
		ci := clusterOf[n.Cluster]
		for _, h := range held[ci] {
			mark[h] = stamp
			zoneCount[st[h].zone]++
		}
		needC, needM := float64(n.VCPUs), float64(n.MemoryBytes)
		best, bestZone, bestLoad := -1, 0, 0.0
		for _, h32 := range candidates {
			h := int(h32)
			s := &st[h]
			if mark[h] == stamp || s.free < n.VCPUs || s.freeMB < n.MemoryBytes {
				continue
			}
			z := zoneCount[s.zone]
			if best >= 0 && z > bestZone {
				continue
			}
			load := max((s.usedC+needC)*s.invCPU, (s.usedM+needM)*s.invMem)
			if best < 0 || z < bestZone || load < bestLoad {
				best, bestZone, bestLoad = h, z, load
			}
		}
		if best < 0 {
			return nil, noFit(n, r, st, mark, stamp)
		}
		for _, h := range held[ci] {
			zoneCount[st[h].zone]--
		}
		b := &st[best]
		b.free -= n.VCPUs
		b.freeMB -= n.MemoryBytes
		b.usedC += needC
		b.usedM += needM
		held[ci] = append(held[ci], int32(best))
		plan[n.Name] = st[best].name
	}
	return plan, nil
}

// validate reports the first malformed host or node.
func validate(hosts []Host, nodes []Node) error {
	seen := make(map[string]int, len(hosts))
	for i, h := range hosts {
		switch {
		case h.Name == "":
			return fmt.Errorf("hosts[%d]: empty name", i)
		case h.CPUs < 0:
			return fmt.Errorf("host %s: %d CPUs, must not be negative", h.Name, h.CPUs)
		case h.Used.VCPUs < 0:
			return fmt.Errorf("host %s: %d vCPUs used, must not be negative", h.Name, h.Used.VCPUs)
		}
		if j, ok := seen[h.Name]; ok {
			return fmt.Errorf("host %s: listed twice (hosts[%d] and hosts[%d])", h.Name, j, i)
		}
		seen[h.Name] = i
	}
	clear(seen)
	for i, n := range nodes {
		switch {
		case n.Name == "":
			return fmt.Errorf("nodes[%d]: empty name", i)
		case n.Cluster == "":
			return fmt.Errorf("node %s: empty cluster", n.Name)
		case n.VCPUs <= 0:
			return fmt.Errorf("node %s: %d vCPUs, needs at least 1", n.Name, n.VCPUs)
		case n.MemoryBytes == 0:
			return fmt.Errorf("node %s: 0 bytes of memory, needs some", n.Name)
		}
		if j, ok := seen[n.Name]; ok {
			return fmt.Errorf("node %s: listed twice (nodes[%d] and nodes[%d])", n.Name, j, i)
		}
		seen[n.Name] = i
	}
	return nil
}

// TooFewHostsError says a cluster has more new nodes than there are ready
// hosts without a node of it, so one node per host cannot hold.
type TooFewHostsError struct {
	Cluster string
	Nodes   int // new nodes of the cluster
	Hosts   int // ready, uncordoned workers without a node of the cluster
	Holding int // ready, uncordoned workers that already have one
}

func (e *TooFewHostsError) Error() string {
	if e.Holding == 0 {
		return fmt.Sprintf("cluster %s needs %s for %s, only %s",
			e.Cluster, count(e.Nodes, "host", "hosts"), count(e.Nodes, "node", "nodes"), count(e.Hosts, "ready host", "ready hosts"))
	}
	return fmt.Sprintf("cluster %s needs %s for %s, only %s without a node of %s (%d already %s one)",
		e.Cluster, count(e.Nodes, "host", "hosts"), count(e.Nodes, "new node", "new nodes"),
		count(e.Hosts, "ready host", "ready hosts"), e.Cluster, e.Holding, plural(e.Holding, "holds", "hold"))
}

// enoughHosts fails on the first cluster, by name, with more new nodes than
// candidate hosts free of it: no placement order could succeed.
func enoughHosts(todo []Node, names []string, clusterOf map[string]int, held [][]int32, st []host, candidates int) error {
	need := make([]int, len(names))
	for _, n := range todo {
		need[clusterOf[n.Cluster]]++
	}
	var short []*TooFewHostsError
	for ci, name := range names {
		holding := 0
		for _, h := range held[ci] {
			if st[h].static == fits {
				holding++
			}
		}
		if need[ci] > candidates-holding {
			short = append(short, &TooFewHostsError{Cluster: name, Nodes: need[ci], Hosts: candidates - holding, Holding: holding})
		}
	}
	if len(short) == 0 {
		return nil
	}
	return slices.MinFunc(short, func(a, b *TooFewHostsError) int { return cmp.Compare(a.Cluster, b.Cluster) })
}

// NoFitError says no host can take a node, and why, host by host.
type NoFitError struct {
	Node     Node
	ratios   Ratios
	rejected []rejection // in host name order
}

type rejection struct {
	host           string
	why            reason
	free, capCPU   int
	freeMB, capMem uint64
}

// shortfall ranks a host without room by the share of the node it lacks
// on its scarcer resource, so the message names the nearest misses.
func (j rejection) shortfall(n Node) float64 {
	cpu := float64(max(n.VCPUs-j.free, 0)) / float64(n.VCPUs)
	var mem float64
	if j.freeMB < n.MemoryBytes {
		mem = float64(n.MemoryBytes-j.freeMB) / float64(n.MemoryBytes)
	}
	return max(cpu, mem)
}

func noFit(n Node, r Ratios, st []host, mark []int, stamp int) *NoFitError {
	e := &NoFitError{Node: n, ratios: r, rejected: make([]rejection, len(st))}
	for h, s := range st {
		j := rejection{host: s.name, why: s.static, free: s.free, capCPU: s.capCPU, freeMB: s.freeMB, capMem: s.capMem}
		if j.why == fits {
			j.why = noRoom
			if mark[h] == stamp {
				j.why = holdsCluster
			}
		}
		e.rejected[h] = j
	}
	return e
}

// detailed is how many hosts without room the message describes one by
// one, and listed how many names it gives per reason: enough to act on,
// few enough to read with a thousand hosts.
const (
	detailed = 3
	listed   = 3
)

// Error groups the hosts by reason, counts them and names a few, and
// describes the hosts without room that come nearest to fitting.
func (e *NoFitError) Error() string {
	n := e.Node
	msg := fmt.Sprintf("node %s (%s, %s): no host fits", n.Name, count(n.VCPUs, "vCPU", "vCPU"), bytes(n.MemoryBytes))
	by := map[reason][]rejection{}
	for _, j := range e.rejected {
		by[j.why] = append(by[j.why], j)
	}
	var parts []string
	group := func(why reason, one, many string) {
		switch js := by[why]; len(js) {
		case 0:
		case 1:
			parts = append(parts, js[0].host+": "+one)
		default:
			parts = append(parts, fmt.Sprintf("%d hosts %s (%s)", len(js), many, names(js)))
		}
	}
	group(holdsCluster, "already holds a node of cluster "+n.Cluster, "already hold a node of cluster "+n.Cluster)
	room := by[noRoom]
	slices.SortStableFunc(room, func(a, b rejection) int { return cmp.Compare(a.shortfall(n), b.shortfall(n)) })
	for _, j := range room[:min(len(room), detailed)] {
		parts = append(parts, j.host+": "+e.lacks(j))
	}
	if more := len(room) - detailed; more > 0 {
		parts = append(parts, fmt.Sprintf("%s without room for it", count(more, "more host", "more hosts")))
	}
	group(notReady, "not ready", "not ready")
	group(cordoned, "cordoned", "cordoned")
	group(notWorker, "not a worker", "not workers")
	for i, p := range parts {
		sep := "; "
		if i == 0 {
			sep = ": "
		}
		msg += sep + p
	}
	return msg
}

func (e *NoFitError) lacks(j rejection) string {
	n := e.Node
	var s string
	if j.free < n.VCPUs {
		s = fmt.Sprintf("%d vCPU free of %d (ratio %s), needs %d", j.free, j.capCPU, ratio(e.ratios.CPU), n.VCPUs)
	}
	if j.freeMB < n.MemoryBytes {
		if s != "" {
			s += ", and "
		}
		s += fmt.Sprintf("%s memory free of %s (ratio %s), needs %s", bytes(j.freeMB), bytes(j.capMem), ratio(e.ratios.Memory), bytes(n.MemoryBytes))
	}
	return s
}

func names(js []rejection) string {
	s := ""
	for i, j := range js[:min(len(js), listed)] {
		if i > 0 {
			s += ", "
		}
		s += j.host
	}
	if more := len(js) - listed; more > 0 {
		s += fmt.Sprintf(", and %d more", more)
	}
	return s
}

func count(n int, one, many string) string { return fmt.Sprintf("%d %s", n, plural(n, one, many)) }

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// ratio prints 4 as "4.0" so it reads as a ratio, and 1.25 as "1.25".
func ratio(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e15 {
		return fmt.Sprintf("%.1f", f)
	}
	return fmt.Sprintf("%g", f)
}

// bytes prints a size in the largest binary unit it reaches, rounded down
// to two decimals so free memory never reads as more than it is.
func bytes(b uint64) string {
	units := []struct {
		name string
		size uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
	for _, u := range units {
		if b >= u.size {
			if b%u.size == 0 {
				return fmt.Sprintf("%d %s", b/u.size, u.name)
			}
			v := math.Floor(float64(b)/float64(u.size)*100) / 100
			return fmt.Sprintf("%g %s", v, u.name)
		}
	}
	return fmt.Sprintf("%d B", b)
}
