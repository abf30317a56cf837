package placement

import (
	"errors"
	"flag"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"caretaker/internal/golden"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

const gib = 1 << 30

// worker is a ready, uncordoned worker host.
func worker(name, zone string, cpus int, memGiB uint64, clusters ...string) Host {
	h := Host{Name: name, Zone: zone, Worker: true, Ready: true, CPUs: cpus, MemoryBytes: memGiB * gib}
	if len(clusters) > 0 {
		h.Clusters = map[string]bool{}
		for _, c := range clusters {
			h.Clusters[c] = true
		}
	}
	return h
}

func node(cluster, name string, vcpus int, memGiB uint64) Node {
	return Node{Cluster: cluster, Name: name, VCPUs: vcpus, MemoryBytes: memGiB * gib}
}

func with(h Host, f func(*Host)) Host { f(&h); return h }

// checkPlan fails t unless plan places every node exactly once on an
// existing ready, uncordoned worker, one node of a cluster per host, within
// every host's capacity under r.
func checkPlan(t testing.TB, hosts []Host, nodes []Node, r Ratios, plan Plan) {
	t.Helper()
	if len(plan) != len(nodes) {
		t.Fatalf("plan has %d entries for %d nodes: %v", len(plan), len(nodes), plan)
	}
	byName := map[string]Host{}
	for _, h := range hosts {
		byName[h.Name] = h
	}
	type key struct{ host, cluster string }
	taken := map[key]string{}
	usedCPU := map[string]int{}
	usedMem := map[string]uint64{}
	for _, n := range nodes {
		hn, ok := plan[n.Name]
		if !ok {
			t.Fatalf("node %s not placed", n.Name)
		}
		h, ok := byName[hn]
		if !ok {
			t.Fatalf("node %s placed on unknown host %q", n.Name, hn)
		}
		if !h.Worker || !h.Ready || h.Cordoned {
			t.Fatalf("node %s placed on %s, which is not a ready, uncordoned worker: %+v", n.Name, hn, h)
		}
		if h.Clusters[n.Cluster] {
			t.Fatalf("node %s placed on %s, which already held a node of %s", n.Name, hn, n.Cluster)
		}
		if other, ok := taken[key{hn, n.Cluster}]; ok {
			t.Fatalf("nodes %s and %s of cluster %s both on %s", other, n.Name, n.Cluster, hn)
		}
		taken[key{hn, n.Cluster}] = n.Name
		// A sum that overflows is beyond any capacity.
		if usedCPU[hn] > math.MaxInt-n.VCPUs || usedMem[hn] > math.MaxUint64-n.MemoryBytes {
			t.Fatalf("host %s given more than it can count", hn)
		}
		usedCPU[hn] += n.VCPUs
		usedMem[hn] += n.MemoryBytes
	}
	for hn, cpu := range usedCPU {
		freeCPU, freeMem := Free(byName[hn], r)
		if cpu > freeCPU || usedMem[hn] > freeMem {
			t.Fatalf("host %s given %d vCPU and %d bytes, has %d vCPU and %d bytes free", hn, cpu, usedMem[hn], freeCPU, freeMem)
		}
	}
}

func TestPlaceErrors(t *testing.T) {
	c1 := func(name string) Node { return node("c1", name, 1, 1) }
	many := func(n int, f func(i int) Host) []Host {
		var hs []Host
		for i := range n {
			hs = append(hs, f(i))
		}
		return hs
	}
	for _, tc := range []struct {
		name  string
		hosts []Host
		nodes []Node
		r     Ratios
		typ   string // "nofit", "toofew" or "" for malformed input
		want  string
	}{
		{
			name: "brief example",
			hosts: []Host{
				worker("h1", "", 4, 64, "c1"), worker("h2", "", 4, 64, "c1"), worker("h3", "", 4, 64, "c1"),
				with(worker("h4", "", 4, 64), func(h *Host) { h.Used.VCPUs = 14 }),
				with(worker("h5", "", 64, 512), func(h *Host) { h.Ready = false }),
				with(worker("h6", "", 64, 512), func(h *Host) { h.Cordoned = true }),
			},
			nodes: []Node{node("c1", "c1-worker-3", 4, 8)},
			typ:   "nofit",
			want:  "node c1-worker-3 (4 vCPU, 8 GiB): no host fits: 3 hosts already hold a node of cluster c1 (h1, h2, h3); h4: 2 vCPU free of 16 (ratio 4.0), needs 4; h5: not ready; h6: cordoned",
		},
		{
			name:  "memory short",
			hosts: []Host{with(worker("h1", "z", 8, 32), func(h *Host) { h.Used.MemoryBytes = 30*gib + 512<<20 })},
			nodes: []Node{node("c1", "c1-a", 2, 2)},
			typ:   "nofit",
			want:  "node c1-a (2 vCPU, 2 GiB): no host fits: h1: 1.5 GiB memory free of 32 GiB (ratio 1.0), needs 2 GiB",
		},
		{
			name:  "both short, overcommitted beyond the ratios",
			hosts: []Host{with(worker("h1", "z", 2, 4), func(h *Host) { h.Used = Usage{VCPUs: 20, MemoryBytes: 5 * gib} })},
			nodes: []Node{node("c1", "c1-a", 1, 1)},
			r:     Ratios{CPU: 2.5, Memory: 1.25},
			typ:   "nofit",
			want:  "node c1-a (1 vCPU, 1 GiB): no host fits: h1: 0 vCPU free of 5 (ratio 2.5), needs 1, and 0 B memory free of 5 GiB (ratio 1.25), needs 1 GiB",
		},
		{
			name: "filled by earlier nodes of the same plan",
			hosts: []Host{
				worker("h1", "", 4, 8),
				with(worker("h2", "", 1, 8), func(h *Host) { h.Worker = false }),
			},
			nodes: []Node{node("a", "a-1", 3, 1), node("b", "b-1", 3, 1)},
			r:     Ratios{CPU: 1, Memory: 1},
			typ:   "nofit",
			want:  "node b-1 (3 vCPU, 1 GiB): no host fits: h1: 1 vCPU free of 4 (ratio 1.0), needs 3; h2: not a worker",
		},
		{
			name:  "cluster's own earlier node holds the only roomy host",
			hosts: []Host{worker("h1", "", 4, 4), worker("h2", "", 4, 1)},
			nodes: []Node{node("c1", "c1-a", 1, 2), node("c1", "c1-b", 1, 2)},
			typ:   "nofit",
			want:  "node c1-b (1 vCPU, 2 GiB): no host fits: h1: already holds a node of cluster c1; h2: 1 GiB memory free of 1 GiB (ratio 1.0), needs 2 GiB",
		},
		{
			name: "many hosts per reason are counted and a few named",
			hosts: append(append(
				many(5, func(i int) Host {
					return with(worker(fmt.Sprintf("r%d", i), "", 8, 8), func(h *Host) { h.Ready = false })
				}),
				many(4, func(i int) Host {
					return with(worker(fmt.Sprintf("w%d", i), "", 8, 8), func(h *Host) { h.Worker = false })
				})...),
				many(5, func(i int) Host { return worker(fmt.Sprintf("s%d", i), "", 8, uint64(i+1)) })...),
			nodes: []Node{node("c1", "big", 2, 16)},
			typ:   "nofit",
			want: "node big (2 vCPU, 16 GiB): no host fits: s4: 5 GiB memory free of 5 GiB (ratio 1.0), needs 16 GiB; " +
				"s3: 4 GiB memory free of 4 GiB (ratio 1.0), needs 16 GiB; s2: 3 GiB memory free of 3 GiB (ratio 1.0), needs 16 GiB; " +
				"2 more hosts without room for it; 5 hosts not ready (r0, r1, r2, and 2 more); 4 hosts not workers (w0, w1, w2, and 1 more)",
		},
		{
			name:  "too few hosts",
			hosts: many(5, func(i int) Host { return worker(fmt.Sprintf("h%d", i), "", 8, 8) }),
			nodes: []Node{c1("a"), c1("b"), c1("c"), c1("d"), c1("e"), c1("f"), c1("g")},
			typ:   "toofew",
			want:  "cluster c1 needs 7 hosts for 7 nodes, only 5 ready hosts",
		},
		{
			name: "too few hosts, one ready",
			hosts: []Host{
				worker("h1", "", 8, 8),
				with(worker("h2", "", 8, 8), func(h *Host) { h.Cordoned = true }),
			},
			nodes: []Node{c1("a"), c1("b")},
			typ:   "toofew",
			want:  "cluster c1 needs 2 hosts for 2 nodes, only 1 ready host",
		},
		{
			name: "too few hosts without a node of the cluster, first cluster by name",
			hosts: []Host{
				worker("h1", "", 8, 8, "c1", "c0"), worker("h2", "", 8, 8, "c1"), worker("h3", "", 8, 8),
				with(worker("h4", "", 8, 8, "c1"), func(h *Host) { h.Ready = false }),
			},
			nodes: []Node{c1("a"), c1("b"), node("c0", "x", 1, 1), node("c0", "y", 1, 1), node("c0", "z", 1, 1)},
			typ:   "toofew",
			want:  "cluster c0 needs 3 hosts for 3 new nodes, only 2 ready hosts without a node of c0 (1 already holds one)",
		},
		{
			name:  "too few hosts, no hosts at all",
			nodes: []Node{c1("a")},
			typ:   "toofew",
			want:  "cluster c1 needs 1 host for 1 node, only 0 ready hosts",
		},
		{name: "cpu ratio zero", hosts: []Host{worker("h1", "", 1, 1)}, nodes: []Node{c1("a")}, r: Ratios{CPU: 0, Memory: 1}, want: "cpu overcommit ratio 0: must be a number above 0"},
		{name: "memory ratio negative", r: Ratios{CPU: 4, Memory: -1}, want: "memory overcommit ratio -1: must be a number above 0"},
		{name: "memory ratio NaN", r: Ratios{CPU: 4, Memory: math.NaN()}, want: "memory overcommit ratio NaN: must be a number above 0"},
		{name: "cpu ratio infinite", r: Ratios{CPU: math.Inf(1), Memory: 1}, want: "cpu overcommit ratio +Inf: must be a number above 0"},
		{name: "host without name", hosts: []Host{worker("h1", "", 1, 1), worker("", "", 1, 1)}, want: "hosts[1]: empty name"},
		{name: "negative CPUs", hosts: []Host{worker("h1", "", -2, 1)}, want: "host h1: -2 CPUs, must not be negative"},
		{name: "negative used vCPUs", hosts: []Host{with(worker("h1", "", 2, 1), func(h *Host) { h.Used.VCPUs = -1 })}, want: "host h1: -1 vCPUs used, must not be negative"},
		{name: "duplicate host", hosts: []Host{worker("h1", "", 1, 1), worker("h2", "", 1, 1), worker("h1", "", 1, 1)}, want: "host h1: listed twice (hosts[0] and hosts[2])"},
		{name: "node without name", hosts: []Host{worker("h1", "", 1, 1)}, nodes: []Node{c1("")}, want: "nodes[0]: empty name"},
		{name: "node without cluster", nodes: []Node{c1("a"), node("", "b", 1, 1)}, want: "node b: empty cluster"},
		{name: "node with zero vCPU", nodes: []Node{node("c1", "a", 0, 1)}, want: "node a: 0 vCPUs, needs at least 1"},
		{name: "node with negative vCPU", nodes: []Node{node("c1", "a", -1, 1)}, want: "node a: -1 vCPUs, needs at least 1"},
		{name: "node with zero memory", nodes: []Node{node("c1", "a", 1, 0)}, want: "node a: 0 bytes of memory, needs some"},
		{name: "duplicate node across clusters", nodes: []Node{c1("a"), c1("b"), node("c2", "a", 1, 1)}, want: "node a: listed twice (nodes[0] and nodes[2])"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.r
			if r == (Ratios{}) {
				r = DefaultRatios()
			}
			plan, err := Place(tc.hosts, tc.nodes, r)
			if err == nil {
				t.Fatalf("Place succeeded with %v, want error %q", plan, tc.want)
			}
			if plan != nil {
				t.Errorf("plan %v returned with an error, want nil", plan)
			}
			if err.Error() != tc.want {
				t.Errorf("error\n got %s\nwant %s", err, tc.want)
			}
			var nf *NoFitError
			var tf *TooFewHostsError
			typ := ""
			switch {
			case errors.As(err, &nf):
				typ = "nofit"
			case errors.As(err, &tf):
				typ = "toofew"
			}
			if typ != tc.typ {
				t.Errorf("error type %q (%T), want %q", typ, err, tc.typ)
			}
		})
	}
}

