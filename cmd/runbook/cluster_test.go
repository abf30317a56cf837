package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"caretaker/internal/kv"
	"github.com/spf13/cobra"

	"caretaker/internal/api"
	"caretaker/internal/golden"
	"caretaker/internal/overlayspec"
	"caretaker/provisioner/clusters"
	"caretaker/provisioner/placement"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// clusterServer serves the real cluster handler over a real store, behind
// the roles the server gives its routes. onGet, when set, runs before each
// GET of one cluster: the test's stand-in for the reconciler's progress.
type clusterServer struct {
	*httptest.Server
	db    *kv.Bolt
	store *clusters.Store
	mu    sync.Mutex
	onGet func(name string)
}

var testEpoch = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func newClusterServer(t *testing.T) *clusterServer {
	t.Helper()
	db, err := kv.OpenBolt(filepath.Join(t.TempDir(), "state.db"), "state")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	store, err := clusters.NewStore(db, clusters.StoreOptions{
		Now:    func() time.Time { return testEpoch },
		Random: rand.NewChaCha8([32]byte{1}),
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &clusterServer{db: db, store: store}
	// Planning places on two hosts of 8 CPUs and 32 GiB, as the
	// reconciler would on a fleet of that size.
	plan := func(_ context.Context, spec clusters.Spec) (clusters.Plan, error) {
		if err := store.CheckNew(spec); err != nil {
			return clusters.Plan{}, err
		}
		hosts := []placement.Host{
			{Name: "host-a", Worker: true, Ready: true, CPUs: 8, MemoryBytes: 32 << 30},
			{Name: "host-b", Worker: true, Ready: true, CPUs: 8, MemoryBytes: 32 << 30},
		}
		var nodes []placement.Node
		p := clusters.Plan{}
		for _, pool := range spec.Pools {
			for i := range pool.Count {
				name := clusters.NodeName(spec.Name, pool.Name, i)
				nodes = append(nodes, placement.Node{Cluster: spec.Name, Name: name, VCPUs: pool.VCPUs, MemoryBytes: pool.MemoryBytes})
				p.Nodes = append(p.Nodes, clusters.PlannedNode{Name: name, Pool: pool.Name})
			}
		}
		where, err := placement.Place(hosts, nodes, placement.DefaultRatios())
		if err != nil {
			p.Reason = err.Error()
			return p, nil
		}
		for i := range p.Nodes {
			p.Nodes[i].Host = where[p.Nodes[i].Name]
		}
		p.Fits = true
		return p, nil
	}
	h := clusters.Handler(store, nil, nil, plan)
	a := testAuth(t)
	mux := http.NewServeMux()
	mux.Handle("GET /api/v1/clusters", a.Require(api.RoleViewer, "reading clusters", h))
	mux.Handle("GET /api/v1/clusters/{name}", a.Require(api.RoleViewer, "reading clusters", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		f := s.onGet
		s.mu.Unlock()
		if f != nil {
			f(r.PathValue("name"))
		}
		h.ServeHTTP(w, r)
	})))
	mux.Handle("POST /api/v1/clusters", a.Require(api.RoleOperator, "creating a cluster", h))
	mux.Handle("POST /api/v1/clusters/plan", a.Require(api.RoleOperator, "planning a cluster", h))
	mux.Handle("DELETE /api/v1/clusters/{name}", a.Require(api.RoleOperator, "deleting a cluster", h))
	mux.Handle("PATCH /api/v1/clusters/{name}/pools/{pool}", a.Require(api.RoleOperator, "scaling a cluster", h))
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

// steps makes the n'th GET of a cluster apply steps[n]; GETs after the
// last change nothing.
func (s *clusterServer) steps(t *testing.T, steps ...func(*clusters.Cluster)) {
	n := 0
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onGet = func(name string) {
		if n < len(steps) {
			if steps[n] != nil {
				s.setNodes(t, name, steps[n])
			}
			n++
		}
	}
}

// setNodes changes a stored cluster as the reconciler would: the store
// exports no setter for node states, so the test writes its bbolt record,
// deriving the phase the way the store does. f == nil removes the record,
// as the end of a deletion does.
func (s *clusterServer) setNodes(t *testing.T, name string, f func(*clusters.Cluster)) {
	err := s.db.Update(func(tx kv.Tx) error {
		b := tx.Bucket("clusters")
		var c clusters.Cluster
		raw, err := b.Get([]byte(name))
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			return err
		}
		f(&c)
		if c.Phase != clusters.PhaseDeleting {
			c.Phase = clusters.PhaseReady
			for _, n := range c.Nodes {
				if n.State == clusters.NodeFailed {
					c.Phase = clusters.PhaseDegraded
					break
				}
				if n.State != clusters.NodeRunning {
					c.Phase = clusters.PhaseCreating
				}
			}
		}
		data, err := json.Marshal(c)
		if err != nil {
			return err
		}
		return b.Put([]byte(name), data)
	})
	if err != nil {
		t.Errorf("set nodes of %s: %v", name, err)
	}
}

