package pxe

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"caretaker/internal/needs"
)

// TestDnsmasqServesBootFilename runs the real dnsmasq with a rendered
// config in one network namespace and busybox udhcpc in a peer namespace:
// a plain client is offered the iPXE binary, a client sending iPXE's user
// class the HTTP boot script.
func TestDnsmasqServesBootFilename(t *testing.T) {
	t.Parallel()
	needs.Root(t, "the test creates network namespaces")
	dnsmasq := needs.Program(t, "dnsmasq")
	busybox := needs.Program(t, "busybox")
	ip := needs.Program(t, "ip")

	// One deadline for every command, cleanups included (t.Context ends
	// before cleanups run).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	command := func(name string, args ...string) *exec.Cmd { return exec.CommandContext(ctx, name, args...) }

	// Names unique to this process, so parallel runs do not collide.
	id := fmt.Sprintf("%d", os.Getpid()%100000)
	srvNS, cliNS := "pxe-s"+id, "pxe-c"+id
	srvIf, cliIf := "pxs"+id, "pxc"+id
	run := func(args ...string) {
		t.Helper()
		if out, err := command(ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", srvNS)
	t.Cleanup(func() { _ = command(ip, "netns", "del", srvNS).Run() })
	run("netns", "add", cliNS)
	t.Cleanup(func() { _ = command(ip, "netns", "del", cliNS).Run() })
	run("link", "add", srvIf, "netns", srvNS, "type", "veth", "peer", "name", cliIf, "netns", cliNS)
	run("-n", srvNS, "addr", "add", "192.168.77.1/24", "dev", srvIf)
	run("-n", srvNS, "link", "set", srvIf, "up")
	run("-n", cliNS, "link", "set", cliIf, "up")

	dir := t.TempDir()
	d := DnsmasqConfig{
		Interface: srvIf,
		Mode:      "dhcp",
		Range: DHCPRange{
			Start: netip.MustParseAddr("192.168.77.100"),
			End:   netip.MustParseAddr("192.168.77.150"),
			Lease: time.Hour,
		},
		TFTPRoot:    dir,
		IPXEBinary:  "undionly.kpxe",
		HTTPBootURL: "http://192.168.77.1:9300/pxe/boot.ipxe",
	}
	var conf bytes.Buffer
	if err := RenderDnsmasq(&conf, d); err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(dir, "dnsmasq.conf")
	logPath := filepath.Join(dir, "dnsmasq.log")
	if err := os.WriteFile(confPath, conf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := exec.Command(ip, "netns", "exec", srvNS, dnsmasq, "--keep-in-foreground",
		"--conf-file="+confPath, "--dhcp-leasefile="+filepath.Join(dir, "leases"),
		"--pid-file="+filepath.Join(dir, "dnsmasq.pid"), "--log-facility="+logPath, "--user=root",
		// Not in the rendered config: dnsmasq's check that an address is
		// free holds the first offer for 3 s, and nothing else in these
		// namespaces could answer it.
		"--no-ping")
	if err := srv.Start(); err != nil {
		t.Fatalf("start dnsmasq: %v", err)
	}
	t.Cleanup(func() {
		_ = srv.Process.Kill()
		_ = srv.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("dnsmasq log:\n%s", tail(b))
		}
	})

	// udhcpc runs this script on each event; on "bound" it records the
	// lease's variables, boot_file among them.
	script := filepath.Join(dir, "udhcpc.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && env > \"$OUT\"\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		extra []string
		want  string
	}{
		{"PXE ROM gets the iPXE binary", nil, "boot_file=undionly.kpxe"},
		{"iPXE gets the HTTP boot script", []string{"-x", "0x4d:69505845"}, "boot_file=" + d.HTTPBootURL}, // option 77 "iPXE"
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(dir, fmt.Sprintf("lease%d.env", i))
			// udhcpc's own retries (-t, -T) cover dnsmasq still starting.
			args := append([]string{"netns", "exec", cliNS, busybox, "udhcpc", "-f", "-q", "-n",
				"-t", "20", "-T", "1", "-i", cliIf, "-s", script}, tt.extra...)
			cmd := command(ip, args...)
			cmd.Env = append(os.Environ(), "OUT="+out)
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("udhcpc: %v\n%s", err, tail(b))
			}
			env, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("no lease recorded: %v", err)
			}
			if !bytes.Contains(env, []byte("\n"+tt.want+"\n")) && !bytes.HasPrefix(env, []byte(tt.want+"\n")) {
				t.Errorf("lease lacks %q:\n%s", tt.want, env)
			}
			if !bytes.Contains(env, []byte("ip=192.168.77.1")) {
				t.Errorf("lease address is not from the range:\n%s", env)
			}
		})
	}
}

func tail(b []byte) []byte {
	if len(b) > 4096 {
		return b[len(b)-4096:]
	}
	return b
}
