package guestos

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
	"caretaker/internal/overlaynet/nstest"
)

// The e2e test's subnet: the test's netns end of the veth and two guests,
// and an address nobody has.
var (
	e2eNS     = netip.MustParsePrefix("10.77.250.1/24")
	e2eGuests = []netip.Prefix{netip.MustParsePrefix("10.77.250.11/24"), netip.MustParsePrefix("10.77.250.12/24")}
	e2eUnused = netip.MustParseAddr("10.77.250.99")
)

// e2eTimeout bounds the whole test: two TCG guests booting on two cores.
const e2eTimeout = 3 * time.Minute

// TestGuestsBootAndAnswer boots two real guests (QEMU TCG, direct kernel
// boot of Debian's kernel with the initramfs Build makes) on one root
// namespace bridge, joined by a veth to a test netns, and checks from the
// netns that they answer ping, ping each other through their web servers,
// and that a guest asked to panic is reported crashed by libvirt.
func TestGuestsBootAndAnswer(t *testing.T) {
	needs.Libvirtd(t)
	needs.Program(t, "ip")
	if err := Check(DefaultDir); err != nil {
		needs.Missing(t, "%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
	defer cancel()

	id := randomHex(t, 3)
	// QEMU runs as libvirt-qemu: the kernel, initrd and the way to them
	// must be readable by it; t.TempDir's parent is not.
	dir, err := os.MkdirTemp("", "guestos-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	img, err := Build(DefaultDir, filepath.Join(dir, "img"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(img.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Build: %v, initrd %d bytes", time.Since(start).Round(time.Millisecond), st.Size())

	ns := nstest.New(t)
	bridge, vethRoot, vethNS := "gos-br-"+id, "gos-vr-"+id, "gos-vn-"+id
	rootIP(t, "link", "add", bridge, "type", "bridge")
	t.Cleanup(func() { rootIPCleanup(t, "link", "del", bridge) })
	rootIP(t, "link", "add", vethRoot, "type", "veth", "peer", "name", vethNS)
	t.Cleanup(func() { rootIPCleanup(t, "link", "del", vethRoot) })
	rootIP(t, "link", "set", vethRoot, "master", bridge, "up")
	rootIP(t, "link", "set", bridge, "up")
	rootIP(t, "link", "set", vethNS, "netns", ns.Name)
	ns.IP(t, "link", "set", vethNS, "name", "eth0")
	ns.IP(t, "addr", "add", e2eNS.String(), "dev", "eth0")
	ns.IP(t, "link", "set", "eth0", "up")
	ns.IP(t, "link", "set", "lo", "up")

	conn, err := libvirtconn.Dial("qemu:///system")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Disconnect() })
	stopped := make(chan string, 16) // names of domains stopped after a crash
	stop, err := libvirtconn.Subscribe(conn, libvirt.DomainEventIDLifecycle, func(ev any) {
		m, ok := ev.(*libvirt.DomainEventCallbackLifecycleMsg)
		if ok && libvirt.DomainEventType(m.Msg.Event) == libvirt.DomainEventStopped &&
			libvirt.DomainEventStoppedDetailType(m.Msg.Detail) == libvirt.DomainEventStoppedCrashed {
			select {
			case stopped <- m.Msg.Dom.Name:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)

	var doms []libvirt.Domain
	var started []time.Time
	for i, addr := range e2eGuests {
		name := fmt.Sprintf("guestos-test-%s-%d", id, i+1)
		g := Guest{Hostname: fmt.Sprintf("guestos-%d", i+1), Addr: addr}
		log := filepath.Join(dir, name+".console.log")
		xml := domainXML(t, name, img, g, bridge, log)
		dom, err := conn.DomainDefineXML(xml)
		if err != nil {
			t.Fatalf("define %s: %v\n%s", name, err, xml)
		}
		t.Cleanup(func() { removeDomain(t, conn, dom) })
		t.Cleanup(func() {
			if t.Failed() {
				b, _ := os.ReadFile(log)
				t.Logf("console of %s:\n%s", name, b)
			}
		})
		started = append(started, time.Now())
		if err := conn.DomainCreate(dom); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		t.Logf("guest %s: defined and started in %v", name, time.Since(started[i]).Round(10*time.Millisecond))
		doms = append(doms, dom)
	}

	for i, addr := range e2eGuests {
		bootCtx, cancel := context.WithTimeout(ctx, 90*time.Second)
		err := Ping(bootCtx, ns.Path, addr.Addr())
		cancel()
		if err != nil {
			t.Fatalf("guest %s never answered: %v", doms[i].Name, err)
		}
		t.Logf("guest %s: define → first ping answered in %v", doms[i].Name, time.Since(started[i]).Round(10*time.Millisecond))
	}

	client := Client(ns.Path)
	g1, g2 := e2eGuests[0].Addr(), e2eGuests[1].Addr()
	info, err := Info(ctx, client, g1)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("info of %s:\n%s", g1, info)
	for _, want := range []string{"hostname guestos-1", "address " + e2eGuests[0].String(), "uptime "} {
		if !strings.Contains(info, want) {
			t.Errorf("info of %s: %q lacks %q", g1, info, want)
		}
	}
	if ok, out, err := AskPing(ctx, client, g1, g2); err != nil || !ok {
		t.Errorf("guest %s ping %s: reachable %v, %v:\n%s", g1, g2, ok, err, out)
	}
	if ok, out, err := AskPing(ctx, client, g1, e2eUnused); err != nil || ok {
		t.Errorf("guest %s ping unused %s: reachable %v, %v:\n%s", g1, e2eUnused, ok, err, out)
	}

	if err := Panic(ctx, client, g1); err != nil {
		t.Fatal(err)
	}
	select {
	case name := <-stopped:
		if name != doms[0].Name {
			t.Errorf("domain %s crashed, want %s", name, doms[0].Name)
		}
	case <-ctx.Done():
		t.Fatalf("no crash of %s reported by libvirt: %v", doms[0].Name, ctx.Err())
	}
	state, reason, err := conn.DomainGetState(doms[0], 0)
	if err != nil {
		t.Fatal(err)
	}
	if libvirt.DomainState(state) != libvirt.DomainShutoff || libvirt.DomainShutoffReason(reason) != libvirt.DomainShutoffCrashed {
		t.Errorf("%s after panic: state %d reason %d, want shut off (%d), crashed (%d)",
			doms[0].Name, state, reason, libvirt.DomainShutoff, libvirt.DomainShutoffCrashed)
	}
	// The other guest is unaffected.
	if err := Ping(ctx, ns.Path, g2); err != nil {
		t.Errorf("guest %s after %s's panic: %v", g2, g1, err)
	}
}

func domainXML(t *testing.T, name string, img Image, g Guest, bridge, consoleLog string) string {
	t.Helper()
	d, err := Domain(name, img, g, Interface(bridge, ""), consoleLog)
	if err != nil {
		t.Fatal(err)
	}
	xml, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return xml
}

func removeDomain(t *testing.T, conn *libvirt.Libvirt, dom libvirt.Domain) {
	if err := conn.DomainDestroy(dom); err != nil && !libvirtconn.IsCode(err, libvirt.ErrOperationInvalid) {
		t.Errorf("destroy %s: %v", dom.Name, err)
	}
	if err := conn.DomainUndefine(dom); err != nil {
		t.Errorf("undefine %s: %v", dom.Name, err)
	}
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// rootIP runs ip in the root namespace, failing the test if it fails.
func rootIP(t *testing.T, args ...string) {
	t.Helper()
	if out, err := ipCommand(args...); err != nil {
		t.Fatalf("ip %q: %v: %s", args, err, out)
	}
}

// rootIPCleanup runs ip at cleanup: a link already gone is no error.
func rootIPCleanup(t *testing.T, args ...string) {
	t.Helper()
	if out, err := ipCommand(args...); err != nil && !bytes.Contains(out, []byte("Cannot find device")) {
		t.Errorf("ip %q: %v: %s", args, err, out)
	}
}

func ipCommand(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "ip", args...).CombinedOutput()
}
