package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"caretaker/internal/kv"

	"caretaker/internal/api"
	"caretaker/internal/golden"
	"caretaker/provisioner/hoststate"
	"caretaker/provisioner/inventory"
)

const inventoryFile = `hosts:
  - name: host-a
    macs: ["52:54:00:00:00:0a"]
    bmc: {type: ipmi, address: 10.0.0.10, username: admin, password_file: host-a}
    role: worker
    labels: {rack: r1, zone: z1}
  - name: host-b
    macs: ["52:54:00:00:00:0b"]
    bmc: {type: redfish, address: "https://10.0.0.11", username: admin, password_file: host-b}
    role: monitoring
`

// provisionerHosts serves the provisioner's host endpoints as the server
// does, over a map: provision and reprovision start a host that is not in
// a transient state and answer 409 for one that is.
type provisionerHosts struct {
	mu      sync.Mutex
	hosts   map[string]hoststate.Host
	history map[string][]hoststate.Transition
}

func (p *provisionerHosts) routes(mux *http.ServeMux, a *api.Authenticator) {
	write := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(v)
	}
	fail := func(w http.ResponseWriter, code int, msg string) { write(w, code, map[string]string{"error": msg}) }
	mux.Handle("GET /api/v1/provisioner/hosts", a.Require(api.RoleViewer, "reading hosts", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		defer p.mu.Unlock()
		var out api.HostStates
		for _, n := range []string{"host-a", "host-b", "host-c", "host-z"} {
			if h, ok := p.hosts[n]; ok {
				out.Hosts = append(out.Hosts, h)
			}
		}
		write(w, http.StatusOK, out)
	})))
	mux.Handle("GET /api/v1/provisioner/hosts/{name}", a.Require(api.RoleViewer, "reading hosts", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		defer p.mu.Unlock()
		name := r.PathValue("name")
		h, ok := p.hosts[name]
		if !ok {
			fail(w, http.StatusNotFound, "host "+name+" is not known to the provisioner")
			return
		}
		write(w, http.StatusOK, api.HostStateDetail{Host: h, History: p.history[name]})
	})))
	for _, verb := range []string{"provision", "reprovision"} {
		mux.Handle("POST /api/v1/provisioner/hosts/{name}/"+verb, a.Require(api.RoleAdmin, verb+"ing a host", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var req api.ProvisionRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Comment == "" {
				fail(w, http.StatusBadRequest, "comment: required")
				return
			}
			if req.Author == "" {
				id, _ := api.IdentityFrom(r.Context())
				req.Author = id.Name
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			name := r.PathValue("name")
			h, ok := p.hosts[name]
			switch {
			case !ok:
				fail(w, http.StatusNotFound, verb+" "+name+": no such host")
				return
			case h.State.Transient():
				fail(w, http.StatusConflict, fmt.Sprintf("%s %s: the host is %s, attempt %d", verb, name, h.State, h.Attempt))
				return
			}
			from := h.State
			h.State, h.Attempt, h.Since, h.Cordoned = hoststate.PoweringOn, 1, time.Now(), verb == "reprovision"
			p.hosts[name] = h
			p.history[name] = append(p.history[name], hoststate.Transition{From: from, To: h.State, At: h.Since, Attempt: 1,
				Reason: verb + " by " + req.Author + ": " + req.Comment, Commands: []hoststate.Command{hoststate.SetPXEBootOnce, hoststate.PowerCycle}})
			write(w, http.StatusAccepted, api.HostStateDetail{Host: h})
		})))
	}
}