// TestNoFitSummary keeps the message about a thousand hosts short enough
// to read: counts, a few names, the three nearest misses.
func TestNoFitSummary(t *testing.T) {
	var hosts []Host
	for i := range 1000 {
		h := worker(fmt.Sprintf("host%04d", i), fmt.Sprintf("zone-%d", i%4), 32, 256)
		switch {
		case i < 10:
			h.Clusters = map[string]bool{"c1": true}
		case i < 15:
			h.Ready = false
		case i < 18:
			h.Cordoned = true
		case i < 20:
			h.Worker = false
		default:
			// Nearly full; host0500 is nearest to fitting.
			h.Used = Usage{VCPUs: 120, MemoryBytes: 250 * gib}
			if i == 500 {
				h.Used.MemoryBytes = 245 * gib
			}
		}
		hosts = append(hosts, h)
	}
	_, err := Place(hosts, []Node{node("c1", "c1-worker-11", 8, 16)}, DefaultRatios())
	var nf *NoFitError
	if !errors.As(err, &nf) {
		t.Fatalf("got %v, want a *NoFitError", err)
	}
	if msg := err.Error(); len(msg) > 800 {
		t.Errorf("message is %d characters, want at most 800: %s", len(msg), msg)
	}
	if !strings.Contains(err.Error(), "; host0500: ") {
		t.Errorf("the nearest miss host0500 is not named: %s", err)
	}
	golden.Compare(t, filepath.Join("testdata", "nofit-1000-hosts.golden"), []byte(err.Error()+"\n"), *update)
}

