package clusters

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/agent"
	"caretaker/internal/agent/guests/gueststest"
	"caretaker/internal/agentapi"
	"caretaker/internal/kv"
	"caretaker/internal/libvirtconn"
)

// agentNodes makes nodes through real agents as the server's adapter
// (provisioner/fleet's nodes) does: PUT with replace and the node's UUID,
// DELETE naming cluster and UUID. Every cluster's bridge is the test
// host's one bridge.
type agentNodes struct {
	clients map[string]*agentapi.Client
	bridge  string
}

func (a agentNodes) CreateNode(ctx context.Context, host string, s NodeSpec) (string, error) {
	resp, err := a.clients[host].PutNode(ctx, agentapi.NodeRequest{Cluster: s.Cluster, Name: s.Name, Role: s.Role, VCPUs: s.VCPUs,
		MemoryBytes: s.MemoryBytes, DiskBytes: s.DiskBytes, Bridge: a.bridge, MAC: s.MAC, BaseImage: gueststest.BaseImage, UUID: s.UUID,
		UserData: "#cloud-config\n"}, true)
	return resp.UUID, err
}

func (a agentNodes) DeleteNode(ctx context.Context, host string, id NodeID) error {
	return a.clients[host].DeleteNode(ctx, id.Cluster, id.Name, id.UUID)
}

func (a agentNodes) NodeRunning(ctx context.Context, host, uuid string) (bool, error) {
	d, err := a.clients[host].Domain(ctx, uuid)
	return err == nil && d.State == "running", nil
}

