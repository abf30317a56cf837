package clusters

// The reconciler is tested against in-memory implementations of its own
// small interfaces (Hosts, Nodes, Overlays) that record every call: what is
// under test here is the decision of which calls to make, in which order,
// and what is recorded. The real implementations — libvirt domains in
// internal/agent/guests, netlink overlays in internal/overlaynet — are tested
// against libvirt and kernel devices in their own packages.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"caretaker/internal/overlayspec"
	"caretaker/provisioner/placement"
)

// fakeHosts lists hosts h1..hN, each 8 CPUs and 32 GiB, all ready unless
// marked down.
type fakeHosts struct {
	mu    sync.Mutex
	hosts []placement.Host
	calls int
}

func newHosts(n int) *fakeHosts {
	f := &fakeHosts{}
	for i := 1; i <= n; i++ {
		f.hosts = append(f.hosts, placement.Host{Name: fmt.Sprintf("h%d", i), Worker: true, Ready: true, CPUs: 8, MemoryBytes: 32 * gib})
	}
	return f
}

func (f *fakeHosts) ReadyHosts(context.Context) ([]placement.Host, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return slices.Clone(f.hosts), nil
}

func (f *fakeHosts) setReady(host string, ready bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.hosts {
		if f.hosts[i].Name == host {
			f.hosts[i].Ready = ready
		}
	}
}

// fakeNodes keeps domains per host and records calls as "op host name".
type fakeNodes struct {
	mu      sync.Mutex
	domains map[string]map[string]NodeSpec // host → name → spec
	calls   []string
	down    map[string]bool  // hosts whose calls fail
	fail    map[string]error // CreateNode errors by node name
	// barrier, when set, holds each CreateNode until that many have
	// started: with parallel creation they all get there, with serial
	// creation the first waits until the test's deadline.
	barrier               int
	started               int
	release               chan struct{}
	inflight, maxInflight int
}

func newNodes() *fakeNodes {
	return &fakeNodes{domains: map[string]map[string]NodeSpec{}, down: map[string]bool{}, fail: map[string]error{}}
}

func (f *fakeNodes) record(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
}

func (f *fakeNodes) CreateNode(ctx context.Context, host string, n NodeSpec) (string, error) {
	f.mu.Lock()
	f.calls = append(f.calls, "create "+host+" "+n.Name)
	f.started++
	f.inflight++
	f.maxInflight = max(f.maxInflight, f.inflight)
	if f.barrier > 0 && f.started == f.barrier {
		close(f.release)
	}
	release := f.release
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inflight--
		f.mu.Unlock()
	}()
	if release != nil {
		select {
		case <-release:
		case <-ctx.Done():
			return "", fmt.Errorf("create not released (serial creation?): %w", ctx.Err())
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down[host] {
		return "", errors.New("host unreachable")
	}
	if err := f.fail[n.Name]; err != nil {
		return "", err
	}
	if f.domains[host] == nil {
		f.domains[host] = map[string]NodeSpec{}
	}
	f.domains[host][n.Name] = n
	return n.UUID, nil
}

func (f *fakeNodes) DeleteNode(_ context.Context, host string, id NodeID) error {
	name := id.Name
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "delete "+host+" "+name)
	if f.down[host] {
		return errors.New("host unreachable")
	}
	delete(f.domains[host], name)
	return nil
}

func (f *fakeNodes) NodeRunning(_ context.Context, host, uuid string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "running "+host+" "+uuid)
	for _, n := range f.domains[host] {
		if n.UUID == uuid {
			return true, nil
		}
	}
	return false, nil
}

// where returns host → node names, each sorted.
func (f *fakeNodes) where() map[string][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]string{}
	for h, ds := range f.domains {
		for name := range ds {
			out[h] = append(out[h], name)
		}
		slices.Sort(out[h])
	}
	return out
}

// fakeOverlays keeps each host's overlays and records calls.
type fakeOverlays struct {
	mu    sync.Mutex
	have  map[string]map[string]overlayspec.Overlay // host → cluster → overlay
	calls []string
	down  map[string]bool
}