func zonesOf(hosts []Host, plan Plan, cluster string, nodes []Node) map[string]int {
	zone := map[string]string{}
	for _, h := range hosts {
		zone[h.Name] = h.Zone
	}
	got := map[string]int{}
	for _, n := range nodes {
		if n.Cluster == cluster {
			got[zone[plan[n.Name]]]++
		}
	}
	return got
}

func TestZoneSpread(t *testing.T) {
	hostsIn := func(counts map[string]int, clusters map[string][]string) []Host {
		var hs []Host
		for _, z := range slices.Sorted(maps.Keys(counts)) {
			for i := range counts[z] {
				name := fmt.Sprintf("%s-%d", z, i)
				hs = append(hs, worker(name, z, 16, 64, clusters[name]...))
			}
		}
		return hs
	}
	six := func() []Node {
		var ns []Node
		for i := range 6 {
			ns = append(ns, node("c1", fmt.Sprintf("c1-%d", i), 2, 4))
		}
		return ns
	}
	for _, tc := range []struct {
		name  string
		hosts []Host
		nodes []Node
		want  map[string]int // new nodes of c1 per zone
	}{
		{"3 zones of 3 hosts", hostsIn(map[string]int{"a": 3, "b": 3, "c": 3}, nil), six(), map[string]int{"a": 2, "b": 2, "c": 2}},
		{"uneven zones", hostsIn(map[string]int{"a": 7, "b": 2, "c": 2}, nil), six(), map[string]int{"a": 2, "b": 2, "c": 2}},
		{
			"existing nodes count",
			hostsIn(map[string]int{"a": 4, "b": 4, "c": 4}, map[string][]string{"a-0": {"c1"}, "a-1": {"c1"}}),
			six()[:4],
			map[string]int{"b": 2, "c": 2},
		},
		{"a zone too small", hostsIn(map[string]int{"a": 4, "b": 1, "c": 1}, nil), six(), map[string]int{"a": 4, "b": 1, "c": 1}},
		{"unlabelled hosts form one zone", hostsIn(map[string]int{"": 6}, nil), six(), map[string]int{"": 6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := DefaultRatios()
			plan, err := Place(tc.hosts, tc.nodes, r)
			if err != nil {
				t.Fatal(err)
			}
			checkPlan(t, tc.hosts, tc.nodes, r, plan)
			if got := zonesOf(tc.hosts, plan, "c1", tc.nodes); !maps.Equal(got, tc.want) {
				t.Errorf("nodes per zone %v, want %v (plan %v)", got, tc.want, plan)
			}
		})
	}
}