func (s *clusterServer) removeRecord(t *testing.T, name string) {
	if err := s.db.Update(func(tx kv.Tx) error { return tx.Bucket("clusters").Delete([]byte(name)) }); err != nil {
		t.Errorf("remove %s: %v", name, err)
	}
}

// node sets node i's host, state and error.
func node(i int, host, state, errMsg string) func(*clusters.Cluster) {
	return func(c *clusters.Cluster) {
		c.Nodes[i].Host, c.Nodes[i].State, c.Nodes[i].Error = host, state, errMsg
	}
}

func all(fs ...func(*clusters.Cluster)) func(*clusters.Cluster) {
	return func(c *clusters.Cluster) {
		for _, f := range fs {
			f(c)
		}
	}
}

func TestClusterCreateWait(t *testing.T) {
	s := newClusterServer(t)
	s.steps(t,
		node(0, "host-a", clusters.NodeCreating, ""),
		all(node(0, "host-a", clusters.NodeRunning, ""), node(1, "host-b", clusters.NodeCreating, "")),
		func(*clusters.Cluster) {}, // no change: no new line
		all(node(1, "host-b", clusters.NodeRunning, ""), node(2, "host-a", clusters.NodeRunning, "")),
	)
	out, err := runAs(t, s.URL, "op-tok", "cluster", "create", "lab", "--masters", "1", "--workers", "2",
		"--memory", "1GiB", "--disk", "2G", "--master-vcpus", "4", "--wait", "--poll-interval", "1ms")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := regexp.MustCompile(`^0/3 nodes running \(3 pending\)
0/3 nodes running \(1 creating, 2 pending\)
1/3 nodes running \(1 creating, 1 pending\)
cluster lab ready: 3 nodes running after \d+\.\d s
$`)
	if !want.MatchString(out) {
		t.Errorf("create --wait printed:\n%s\nwant lines matching\n%s", out, want)
	}
	c, err := s.store.Get("lab")
	if err != nil {
		t.Fatal(err)
	}
	if m, w := c.Pools[0], c.Pools[1]; m.Count != 1 || m.VCPUs != 4 || m.MemoryBytes != 1<<30 || w.Count != 2 || w.VCPUs != 2 || w.DiskBytes != 2<<30 {
		t.Errorf("pools = %+v, want 1 master with 4 vCPUs and 1 GiB, 2 workers with 2 vCPUs and 2 GiB disks", c.Pools)
	}

	// With -o json the progress goes to stderr and stdout is the cluster.
	out, err = runAs(t, s.URL, "view-tok", "cluster", "list", "-o", "json")
	var cs []clusters.Cluster
	if err != nil || json.Unmarshal([]byte(out), &cs) != nil || len(cs) != 1 || cs[0].Phase != clusters.PhaseReady {
		t.Errorf("list -o json = %s, %v", out, err)
	}
	out, err = runAs(t, s.URL, "view-tok", "cluster", "list")
	if err != nil || !regexp.MustCompile(`lab\s+ready\s+3/3\s+10000\s`).MatchString(out) {
		t.Errorf("list:\n%s\n%v", out, err)
	}
	out, err = runAs(t, s.URL, "view-tok", "cluster", "show", "lab")
	if err != nil || !regexp.MustCompile(`lab-worker-0\s+worker\s+worker\s+host-b\s+running\s+-`).MatchString(out) {
		t.Errorf("show:\n%s\n%v", out, err)
	}
}