func newOverlays() *fakeOverlays {
	return &fakeOverlays{have: map[string]map[string]overlayspec.Overlay{}, down: map[string]bool{}}
}

func (f *fakeOverlays) EnsureOverlay(_ context.Context, host string, d overlayspec.Overlay) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "ensure "+host+" "+d.Cluster)
	if f.down[host] {
		return errors.New("host unreachable")
	}
	if err := d.ValidateRepair(); err != nil {
		return err
	}
	if f.have[host] == nil {
		f.have[host] = map[string]overlayspec.Overlay{}
	}
	f.have[host][d.Cluster] = d
	return nil
}

func (f *fakeOverlays) RemoveOverlay(_ context.Context, host, cluster string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "remove "+host+" "+cluster)
	if f.down[host] {
		return errors.New("host unreachable")
	}
	delete(f.have[host], cluster)
	return nil
}

// vtep gives hN the address 192.0.2.N.
func vtep(host string) net.IP {
	var n int
	if _, err := fmt.Sscanf(host, "h%d", &n); err != nil {
		return nil
	}
	return net.IPv4(192, 0, 2, byte(n))
}

type rig struct {
	store    *Store
	hosts    *fakeHosts
	nodes    *fakeNodes
	overlays *fakeOverlays
	r        *Reconciler
	ctx      context.Context
}

// rigMaker makes a rig: newRig on a bbolt file, or one on etcd
// (TestStoreOnEtcd).
type rigMaker func(t *testing.T, hosts int, parallel int) *rig

func newRig(t *testing.T, hosts int, parallel int) *rig {
	t.Helper()
	return newRigOn(t, newStore(t, VNIRange{}), hosts, parallel)
}

func newRigOn(t *testing.T, store *Store, hosts int, parallel int) *rig {
	t.Helper()
	g := &rig{store: store, hosts: newHosts(hosts), nodes: newNodes(), overlays: newOverlays()}
	g.r = g.reconciler(t, g.store, parallel)
	// A deadline, not a wait: a reconciler that serialises what should be
	// parallel fails here instead of hanging.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	g.ctx = ctx
	return g
}