func TestHostChoice(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hosts []Host
		nodes []Node
		want  Plan
	}{
		{
			name:  "one node of a cluster per host, even when one host could take all",
			hosts: []Host{worker("big", "", 128, 1024), worker("small1", "", 2, 4), worker("small2", "", 2, 4)},
			nodes: []Node{node("c1", "n1", 1, 1), node("c1", "n2", 1, 1), node("c1", "n3", 1, 1)},
			want:  Plan{"n1": "big", "n2": "small1", "n3": "small2"},
		},
		{
			name:  "hosts already holding the cluster are skipped",
			hosts: []Host{worker("h1", "", 64, 256, "c1"), worker("h2", "", 4, 8)},
			nodes: []Node{node("c1", "n1", 1, 1)},
			want:  Plan{"n1": "h2"},
		},
		{
			name:  "other clusters share hosts",
			hosts: []Host{worker("h1", "", 64, 256)},
			nodes: []Node{node("c1", "n1", 1, 1), node("c2", "n2", 1, 1), node("c3", "n3", 1, 1)},
			want:  Plan{"n1": "h1", "n2": "h1", "n3": "h1"},
		},
		{
			name: "least loaded after placing, in proportion to size",
			hosts: []Host{
				// After taking the node: memory 16/32, the least loaded.
				with(worker("h1", "", 8, 32), func(h *Host) { h.Used = Usage{VCPUs: 4, MemoryBytes: 8 * gib} }),
				// Memory 8/8: the most free capacity relative to the node, but full after.
				worker("h2", "", 2, 8),
				// vCPU 62/64, though most memory free.
				with(worker("h3", "", 16, 128), func(h *Host) { h.Used = Usage{VCPUs: 60, MemoryBytes: 8 * gib} }),
			},
			nodes: []Node{node("c1", "n1", 2, 8)},
			want:  Plan{"n1": "h1"},
		},
		{
			name:  "ties go to the first name",
			hosts: []Host{worker("b", "", 8, 32), worker("a", "", 8, 32), worker("c", "", 8, 32)},
			nodes: []Node{node("c1", "n1", 1, 1)},
			want:  Plan{"n1": "a"},
		},
		{
			name: "largest first, so the big node gets the only host it fits",
			// Smallest first would put small on a (8/32 beats 8/16), leaving
			// large nowhere to go.
			hosts: []Host{worker("a", "", 8, 32), worker("b", "", 8, 16)},
			nodes: []Node{node("c1", "small", 1, 8), node("c2", "large", 1, 30)},
			want:  Plan{"large": "a", "small": "b"},
		},
		{
			name: "not ready, cordoned and non-worker hosts are never used",
			hosts: []Host{
				with(worker("a", "", 64, 256), func(h *Host) { h.Ready = false }),
				with(worker("b", "", 64, 256), func(h *Host) { h.Cordoned = true }),
				with(worker("c", "", 64, 256), func(h *Host) { h.Worker = false }),
				worker("d", "", 1, 1),
			},
			nodes: []Node{node("c1", "n1", 1, 1)},
			want:  Plan{"n1": "d"},
		},
		{name: "no nodes, empty plan", hosts: []Host{worker("a", "", 1, 1)}, want: Plan{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := DefaultRatios()
			plan, err := Place(tc.hosts, tc.nodes, r)
			if err != nil {
				t.Fatal(err)
			}
			checkPlan(t, tc.hosts, tc.nodes, r, plan)
			if !maps.Equal(plan, tc.want) {
				t.Errorf("plan %v, want %v", plan, tc.want)
			}
		})
	}
}