// TestNodeNameCollisionNeverDestroysAnotherClustersNode: two clusters
// whose first nodes share a name — cluster a with pool b-c and cluster
// a-b with pool c both make a-b-c-0 — as a record stored before the
// store refused such clusters. Through every path that creates, replaces
// or deletes a node — create, scale, recreate (recreate-vm), moving nodes
// off a host being reprovisioned, delete — the intruding cluster's
// requests reach the agent on a real libvirtd, and the other cluster's
// domain survives: same UUID, never restarted, its disk in place. Before,
// create, scale and recreate destroyed it (PUT ?replace=true), and delete
// and the move deleted it with its disk.
func TestNodeNameCollisionNeverDestroysAnotherClustersNode(t *testing.T) {
	g := gueststest.New(t, "ctc")
	const token = "agent-secret"
	a, err := agent.New(agent.Config{LibvirtURI: gueststest.URI, Token: token, GuestPool: g.Name, GuestDomainType: "qemu",
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	client := agentapi.NewClient(srv.URL, token, srv.Client())
	// h1 and h2 are one libvirtd: a node moved to h2 meets the name there too.
	nodes := agentNodes{clients: map[string]*agentapi.Client{"h1": client, "h2": client}, bridge: g.Name}

	// Names of this process's own, so parallel runs do not meet.
	base := fmt.Sprintf("t%x", os.Getpid()%0xfffff)
	shapes := []struct {
		name                string
		victim, intruder    string // cluster names
		victimPool, intPool string
	}{
		{"a with b-c, then a-b with c", base, base + "-b", "b-c", "c"},
		{"a-b with c, then a with b-c", base + "-b", base, "c", "b-c"},
	}
	ops := []struct {
		name string
		// do runs the operation on the intruder, whose node is recorded
		// on h1 with its own UUID (count 0 for scale: not yet made).
		do func(t *testing.T, ctx context.Context, rec *Reconciler, s *Store, hosts *fakeHosts, intruder string, uuid string) error
		// count and state are the intruder's pool count and node state
		// as recorded.
		count int
		state string
	}{
		{"create", func(t *testing.T, ctx context.Context, rec *Reconciler, s *Store, _ *fakeHosts, c, _ string) error {
			return rec.Reconcile(ctx, c)
		}, 1, NodePending},
		{"scale", func(t *testing.T, ctx context.Context, rec *Reconciler, s *Store, _ *fakeHosts, c, _ string) error {
			cl, _ := s.Get(c)
			if _, err := s.Scale(c, cl.Pools[0].Name, 1); err != nil {
				t.Fatal(err)
			}
			return rec.Reconcile(ctx, c)
		}, 0, ""},
		{"recreate", func(t *testing.T, ctx context.Context, rec *Reconciler, _ *Store, _ *fakeHosts, _, uuid string) error {
			return rec.RecreateNode(ctx, "h1", uuid)
		}, 1, NodeRunning},
		{"reprovision", func(t *testing.T, ctx context.Context, rec *Reconciler, _ *Store, hosts *fakeHosts, _, uuid string) error {
			// As fleet's MoveGuests: the host is cordoned, each node recreated elsewhere.
			hosts.setReady("h1", false)
			return rec.RecreateNode(ctx, "h1", uuid)
		}, 1, NodeRunning},
		{"delete", func(t *testing.T, ctx context.Context, rec *Reconciler, s *Store, _ *fakeHosts, c, _ string) error {
			if _, err := s.Delete(c); err != nil {
				t.Fatal(err)
			}
			return rec.Reconcile(ctx, c)
		}, 1, NodeRunning},
	}
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
			defer cancel()
			db, err := kv.OpenBolt(filepath.Join(t.TempDir(), "clusters.db"), "test database")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			s, err := NewStore(db, StoreOptions{})
			if err != nil {
				t.Fatal(err)
			}
			hosts := newHosts(2)
			hosts.hosts[1].Ready = false // the victim goes to h1
			rec, err := New(Options{Store: s, Hosts: hosts, Nodes: nodes, Overlays: newOverlays(),
				VTEP: func(string) net.IP { return net.IPv4(192, 0, 2, 1) }, Config: Config{Underlay: "eth0"}})
			if err != nil {
				t.Fatal(err)
			}
			small := Pool{Role: RoleWorker, Count: 1, VCPUs: 1, MemoryBytes: 64 << 20, DiskBytes: 64 << 20}
			vp := small
			vp.Name = sh.victimPool
			if _, err := s.Create(Spec{Name: sh.victim, Pools: []Pool{vp}}); err != nil {
				t.Fatal(err)
			}
			if err := rec.Reconcile(ctx, sh.victim); err != nil {
				t.Fatal(err)
			}
			victim, _ := s.Get(sh.victim)
			vn := victim.Nodes[0]
			t.Cleanup(func() {
				if err := client.DeleteNode(context.Background(), sh.victim, vn.Name, vn.UUID); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			})
			if vn.State != NodeRunning || vn.Name != base+"-b-c-0" {
				t.Fatalf("victim node %+v, want %s-b-c-0 running", vn, base)
			}
			dom, err := g.Conn.DomainLookupByName(vn.Name)
			if err != nil {
				t.Fatal(err)
			}
			id := dom.ID
			// The intruder cannot be made through the store any more.
			ip := small
			ip.Name = sh.intPool
			if _, err := s.Create(Spec{Name: sh.intruder, Pools: []Pool{ip}}); err == nil {
				t.Fatalf("the store made cluster %s, whose node names are %s's", sh.intruder, sh.victim)
			}
			for _, op := range ops {
				t.Run(op.name, func(t *testing.T) {
					hosts.setReady("h1", true)
					hosts.setReady("h2", true)
					intUUID := "0d000000-0000-4000-8000-00000000000" + fmt.Sprint(len(op.name)%10)
					p := ip
					p.Count = op.count
					c := Cluster{Spec: Spec{Name: sh.intruder, Pools: []Pool{p}}, VNI: 20000, Phase: PhaseReady}
					if op.count > 0 {
						c.Nodes = []NodeState{{Name: vn.Name, Pool: ip.Name, Role: RoleWorker, Host: "h1", UUID: intUUID, MAC: "52:54:00:00:00:01", State: op.state}}
					}
					legacyPut(t, s, c)
					t.Cleanup(func() { _ = s.remove(sh.intruder) })

					err := op.do(t, ctx, rec, s, hosts, sh.intruder, intUUID)
					t.Logf("%s: %v", op.name, err)
					if err == nil || !strings.Contains(err.Error(), "409 Conflict") || !strings.Contains(err.Error(), "left alone") {
						t.Errorf("%s of the intruder: %v, want the agent's 409", op.name, err)
					}
					// Looked up again: the ID comes with the look-up.
					now, err := g.Conn.DomainLookupByName(vn.Name)
					if uuid := libvirtconn.UUIDString(now.UUID); err != nil || uuid != vn.UUID {
						t.Errorf("victim's UUID %s, %v; want %s", uuid, err, vn.UUID)
					}
					state, _, err := g.Conn.DomainGetState(now, 0)
					if err != nil || libvirt.DomainState(state) != libvirt.DomainRunning {
						t.Errorf("victim's state %d, %v; want running", state, err)
					}
					if now.ID != id {
						t.Errorf("victim restarted: id %d, then %d", id, now.ID)
					}
					if _, err := g.Conn.StorageVolLookupByName(g.Pool, vn.Name+".qcow2"); err != nil {
						t.Errorf("victim's disk: %v", err)
					}
				})
			}
		})
	}
}

// legacyPut stores c as is, without the store's checks: a record from
// before node names were checked across clusters.
func legacyPut(t *testing.T, s *Store, c Cluster) {
	t.Helper()
	data, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx kv.Tx) error { return tx.Bucket(bucket).Put([]byte(c.Name), data) }); err != nil {
		t.Fatal(err)
	}
}
