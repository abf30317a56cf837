package lab

import (
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
			path, err := writeServerConfig(dir, hosts, o, tt.cl, nil, nil, "")
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
			if p.Underlay != underlayName || p.BaseImage != baseImage {
				t.Errorf("underlay %q base image %q, want %s and %s", p.Underlay, p.BaseImage, underlayName, baseImage)
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
				if secrets := cfg.Path(p.BMC.SecretsDir); h.BMC.PasswordFile != "bmc.password" || secrets != dir {
					t.Errorf("bmc password file %s in %s, want bmc.password in %s", h.BMC.PasswordFile, secrets, dir)
				}
			}
		})
	}
}