func TestOvercommitBoundary(t *testing.T) {
	for _, tc := range []struct {
		name     string
		host     Host
		r        Ratios
		node     Node
		wantCPU  int
		wantMem  uint64
		wantFits bool
	}{
		{"cpu exactly full", with(worker("h", "", 4, 64), func(h *Host) { h.Used.VCPUs = 12 }), Ratios{4, 1}, node("c", "n", 4, 1), 4, 64 * gib, true},
		{"cpu one over", with(worker("h", "", 4, 64), func(h *Host) { h.Used.VCPUs = 12 }), Ratios{4, 1}, node("c", "n", 5, 1), 4, 64 * gib, false},
		{"fractional cpu ratio rounds down", worker("h", "", 3, 64), Ratios{1.5, 1}, node("c", "n", 5, 1), 4, 64 * gib, false},
		{"fractional cpu ratio at capacity", worker("h", "", 3, 64), Ratios{1.5, 1}, node("c", "n", 4, 1), 4, 64 * gib, true},
		{"binary rounding of the ratio", worker("h", "", 100, 64), Ratios{0.29, 1}, node("c", "n", 29, 1), 29, 64 * gib, true},
		{"memory exactly full", with(worker("h", "", 4, 16), func(h *Host) { h.Used.MemoryBytes = 8 * gib }), Ratios{4, 1}, node("c", "n", 1, 8), 16, 8 * gib, true},
		{"memory one byte over", with(worker("h", "", 4, 16), func(h *Host) { h.Used.MemoryBytes = 8 * gib }), Ratios{4, 1}, Node{"c", "n", 1, 8*gib + 1}, 16, 8 * gib, false},
		{"memory overcommit", worker("h", "", 4, 4), Ratios{4, 1.5}, node("c", "n", 1, 6), 16, 6 * gib, true},
		{"memory overcommit one byte over", worker("h", "", 4, 4), Ratios{4, 1.5}, Node{"c", "n", 1, 6*gib + 1}, 16, 6 * gib, false},
		{"used beyond capacity offers nothing", with(worker("h", "", 1, 1), func(h *Host) { h.Used = Usage{VCPUs: 9, MemoryBytes: 9 * gib} }), Ratios{4, 1}, node("c", "n", 1, 1), 0, 0, false},
		{"huge host saturates", worker("h", "", math.MaxInt/2, math.MaxUint64/gib), Ratios{4, 3}, node("c", "n", 1, 1), math.MaxInt, math.MaxUint64, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cpu, mem := Free(tc.host, tc.r)
			if cpu != tc.wantCPU || mem != tc.wantMem {
				t.Errorf("Free = %d vCPU, %d bytes; want %d, %d", cpu, mem, tc.wantCPU, tc.wantMem)
			}
			plan, err := Place([]Host{tc.host}, []Node{tc.node}, tc.r)
			if fits := err == nil; fits != tc.wantFits {
				t.Fatalf("fits = %v (plan %v, error %v), want %v", fits, plan, err, tc.wantFits)
			}
			if err != nil {
				var nf *NoFitError
				if !errors.As(err, &nf) {
					t.Errorf("error %v is not a *NoFitError", err)
				}
				return
			}
			checkPlan(t, []Host{tc.host}, []Node{tc.node}, tc.r, plan)
		})
	}
}

