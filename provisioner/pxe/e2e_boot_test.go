package pxe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"caretaker/internal/needs"
)

// bootProfile is what the guest of TestPXEBootEndToEnd boots: it has no
// disk and no OS, so iPXE itself reports completion. QEMU's iPXE lacks
// the params command (PARAM_CMD), so the report is a GET.
const bootProfile = `imgfetch {{ .CallbackURL }}
echo caretaker: boot reported
`

// TestPXEBootEndToEnd boots a diskless QEMU guest from its NIC's iPXE
// ROM inside a network namespace: dnsmasq (rendered by RenderDnsmasq)
// leases it an address and hands it the HTTP boot URL, the handler
// serves the chain script and, once, the attempt's iPXE script, and that
// script calls back with the attempt's token.
func TestPXEBootEndToEnd(t *testing.T) {
	t.Parallel()
	needs.Root(t, "the test creates network namespaces and tap devices")
	qemu := needs.Program(t, "qemu-system-x86_64")
	dnsmasq := needs.Program(t, "dnsmasq")
	ip := needs.Program(t, "ip")
	// QEMU finds the NIC's ROM by name on its firmware path; naming the
	// file explicitly (romfile=/abs/path) left SeaBIOS not running it.
	if !anyExists("/usr/lib/ipxe/qemu/efi-virtio.rom", "/usr/share/qemu/efi-virtio.rom") {
		needs.Missing(t, "QEMU's iPXE ROM for virtio-net (efi-virtio.rom) is not installed (Debian package ipxe-qemu; deploy/setup.sh installs it)")
	}

	// One deadline for everything, cleanups included; TCG boots slowly.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	id := fmt.Sprintf("%d", os.Getpid()%100000)
	ns, br, tap := "pxe-b"+id, "pxb"+id, "pxt"+id
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.CommandContext(ctx, ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", ns)
	// Deleting the namespace removes the bridge and the tap with it.
	t.Cleanup(func() { _ = exec.CommandContext(ctx, ip, "netns", "del", ns).Run() })
	// iPXE's autoboot waits for IPv6 as well as DHCP: without a router
	// advertisement its router solicitations time out after ~16 s. So the
	// network has an IPv6 router (dnsmasq's RA, below), and the namespace
	// skips duplicate address detection, which would hold the bridge's
	// link-local address (the RA's source) tentative for a second.
	for _, key := range []string{"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"} {
		if out, err := exec.CommandContext(ctx, ip, "netns", "exec", ns, "sysctl", "-qw", key+"=0").CombinedOutput(); err != nil {
			t.Fatalf("sysctl %s=0 in %s: %v\n%s", key, ns, err, out)
		}
	}
	run("-n", ns, "link", "add", br, "type", "bridge")
	run("-n", ns, "addr", "add", "192.168.79.1/24", "dev", br)
	run("-n", ns, "addr", "add", "fd00:79::1/64", "dev", br, "nodad")
	run("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap")
	run("-n", ns, "link", "set", tap, "master", br)
	for _, dev := range []string{"lo", br, tap} {
		run("-n", ns, "link", "set", dev, "up")
	}

	// The handler runs in this process on a socket made inside the
	// namespace; a socket stays in the namespace it was created in.
	ln, err := listenInNetns(ns, "192.168.79.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	const mac = "52:54:00:79:00:01"
	const uuid = "4c4c4544-0079-3510-8052-b2c04f4a4e79"
	cfg := &Config{
		Profiles: []Profile{{ID: "report", Script: bootProfile}},
		Groups:   []Group{{ID: "guest", Profile: "report", Selector: map[string]string{"mac": mac}}},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// The guest's attempt is in flight, as the state machine would have
	// it after powering the host on.
	attempt := Attempt{Host: "guest", MAC: mac, Number: 1, Nonce: "4f1c2a9d0e7b3c5a6d8e9f0a1b2c3d4e"}
	attempts := newFakeAttempts(attempt)
	var mu sync.Mutex
	var served []string
	h := NewHandler(cfg, Options{
		BaseURL:  base,
		Secret:   testSecret,
		Attempts: attempts,
	})
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			served = append(served, fmt.Sprintf("%s %s mac=%s uuid=%s", r.Method, r.URL.Path, r.URL.Query().Get("mac"), r.URL.Query().Get("uuid")))
			mu.Unlock()
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 30 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	dir := t.TempDir()
	d := DnsmasqConfig{
		Interface: br,
		Mode:      "dhcp",
		Range: DHCPRange{
			Start: netip.MustParseAddr("192.168.79.100"),
			End:   netip.MustParseAddr("192.168.79.150"),
			Lease: time.Hour,
		},
		// QEMU's NIC ROM already is iPXE, so nothing is fetched over TFTP.
		TFTPRoot:    dir,
		IPXEBinary:  "undionly.kpxe",
		HTTPBootURL: base + "/pxe/boot.ipxe",
	}
	var conf bytes.Buffer
	if err := RenderDnsmasq(&conf, d); err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(dir, "dnsmasq.conf")
	leases := filepath.Join(dir, "leases")
	dnsLog := filepath.Join(dir, "dnsmasq.log")
	if err := os.WriteFile(confPath, conf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	// Beside the rendered config, three options that only cut waiting:
	// --no-ping, because dnsmasq's check that an address is free holds the
	// first offer for 3 s and nothing else in this namespace could answer
	// it; iPXE's no-pxedhcp (option 175.176), because iPXE otherwise waits
	// 2 s for ProxyDHCP offers that no server here sends; and the IPv6
	// router above, advertising a prefix only (no DHCPv6), which iPXE
	// takes as IPv6 configured.
	startDaemon(t, "dnsmasq", dnsLog, exec.CommandContext(ctx, ip, "netns", "exec", ns, dnsmasq, "--keep-in-foreground",
		"--conf-file="+confPath, "--dhcp-leasefile="+leases, "--pid-file="+filepath.Join(dir, "dnsmasq.pid"),
		"--log-facility="+dnsLog, "--user=root", "--no-ping", "--dhcp-option=tag:ipxe,encap:175,176,1b",
		"--enable-ra", "--dhcp-range=::,constructor:"+br+",ra-only"))

	// With graphics=off and no VGA, SeaBIOS copies the screen to the
	// serial port, so iPXE's messages land in the serial file; the serial
	// port is QEMU's stdio. SeaBIOS also reads keys from it, and one key
	// pressed at iPXE's "Press Ctrl-B" prompt ends the prompt's 2 s wait.
	serial := filepath.Join(dir, "serial.log")
	serialFile, err := os.Create(serial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = serialFile.Close() })
	cmd := exec.CommandContext(ctx, ip, "netns", "exec", ns, qemu,
		"-accel", "tcg", "-m", "64", "-nodefaults", "-machine", "graphics=off", "-display", "none",
		"-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0", "-uuid", uuid, "-boot", "n",
		"-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac="+mac)
	keys, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = &keyAtPrompt{w: serialFile, prompt: []byte("Press Ctrl-B for the iPXE command line"), keys: keys}
	guest := startDaemon(t, "qemu", serial, cmd)

	var b Attempt
	timeout := time.NewTimer(2 * time.Minute)
	defer timeout.Stop()
	select {
	case b = <-attempts.completed:
	case err := <-guest:
		t.Fatalf("qemu exited before the guest reported its boot: %v", err)
	case <-timeout.C:
		t.Fatal("no boot callback from the guest within 2m")
	}
	if b.MAC != mac || b.Host != "guest" || b.Nonce != attempt.Nonce {
		t.Errorf("completed %+v, want the attempt %+v", b, attempt)
	}

	lease, err := os.ReadFile(leases)
	if err != nil || !bytes.Contains(lease, []byte(" "+mac+" 192.168.79.")) {
		t.Errorf("dnsmasq lease file holds no lease for %s (%v):\n%s", mac, err, lease)
	}
	mu.Lock()
	defer mu.Unlock()
	// iPXE expands the chain script's ${net0/mac:hexhyp} and ${uuid}.
	for _, want := range []string{
		"GET /pxe/boot.ipxe mac= uuid=",
		"GET /pxe/ipxe mac=52-54-00-79-00-01 uuid=" + uuid,
		"GET /pxe/booted mac=" + mac + " uuid=",
	} {
		if !slices.Contains(served, want) {
			t.Errorf("handler did not serve %q; it served:\n%s", want, strings.Join(served, "\n"))
		}
	}
}

// listenInNetns opens a TCP listener inside the named network namespace.
// The namespace switch happens on a locked thread that is never unlocked,
// so Go retires the thread rather than reuse it in the wrong namespace.
func listenInNetns(name, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromName(name)
		if err != nil {
			ch <- result{err: fmt.Errorf("open netns %s: %w", name, err)}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			ch <- result{err: fmt.Errorf("enter netns %s: %w", name, err)}
			return
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			err = fmt.Errorf("listen on %s in netns %s: %w", addr, name, err)
		}
		ch <- result{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}

// keyAtPrompt copies a guest's serial output to w and, the first time
// the output shows prompt, presses a key (a space) on the serial input.
type keyAtPrompt struct {
	w      io.Writer
	prompt []byte
	keys   io.Writer
	tail   []byte // the output's last bytes, for a prompt split across writes
	done   bool
}

func (k *keyAtPrompt) Write(p []byte) (int, error) {
	if !k.done {
		k.tail = append(k.tail, p...)
		if bytes.Contains(k.tail, k.prompt) {
			k.done, k.tail = true, nil
			_, _ = io.WriteString(k.keys, " ")
		} else if keep := len(k.prompt) - 1; len(k.tail) > keep {
			k.tail = append(k.tail[:0], k.tail[len(k.tail)-keep:]...)
		}
	}
	return k.w.Write(p)
}

// startDaemon starts cmd, kills it at cleanup and, if t failed, logs the
// tails of its output and of logFile. The channel gets cmd's exit.
func startDaemon(t *testing.T, name, logFile string, cmd *exec.Cmd) <-chan error {
	t.Helper()
	// The daemon's own complaints (qemu: "could not open tap") go to a file
	// beside its log, shown with it; so does its output, unless cmd
	// already sends that elsewhere.
	outFile := logFile + ".out"
	out, err := os.Create(outFile)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if cmd.Stdout == nil {
		cmd.Stdout = out
	}
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	exited := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		err := cmd.Wait()
		if err == nil {
			err = errors.New("exit status 0")
		}
		exited <- err
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			for _, f := range []string{outFile, logFile} {
				b, _ := os.ReadFile(f)
				t.Logf("%s %s:\n%s", name, f, tail(b))
			}
		}
	})
	return exited
}

func anyExists(paths ...string) bool {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}