// --plan shows where the nodes would go and creates nothing; a cluster
// that does not fit exits 1 with placement's reason.
func TestClusterCreatePlan(t *testing.T) {
	s := newClusterServer(t)
	out, err := runAs(t, s.URL, "op-tok", "cluster", "create", "lab", "--masters", "1", "--workers", "1", "--memory", "1GiB", "--plan")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := regexp.MustCompile(`(?s)^NODE +POOL +HOST\nlab-master-0 +master +host-[ab]\nlab-worker-0 +worker +host-[ab]\ncluster lab fits: 2 nodes \(nothing created\)\n$`)
	if !want.MatchString(out) {
		t.Errorf("--plan printed:\n%s\nwant lines matching %s", out, want)
	}
	out, err = runAs(t, s.URL, "op-tok", "cluster", "create", "big", "--masters", "1", "--workers", "2", "--memory", "1GiB", "--plan")
	if err == nil || !strings.HasPrefix(err.Error(), "cluster big does not fit now: ") {
		t.Errorf("three nodes on two hosts: %v\n%s; want does not fit", err, out)
	}
	if _, err := runAs(t, s.URL, "view-tok", "cluster", "create", "lab", "--plan"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("--plan as a viewer: %v, want 403", err)
	}
	if cs, err := s.store.List(); err != nil || len(cs) != 0 {
		t.Errorf("after --plan: %d clusters (%v), want none", len(cs), err)
	}
}

func TestClusterCreateDegraded(t *testing.T) {
	s := newClusterServer(t)
	s.steps(t, all(node(0, "host-a", clusters.NodeRunning, ""), node(1, "", clusters.NodeFailed, "place 1 nodes: no host has room for 2 vCPUs")))
	var stdout, stderr bytes.Buffer
	cmd := newRootCmd(&stdout, &stderr, env(map[string]string{"RUNBOOK_URL": s.URL, "RUNBOOK_TOKEN": "op-tok"}))
	cmd.SetArgs([]string{"cluster", "create", "bad", "--masters", "1", "--workers", "1", "--memory", "64MiB", "--wait", "--poll-interval", "1ms", "-o", "json"})
	err := cmd.Execute()
	if err == nil || !regexp.MustCompile(`^cluster bad degraded after \d+\.\d s: 1/2 nodes failed .*:
  bad-worker-0 \(host -\): place 1 nodes: no host has room for 2 vCPUs$`).MatchString(err.Error()) {
		t.Errorf("err = %v, want the degraded cluster's failed node", err)
	}
	if stdout.Len() != 0 || !strings.Contains(stderr.String(), "0/2 nodes running (2 pending)") {
		t.Errorf("-o json --wait: stdout %q, stderr %q; want progress on stderr only", stdout.String(), stderr.String())
	}
}

func TestClusterWaitTimeout(t *testing.T) {
	s := newClusterServer(t)
	release := make(chan struct{})
	defer close(release)
	s.mu.Lock()
	s.onGet = func(string) { <-release } // the server hangs until the client gives up
	s.mu.Unlock()
	_, err := runAs(t, s.URL, "op-tok", "cluster", "create", "slow", "--workers", "1", "--masters", "0",
		"--memory", "64M", "--wait", "--poll-interval", "1ms", "--timeout", "500ms")
	if err == nil || !regexp.MustCompile(`^cluster slow not ready after \d+\.\d s \(--timeout\): 0/1 nodes running \(1 pending\); the server carries on`).MatchString(err.Error()) {
		t.Errorf("err = %v, want a timeout saying where the cluster stands", err)
	}
}

