package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"caretaker/internal/api"
	"caretaker/internal/config"
	"caretaker/internal/etcdproc/etcdtest"
	"caretaker/provisioner/bmc"
	"caretaker/provisioner/inventory"
	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
)

// clusterMember is one clustered server under test, serving on loopback.
type clusterMember struct {
	name   string
	url    string
	srv    *Server
	stop   context.CancelFunc
	served chan error
}

func (m *clusterMember) close(t *testing.T) {
	t.Helper()
	if m.stop == nil {
		return
	}
	m.stop()
	if err := <-m.served; err != nil {
		t.Errorf("%s: serve: %v", m.name, err)
	}
	if err := m.srv.Close(); err != nil {
		t.Errorf("%s: close: %v", m.name, err)
	}
	m.stop = nil
}

func startMember(t *testing.T, dir, name, etcd string) *clusterMember {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + l.Addr().String()
	cfgPath := filepath.Join(dir, name+".yml")
	cfg := fmt.Sprintf("data_dir: %s\napi: {token_file: api.token, tokens: [{name: am, role: webhook, token_file: am.token}]}\n"+
		"cluster: {name: %s, advertise_url: %q, etcd: {endpoints: [%q]}, lease_ttl: 2s}\n"+
		"provisioner: {inventory_file: inventory.yml, underlay: eth0, base_image: base.qcow2, bmc: {secrets_dir: bmc}}\n", name, name, url, etcd)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(context.Background(), Options{Config: c, ListenAddress: l.Addr().String(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	m := &clusterMember{name: name, url: url, srv: s, stop: stop, served: make(chan error, 1)}
	go func() { m.served <- s.Serve(ctx, l) }()
	t.Cleanup(func() { m.close(t) })
	return m
}

// writeClusterFiles writes what every member's configuration names: the
// tokens, an inventory of one host, its BMC password.
func writeClusterFiles(t *testing.T, dir string) (admin, am string) {
	t.Helper()
	admin, am = testToken("admin"), testToken("am")
	files := map[string]string{
		"api.token":     admin + "\n",
		"am.token":      am + "\n",
		"bmc/hv.pass":   "secret\n",
		"inventory.yml": "hosts:\n  - {name: hv-a1, macs: [\"52:54:00:aa:bb:01\"], role: worker, agent: \"127.0.0.1:1\", bmc: {type: ipmi, address: 127.0.0.1, username: admin, password_file: hv.pass}}\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return admin, am
}

// leaderOf polls GET /api/v1/servers on m until a server leads, and
// returns its name.
func leaderOf(t *testing.T, c *api.Client, want int, not string) (string, []api.ServerStatus) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ss, err := c.Servers(context.Background())
		healthy := 0
		lead := ""
		for _, s := range ss {
			if s.Healthy {
				healthy++
			}
			if s.Leader && s.Healthy {
				lead = s.Name
			}
		}
		if err == nil && lead != "" && lead != not && healthy == want {
			return lead, ss
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader among %d healthy servers (other than %q): %+v, %v", want, not, ss, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Two servers on a real etcd: one leads; a pause asked of the follower is
// forwarded to the leader; a webhook delivery to the follower is stored in
// etcd and acted on by the leader; when the leader stops, the other leads
// with a higher epoch and finds the pause and the journal as they were.
func TestClusterFailover(t *testing.T) {
	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	admin, am := writeClusterFiles(t, dir)
	members := map[string]*clusterMember{}
	for _, name := range []string{"s1", "s2"} {
		members[name] = startMember(t, dir, name, etcd.Endpoint())
	}
	c1 := api.NewClient(members["s1"].url, admin, nil)
	lead, servers := leaderOf(t, c1, 2, "")
	first := servers[0].Epoch
	for _, s := range servers {
		if s.Leader {
			first = s.Epoch
		}
	}
	follower := "s1"
	if lead == "s1" {
		follower = "s2"
	}
	t.Logf("%s leads at epoch %d", lead, first)
	fc := api.NewClient(members[follower].url, admin, nil)

	// The follower authenticates what it forwards: a wrong token stops
	// there, counted against its client.
	bad := api.NewClient(members[follower].url, testToken("wrong"), nil)
	if _, err := bad.Pause(context.Background(), api.PauseRequest{Target: "*", Comment: "x", Duration: "1h"}); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("pause with a wrong token through the follower: %v, want 401", err)
	}
	// A change asked of the follower is the leader's to make.
	p, err := fc.Pause(context.Background(), api.PauseRequest{Target: "host-z/6f1c1c2e-0c1d-4b7a-9f55-2d1f0c7a0009", Comment: "disk swap", Duration: "2h"})
	if err != nil {
		t.Fatalf("pause through the follower: %v", err)
	}
	if p.Author != "admin" {
		t.Errorf("pause recorded as %q, want the token's name", p.Author)
	}
	// The provisioner's inventory is shared: a host added through the
	// follower (forwarded) is read back from it (etcd).
	if _, err := fc.AddHost(context.Background(), inventory.Host{Name: "hv-b1", MACs: []string{"52:54:00:aa:bb:02"}, Role: "worker", Agent: "127.0.0.1:2",
		BMC: bmc.Config{Type: "ipmi", Address: "127.0.0.2", Username: "admin", PasswordFile: "hv.pass"}}); err != nil {
		t.Fatalf("add a host through the follower: %v", err)
	}
	if hosts, err := fc.Hosts(context.Background()); err != nil || len(hosts) != 2 {
		t.Errorf("hosts read on the follower: %+v, %v; want the file's and the added one", hosts, err)
	}
	// A delivery to the follower: stored, then drained by the leader.
	body := `{"version":"4","status":"firing","receiver":"caretaker","groupKey":"{}:{}","alerts":[{"status":"firing",
		"labels":{"alertname":"GuestCrashed","host":"host-x","uuid":"6f1c1c2e-0c1d-4b7a-9f55-2d1f0c7a0001","domain":"g1"},
		"annotations":{},"startsAt":"2026-11-25T12:00:00Z","endsAt":"0001-01-01T00:00:00Z"}]}`
	req, _ := http.NewRequest(http.MethodPost, members[follower].url+"/api/v1/alertmanager", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+am)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("webhook delivery to the follower: %v %v", resp, err)
	}
	resp.Body.Close()
	rec := waitRecord(t, fc, "GuestCrashed")
	if rec.Host != "host-x" {
		t.Errorf("record %+v", rec)
	}

	members[lead].close(t) // resigns: the other leads at once
	next, servers := leaderOf(t, fc, 1, lead)
	if next != follower {
		t.Fatalf("%s leads, want %s", next, follower)
	}
	for _, s := range servers {
		if s.Leader && s.Epoch <= first {
			t.Errorf("new epoch %d is not above %d", s.Epoch, first)
		}
	}
	if hosts, err := fc.Hosts(context.Background()); err != nil || len(hosts) != 2 {
		t.Errorf("hosts after the failover: %+v, %v; want both", hosts, err)
	}
	// The pauses are in the leader's memory: the new one answers once its
	// engine runs (503 until then, a second or so).
	var ps []guards.Pause
	deadline := time.Now().Add(15 * time.Second)
	for ps, err = fc.Pauses(context.Background()); err != nil && strings.Contains(err.Error(), "503") && time.Now().Before(deadline); ps, err = fc.Pauses(context.Background()) {
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || len(ps) != 1 || ps[0].Comment != "disk swap" {
		t.Errorf("pauses after the failover: %+v, %v; want the one made before", ps, err)
	}
	h, err := fc.History(context.Background(), api.HistoryFilter{Limit: 100})
	if err != nil || len(h.Records) != 1 {
		t.Errorf("history after the failover: %+v, %v; want the one record, not a second decision", h, err)
	}
}

func waitRecord(t *testing.T, c *api.Client, alert string) journal.Record {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		h, err := c.History(context.Background(), api.HistoryFilter{Limit: 100})
		if err == nil {
			for _, r := range h.Records {
				if r.Alert == alert {
					return r
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no record of %s: %+v, %v", alert, h, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A single server's journal moves into etcd with `caretaker state import`
// and a clustered server carries on from it; a second import is refused.
func TestImportState(t *testing.T) {
	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	admin, _ := writeClusterFiles(t, dir)
	single := filepath.Join(dir, "single")
	os.MkdirAll(single, 0o750)
	j, err := journal.Open(filepath.Join(single, "journal.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"GuestCrashed", "HostDown"} {
		if _, err := j.Append(journal.Record{Alert: a, Action: "restart-vm", State: journal.StateSucceeded}); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()

	cfgPath := filepath.Join(dir, "s1.yml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("data_dir: s1\napi: {token_file: api.token}\ncluster: {name: s1, advertise_url: http://127.0.0.1:1, etcd: {endpoints: [%q]}}\n", etcd.Endpoint())), 0o600)
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := ImportState(cfg, single, &out); err != nil {
		t.Fatalf("import: %v", err)
	}
	if !strings.Contains(out.String(), "journal.db: 2 keys copied") {
		t.Errorf("import said:\n%s", out.String())
	}
	if err := ImportState(cfg, single, &out); err == nil || !strings.Contains(err.Error(), "already holds caretaker state") {
		t.Errorf("second import: %v, want a refusal", err)
	}

	m := startMember(t, dir, "s2", etcd.Endpoint())
	c := api.NewClient(m.url, admin, nil)
	leaderOf(t, c, 1, "")
	h, err := c.History(context.Background(), api.HistoryFilter{Limit: 10})
	if err != nil || len(h.Records) != 2 || h.Records[0].Alert != "HostDown" || h.Records[0].ID != 2 {
		t.Fatalf("history on the cluster: %+v, %v; want the two imported records, newest first", h, err)
	}
}

// Only the leader exports the engine's figures: a server whose term ended
// (etcd paused past the lease) drops its term's metrics, so that a stale
// count (given up, awaiting approval) does not page on from it.
func TestClusterMetricsFollowTheLead(t *testing.T) {
	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	admin, _ := writeClusterFiles(t, dir)
	members := map[string]*clusterMember{}
	for _, name := range []string{"s1", "s2"} {
		members[name] = startMember(t, dir, name, etcd.Endpoint())
	}
	c := api.NewClient(members["s1"].url, admin, nil)
	check := func(lead string) {
		t.Helper()
		for name, m := range members {
			resp, err := http.Get(m.url + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			has := strings.Contains(string(body), "\ncaretaker_remediation_inflight_actions ")
			if has != (name == lead) {
				t.Errorf("%s (leader %s) exports the engine's metrics: %v", name, lead, has)
			}
		}
	}
	lead := actingLeader(t, c, members)
	check(lead)

	// Past the lease, both terms are over; after, one server leads anew.
	if err := etcd.Pause(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for members[lead].srv.cluster.acting.Load() != nil {
		if time.Now().After(deadline) {
			t.Fatal("the leader still acts with etcd paused")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := etcd.Resume(); err != nil {
		t.Fatal(err)
	}
	lead = actingLeader(t, c, members)
	check(lead)
}

// actingLeader waits until the server the servers name as leader acts,
// and returns it. Right after etcd comes back, the list may still name the
// leader of before for a moment, while another takes the lead.
func actingLeader(t *testing.T, c *api.Client, members map[string]*clusterMember) string {
	t.Helper()
	// Generous: beside the package's QEMU tests, a new term's engine
	// (its journal read from etcd just resumed) has taken over 15 s.
	deadline := time.Now().Add(45 * time.Second)
	for {
		lead, _ := leaderOf(t, c, len(members), "")
		if members[lead].srv.cluster.acting.Load() != nil {
			return lead
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s leads but does not act", lead)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