func (g *rig) reconciler(t *testing.T, s *Store, parallel int) *Reconciler {
	t.Helper()
	r, err := New(Options{Store: s, Hosts: g.hosts, Nodes: g.nodes, Overlays: g.overlays, VTEP: vtep,
		Config: Config{Underlay: "eth0", Parallel: parallel}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// calls returns and forgets the calls made so far.
func (g *rig) calls() []string {
	g.nodes.mu.Lock()
	g.overlays.mu.Lock()
	defer g.nodes.mu.Unlock()
	defer g.overlays.mu.Unlock()
	out := append(append([]string(nil), g.nodes.calls...), g.overlays.calls...)
	g.nodes.calls, g.overlays.calls = nil, nil
	g.hosts.mu.Lock()
	if g.hosts.calls > 0 {
		out = append(out, fmt.Sprintf("ready-hosts ×%d", g.hosts.calls))
	}
	g.hosts.calls = 0
	g.hosts.mu.Unlock()
	return out
}

func (g *rig) get(t *testing.T, name string) Cluster {
	t.Helper()
	c, err := g.store.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkOverlays asserts that exactly the hosts holding the cluster's nodes
// have its overlay, each with the others as peers, named and with their
// VTEPs, and that
// ExpectedOverlays agrees.
func (g *rig) checkOverlays(t *testing.T, c Cluster) {
	t.Helper()
	holding := map[string]bool{}
	for _, n := range c.Nodes {
		holding[n.Host] = true
	}
	g.overlays.mu.Lock()
	defer g.overlays.mu.Unlock()
	for _, h := range g.hosts.hosts {
		d, ok := g.overlays.have[h.Name][c.Name]
		if ok != holding[h.Name] {
			t.Errorf("host %s: has overlay %v, holds a node %v", h.Name, ok, holding[h.Name])
			continue
		}
		if !ok {
			continue
		}
		var want []string
		for o := range holding {
			if o != h.Name {
				want = append(want, o+" "+vtep(o).String())
			}
		}
		slices.Sort(want)
		var got []string
		for _, p := range d.Peers {
			got = append(got, p.Host+" "+p.Address)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) || d.Bridge != "br-"+c.Name || d.Device != "vx-"+c.Name || d.VNI != c.VNI ||
			d.Underlay != "eth0" || d.Local != vtep(h.Name).String() {
			t.Errorf("host %s: overlay %+v, want peers %v, bridge br-%s, VNI %d", h.Name, d, want, c.Name, c.VNI)
		}
		exp, err := g.r.ExpectedOverlays(h.Name)
		if err != nil || len(exp) != 1 || exp[0].Cluster != c.Name || len(exp[0].Peers) != len(want) {
			t.Errorf("ExpectedOverlays(%s) = %+v, %v", h.Name, exp, err)
		}
	}
}

// createLab creates and reconciles a cluster of 3 masters and 3 workers.
func (g *rig) createLab(t *testing.T) Cluster {
	t.Helper()
	if _, err := g.store.Create(Spec{Name: "lab", Pools: pools(masters(3), workers(3))}); err != nil {
		t.Fatal(err)
	}
	if err := g.r.Reconcile(g.ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	return g.get(t, "lab")
}

func TestReconcileCreate(t *testing.T) { testReconcileCreate(t, newRig) }

func testReconcileCreate(t *testing.T, newRig rigMaker) {
	g := newRig(t, 8, 8)
	g.nodes.barrier, g.nodes.release = 6, make(chan struct{})
	c := g.createLab(t)
	if c.Phase != PhaseReady {
		t.Errorf("phase %s, want ready; nodes %+v", c.Phase, c.Nodes)
	}
	hosts := map[string]string{}
	for _, n := range c.Nodes {
		if n.State != NodeRunning || n.Host == "" || n.Error != "" {
			t.Errorf("node %+v, want running on a host", n)
		}
		if o, ok := hosts[n.Host]; ok {
			t.Errorf("nodes %s and %s share host %s", o, n.Name, n.Host)
		}
		hosts[n.Host] = n.Name
		if d, ok := g.nodes.domains[n.Host][n.Name]; !ok || d.UUID != n.UUID || d.MAC != n.MAC || d.Bridge != "br-lab" {
			t.Errorf("node %s: domain %+v on %s", n.Name, d, n.Host)
		}
	}
	if g.nodes.maxInflight != 6 {
		t.Errorf("at most %d creations at once, want all 6", g.nodes.maxInflight)
	}
	g.checkOverlays(t, c)
	if len(c.Overlays) != 6 {
		t.Errorf("recorded overlays on %v, want 6 hosts", slices.Sorted(maps.Keys(c.Overlays)))
	}

	// Idempotence: nothing is left to do, so nothing is called.
	g.calls()
	if err := g.r.Reconcile(g.ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	if calls := g.calls(); len(calls) != 0 {
		t.Errorf("second Reconcile called %v", calls)
	}
	if again := g.get(t, "lab"); !again.Updated.Equal(c.Updated) || len(again.Nodes) != 6 {
		t.Error("second Reconcile changed the record")
	}
}

func TestReconcileParallelBound(t *testing.T) {
	g := newRig(t, 8, 2)
	g.nodes.barrier, g.nodes.release = 2, make(chan struct{})
	c := g.createLab(t)
	if c.Phase != PhaseReady || g.nodes.maxInflight != 2 {
		t.Errorf("phase %s, %d creations at once; want ready and 2", c.Phase, g.nodes.maxInflight)
	}
}

func TestReconcileNoFit(t *testing.T) {
	tests := []struct {
		name  string
		hosts func(*fakeHosts)
		want  string
	}{
		{"too few hosts", func(f *fakeHosts) { f.hosts = f.hosts[:4] },
			"cluster lab needs 6 hosts for 6 nodes, only 4 ready hosts"},
		{"too little memory", func(f *fakeHosts) {
			for i := range f.hosts {
				f.hosts[i].MemoryBytes = 6 * gib
			}
		}, "node lab-workers-0 (4 vCPU, 8 GiB): no host fits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newRig(t, 8, 8)
			tt.hosts(g.hosts)
			if _, err := g.store.Create(Spec{Name: "lab", Pools: pools(masters(3), workers(3))}); err != nil {
				t.Fatal(err)
			}
			err := g.r.Reconcile(g.ctx, "lab")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Reconcile: %v, want %q", err, tt.want)
			}
			c := g.get(t, "lab")
			if c.Phase != PhaseDegraded {
				t.Errorf("phase %s, want degraded", c.Phase)
			}
			for _, n := range c.Nodes {
				if n.State != NodeFailed || n.Host != "" || !strings.HasPrefix(n.Error, tt.want) {
					t.Errorf("node %+v, want failed with %q", n, tt.want)
				}
			}
			if calls := g.calls(); !slices.Equal(calls, []string{"ready-hosts ×1"}) {
				t.Errorf("calls %v, want only the host list", calls)
			}

			// Hosts come: the next pass places and creates everything.
			g.hosts = newHosts(8)
			g.r.o.Hosts = g.hosts
			if err := g.r.Reconcile(g.ctx, "lab"); err != nil {
				t.Fatal(err)
			}
			if c := g.get(t, "lab"); c.Phase != PhaseReady {
				t.Errorf("after hosts came: phase %s", c.Phase)
			}
		})
	}
}

func TestReconcileCreateFailure(t *testing.T) {
	g := newRig(t, 8, 8)
	g.nodes.fail["lab-workers-1"] = errors.New("no space left in pool default")
	if _, err := g.store.Create(Spec{Name: "lab", Pools: pools(masters(3), workers(3))}); err != nil {
		t.Fatal(err)
	}
	if err := g.r.Reconcile(g.ctx, "lab"); err == nil || !strings.Contains(err.Error(), "create node lab-workers-1 on h") {
		t.Errorf("Reconcile: %v, want the failed creation", err)
	}
	c := g.get(t, "lab")
	n := c.node("lab-workers-1")
	if c.Phase != PhaseDegraded || n.State != NodeFailed || !strings.Contains(n.Error, "no space left") {
		t.Fatalf("phase %s, node %+v; want degraded, the node failed", c.Phase, n)
	}
	delete(g.nodes.fail, "lab-workers-1")
	g.calls()
	if err := g.r.Reconcile(g.ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	// Retried on the same host, nothing else touched.
	if calls := g.calls(); !slices.Equal(calls, []string{"create " + n.Host + " lab-workers-1"}) {
		t.Errorf("calls %v", calls)
	}
	if c := g.get(t, "lab"); c.Phase != PhaseReady {
		t.Errorf("phase %s after retry", c.Phase)
	}
}

func TestReconcileUnknownVTEP(t *testing.T) {
	g := newRig(t, 6, 8)
	g.r.o.VTEP = func(h string) net.IP {
		if h == "h3" {
			return nil
		}
		return vtep(h)
	}
	if _, err := g.store.Create(Spec{Name: "lab", Pools: pools(masters(3), workers(3))}); err != nil {
		t.Fatal(err)
	}
	err := g.r.Reconcile(g.ctx, "lab")
	if err == nil || !strings.Contains(err.Error(), "overlay on h1: no VTEP address known for [h3]") {
		t.Errorf("Reconcile: %v, want the missing VTEP named", err)
	}
	// h3's own overlay is complete (nil Local: the underlay's address);
	// every other host's would lack h3 as a peer.
	c := g.get(t, "lab")
	for _, n := range c.Nodes {
		if n.Host == "h3" {
			continue
		}
		if n.State != NodePending || !strings.Contains(n.Error, "waiting for the overlay: overlay on") {
			t.Errorf("node %+v, want pending, waiting for the overlay", n)
		}
	}
	calls := g.calls()
	for _, call := range calls {
		if (strings.HasPrefix(call, "create ") || strings.HasPrefix(call, "ensure ")) && !strings.HasPrefix(call[strings.Index(call, " ")+1:], "h3 ") {
			t.Errorf("called %s with an incomplete overlay", call)
		}
	}
	if !slices.Contains(calls, "ensure h3 lab") {
		t.Errorf("calls %v: h3's complete overlay not ensured", calls)
	}
}

func TestReconcileScale(t *testing.T) { testReconcileScale(t, newRig) }

func testReconcileScale(t *testing.T, newRig rigMaker) {
	g := newRig(t, 8, 8)
	g.createLab(t)
	g.calls()

	if _, err := g.store.Scale("lab", "workers", 4); err != nil {
		t.Fatal(err)
	}
	if err := g.r.Reconcile(g.ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	c := g.get(t, "lab")
	added := c.node("lab-workers-3")
	if c.Phase != PhaseReady || added == nil || added.State != NodeRunning {
		t.Fatalf("after scale up: phase %s, nodes %v", c.Phase, names(c.Nodes))
	}
	calls := g.calls()
	creates, ensures := 0, 0
	for _, call := range calls {
		creates += strings.Count(call, "create ")
		ensures += strings.Count(call, "ensure ")
	}
	// Membership changed: every holding host learns the new peer.
	if creates != 1 || ensures != 7 || !slices.Contains(calls, "create "+added.Host+" lab-workers-3") {
		t.Errorf("scale up calls %v, want 1 create and 7 ensures", calls)
	}
	g.checkOverlays(t, c)

	w2, w3 := c.node("lab-workers-2").Host, added.Host
	if _, err := g.store.Scale("lab", "workers", 2); err != nil {
		t.Fatal(err)
	}
	if err := g.r.Reconcile(g.ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	c = g.get(t, "lab")
	if got := names(c.Nodes); c.Phase != PhaseReady || len(got) != 5 || c.node("lab-workers-2") != nil {
		t.Fatalf("after scale down: phase %s, nodes %v", c.Phase, got)
	}
	calls = g.calls()
	// Highest index first, then the overlays follow.
	if len(calls) < 2 || calls[0] != "delete "+w3+" lab-workers-3" || calls[1] != "delete "+w2+" lab-workers-2" {
		t.Errorf("scale down calls %v, want lab-workers-3 deleted, then lab-workers-2", calls)
	}
	for _, h := range []string{w2, w3} {
		if !slices.Contains(calls, "remove "+h+" lab") {
			t.Errorf("scale down calls %v: no overlay removal on %s", calls, h)
		}
		if _, ok := c.Overlays[h]; ok {
			t.Errorf("overlay on %s still recorded", h)
		}
		if exp, _ := g.r.ExpectedOverlays(h); len(exp) != 0 {
			t.Errorf("ExpectedOverlays(%s) = %v after its node left", h, exp)
		}
	}
	g.checkOverlays(t, c)
}

func TestReconcileDelete(t *testing.T) { testReconcileDelete(t, newRig) }

func testReconcileDelete(t *testing.T, newRig rigMaker) {
	g := newRig(t, 8, 8)
	g.createLab(t)
	g.calls()
	if _, err := g.store.Delete("lab"); err != nil {
		t.Fatal(err)
	}
	if err := g.r.Reconcile(g.ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	if _, err := g.store.Get("lab"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after delete: %v, want ErrNotFound", err)
	}
	deletes, removes := 0, 0
	for _, c := range g.calls() {
		deletes += strings.Count(c, "delete ")
		removes += strings.Count(c, "remove ")
	}
	if deletes != 6 || removes != 6 {
		t.Errorf("%d deletes and %d overlay removals, want 6 each", deletes, removes)
	}
	if w := g.nodes.where(); len(slices.Concat(slices.Collect(maps.Values(w))...)) != 0 {
		t.Errorf("domains left: %v", w)
	}
	for h, cs := range g.overlays.have {
		if len(cs) != 0 {
			t.Errorf("overlays left on %s: %v", h, cs)
		}
	}
	if err := g.r.Reconcile(g.ctx, "lab"); err != nil || len(g.calls()) != 0 {
		t.Errorf("Reconcile of a deleted cluster: %v, or it made calls", err)
	}
	// The VNI is free again.
	if c, err := g.store.Create(Spec{Name: "lab2", Pools: pools(workers(1))}); err != nil || c.VNI != 10000 {
		t.Errorf("create after delete: vni %d, %v", c.VNI, err)
	}
}

func TestReconcileDeleteWithHostDown(t *testing.T) {
	g := newRig(t, 8, 8)
	c := g.createLab(t)
	down := c.Nodes[0].Host
	g.nodes.down[down], g.overlays.down[down] = true, true
	if _, err := g.store.Delete("lab"); err != nil {
		t.Fatal(err)
	}
	if err := g.r.Reconcile(g.ctx, "lab"); err == nil || !strings.Contains(err.Error(), "host unreachable") {
		t.Errorf("Reconcile: %v, want the unreachable host's error", err)
	}
	c = g.get(t, "lab")
	if len(c.Nodes) != 1 || c.Nodes[0].Host != down || !strings.Contains(c.Nodes[0].Error, "unreachable") {
		t.Errorf("nodes left %+v, want only the one on %s, with its error", c.Nodes, down)
	}
	g.nodes.down[down], g.overlays.down[down] = false, false
	if err := g.r.Reconcile(g.ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	if _, err := g.store.Get("lab"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after the host came back: %v", err)
	}
}

func TestRecreateNode(t *testing.T) { testRecreateNode(t, newRig) }

func testRecreateNode(t *testing.T, newRig rigMaker) {
	t.Run("same host", func(t *testing.T) {
		g := newRig(t, 8, 8)
		n := *g.createLab(t).node("lab-workers-1")
		g.calls()
		if err := g.r.RecreateNode(g.ctx, n.Host, n.UUID); err != nil {
			t.Fatal(err)
		}
		if calls := g.calls(); !slices.Equal(calls, []string{"create " + n.Host + " lab-workers-1", "ready-hosts ×1"}) {
			t.Errorf("calls %v, want one create on %s", calls, n.Host)
		}
		if got := *g.get(t, "lab").node("lab-workers-1"); got != n {
			t.Errorf("node %+v after recreate, want %+v", got, n)
		}
		// By name, as the remediation engine may know only that.
		if err := g.r.RecreateNode(g.ctx, n.Host, "lab-workers-1"); err != nil {
			t.Errorf("recreate by name: %v", err)
		}
	})
	t.Run("host not ready", func(t *testing.T) {
		g := newRig(t, 8, 8)
		before := g.createLab(t)
		n := *before.node("lab-workers-1")
		g.hosts.setReady(n.Host, false)
		g.nodes.down[n.Host], g.overlays.down[n.Host] = true, true
		g.calls()
		if err := g.r.RecreateNode(g.ctx, n.Host, n.UUID); err != nil {
			t.Fatal(err)
		}
		c := g.get(t, "lab")
		got := *c.node("lab-workers-1")
		if got.Host == n.Host || got.Host == "" || got.UUID != n.UUID || got.MAC != n.MAC || got.State != NodeRunning {
			t.Fatalf("node %+v after recreate, want it running elsewhere with UUID %s and MAC %s", got, n.UUID, n.MAC)
		}
		if d := g.nodes.domains[got.Host][got.Name]; d.UUID != n.UUID || d.MAC != n.MAC {
			t.Errorf("new domain %+v", d)
		}
		calls := g.calls()
		for _, want := range []string{"delete " + n.Host + " lab-workers-1", "create " + got.Host + " lab-workers-1", "remove " + n.Host + " lab"} {
			if !slices.Contains(calls, want) {
				t.Errorf("calls %v: no %q", calls, want)
			}
		}
		// The other holders learn the new peer; the dead host keeps its
		// record so the removal is retried when it answers.
		for _, h := range c.members() {
			if !slices.Contains(calls, "ensure "+h+" lab") {
				t.Errorf("calls %v: overlay on %s not re-ensured", calls, h)
			}
		}
		if _, ok := c.Overlays[n.Host]; !ok {
			t.Error("the unreachable host's overlay record was dropped before removal")
		}
		if exp, _ := g.r.ExpectedOverlays(n.Host); len(exp) != 0 {
			t.Errorf("ExpectedOverlays(%s) = %v", n.Host, exp)
		}
		g.overlays.mu.Lock()
		d := g.overlays.have[got.Host]["lab"]
		g.overlays.mu.Unlock()
		if len(d.Peers) != 5 || slices.ContainsFunc(d.Peers, func(p overlayspec.Peer) bool { return p.Address == vtep(n.Host).String() }) {
			t.Errorf("new host's peers %v: want 5, without the old host", d.Peers)
		}
	})
	t.Run("errors", func(t *testing.T) {
		g := newRig(t, 6, 8)
		n := *g.createLab(t).node("lab-workers-1")
		if err := g.r.RecreateNode(g.ctx, "h1", "no-such-uuid"); !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown node: %v, want ErrNotFound", err)
		}
		other := "h1"
		if n.Host == other {
			other = "h2"
		}
		if err := g.r.RecreateNode(g.ctx, other, n.UUID); !errors.Is(err, ErrConflict) {
			t.Errorf("wrong host: %v, want ErrConflict", err)
		}
		// Six hosts, six nodes: nowhere to move to.
		g.hosts.setReady(n.Host, false)
		err := g.r.RecreateNode(g.ctx, n.Host, n.UUID)
		if err == nil || !strings.Contains(err.Error(), "failed: cluster lab needs 1 host for 1 new node, only 0 ready hosts") {
			t.Errorf("no room: %v", err)
		}
	})
}

func TestReconcileAfterRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clusters.db")
	db := openDB(t, path)
	g := newRig(t, 8, 8)
	g.store = storeAt(t, db, VNIRange{})
	g.r = g.reconciler(t, g.store, 8)
	c := g.createLab(t)

	// A crash left two nodes "creating": one whose domain was made, one
	// whose CreateNode never reached the host.
	made, lost := *c.node("lab-masters-0"), *c.node("lab-workers-2")
	delete(g.nodes.domains[lost.Host], lost.Name)
	if _, err := g.store.update("lab", func(c *Cluster) error {
		c.node(made.Name).State = NodeCreating
		c.node(lost.Name).State = NodeCreating
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	g.calls()

	g.store = storeAt(t, openDB(t, path), VNIRange{})
	g.r = g.reconciler(t, g.store, 8)
	if err := g.r.Reconcile(g.ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	calls := g.calls()
	slices.Sort(calls)
	want := []string{"create " + lost.Host + " " + lost.Name, "running " + made.Host + " " + made.UUID, "running " + lost.Host + " " + lost.UUID}
	slices.Sort(want)
	if !slices.Equal(calls, want) {
		t.Errorf("calls %v, want %v", calls, want)
	}
	if c := g.get(t, "lab"); c.Phase != PhaseReady {
		t.Errorf("phase %s", c.Phase)
	}
}

func TestRun(t *testing.T) {
	for _, early := range []bool{true, false} {
		t.Run(fmt.Sprintf("created before start %v", early), func(t *testing.T) {
			g := newRig(t, 8, 8)
			created := make(chan struct{})
			g.nodes.barrier, g.nodes.release = 6, created
			create := func() {
				if _, err := g.store.Create(Spec{Name: "lab", Pools: pools(masters(3), workers(3))}); err != nil {
					t.Error(err)
				}
			}
			if early {
				create()
			}
			ctx, cancel := context.WithCancel(g.ctx)
			done := make(chan struct{})
			go func() { g.r.Run(ctx, time.Hour); close(done) }()
			if !early {
				create()
				g.r.Notify()
			}
			select {
			case <-created:
			case <-g.ctx.Done():
				t.Fatal("Run did not create the nodes")
			}
			cancel()
			<-done // Run waits for the passes it started
			if c := g.get(t, "lab"); c.Phase != PhaseReady {
				t.Errorf("phase %s after Run: %v", c.Phase, names(c.Nodes))
			}
		})
	}
}

func TestNewChecksOptions(t *testing.T) {
	s := newStore(t, VNIRange{})
	base := Options{Store: s, Hosts: newHosts(1), Nodes: newNodes(), Overlays: newOverlays(), VTEP: vtep, Config: Config{Underlay: "eth0"}}
	for _, tt := range []struct {
		name string
		f    func(*Options)
		want string
	}{
		{"no underlay", func(o *Options) { o.Config.Underlay = "" }, "underlay: empty"},
		{"long underlay", func(o *Options) { o.Config.Underlay = "enp0s31f6abcdefgh" }, "longer than 15 bytes"},
		{"bad mtu", func(o *Options) { o.Config.MTU = 10 }, "mtu: 10"},
		{"bad ratio", func(o *Options) { o.Config.Ratios.CPU = -1 }, "cpu overcommit ratio -1"},
		{"no store", func(o *Options) { o.Store = nil }, "are required"},
	} {
		o := base
		tt.f(&o)
		if _, err := New(o); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
	if _, err := New(base); err != nil {
		t.Errorf("good options: %v", err)
	}
}

// BenchmarkReconcileCreate measures one pass creating a 50-node cluster on
// 60 hosts with instant fakes: the cost of placement and of recording each
// node's progress in bbolt.
func BenchmarkReconcileCreate(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		g := &rig{store: newStore(b, VNIRange{}), hosts: newHosts(60), nodes: newNodes(), overlays: newOverlays(), ctx: context.Background()}
		r, err := New(Options{Store: g.store, Hosts: g.hosts, Nodes: g.nodes, Overlays: g.overlays, VTEP: vtep, Config: Config{Underlay: "eth0"}})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := g.store.Create(Spec{Name: "big", Pools: pools(masters(5), workers(45))}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := r.Reconcile(g.ctx, "big"); err != nil {
			b.Fatal(err)
		}
	}
}

// A record from before overlays were recorded whole holds each host's peer
// addresses only. It still loads, and the next pass puts that host's
// overlay again, peers named, and records it whole.
func TestReconcileOldOverlayRecord(t *testing.T) {
	g := newRig(t, 8, 8)
	c := g.createLab(t)
	host := c.Nodes[0].Host
	var old Cluster
	if err := json.Unmarshal([]byte(`{"name": "lab", "overlays": {"`+host+`": ["192.0.2.250"]}}`), &old); err != nil {
		t.Fatalf("old record: %v", err)
	}
	if got := old.Overlays[host].PeerAddrs(); !slices.Equal(got, []string{"192.0.2.250"}) {
		t.Fatalf("old record's peers %v", got)
	}
	if _, err := g.store.update("lab", func(c *Cluster) error {
		c.Overlays[host] = old.Overlays[host]
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	g.calls()
	if err := g.r.Reconcile(g.ctx, "lab"); err != nil {
		t.Fatal(err)
	}
	if calls := g.calls(); !slices.Equal(calls, []string{"ensure " + host + " lab"}) {
		t.Errorf("calls %v, want the one overlay put again", calls)
	}
	c = g.get(t, "lab")
	g.checkOverlays(t, c)
	rec := c.Overlays[host]
	if len(rec.Peers) != 5 || slices.ContainsFunc(rec.Peers, func(p overlayspec.Peer) bool { return p.Host == "" }) || rec.VNI != c.VNI {
		t.Errorf("recorded overlay on %s: %+v, want it whole with 5 named peers", host, rec)
	}
}