// fleet is a mixed fleet: zones, some hosts busy, some holding clusters,
// some unusable, clusters of different sizes and node shapes.
func fleet(hostCount, zones, clusters, perCluster int, seed uint64) ([]Host, []Node) {
	rng := rand.New(rand.NewPCG(seed, 1))
	var hosts []Host
	for i := range hostCount {
		h := worker(fmt.Sprintf("host%04d", i), fmt.Sprintf("zone-%c", 'a'+i%zones), 32+32*(i%3), 256)
		h.Used = Usage{VCPUs: rng.IntN(64), MemoryBytes: uint64(rng.IntN(96)) * gib}
		switch rng.IntN(50) {
		case 0:
			h.Ready = false
		case 1:
			h.Cordoned = true
		case 2:
			h.Clusters = map[string]bool{fmt.Sprintf("c%d", rng.IntN(clusters)): true}
		}
		hosts = append(hosts, h)
	}
	var nodes []Node
	for c := range clusters {
		for i := range perCluster {
			n := node(fmt.Sprintf("c%d", c), fmt.Sprintf("c%d-worker-%d", c, i), 4, 16)
			if i < 3 {
				n = node(n.Cluster, fmt.Sprintf("c%d-cp-%d", c, i), 2, 8)
			}
			nodes = append(nodes, n)
		}
	}
	return hosts, nodes
}

