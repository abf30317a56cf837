package fleet

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"caretaker/internal/agentapi"
	"caretaker/internal/kv"
	"caretaker/provisioner/clusters"
)

// A node the agent fails to create reads as one sentence that says each
// thing once: the reconciler names the operation, the node and the host,
// the agent's client the agent's address, the agent its answer. In a real
// run it once read "create node X on host-b: create node X on host-b: put
// node X on agent …: agent answered 500 …: recreate node "X": create node
// "X": start domain: …".
func TestCreateNodeFailureSaysEachThingOnce(t *testing.T) {
	const (
		node   = "c1-workers-0"
		answer = `recreate node "c1-workers-0": start domain: Cannot get interface MTU on 'br-c1': No such device`
	)
	// Answers as an agent whose host makes the overlay but cannot start
	// the node.
	agentSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodPut && r.URL.Path == "/api/v1/overlays/c1":
			_, _ = w.Write([]byte(`{"cluster":"c1","changes":[]}`))
		case r.Method == http.MethodPut && r.URL.Path == "/api/v1/nodes/"+node:
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"error":"recreate node \"c1-workers-0\": start domain: Cannot get interface MTU on 'br-c1': No such device"}`))
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"unexpected"}`))
		}
	}))
	defer agentSrv.Close()

	db, err := kv.OpenBolt(filepath.Join(t.TempDir(), "provisioner.db"), "test database")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	store, err := clusters.NewStore(db, clusters.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agents := agentapi.NewHosts("token")
	agents.Add("hv-1", strings.TrimPrefix(agentSrv.URL, "http://"))
	p := &Provisioner{log: slog.New(slog.DiscardHandler), agents: agents}
	rec, err := clusters.New(clusters.Options{
		Store: store, Hosts: readyHosts{"hv-1"}, Nodes: nodes{p}, Overlays: nodes{p},
		VTEP:   func(string) net.IP { return net.ParseIP("192.0.2.1") },
		Config: clusters.Config{Underlay: "u0"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Create(clusters.Spec{Name: "c1", Pools: []clusters.Pool{
		{Name: "workers", Role: clusters.RoleWorker, Count: 1, VCPUs: 1, MemoryBytes: 64 << 20, DiskBytes: 64 << 20},
	}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	wantNode := "create node " + node + " on hv-1: " + agentSrv.URL + ": agent answered 500 Internal Server Error: " + answer
	err = rec.Reconcile(ctx, "c1")
	if want := "reconcile cluster c1: " + wantNode; err == nil || err.Error() != want {
		t.Errorf("Reconcile:\n got %v\nwant %s", err, want)
	}
	c, err := store.Get("c1")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Nodes) != 1 || c.Nodes[0].Error != wantNode {
		t.Errorf("node's recorded error:\n got %+v\nwant %s", c.Nodes, wantNode)
	}
}
