// Package nstest gives tests a network namespace of their own, in which
// they build and break real overlays with iproute2 and read them back over
// netlink.
package nstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"caretaker/internal/needs"
)

// commandTimeout bounds each ip or bridge command.
const commandTimeout = 30 * time.Second

// maxOutput caps the command output kept for an error message.
const maxOutput = 16 << 10

// NS is a network namespace made for one test.
type NS struct {
	Name string
	// Path is the namespace file, /var/run/netns/<Name>.
	Path string
}

// New creates a network namespace named ctk-onet-<random>, deleted when the
// test ends, with IPv6 turned off so that nothing (router solicitations,
// duplicate address detection) is sent on the links the test brings up. It
// skips the test without root or iproute2.
func New(tb testing.TB) NS {
	tb.Helper()
	needs.Root(tb, "overlay network tests create network namespaces")
	needs.Programs(tb, "ip", "bridge")
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	ns := NS{Name: "ctk-onet-" + hex.EncodeToString(b[:])}
	ns.Path = "/var/run/netns/" + ns.Name
	if out, err := command("ip", "netns", "add", ns.Name); err != nil {
		needs.Missing(tb, "cannot create a network namespace (ip netns add %s: %v): %s", ns.Name, err, out)
	}
	tb.Cleanup(func() {
		if out, err := command("ip", "netns", "del", ns.Name); err != nil {
			tb.Errorf("ip netns del %s: %v: %s", ns.Name, err, out)
		}
	})
	ns.disableIPv6(tb)
	return ns
}

// disableIPv6 writes the namespace's disable_ipv6 sysctls. /proc/sys/net
// shows the namespace of the thread that opens it, so the write runs on a
// locked thread moved into the namespace, which the Go runtime ends with
// its goroutine instead of reusing it.
func (ns NS) disableIPv6(tb testing.TB) {
	tb.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromPath(ns.Path)
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
		tb.Fatalf("disable IPv6 in %s: %v", ns.Name, err)
	}
}

// IP runs `ip -n <ns> args…` and fails the test if it fails.
func (ns NS) IP(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := command("ip", append([]string{"-n", ns.Name}, args...)...); err != nil {
		tb.Fatalf("ip -n %s %q: %v: %s", ns.Name, args, err, out)
	}
}

// Bridge runs `bridge -n <ns> args…` and fails the test if it fails.
func (ns NS) Bridge(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := command("bridge", append([]string{"-n", ns.Name}, args...)...); err != nil {
		tb.Fatalf("bridge -n %s %q: %v: %s", ns.Name, args, err, out)
	}
}

// Handle returns a netlink handle in the namespace, closed with the test.
func (ns NS) Handle(tb testing.TB) *netlink.Handle {
	tb.Helper()
	nsh, err := netns.GetFromPath(ns.Path)
	if err != nil {
		tb.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		tb.Fatalf("netlink handle in %s: %v", ns.Name, err)
	}
	tb.Cleanup(h.Close)
	return h
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

// Overlay is what a test reads back of one overlay, in words that compare.
type Overlay struct {
	// Bridge is "" when the bridge is missing, else "up" or "down".
	Bridge string
	// VXLAN is "" when the device is missing, else its identity:
	// "vni 100 local 192.0.2.1 port 4789 underlay u0 mtu 1450 master br-a up".
	VXLAN string
	// Flood are the destinations of the device's all-zeros FDB entries,
	// sorted: the kernel lists a re-added entry first.
	Flood []string
}

// Overlay reads the bridge and the VXLAN device over netlink.
func (ns NS) Overlay(tb testing.TB, device, bridge string) Overlay {
	tb.Helper()
	h := ns.Handle(tb)
	var o Overlay
	if br, err := h.LinkByName(bridge); err == nil {
		o.Bridge = upDown(br)
		if br.Type() != "bridge" {
			o.Bridge = br.Type() + " " + o.Bridge
		}
	} else if !errors.As(err, &netlink.LinkNotFoundError{}) {
		tb.Fatalf("read bridge %s: %v", bridge, err)
	}
	l, err := h.LinkByName(device)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return o
	}
	if err != nil {
		tb.Fatalf("read vxlan %s: %v", device, err)
	}
	vx, ok := l.(*netlink.Vxlan)
	if !ok {
		o.VXLAN = l.Type() + " " + upDown(l)
		return o
	}
	name := func(index int) string {
		if index == 0 {
			return "none"
		}
		l, err := h.LinkByIndex(index)
		if err != nil {
			tb.Fatalf("read link %d: %v", index, err)
		}
		return l.Attrs().Name
	}
	o.VXLAN = fmt.Sprintf("vni %d local %s port %d underlay %s mtu %d master %s %s",
		vx.VxlanId, vx.SrcAddr, vx.Port, name(vx.VtepDevIndex), vx.MTU, name(vx.MasterIndex), upDown(vx))
	fdb, err := h.NeighList(vx.Index, unix.AF_BRIDGE)
	if err != nil {
		tb.Fatalf("read fdb of %s: %v", device, err)
	}
	for _, n := range fdb {
		if n.IP != nil && n.HardwareAddr.String() == "00:00:00:00:00:00" {
			o.Flood = append(o.Flood, n.IP.String())
		}
	}
	slices.Sort(o.Flood)
	return o
}

func upDown(l netlink.Link) string {
	if l.Attrs().Flags&net.FlagUp != 0 {
		return "up"
	}
	return "down"
}

// AwaitOperUp waits until the named links are operationally up. The kernel
// sets operational states, and enables bridge ports, from its linkwatch
// work, after the command that brought a link up has returned; the test
// waits for the notification rather than for a guessed delay.
func (ns NS) AwaitOperUp(tb testing.TB, names ...string) {
	tb.Helper()
	nsh, err := netns.GetFromPath(ns.Path)
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
		tb.Fatalf("subscribe to links in %s: %v", ns.Name, err)
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
				tb.Fatalf("link subscription in %s ended while waiting for %v", ns.Name, waiting)
			}
			if a := u.Attrs(); a.OperState == netlink.OperUp {
				delete(waiting, a.Name)
			}
		case err := <-errs:
			tb.Logf("link subscription in %s: %v", ns.Name, err)
		case <-ctx.Done():
			tb.Fatalf("links %v of %s not operationally up: %v", waiting, ns.Name, ctx.Err())
		}
	}
}