// TestDeterministic places the same fleet in shuffled orders and wants the
// same plan, which the golden file shows for a small fleet.
func TestDeterministic(t *testing.T) {
	hosts, nodes := fleet(12, 3, 3, 5, 7)
	r := DefaultRatios()
	want, err := Place(hosts, nodes, r)
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, hosts, nodes, r, want)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		hs, ns := slices.Clone(hosts), slices.Clone(nodes)
		rng.Shuffle(len(hs), func(i, j int) { hs[i], hs[j] = hs[j], hs[i] })
		rng.Shuffle(len(ns), func(i, j int) { ns[i], ns[j] = ns[j], ns[i] })
		got, err := Place(hs, ns, r)
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(got, want) {
			t.Fatalf("shuffle %d: plan %v, want %v", i, got, want)
		}
	}
	zone := map[string]string{}
	for _, h := range hosts {
		zone[h.Name] = h.Zone
	}
	var b strings.Builder
	for _, n := range slices.Sorted(maps.Keys(want)) {
		fmt.Fprintf(&b, "%s %s %s\n", n, want[n], zone[want[n]])
	}
	golden.Compare(t, filepath.Join("testdata", "plan-12-hosts.golden"), []byte(b.String()), *update)
}

// TestAllOrNothing: a failure on the last node leaves no plan and the
// input as it was.
func TestAllOrNothing(t *testing.T) {
	hosts := []Host{worker("h1", "a", 4, 8, "old"), worker("h2", "b", 4, 8)}
	nodes := []Node{node("c1", "n1", 2, 2), node("c2", "n2", 2, 2), node("c3", "n3", 8, 1)}
	before := slices.Clone(hosts)
	beforeClusters := maps.Clone(hosts[0].Clusters)
	plan, err := Place(hosts, nodes, Ratios{CPU: 1, Memory: 1})
	var nf *NoFitError
	if !errors.As(err, &nf) || nf.Node.Name != "n3" {
		t.Fatalf("got %v, want a *NoFitError for n3", err)
	}
	if plan != nil {
		t.Errorf("plan %v, want nil", plan)
	}
	for i := range hosts {
		if hosts[i].Used != before[i].Used || hosts[i].Name != before[i].Name {
			t.Errorf("host %d changed: %+v, was %+v", i, hosts[i], before[i])
		}
	}
	if !maps.Equal(hosts[0].Clusters, beforeClusters) || hosts[1].Clusters != nil {
		t.Errorf("clusters changed: %v, %v", hosts[0].Clusters, hosts[1].Clusters)
	}
}

