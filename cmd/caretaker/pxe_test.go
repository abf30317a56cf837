package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"caretaker/internal/golden"
	"caretaker/internal/needs"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// caretaker runs the command line args and returns its stdout and error.
func caretaker(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	root := newRootCmd(&stdout, &stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return stdout.String(), err
}

func TestPXEDnsmasqGolden(t *testing.T) {
	t.Parallel()
	tests := []struct {
		golden string
		args   []string
	}{
		{"dnsmasq-dhcp.conf", []string{"--mode", "dhcp", "--range", "192.168.50.100-192.168.50.200", "--lease", "12h",
			"--boot-url", "http://192.168.50.1:9300/pxe/boot.ipxe"}},
		{"dnsmasq-dhcp-default-lease.conf", []string{"--mode", "dhcp", "--range", "192.168.50.100-192.168.50.200",
			"--tftp-root", "/var/lib/tftpboot", "--boot-url", "https://pxe.example.com/pxe/boot.ipxe"}},
		// The boot URL from the server's configuration, its base_url's
		// trailing slash dropped.
		{"dnsmasq-proxy-uefi.conf", []string{"--mode", "proxy", "--subnet", "192.168.50.0/24",
			"--ipxe-binary", "ipxe.efi", "--config.file", "testdata/server.yml"}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			t.Parallel()
			out, err := caretaker(t, append([]string{"pxe", "dnsmasq", "--interface", "eth1"}, tt.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			golden.Compare(t, filepath.Join("testdata", tt.golden), []byte(out), *update)
		})
	}
}

// With --check and --output, dnsmasq --test accepts the file, which then
// holds what stdout would, and nothing else is left in its directory.
func TestPXEDnsmasqCheckOutput(t *testing.T) {
	t.Parallel()
	needs.Program(t, "dnsmasq")
	dir := t.TempDir()
	path := filepath.Join(dir, "dnsmasq.conf")
	if err := os.WriteFile(path, []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := caretaker(t, "pxe", "dnsmasq", "--interface", "eth1", "--mode", "dhcp",
		"--range", "192.168.50.100-192.168.50.200", "--lease", "12h",
		"--boot-url", "http://192.168.50.1:9300/pxe/boot.ipxe", "--check", "--output", path)
	if err != nil {
		t.Fatal(err)
	}
	if out != "" {
		t.Errorf("stdout = %q, want nothing with --output", out)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	golden.Compare(t, "testdata/dnsmasq-dhcp.conf", got, false)
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("mode of %s = %v, %v; want 0644", path, st.Mode().Perm(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%s holds %d files, want only dnsmasq.conf", dir, len(entries))
	}
}

// dnsmasq --test rejects what dnsmasq would refuse to start with, and the
// error says so with dnsmasq's own words.
func TestCheckDnsmasqRejects(t *testing.T) {
	t.Parallel()
	needs.Program(t, "dnsmasq")
	path := filepath.Join(t.TempDir(), "dnsmasq.conf")
	if err := os.WriteFile(path, []byte("port=0\ndhcp-range=192.168.50.100,nonsense\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := checkDnsmasq(context.Background(), path)
	if err == nil || !strings.Contains(err.Error(), "--check: dnsmasq --test rejects the configuration") ||
		!strings.Contains(err.Error(), "dnsmasq:") {
		t.Fatalf("checkDnsmasq = %v, want dnsmasq's rejection", err)
	}
}

func TestPXEDnsmasqBadInput(t *testing.T) {
	t.Parallel()
	dhcp := []string{"--mode", "dhcp", "--range", "192.168.50.100-192.168.50.200", "--boot-url", "http://192.168.50.1:9300/pxe/boot.ipxe"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no mode", []string{"--interface", "eth1"}, `required flag(s) "mode" not set`},
		{"no interface", []string{"--mode", "dhcp"}, `required flag(s) "interface" not set`},
		{"unknown mode", []string{"--interface", "eth1", "--mode", "relay"},
			`--mode "relay": want dhcp (dnsmasq leases --range) or proxy (beside the network's DHCP server, for --subnet)`},
		{"dhcp without range", []string{"--interface", "eth1", "--mode", "dhcp"},
			"--mode dhcp needs --range START-END, the addresses dnsmasq leases, e.g. 192.168.50.100-192.168.50.200"},
		{"range not a range", []string{"--interface", "eth1", "--mode", "dhcp", "--range", "192.168.50.0/24"},
			`--range "192.168.50.0/24": want START-END, e.g. 192.168.50.100-192.168.50.200`},
		{"range backwards", append([]string{"--interface", "eth1"}, append(dhcp, "--range", "192.168.50.200-192.168.50.100")...),
			"render dnsmasq config: range 192.168.50.200-192.168.50.100: end is before start"},
		{"dhcp with subnet", append([]string{"--interface", "eth1", "--subnet", "192.168.50.0/24"}, dhcp...),
			"--subnet is for --mode proxy; --mode dhcp leases --range"},
		{"proxy with range", []string{"--interface", "eth1", "--mode", "proxy", "--subnet", "192.168.50.0/24", "--range", "192.168.50.100-192.168.50.200"},
			"--range and --lease are for --mode dhcp; --mode proxy leaves the leases to the network's DHCP server and needs --subnet"},
		{"proxy without subnet", []string{"--interface", "eth1", "--mode", "proxy"},
			"--mode proxy needs --subnet, the PXE network's IPv4 prefix, e.g. 192.168.50.0/24"},
		{"subnet not a prefix", []string{"--interface", "eth1", "--mode", "proxy", "--subnet", "192.168.50.0"},
			`--subnet "192.168.50.0": want an IPv4 prefix such as 192.168.50.0/24`},
		{"interface breaking its line", append([]string{"--interface", "eth1\ndhcp-script=/bin/sh"}, dhcp...),
			`render dnsmasq config: interface "eth1\ndhcp-script=/bin/sh": want an interface name such as eth1`},
		{"relative tftp root", append([]string{"--interface", "eth1", "--tftp-root", "srv/tftp"}, dhcp...),
			`render dnsmasq config: tftp root "srv/tftp": want an absolute path without commas`},
		{"no boot url, no config file", []string{"--interface", "eth1", "--mode", "proxy", "--subnet", "192.168.50.0/24", "--config.file", "testdata/absent.yml"},
			"no --boot-url, and the server's configuration (--config.file) gives none: read server config: open testdata/absent.yml: no such file or directory"},
		{"no boot url, none in the config file", []string{"--interface", "eth1", "--mode", "proxy", "--subnet", "192.168.50.0/24", "--config.file", "testdata/server-no-pxe.yml"},
			"no --boot-url, and testdata/server-no-pxe.yml sets no provisioner.pxe.base_url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "dnsmasq.conf")
			out, err := caretaker(t, append([]string{"pxe", "dnsmasq", "--output", path}, tt.args...)...)
			if err == nil || err.Error() != tt.want {
				t.Errorf("error = %v\nwant    %s", err, tt.want)
			}
			if out != "" {
				t.Errorf("stdout = %q, want nothing", out)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Errorf("%s was written (%v)", path, err)
			}
		})
	}
}