func TestClusterErrors(t *testing.T) {
	s := newClusterServer(t)
	if _, err := runAs(t, s.URL, "op-tok", "cluster", "create", "lab", "--workers", "1", "--masters", "1", "--memory", "64MiB"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		token string
		args  []string
		want  string
	}{
		{"viewer creates", "view-tok", []string{"cluster", "create", "x"}, `not allowed (403): token "vera" has role viewer; creating a cluster needs operator`},
		{"exists", "op-tok", []string{"cluster", "create", "lab", "--memory", "64M"}, "conflict (409): create cluster lab: cluster lab: already exists"},
		{"unknown cluster", "view-tok", []string{"cluster", "show", "nope"}, "not found (404): cluster nope: not found"},
		{"unknown pool", "op-tok", []string{"cluster", "scale", "lab", "big", "2"}, "not found (404): scale cluster lab pool big to 2: pool big: not found"},
		{"bad count", "op-tok", []string{"cluster", "scale", "lab", "worker", "many"}, `COUNT: want a number of nodes (0 or more), got "many"`},
		{"bad size", "op-tok", []string{"cluster", "create", "x", "--memory", "4GB"}, `invalid argument "4GB" for "--memory" flag: "4GB": unknown unit "GB"`},
		{"flags named", "op-tok", []string{"cluster", "create", "x", "--vcpus", "0", "--master-memory", "1M"},
			"cluster x: --vcpus (for the masters): 0, must be at least 1; --master-memory: 1048576, must be at least 67108864 (64 MiB); --vcpus: 0, must be at least 1"},
		{"bad name", "op-tok", []string{"cluster", "create", "Lab_1"}, `cluster Lab_1: name "Lab_1": must be lowercase letters`},
		{"bad interval", "op-tok", []string{"cluster", "scale", "lab", "worker", "2", "--wait", "--poll-interval", "0s"}, "--poll-interval: want a positive duration"},
		{"delete without --yes", "op-tok", []string{"cluster", "delete", "lab"}, "cluster delete destroys every node of lab and its disk: add --yes if you mean it"},
		{"viewer deletes", "view-tok", []string{"cluster", "delete", "lab", "--yes"}, `not allowed (403): token "vera" has role viewer; deleting a cluster needs operator`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := runAs(t, s.URL, tc.token, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if c, err := s.store.Get("lab"); err != nil || c.Phase == clusters.PhaseDeleting {
		t.Errorf("lab after refused deletes: %+v, %v; want it untouched", c.Phase, err)
	}
}

func TestClusterScaleAndDelete(t *testing.T) {
	s := newClusterServer(t)
	if _, err := runAs(t, s.URL, "op-tok", "cluster", "create", "lab", "--workers", "1", "--masters", "1", "--memory", "64MiB"); err != nil {
		t.Fatal(err)
	}
	s.setNodes(t, "lab", all(node(0, "host-a", clusters.NodeRunning, ""), node(1, "host-a", clusters.NodeRunning, "")))
	s.steps(t, all(node(2, "host-b", clusters.NodeRunning, "")))
	out, err := runAs(t, s.URL, "op-tok", "cluster", "scale", "lab", "worker", "2", "--wait", "--poll-interval", "1ms")
	if err != nil || !regexp.MustCompile(`^2/3 nodes running \(1 pending\)\ncluster lab ready: 3 nodes running after \d+\.\d s\n$`).MatchString(out) {
		t.Fatalf("scale --wait:\n%s\n%v", out, err)
	}
	out, err = runAs(t, s.URL, "op-tok", "cluster", "scale", "lab", "worker", "1")
	if err != nil || out != "cluster lab pool worker scaled to 1: 2/3 nodes running (1 deleting) (follow it: runbook cluster show lab)\n" {
		t.Fatalf("scale:\n%q\n%v", out, err)
	}

	s.steps(t,
		func(c *clusters.Cluster) { c.Nodes = c.Nodes[1:] },
		nil, // no change
		func(*clusters.Cluster) {})
	s.mu.Lock()
	step := s.onGet
	gets := 0
	s.onGet = func(name string) {
		if gets++; gets == 3 {
			s.removeRecord(t, name)
			return
		}
		step(name)
	}
	s.mu.Unlock()
	out, err = runAs(t, s.URL, "op-tok", "cluster", "delete", "lab", "--yes", "--wait", "--poll-interval", "1ms", "--comment", "demo over")
	if err != nil || !regexp.MustCompile(`^3 nodes left\n2 nodes left\ncluster lab deleted after \d+\.\d s\n$`).MatchString(out) {
		t.Fatalf("delete --wait:\n%s\n%v", out, err)
	}
	if _, err := s.store.Get("lab"); err == nil {
		t.Error("lab still stored")
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		err  string
	}{
		{in: "4GiB", want: 4 << 30},
		{in: "4G", want: 4 << 30},
		{in: "4 gib", want: 4 << 30},
		{in: "512MiB", want: 512 << 20},
		{in: "512M", want: 512 << 20},
		{in: "1.5GiB", want: 3 << 29},
		{in: "2TiB", want: 2 << 40},
		{in: "64KiB", want: 64 << 10},
		{in: "1073741824", want: 1 << 30},
		{in: "100B", want: 100},
		{in: "", err: `"": want a number with an optional unit`},
		{in: "GiB", err: `"GiB": want a number`},
		{in: "-1G", err: `"-1G": want a number`},
		{in: "4GB", err: `"4GB": unknown unit "GB"; use B, KiB, MiB, GiB or TiB`},
		{in: "4 gigs", err: `unknown unit "gigs"`},
		{in: "1.2.3G", err: `"1.2.3G": "1.2.3" is not a number`},
		{in: "0.1G", err: `"0.1G": not a whole number of bytes`},
		{in: "99999999999TiB", err: `"99999999999TiB": too large`},
		{in: "18446744073709551616", err: "too large"},
	} {
		got, err := parseSize(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseSize(%q) = %d, %v; want an error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for n, want := range map[uint64]string{4 << 30: "4 GiB", 1536 << 20: "1536 MiB", 100: "100 B", 0: "0 B", 3 << 40: "3 TiB"} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"4GiB", "512M", "1.5G", "1073741824", "0.1G", "4GB", "", "99999999999TiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		if err != nil {
			if !strings.Contains(err.Error(), "\"") {
				t.Errorf("error %q does not quote the input", err)
			}
			return
		}
		back, err := parseSize(strings.ReplaceAll(formatSize(n), " ", ""))
		if err != nil || back != n {
			t.Errorf("%q = %d, formatted %q reads back as %d, %v", s, n, formatSize(n), back, err)
		}
	})
}

// The tables' layout is in golden files; the clock and zone are fixed.
func TestClusterTablesGolden(t *testing.T) {
	loc := time.Local
	time.Local = time.UTC
	t.Cleanup(func() { time.Local = loc })
	s := newClusterServer(t)
	for _, name := range []string{"lab", "ci"} {
		if _, err := runAs(t, s.URL, "op-tok", "cluster", "create", name, "--masters", "1", "--workers", "2", "--memory", "4GiB", "--master-memory", "8GiB"); err != nil {
			t.Fatal(err)
		}
	}
	s.setNodes(t, "lab", all(node(0, "host-a", clusters.NodeRunning, ""), node(1, "host-b", clusters.NodeCreating, ""),
		node(2, "", clusters.NodeFailed, "place 1 nodes: no host has room\nfor 2 vCPUs"),
		func(c *clusters.Cluster) {
			c.Overlays = clusters.HostOverlays{
				"host-b": {Peers: []overlayspec.Peer{{Host: "host-a", Address: "10.0.0.1"}}},
				"host-a": {Peers: []overlayspec.Peer{{Host: "host-b", Address: "10.0.0.2"}}},
			}
		}))
	cs, err := s.store.List()
	if err != nil {
		t.Fatal(err)
	}
	now := testEpoch.Add(90 * time.Minute)
	var b bytes.Buffer
	if err := printClusters(&b, cs, now); err != nil {
		t.Fatal(err)
	}
	golden.Compare(t, "testdata/cluster-list.txt", b.Bytes(), *update)
	b.Reset()
	if err := printCluster(&b, cs[1], now); err != nil {
		t.Fatal(err)
	}
	golden.Compare(t, "testdata/cluster-show.txt", b.Bytes(), *update)
}

// --wait lengthens --timeout's default, never a --timeout given.
func TestWaitTimeoutDefault(t *testing.T) {
	for _, tc := range []struct {
		args []string
		wait bool
		want time.Duration
	}{
		{nil, false, 30 * time.Second},
		{nil, true, defaultWaitTimeout},
		{[]string{"--timeout", "1m"}, true, time.Minute},
	} {
		o := &options{}
		cmd := &cobra.Command{}
		cmd.Flags().DurationVar(&o.timeout, "timeout", 30*time.Second, "")
		if err := cmd.ParseFlags(tc.args); err != nil {
			t.Fatal(err)
		}
		w := waitFlags{wait: tc.wait, interval: time.Second}
		if err := w.check(cmd, o); err != nil || o.timeout != tc.want {
			t.Errorf("%q wait=%v: timeout %s, %v; want %s", tc.args, tc.wait, o.timeout, err, tc.want)
		}
	}
}
