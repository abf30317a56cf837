package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"caretaker/provisioner/hoststate"
)

// The provisioner's parts are wired into the server: the inventory's hosts
// are registered with the state machine and written for the embedded
// Prometheus, the cluster, host and provisioning APIs are served behind
// the roles, and /pxe/ is served without a token.
func TestProvisionerWiring(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("admin.token", testToken("admin-secret")+"\n")
	write("viewer.token", testToken("viewer-secret")+"\n")
	write("operator.token", testToken("operator-secret")+"\n")
	write("bmc.pass", "pw\n")
	write("pxe.secret", testToken("pxe-secret")+"\n")
	write("inventory.yml", `hosts:
  - name: hv-1
    macs: ["52:54:00:00:00:01"]
    role: worker
    labels: {zone: a}
    agent: 127.0.0.1:1
    bmc: {type: ipmi, address: 127.0.0.1:1, username: admin, password_file: bmc.pass}
  - name: mon-1
    macs: ["52:54:00:00:00:02"]
    role: monitoring
    bmc: {type: ipmi, address: 127.0.0.1:1, username: admin, password_file: bmc.pass}
`)
	write("pxe.yml", `profiles:
  - id: worker
    kernel: /assets/vmlinuz
    initrd: [/assets/initrd.img]
    args: ["console=ttyS0"]
groups:
  - id: default
    profile: worker
`)
	write("server.yml", `data_dir: data
api:
  token_file: admin.token
  tokens:
    - {name: vera, role: viewer, token_file: viewer.token}
    - {name: otto, role: operator, token_file: operator.token}
provisioner:
  inventory_file: inventory.yml
  underlay: eth1
  base_image: base.qcow2
  pxe: {config_file: pxe.yml, base_url: "http://10.0.0.1:9300", secret_file: pxe.secret}
  bmc: {secrets_dir: .}
`)
	s := startServer(t, dir, "", nil)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	call := func(method, path, token, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+testToken(token))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// The hosts are registered; the agents' file_sd file names both.
	code, body := call("GET", "/api/v1/provisioner/hosts", "viewer-secret", "")
	var states struct{ Hosts []hoststate.Host }
	if code != 200 || json.Unmarshal([]byte(body), &states) != nil || len(states.Hosts) != 2 ||
		states.Hosts[0].State != hoststate.Registered {
		t.Fatalf("GET /api/v1/provisioner/hosts = %d %s", code, body)
	}
	sd, err := os.ReadFile(filepath.Join(dir, "data", "provisioner", "agents.json"))
	if err != nil || !strings.Contains(string(sd), `"127.0.0.1:1"`) || !strings.Contains(string(sd), `"mon-1:9301"`) {
		t.Errorf("file_sd = %s, %v", sd, err)
	}

	cluster := `{"name": "c1", "pools": [{"name": "workers", "role": "worker", "count": 1, "vcpus": 1, "memory_bytes": 67108864, "disk_bytes": 67108864}]}`
	for _, tc := range []struct {
		method, path, token, body string
		want                      int
	}{
		{"GET", "/api/v1/clusters", "", "", 401},
		{"GET", "/api/v1/hosts", "viewer-secret", "", 200},
		{"GET", "/api/v1/clusters", "viewer-secret", "", 200},
		{"POST", "/api/v1/clusters", "viewer-secret", cluster, 403},
		{"POST", "/api/v1/clusters", "operator-secret", cluster, 202},
		{"GET", "/api/v1/clusters/c1", "viewer-secret", "", 200},
		{"DELETE", "/api/v1/hosts/hv-1", "operator-secret", "", 403},
		{"DELETE", "/api/v1/hosts/hv-1", "admin-secret", "", 409}, // defined in the file
		{"POST", "/api/v1/provisioner/hosts/hv-1/provision", "operator-secret", `{"comment": "x"}`, 403},
		{"POST", "/api/v1/provisioner/hosts/hv-1/provision", "admin-secret", `{}`, 400},
		// strict as the rest of the API: trailing data 400, over 64 KiB 413
		{"POST", "/api/v1/provisioner/hosts/hv-1/provision", "admin-secret", `{"comment": "x"} {}`, 400},
		{"POST", "/api/v1/provisioner/hosts/hv-1/provision", "admin-secret", `{"comment": "` + strings.Repeat("x", 64<<10) + `"}`, 413},
		{"POST", "/api/v1/provisioner/hosts/nope/provision", "admin-secret", `{"comment": "x"}`, 404},
		{"GET", "/api/v1/provisioner/hosts/hv-1", "viewer-secret", "", 200},
		{"GET", "/pxe/boot.ipxe", "", "", 200},
		// Mounted, and served only to an attempt in flight: hv-1 is only registered.
		{"GET", "/pxe/ipxe?mac=52:54:00:00:00:01", "", "", 404},
	} {
		if code, body := call(tc.method, tc.path, tc.token, tc.body); code != tc.want {
			t.Errorf("%s %s as %q = %d %s, want %d", tc.method, tc.path, tc.token, code, body, tc.want)
		}
	}

	if _, body := call("GET", "/pxe/ipxe?mac=52:54:00:00:00:01", "", ""); !strings.Contains(body, "no provisioning in flight") {
		t.Errorf("GET /pxe/ipxe of a registered host = %q, want the PXE handler's refusal", body)
	}

	// recreate-vm of a guest that is no cluster node is not available.
	if err := s.prov.RecreateVM(context.Background(), "hv-1", "6695eb01-f6a4-8304-79aa-97f2502e193f"); err == nil ||
		!strings.Contains(err.Error(), "not available") {
		t.Errorf("RecreateVM of a stranger = %v", err)
	}
}
