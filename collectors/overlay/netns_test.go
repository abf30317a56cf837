package overlay

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// commandTimeout bounds each ip or bridge command of a test.
const commandTimeout = 30 * time.Second

// maxOutput caps the command output kept for an error message.
const maxOutput = 16 << 10

// testNS is a network namespace made for one test.
type testNS struct {
	name string
	path string
}

// newTestNS creates a network namespace named ctk-ovl-<random>, deleted when
// the test ends, with IPv6 turned off so that no router solicitation or
// duplicate address detection floods the overlays and moves neighbour
// entries. It skips the test when it cannot create one.
func newTestNS(tb testing.TB) testNS {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("overlay tests create network namespaces and need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Skipf("overlay tests need ip and bridge from iproute2: %v", err)
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	ns := testNS{name: "ctk-ovl-" + hex.EncodeToString(b[:])}
	ns.path = "/var/run/netns/" + ns.name
	if out, err := command("ip", "netns", "add", ns.name); err != nil {
		tb.Skipf("cannot create a network namespace (ip netns add %s: %v): %s", ns.name, err, out)
	}
	tb.Cleanup(func() {
		if out, err := command("ip", "netns", "del", ns.name); err != nil {
			tb.Errorf("ip netns del %s: %v: %s", ns.name, err, out)
		}
	})
	ns.disableIPv6(tb)
	return ns
}

// disableIPv6 writes the namespace's disable_ipv6 sysctls. /proc/sys/net
// shows the namespace of the thread that opens it, so the write runs on a
// thread moved into the namespace; that thread stays locked, and the Go
// runtime ends it with its goroutine instead of reusing it elsewhere.
func (ns testNS) disableIPv6(tb testing.TB) {
	tb.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromPath(ns.path)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		for _, p := range []string{
			"/proc/sys/net/ipv6/conf/all/disable_ipv6",
			"/proc/sys/net/ipv6/conf/default/disable_ipv6",
		} {
			if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		tb.Fatalf("disable IPv6 in %s: %v", ns.name, err)
	}
}

// ip runs `ip -n <ns> args…`.
func (ns testNS) ip(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := command("ip", append([]string{"-n", ns.name}, args...)...); err != nil {
		tb.Fatalf("ip -n %s %q: %v: %s", ns.name, args, err, out)
	}
}

// bridge runs `bridge -n <ns> args…`.
func (ns testNS) bridge(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := command("bridge", append([]string{"-n", ns.name}, args...)...); err != nil {
		tb.Fatalf("bridge -n %s %q: %v: %s", ns.name, args, err, out)
	}
}

// handle returns a netlink handle in the namespace, closed with the test.
func (ns testNS) handle(tb testing.TB) *netlink.Handle {
	tb.Helper()
	nsh, err := netns.GetFromPath(ns.path)
	if err != nil {
		tb.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		tb.Fatalf("netlink handle in %s: %v", ns.name, err)
	}
	tb.Cleanup(h.Close)
	return h
}

// awaitOperUp waits until the named links are operationally up. The kernel
// sets operational states, and enables bridge ports, from its linkwatch
// work, after the command that brought a link up has returned; the test
// waits for the notification rather than for a guessed delay.
func (ns testNS) awaitOperUp(tb testing.TB, names ...string) {
	tb.Helper()
	nsh, err := netns.GetFromPath(ns.path)
	if err != nil {
		tb.Fatal(err)
	}
	defer nsh.Close()
	// Buffered so that the subscription's goroutine is not left blocked
	// on a send once this function stops reading.
	updates := make(chan netlink.LinkUpdate, 1024)
	// Errors go through a channel, not tb.Logf: the subscription reports
	// one when it is closed, possibly after the test has ended.
	errs := make(chan error, 16)
	done := make(chan struct{})
	defer close(done)
	err = netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
		Namespace:    &nsh,
		ListExisting: true,
		ErrorCallback: func(err error) {
			select {
			case errs <- err:
			default:
			}
		},
	})
	if err != nil {
		tb.Fatalf("subscribe to links in %s: %v", ns.name, err)
	}
	waiting := make(map[string]bool, len(names))
	for _, n := range names {
		waiting[n] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	for len(waiting) > 0 {
		select {
		case u, ok := <-updates:
			if !ok {
				tb.Fatalf("link subscription in %s ended while waiting for %v", ns.name, waiting)
			}
			if a := u.Attrs(); a.OperState == netlink.OperUp {
				delete(waiting, a.Name)
			}
		case err := <-errs:
			tb.Logf("link subscription in %s: %v", ns.name, err)
		case <-ctx.Done():
			tb.Fatalf("links %v of %s not operationally up: %v", waiting, ns.name, ctx.Err())
		}
	}
}

// command runs name with args, no shell, and returns its output, capped.
func command(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if len(out) > maxOutput {
		out = out[:maxOutput]
	}
	return bytes.TrimSpace(out), err
}
