package fleet

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"caretaker/internal/agent"
	"caretaker/internal/agentapi"
	"caretaker/internal/config"
	"caretaker/internal/kv"
	"caretaker/internal/overlaynet/nstest"
	"caretaker/provisioner/clusters"
	"caretaker/provisioner/placement"
)

// readyHosts are workers with room for anything: placement spreads a
// cluster's nodes over them.
type readyHosts []string

func (h readyHosts) ReadyHosts(context.Context) ([]placement.Host, error) {
	var out []placement.Host
	for _, name := range h {
		out = append(out, placement.Host{Name: name, Worker: true, Ready: true, CPUs: 8, MemoryBytes: 8 << 30})
	}
	return out, nil
}

// startedNodes pretends every node starts at once: this test is about the
// overlays.
type startedNodes struct {
	mu    sync.Mutex
	uuids map[string]bool
}

func (n *startedNodes) CreateNode(_ context.Context, _ string, s clusters.NodeSpec) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.uuids[s.UUID] = true
	return s.UUID, nil
}

func (n *startedNodes) DeleteNode(context.Context, string, clusters.NodeID) error { return nil }

func (n *startedNodes) NodeRunning(_ context.Context, _, uuid string) (bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.uuids[uuid], nil
}

// TestProvisionedOverlayNamesPeers follows a provisioned cluster's overlay
// from the reconciler through the server's agent adapter (nodes, which
// builds the PUT) to two real agents, each in its own network namespace
// with its underlay: each agent's overlay collector then names the other
// host in peer_host, the label OverlayPeerFDBMissing and
// OverlayPeerUnreachable's descriptions use, not only its VTEP address.
// Before the overlay had one type, the PUT carried bare addresses and the
// agent put the address in peer_host.
func TestProvisionedOverlayNamesPeers(t *testing.T) {
	const token = "agent-secret"
	vteps := map[string]string{"hv-1": "192.0.2.1", "hv-2": "192.0.2.2"}
	var hosts []config.Host
	agents := map[string]*httptest.Server{}
	for _, name := range slices.Sorted(maps.Keys(vteps)) {
		ns := nstest.New(t)
		ns.IP(t, "link", "add", "u0", "type", "veth", "peer", "name", "u0p")
		ns.IP(t, "addr", "add", vteps[name]+"/24", "dev", "u0")
		ns.IP(t, "link", "set", "u0", "up")
		a, err := agent.New(agent.Config{Token: token, NetNS: ns.Path, LibvirtURI: "test:///default",
			ProcFS: "../../collectors/host/testdata/proc", SysFS: "../../collectors/host/testdata/sys", RootFS: t.TempDir(),
			ScrapeTimeout: time.Minute, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		srv := httptest.NewServer(a.Handler())
		t.Cleanup(srv.Close)
		agents[name] = srv
		hosts = append(hosts, config.Host{Name: name, Agent: strings.TrimPrefix(srv.URL, "http://")})
	}

	db, err := kv.OpenBolt(filepath.Join(t.TempDir(), "provisioner.db"), "test database")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	store, err := clusters.NewStore(db, clusters.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clients := agentapi.NewHosts(token)
	for _, h := range hosts {
		clients.Add(h.Name, h.Agent)
	}
	p := &Provisioner{log: slog.New(slog.DiscardHandler), agents: clients}
	rec, err := clusters.New(clusters.Options{
		Store: store, Hosts: readyHosts{"hv-1", "hv-2"}, Nodes: &startedNodes{uuids: map[string]bool{}}, Overlays: nodes{p},
		VTEP:   func(h string) net.IP { return net.ParseIP(vteps[h]) },
		Config: clusters.Config{Underlay: "u0"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Create(clusters.Spec{Name: "c1", Pools: []clusters.Pool{
		{Name: "workers", Role: clusters.RoleWorker, Count: 2, VCPUs: 1, MemoryBytes: 64 << 20, DiskBytes: 64 << 20},
	}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := rec.Reconcile(ctx, "c1"); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	c, err := store.Get("c1")
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(maps.Keys(c.Overlays)); !slices.Equal(got, []string{"hv-1", "hv-2"}) {
		t.Fatalf("overlays recorded on %v, want hv-1 and hv-2 (nodes %+v)", got, c.Nodes)
	}
	// The cluster's record shows each host's overlay with its peers named.
	if peers := c.Overlays["hv-1"].Peers; len(peers) != 1 || peers[0].Host != "hv-2" || peers[0].Address != "192.0.2.2" {
		t.Errorf("hv-1's recorded peers %+v, want hv-2 at 192.0.2.2", peers)
	}

	for host, peer := range map[string]string{"hv-1": "hv-2", "hv-2": "hv-1"} {
		resp, err := agents[host].Client().Get(agents[host].URL + "/metrics?collect[]=overlay")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := `caretaker_overlay_peer_fdb_present{cluster="c1",device="vx-c1",peer="` + vteps[peer] + `",peer_host="` + peer + `"} 1`
		if !slices.Contains(strings.Split(string(body), "\n"), want) {
			var got []string
			for _, line := range strings.Split(string(body), "\n") {
				if strings.HasPrefix(line, "caretaker_overlay_peer_fdb_present") {
					got = append(got, line)
				}
			}
			t.Errorf("agent of %s reports %q, want %q", host, got, want)
		}
	}
}
