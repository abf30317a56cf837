package pxe

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"caretaker/internal/golden"
	"caretaker/internal/needs"
)

func dhcpConfig() DnsmasqConfig {
	return DnsmasqConfig{
		Interface: "eth1",
		Mode:      "dhcp",
		Range: DHCPRange{
			Start: netip.MustParseAddr("192.168.50.100"),
			End:   netip.MustParseAddr("192.168.50.200"),
			Lease: 12 * time.Hour,
		},
		TFTPRoot:    "/srv/tftp",
		IPXEBinary:  "undionly.kpxe",
		HTTPBootURL: "http://192.168.50.1:9300/pxe/boot.ipxe",
	}
}

func proxyConfig() DnsmasqConfig {
	return DnsmasqConfig{
		Interface:   "eth1",
		Mode:        "proxy",
		Subnet:      netip.MustParsePrefix("192.168.50.0/24"),
		TFTPRoot:    "/srv/tftp",
		IPXEBinary:  "undionly.kpxe",
		HTTPBootURL: "http://192.168.50.1:9300/pxe/boot.ipxe",
	}
}

func dnsmasqConfigs() map[string]DnsmasqConfig {
	efi := proxyConfig()
	efi.IPXEBinary = "ipxe.efi"
	efi.Subnet = netip.MustParsePrefix("10.1.2.3/16") // host bits are dropped
	defaultLease := dhcpConfig()
	defaultLease.Range.Lease = 0
	return map[string]DnsmasqConfig{
		"dnsmasq-dhcp.conf":         dhcpConfig(),
		"dnsmasq-dhcp-default.conf": defaultLease,
		"dnsmasq-proxy.conf":        proxyConfig(),
		"dnsmasq-proxy-uefi.conf":   efi,
	}
}

func TestRenderDnsmasqGolden(t *testing.T) {
	t.Parallel()
	for name, d := range dnsmasqConfigs() {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			if err := RenderDnsmasq(&b, d); err != nil {
				t.Fatal(err)
			}
			golden.Compare(t, "testdata/golden/"+name, b.Bytes(), *update)
		})
	}
}

// dnsmasq itself must accept what is rendered.
func TestRenderDnsmasqAcceptedByDnsmasq(t *testing.T) {
	t.Parallel()
	for name, d := range dnsmasqConfigs() {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			if err := RenderDnsmasq(&b, d); err != nil {
				t.Fatal(err)
			}
			if out, err := dnsmasqTest(t, b.Bytes()); err != nil {
				t.Errorf("dnsmasq --test rejects the rendered config: %v\n%s\nconfig:\n%s", err, out, b.Bytes())
			}
		})
	}
	// And the check can fail: a broken directive is rejected.
	if out, err := dnsmasqTest(t, []byte("port=0\ndhcp-range=192.168.50.100,nonsense\n")); err == nil {
		t.Errorf("dnsmasq --test accepted a broken config:\n%s", out)
	}
}

func dnsmasqTest(t *testing.T, conf []byte) ([]byte, error) {
	t.Helper()
	bin := needs.Program(t, "dnsmasq")
	path := filepath.Join(t.TempDir(), "dnsmasq.conf")
	if err := os.WriteFile(path, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--test", "--conf-file="+path).CombinedOutput()
	if len(out) > 16<<10 {
		out = out[:16<<10]
	}
	return out, err
}

func TestRenderDnsmasqInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(*DnsmasqConfig)
		want   string
	}{
		{"no interface", func(d *DnsmasqConfig) { d.Interface = "" }, `interface "": want an interface name`},
		{"interface with a newline", func(d *DnsmasqConfig) { d.Interface = "eth1\ndhcp-script=/bin/sh" }, "want an interface name"},
		{"unknown mode", func(d *DnsmasqConfig) { d.Mode = "relay" }, `mode "relay": want dhcp or proxy`},
		{"no range", func(d *DnsmasqConfig) { d.Range = DHCPRange{} }, "want two IPv4 addresses"},
		{"IPv6 range", func(d *DnsmasqConfig) { d.Range.Start = netip.MustParseAddr("fd00::1") }, "want two IPv4 addresses"},
		{"range backwards", func(d *DnsmasqConfig) { d.Range.Start, d.Range.End = d.Range.End, d.Range.Start }, "end is before start"},
		{"lease too short", func(d *DnsmasqConfig) { d.Range.Lease = time.Minute }, "at least 2m"},
		{"lease in fractions", func(d *DnsmasqConfig) { d.Range.Lease = time.Hour + time.Millisecond }, "whole seconds"},
		{"proxy without subnet", func(d *DnsmasqConfig) { d.Mode = "proxy" }, "subnet invalid Prefix: want an IPv4 prefix"},
		{"relative tftp root", func(d *DnsmasqConfig) { d.TFTPRoot = "srv/tftp" }, `tftp root "srv/tftp": want an absolute path`},
		{"tftp root with a newline", func(d *DnsmasqConfig) { d.TFTPRoot = "/srv\nport=53" }, "tftp root"},
		{"binary without suffix", func(d *DnsmasqConfig) { d.IPXEBinary = "undionly" }, `ipxe binary "undionly": want a file name with its suffix`},
		{"binary with a path", func(d *DnsmasqConfig) { d.IPXEBinary = "../undionly.kpxe" }, "ipxe binary"},
		{"boot url not http", func(d *DnsmasqConfig) { d.HTTPBootURL = "tftp://x/boot.ipxe" }, "http boot url"},
		{"boot url with a comma", func(d *DnsmasqConfig) { d.HTTPBootURL = "http://x/boot.ipxe,evil" }, "without commas"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := dhcpConfig()
			tt.change(&d)
			var b bytes.Buffer
			err := RenderDnsmasq(&b, d)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
			if b.Len() > 0 {
				t.Errorf("wrote %d bytes despite the error", b.Len())
			}
		})
	}
}

// Whatever the strings, a rendered config has exactly the lines of the
// template: no value can smuggle in a directive of its own.
func FuzzRenderDnsmasq(f *testing.F) {
	d := dhcpConfig()
	f.Add(d.Interface, d.TFTPRoot, d.IPXEBinary, d.HTTPBootURL, false)
	f.Add("br-pxe", "/var/lib/tftp", "ipxe.efi", "https://pxe.example.net/pxe/boot.ipxe?x=1", true)
	f.Add("eth1\nport=53", "/srv\n", "a.b\nc", "http://x/\ny", false)
	want := map[bool]int{}
	for _, proxy := range []bool{false, true} {
		d := dhcpConfig()
		if proxy {
			d = proxyConfig()
		}
		var b bytes.Buffer
		if err := RenderDnsmasq(&b, d); err != nil {
			f.Fatal(err)
		}
		want[proxy] = strings.Count(b.String(), "\n")
	}
	f.Fuzz(func(t *testing.T, iface, root, binary, bootURL string, proxy bool) {
		d := dhcpConfig()
		if proxy {
			d = proxyConfig()
		}
		d.Interface, d.TFTPRoot, d.IPXEBinary, d.HTTPBootURL = iface, root, binary, bootURL
		var b bytes.Buffer
		if err := RenderDnsmasq(&b, d); err != nil {
			return
		}
		if got := strings.Count(b.String(), "\n"); got != want[proxy] || strings.Contains(b.String(), "\r") {
			t.Errorf("rendered %d lines, want %d:\n%s", got, want[proxy], b.String())
		}
	})
}