// hostServer serves the real inventory handler over a real store (with the
// inventory file above) and, with prov, the provisioner's host endpoints.
func hostServer(t *testing.T, prov *provisionerHosts) (*httptest.Server, *inventory.Store) {
	t.Helper()
	dir := t.TempDir()
	db, err := kv.OpenBolt(filepath.Join(dir, "state.db"), "state")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	inv, err := inventory.Parse(filepath.Join(dir, "inventory.yml"), []byte(inventoryFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.Validate(); err != nil {
		t.Fatal(err)
	}
	store, err := inventory.NewStore(db, func() *inventory.Inventory { return inv })
	if err != nil {
		t.Fatal(err)
	}
	h := inventory.Handler(store, inventory.HandlerOptions{Who: api.WhoBy})
	a := testAuth(t)
	mux := http.NewServeMux()
	mux.Handle("GET /api/v1/hosts", a.Require(api.RoleViewer, "reading hosts", h))
	mux.Handle("GET /api/v1/hosts/{name}", a.Require(api.RoleViewer, "reading hosts", h))
	mux.Handle("POST /api/v1/hosts", a.Require(api.RoleAdmin, "adding a host", h))
	mux.Handle("DELETE /api/v1/hosts/{name}", a.Require(api.RoleAdmin, "removing a host", h))
	if prov != nil {
		prov.routes(mux, a)
	}
	// as the server's API: anything else is a 404
	mux.Handle("/api/v1/", a.Authenticate(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"error": "no such endpoint: ` + r.Method + " " + r.URL.Path + `"}`))
	})))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, store
}

func newProvisioner() *provisionerHosts {
	since := time.Date(2026, 11, 25, 11, 0, 0, 0, time.UTC)
	return &provisionerHosts{
		hosts: map[string]hoststate.Host{
			"host-a": {Name: "host-a", MAC: "52:54:00:00:00:0a", State: hoststate.Ready, Since: since, Attempt: 1},
			"host-b": {Name: "host-b", MAC: "52:54:00:00:00:0b", State: hoststate.Failed, Since: since, Attempt: 3,
				LastError: "installing: no boot callback\nafter 30m0s"},
			"host-z": {Name: "host-z", State: hoststate.Installing, Since: since, Attempt: 1},
		},
		history: map[string][]hoststate.Transition{
			"host-a": {{To: hoststate.Registered, At: since.Add(-time.Hour), Reason: "in the inventory"},
				{From: hoststate.Registered, To: hoststate.Ready, At: since, Attempt: 1, Reason: "booted"}},
		},
	}
}

func TestHostCommands(t *testing.T) {
	prov := newProvisioner()
	srv, store := hostServer(t, prov)

	out, err := runAs(t, srv.URL, "view-tok", "host", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{
		`(?m)^NAME\s+ROLE\s+STATE\s+MACS\s+LABELS\s+AGENT\s+LAST ERROR$`,
		`(?m)^host-a\s+worker\s+ready\s+52:54:00:00:00:0a\s+rack="r1" zone="z1"\s+host-a:9301\s+-$`,
		`(?m)^host-b\s+monitoring\s+failed\s+52:54:00:00:00:0b\s+-\s+host-b:9301\s+installing: no boot callback after 30m0s$`,
		`(?m)^host-z\s+\(not in the inventory\)\s+installing\s`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("host list does not match %s:\n%s", re, out)
		}
	}

	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		token string
		args  []string
		want  string // in the output, or in the error when isErr
		isErr bool
	}{
		{"operator adds", "op-tok", []string{"host", "add", "--name", "host-c", "--mac", "52:54:00:00:00:0c"},
			`not allowed (403): token "olga" has role operator; adding a host needs admin`, true},
		{"no name", "tok", []string{"host", "add", "--mac", "52:54:00:00:00:0c"}, "--name: required", true},
		{"bad label", "tok", []string{"host", "add", "--name", "host-c", "--label", "r1"}, `--label "r1": want key=value`, true},
		{"invalid", "tok", []string{"host", "add", "--name", "host-c", "--mac", "nope", "--bmc-address", "10.0.0.12",
			"--bmc-user", "admin", "--bmc-password-file", "host-c.pass"}, `server answered 400: macs[0]: "nope" is not a MAC address`, true},
		{"mac taken", "tok", []string{"host", "add", "--name", "host-c", "--mac", "52:54:00:00:00:0A", "--bmc-address", "10.0.0.12",
			"--bmc-user", "admin", "--bmc-password-file", "host-c.pass"}, "conflict (409): macs[0]: 52:54:00:00:00:0a is a MAC of host host-a (in the inventory file)", true},
		{"add", "tok", []string{"host", "add", "--name", "host-c", "--mac", "52:54:00:00:00:0C", "--mac", "52:54:00:00:01:0c",
			"--bmc-address", "10.0.0.12", "--bmc-user", "admin", "--bmc-password-file", "host-c.pass", "--label", "rack=r2"},
			"added host host-c (worker, boots from 52:54:00:00:00:0c, agent host-c:9301); provision it: runbook host provision host-c -m ...", false},
		{"file and flags", "tok", []string{"host", "add", "-f", "x.yml", "--name", "y"}, "-f and --name: give the host either in a file or by flags, not both", true},
		{"missing file", "tok", []string{"host", "add", "-f", filepath.Join(dir, "none.yml")}, "-f: open " + filepath.Join(dir, "none.yml"), true},
		{"remove without --yes", "tok", []string{"host", "remove", "host-c"}, "host remove takes host-c out of the inventory: add --yes if you mean it", true},
		{"remove file host", "tok", []string{"host", "remove", "host-a", "--yes"}, "conflict (409): host host-a is defined in the inventory file; remove it there", true},
		{"remove unknown", "tok", []string{"host", "remove", "host-q", "--yes"}, "not found (404): host host-q is not in the inventory", true},
		{"show unknown", "view-tok", []string{"host", "show", "host-q"}, "not found (404): host host-q is not in the inventory", true},
		{"provision without -m", "tok", []string{"host", "provision", "host-c"}, "--comment (-m): required", true},
		{"operator provisions", "op-tok", []string{"host", "provision", "host-b", "-m", "x"},
			`not allowed (403): token "olga" has role operator; provisioning a host needs admin`, true},
		{"provision", "tok", []string{"host", "provision", "host-b", "-m", "new disk"},
			"provision of host-b started: now powering-on, attempt 1 (follow it: runbook host show host-b)", false},
		{"provision busy", "tok", []string{"host", "provision", "host-b", "-m", "again"},
			"conflict (409): provision host-b: the host is powering-on, attempt 1", true},
		{"reprovision", "tok", []string{"host", "reprovision", "host-a", "-m", "disk replaced", "--author", "alice"},
			"reprovision of host-a started: now powering-on,cordoned, attempt 1", false},
		{"reprovision unknown", "tok", []string{"host", "reprovision", "host-q", "-m", "x"}, "not found (404): reprovision host-q: no such host", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runAs(t, srv.URL, tc.token, tc.args...)
			if tc.isErr {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want %q", err, tc.want)
				}
				return
			}
			if err != nil || !strings.Contains(out, tc.want) {
				t.Fatalf("%q, %v; want %q", out, err, tc.want)
			}
		})
	}
	c, err := store.Get("host-c")
	if err != nil || strings.Join(c.MACs, " ") != "52:54:00:00:00:0c 52:54:00:00:01:0c" || c.Labels["rack"] != "r2" ||
		c.BMC.Type != "ipmi" || c.BMC.PasswordFile != "host-c.pass" || c.Role != "worker" {
		t.Errorf("host-c stored as %+v, %v", c, err)
	}
	if got := prov.history["host-a"]; got[len(got)-1].Reason != "reprovision by alice: disk replaced" {
		t.Errorf("reprovision recorded %+v, want alice's comment", got[len(got)-1])
	}

	out, err = runAs(t, srv.URL, "view-tok", "host", "show", "host-a")
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{`state\s+powering-on,cordoned`, `bmc\s+ipmi 10.0.0.10 user admin`,
		`(?m)^\S+ \S+\s+ready\s+powering-on\s+1\s+set-pxe-boot-once,power-cycle\s+reprovision by alice: disk replaced$`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("host show does not match %s:\n%s", re, out)
		}
	}
	// host-c is in the inventory but not (yet) tracked by the provisioner.
	out, err = runAs(t, srv.URL, "view-tok", "host", "show", "host-c", "-o", "json")
	var row hostRow
	if err != nil || json.Unmarshal([]byte(out), &row) != nil || row.Inventory == nil || row.Inventory.Name != "host-c" || row.Provisioning != nil {
		t.Errorf("show host-c -o json = %s, %v", out, err)
	}
	if _, err := runAs(t, srv.URL, "tok", "host", "remove", "host-c", "--yes", "--comment", "rack swap"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Get("host-c"); err == nil {
		t.Error("host-c still stored after remove")
	}
	if recs, err := store.Removed(); err != nil || len(recs) != 1 || recs[0].Name != "host-c" || recs[0].RemovedBy == nil || recs[0].RemovedBy.Comment != "rack swap" || recs[0].RemovedBy.Role != "admin" {
		t.Errorf("removal record = %+v, %v; want host-c removed by an admin token with the comment", recs, err)
	}
}

func TestHostAddFile(t *testing.T) {
	srv, store := hostServer(t, nil)
	dir := t.TempDir()
	yml := filepath.Join(dir, "host-d.yml")
	os.WriteFile(yml, []byte("name: host-d\nmacs: [\"52:54:00:00:00:0d\"]\nbmc:\n  type: redfish\n  address: https://10.0.0.14\n  username: admin\n  password_file: host-d.pass\n  timeout: 5s\nrole: worker\nlabels: {rack: r3}\ncpus: 32\n"), 0o600)
	if _, err := runAs(t, srv.URL, "tok", "host", "add", "-f", yml); err != nil {
		t.Fatal(err)
	}
	js := filepath.Join(dir, "host-e.json")
	os.WriteFile(js, []byte(`{"name": "host-e", "macs": ["52:54:00:00:00:0e"], "bmc": {"type": "ipmi", "address": "10.0.0.15", "username": "admin", "password_file": "host-e.pass"}, "role": "monitoring"}`), 0o600)
	out, err := runAs(t, srv.URL, "tok", "host", "add", "-f", js, "-o", "json")
	var h inventory.Host
	if err != nil || json.Unmarshal([]byte(out), &h) != nil || h.Name != "host-e" || h.Agent != "host-e:9301" {
		t.Fatalf("add -f json -o json = %s, %v", out, err)
	}
	d, err := store.Get("host-d")
	if err != nil || d.BMC.Timeout != 5*time.Second || d.CPUs != 32 || d.BMC.Type != "redfish" {
		t.Errorf("host-d stored as %+v, %v", d, err)
	}
	bad := filepath.Join(dir, "bad.yml")
	os.WriteFile(bad, []byte("name: host-f\nmacs: [\"52:54:00:00:00:0f\"]\nbmc:\n  pasword_file: /x\n"), 0o600)
	if _, err := runAs(t, srv.URL, "tok", "host", "add", "-f", bad); err == nil || !strings.Contains(err.Error(), bad+":4: bmc.pasword_file: unknown field") {
		t.Errorf("bad file: %v, want file:line: field", err)
	}

	// Without a provisioner, list shows the inventory and says why.
	var stdout, stderr bytes.Buffer
	cmd := newRootCmd(&stdout, &stderr, env(map[string]string{"RUNBOOK_URL": srv.URL, "RUNBOOK_TOKEN": "view-tok"}))
	cmd.SetArgs([]string{"host", "list"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "the server has no provisioner (404): showing the inventory only") ||
		!regexp.MustCompile(`(?m)^NAME\s+ROLE\s+MACS\s+LABELS\s+AGENT$`).MatchString(stdout.String()) ||
		!regexp.MustCompile(`(?m)^host-d\s+worker\s+52:54:00:00:00:0d\s+rack="r3"\s+host-d:9301$`).MatchString(stdout.String()) {
		t.Errorf("list without provisioner:\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
	out, err = runAs(t, srv.URL, "view-tok", "host", "show", "host-d")
	if err != nil || !strings.Contains(out, "not tracked by the provisioner, or the server has none") || !regexp.MustCompile(`capacity\s+32 CPUs, memory from the agent`).MatchString(out) {
		t.Errorf("show without provisioner:\n%s\n%v", out, err)
	}
}

func TestHostTablesGolden(t *testing.T) {
	loc := time.Local
	time.Local = time.UTC
	t.Cleanup(func() { time.Local = loc })
	inv, err := inventory.Parse("/etc/caretaker/inventory.yml", []byte(inventoryFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.Validate(); err != nil {
		t.Fatal(err)
	}
	p := newProvisioner()
	var states []hoststate.Host
	for _, n := range []string{"host-a", "host-b", "host-z"} {
		states = append(states, p.hosts[n])
	}
	rows := joinHosts(inv.Hosts, states)
	var b bytes.Buffer
	if err := printHosts(&b, rows, true); err != nil {
		t.Fatal(err)
	}
	golden.Compare(t, "testdata/host-list.txt", b.Bytes(), *update)
	b.Reset()
	rows[0].History = p.history["host-a"]
	if err := printHost(&b, rows[0]); err != nil {
		t.Fatal(err)
	}
	golden.Compare(t, "testdata/host-show.txt", b.Bytes(), *update)
}

func FuzzParseHostFile(f *testing.F) {
	f.Add([]byte(inventoryFile))
	f.Add([]byte("name: host-d\nmacs: [\"52:54:00:00:00:0d\"]\nbmc: {type: ipmi, timeout: 5s}\n"))
	f.Add([]byte(`{"name": "host-e", "macs": ["x"], "bmc": {"timeout": "x"}}`))
	f.Add([]byte("name: [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := parseHostFile("host.yml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "host.yml") {
				t.Errorf("error %q does not name the file", err)
			}
			return
		}
		if _, err := json.Marshal(h); err != nil {
			t.Errorf("a parsed host does not encode for the API: %v", err)
		}
	})
}