// fuzzFleet builds a small fleet from bytes, with the extremes MaxInt,
// MaxUint64 and -1 among the numbers, a duplicate node name now and then,
// and most hosts usable so that most inputs give a plan to check.
func fuzzFleet(data []byte) ([]Host, []Node) {
	next := func() byte {
		if len(data) == 0 {
			return 1 // a valid, small value
		}
		b := data[0]
		data = data[1:]
		return b
	}
	number := func(b byte) int {
		switch b {
		case 255:
			return math.MaxInt
		case 254:
			return -1
		case 0:
			return 0
		}
		return 1 + int(b%16)
	}
	bytesOf := func(b byte) uint64 {
		switch b {
		case 255:
			return math.MaxUint64
		case 0:
			return 0
		}
		return uint64(1+b%16) * gib / 2
	}
	var hosts []Host
	for i := range int(next() % 10) {
		flags, cpu, mem, used := next(), next(), next(), next()
		h := Host{
			Name: fmt.Sprintf("h%d", i), Zone: fmt.Sprintf("z%d", flags%3),
			Worker: true, Ready: true,
			CPUs: number(cpu), MemoryBytes: bytesOf(mem),
			Used: Usage{VCPUs: int(used >> 5), MemoryBytes: bytesOf(used & 3)},
		}
		switch (flags >> 2) & 7 {
		case 1:
			h.Worker = false
		case 2:
			h.Ready = false
		case 3:
			h.Cordoned = true
		}
		if flags&32 != 0 {
			h.Clusters = map[string]bool{fmt.Sprintf("c%d", flags>>6): true, "gone": false}
		}
		hosts = append(hosts, h)
	}
	var nodes []Node
	for i := range int(next() % 10) {
		id, cpu, mem := next(), next(), next()
		name := fmt.Sprintf("n%d", i)
		if id == 255 {
			name = "n0"
		}
		nodes = append(nodes, Node{Cluster: fmt.Sprintf("c%d", id%3), Name: name, VCPUs: number(cpu), MemoryBytes: bytesOf(mem)})
	}
	return hosts, nodes
}

// FuzzPlace wants no panic, a plan that keeps every rule, and the same
// answer for the input in reverse order.
func FuzzPlace(f *testing.F) {
	f.Add([]byte{3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 2, 1, 2, 3, 4, 5, 6}, 4.0, 1.0)
	f.Add([]byte{8, 255, 255, 255, 255, 254, 254, 254, 254, 0, 0, 0, 0, 3, 255, 0, 1, 7, 7, 7, 7, 7}, 1e308, 0.5)
	f.Add([]byte{}, 0.0, math.NaN())
	f.Fuzz(func(t *testing.T, data []byte, cpuRatio, memRatio float64) {
		hosts, nodes := fuzzFleet(data)
		r := Ratios{CPU: cpuRatio, Memory: memRatio}
		plan, err := Place(hosts, nodes, r)
		if err != nil {
			if plan != nil {
				t.Fatalf("plan %v returned with error %v", plan, err)
			}
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
		} else {
			checkPlan(t, hosts, nodes, r, plan)
		}
		slices.Reverse(hosts)
		slices.Reverse(nodes)
		again, err2 := Place(hosts, nodes, r)
		if (err == nil) != (err2 == nil) || !maps.Equal(plan, again) {
			t.Fatalf("reversed input: plan %v, error %v; was %v, %v", again, err2, plan, err)
		}
		var nf *NoFitError
		var tf *TooFewHostsError
		if (errors.As(err, &nf) || errors.As(err, &tf)) && err.Error() != err2.Error() {
			t.Fatalf("reversed input: error %q, was %q", err2, err)
		}
	})
}

// BenchmarkPlace10kNodes1kHosts is the target: 10,000 nodes in
// 1,000 clusters of 10 over 1,000 hosts in 4 zones, in at most 1 s.
func BenchmarkPlace10kNodes1kHosts(b *testing.B) {
	hosts, nodes := fleet(1000, 4, 1000, 10, 1)
	r := DefaultRatios()
	plan, err := Place(hosts, nodes, r)
	if err != nil {
		b.Fatal(err)
	}
	checkPlan(b, hosts, nodes, r, plan)
	b.ResetTimer()
	for b.Loop() {
		if _, err := Place(hosts, nodes, r); err != nil {
			b.Fatal(err)
		}
	}
}
