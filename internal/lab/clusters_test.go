package lab

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"testing"

	"caretaker/internal/config"
	"caretaker/provisioner/inventory"
)

// The server config and inventory the lab writes for clusters load as
// `caretaker server` loads them, with the lab's hosts as ready-to-adopt
// workers whose agent addresses are their VTEPs.
func TestClusterServerConfig(t *testing.T) {
	dir := t.TempDir()
	hosts := []*host{
		{name: "host-a", addr: "127.0.0.1:40001", filter: regexp.MustCompile(`^lab-host-a-\d+$`)},
		{name: "host-b", addr: "127.0.0.2:40002", filter: regexp.MustCompile(`^lab-host-b-\d+$`)},
	}
	for _, tt := range []struct {
		name         string
		cl           *clusterLab
		wantHosts    int
		provisioning bool
	}{
		{"without clusters", nil, 2, false},
		{"with clusters", &clusterLab{pool: "caretaker-lab"}, 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := DefaultOptions()
			path, err := writeServerConfig(dir, hosts, o, tt.cl)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Hosts) != tt.wantHosts || cfg.Provisioner.Enabled() != tt.provisioning {
				t.Fatalf("%d hosts, provisioner %v; want %d, %v", len(cfg.Hosts), cfg.Provisioner.Enabled(), tt.wantHosts, tt.provisioning)
			}
			if !tt.provisioning {
				return
			}
			p := cfg.Provisioner
			if p.Underlay != "lo" || p.BaseImage != baseImage {
				t.Errorf("underlay %q base image %q, want lo and %s", p.Underlay, p.BaseImage, baseImage)
			}
			inv, err := inventory.Load(cfg.Path(p.InventoryFile))
			if err != nil {
				t.Fatal(err)
			}
			if len(inv.Hosts) != len(hosts) {
				t.Fatalf("inventory has %d hosts, want %d", len(inv.Hosts), len(hosts))
			}
			for i, h := range inv.Hosts {
				if h.Name != hosts[i].name || h.Agent != hosts[i].addr || h.Role != inventory.RoleWorker ||
					h.CPUs != labHostCPUs || h.MemoryBytes != labHostMemory {
					t.Errorf("inventory host %d: %+v, want %s at %s, a worker with %d CPUs and %d bytes", i, h, hosts[i].name, hosts[i].addr, labHostCPUs, labHostMemory)
				}
				if filepath.Dir(h.BMC.PasswordFile) != dir {
					t.Errorf("bmc password file %s, want it in %s", h.BMC.PasswordFile, dir)
				}
			}
		})
	}
}

func TestWithSeed(t *testing.T) {
	tests := []struct {
		name, body string
		want       map[string]string
	}{
		{"adds user data", `{"name":"c1-worker-0","bridge":"br-c1"}`,
			map[string]string{"name": "c1-worker-0", "bridge": "br-c1", "user_data": "#cloud-config\nhostname: c1-worker-0\n"}},
		{"replaces an empty one", `{"name":"c1-worker-0","user_data":""}`,
			map[string]string{"name": "c1-worker-0", "user_data": "#cloud-config\nhostname: c1-worker-0\n"}},
		{"not JSON is left for the agent", `{`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := withSeed([]byte(tt.body), "c1-worker-0")
			if tt.want == nil {
				if string(got) != tt.body {
					t.Errorf("got %s, want the body unchanged", got)
				}
				return
			}
			var m map[string]string
			if err := json.Unmarshal(got, &m); err != nil {
				t.Fatal(err)
			}
			if len(m) != len(tt.want) {
				t.Errorf("got %v, want %v", m, tt.want)
			}
			for k, v := range tt.want {
				if m[k] != v {
					t.Errorf("%s: %q, want %q", k, m[k], v)
				}
			}
		})
	}
}

// FuzzWithSeed: whatever body the server sends, withSeed leaves it as it
// is or returns a JSON object with a seed.
func FuzzWithSeed(f *testing.F) {
	f.Add(`{"name":"c1-worker-0","bridge":"br-c1"}`)
	f.Add(`{"user_data":null}`)
	f.Add(`[1]`)
	f.Fuzz(func(t *testing.T, body string) {
		got := withSeed([]byte(body), "n")
		if string(got) == body {
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(got, &m); err != nil {
			t.Fatalf("changed %q into %q, not a JSON object: %v", body, got, err)
		}
		if string(m["user_data"]) != `"#cloud-config\nhostname: n\n"` {
			t.Fatalf("changed %q into %q without the seed", body, got)
		}
	})
}
