package dashboards

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/prometheus/promql/parser"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/agent"
	"caretaker/internal/agentapi"
	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/monitoring"
	"caretaker/internal/needs"
	"caretaker/internal/overlayspec"
	"caretaker/remediation"
)

const (
	libvirtSocket = "/var/run/libvirt/libvirt-sock"
	// commandTimeout bounds each ip, bridge or qemu-img run.
	commandTimeout = 30 * time.Second
	// fillTimeout bounds the wait for the TSDB to hold what every panel
	// needs; a healthy run takes a few seconds.
	fillTimeout = 2 * time.Minute
	// scrapeInterval is short so that rate() has its samples quickly.
	scrapeInterval = 200 * time.Millisecond
	testToken      = "ctk-dash-token"
)

// TestPanelsReturnData runs every panel query against a TSDB filled by the
// embedded Prometheus scraping real agents: host-a on qemu:///system with
// one real QEMU guest (disk, interface on a bridge), host-b on libvirt's
// test driver, both with a real VXLAN overlay in their own network
// namespace, and the server's remediation metrics from a real engine that
// started host-a's guest. A panel that returns no series is broken (a
// wrong name, label or join) or its metric is not exported.
func TestPanelsReturnData(t *testing.T) {
	t.Parallel()
	requireLab(t)
	suffix := randomSuffix(t)
	ctx := t.Context()
	began := time.Now()

	// Underlay and overlay: two namespaces joined by a veth pair, each
	// with a bridge and a VXLAN device flooding to the other.
	nsA, nsB := "ctk-dash-"+suffix+"-a", "ctk-dash-"+suffix+"-b"
	addrA, addrB := net.ParseIP("10.254.77.1"), net.ParseIP("10.254.77.2")
	for _, ns := range []string{nsA, nsB} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { cleanupRun(t, "ip", "netns", "del", ns) })
	}
	run(t, "ip", "-n", nsA, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", nsB)
	for _, side := range []struct {
		ns         string
		local, far net.IP
	}{{nsA, addrA, addrB}, {nsB, addrB, addrA}} {
		ip := func(args ...string) { run(t, "ip", append([]string{"-n", side.ns}, args...)...) }
		ip("addr", "add", side.local.String()+"/24", "dev", "ul0")
		ip("link", "set", "ul0", "up")
		ip("link", "add", "br-dash", "type", "bridge")
		ip("link", "add", "vx-dash", "type", "vxlan", "id", "4242", "local", side.local.String(), "dev", "ul0", "dstport", "4789", "nolearning")
		ip("link", "set", "vx-dash", "mtu", "1450", "master", "br-dash")
		ip("link", "set", "vx-dash", "up")
		ip("link", "set", "br-dash", "up")
		run(t, "bridge", "-n", side.ns, "fdb", "append", "00:00:00:00:00:00", "dev", "vx-dash", "dst", side.far.String())
	}
	overlays := func(peerHost string, peer net.IP) []overlayspec.Overlay {
		return []overlayspec.Overlay{{Cluster: "dash", Device: "vx-dash", Bridge: "br-dash", VNI: 4242,
			Peers: []overlayspec.Peer{{Host: peerHost, Address: peer.String()}}}}
	}

	// host-a's guest: a real QEMU domain, defined but not started; the
	// remediation engine starts it below, as it would heal a crash.
	bridge := "ctk-dash-" + suffix
	run(t, "ip", "link", "add", bridge, "type", "bridge")
	t.Cleanup(func() { cleanupRun(t, "ip", "link", "del", bridge) })
	run(t, "ip", "link", "set", bridge, "up")
	domName := "ctk-dash-" + suffix + "-a1"
	uuid := defineGuest(t, domName, bridge)

	// host-b: libvirt's test driver, in the agent's process.
	nodeXML, err := filepath.Abs("testdata/host-b.xml")
	if err != nil {
		t.Fatal(err)
	}

	// This run's guests only: another run's (or test's) ctk-dash-… are not
	// host-a's.
	filter := regexp.MustCompile("^" + regexp.QuoteMeta("ctk-dash-"+suffix+"-"))
	addrOf := map[string]string{}
	hosts := agentapi.NewHosts(testToken)
	for _, h := range []struct {
		name, uri, netns string
		ovl              []overlayspec.Overlay
	}{
		{"host-a", "qemu:///system", nsA, overlays("host-b", addrB)},
		{"host-b", "test://" + nodeXML, nsB, overlays("host-a", addrA)},
	} {
		a, err := agent.New(agent.Config{
			LibvirtURI:   h.uri,
			DomainFilter: filter,
			Token:        testToken,
			Overlays:     h.ovl,
			NetNS:        "/var/run/netns/" + h.netns,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() }) // after Serve returns: cleanups run last-in first-out
		addrOf[h.name] = serve(t, func(ctx context.Context, l net.Listener) error { return a.Serve(ctx, l) })
		hosts.Add(h.name, addrOf[h.name])
	}

	// The server's remediation metrics come from a real engine on its own
	// registry, served like the server's /metrics and scraped as the
	// server's self-scrape (job caretaker-server): a whole server would
	// need a config and token files for nothing the panels read.
	reg := prometheus.NewRegistry()
	engine := newEngine(t, reg, hosts)
	t.Cleanup(engine.Close)
	serverAddr := serve(t, func(ctx context.Context, l net.Listener) error {
		srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		go func() { <-ctx.Done(); srv.Close() }()
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})

	mon, err := monitoring.Start(ctx, monitoring.Options{
		DataDir:            t.TempDir(),
		ScrapeInterval:     scrapeInterval,
		EvaluationInterval: scrapeInterval,
		Targets: []monitoring.Target{
			{Host: "host-a", Address: addrOf["host-a"]},
			{Host: "host-b", Address: addrOf["host-b"]},
		},
		SelfAddress: serverAddr,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := mon.Stop(); err != nil {
			t.Errorf("stop monitoring: %v", err)
		}
	})

	// The guest "crashed": the engine restarts it through host-a's agent
	// and verifies it runs, which also gives the remediation panels an
	// action and a duration.
	engine.Handle(ctx, []remediation.Alert{{
		Name:     "GuestCrashed",
		Labels:   map[string]string{"alertname": "GuestCrashed", "host": "host-a", "uuid": uuid, "domain": domName, "cluster": "dash"},
		Status:   remediation.StatusFiring,
		StartsAt: time.Now(),
	}})

	// Filled when each holds: all targets up, the heal recorded, and at
	// least three samples of the guest's counters, so rate() over them
	// has two points whatever the phase of the scrapes.
	awaitAll(t, mon, []string{
		`count(up{job="caretaker-agent"} == 1) == 2`,
		`up{job="caretaker-server"} == 1`,
		`caretaker_remediation_actions_total{result="succeeded"} >= 1`,
		`count_over_time(caretaker_kvm_domain_cpu_seconds_total{host="host-a"}[1m]) >= 3`,
		`count_over_time(caretaker_kvm_domain_block_read_bytes_total{host="host-a"}[1m]) >= 3`,
		`count_over_time(caretaker_kvm_domain_interface_receive_bytes_total{host="host-a"}[1m]) >= 3`,
		`count_over_time(caretaker_overlay_vxlan_up{host="host-b"}[1m]) >= 3`,
	})
	t.Logf("TSDB filled %.1fs after the test began (guest defined, namespaces and agents set up, guest healed, 3 scrapes)", time.Since(began).Seconds())

	now := time.Now()
	p := newParser()
	selects := map[string]bool{} // selector → selects something, memoised
	for _, b := range loadBoards(t) {
		for _, q := range b.queries() {
			vec, err := mon.Query(ctx, q.expr, now)
			if err != nil {
				t.Errorf("%s: %v", q, err)
				continue
			}
			if len(vec) == 0 {
				t.Errorf("%s: no series (as run: %s)", q, q.expr)
			}
			// "… or vector(0)" always returns a series, so each selector
			// is also run alone: a wrong label name or value in a matcher
			// selects nothing.
			sels, err := selectors(p, q.expr)
			if err != nil {
				t.Errorf("%s: %v", q, err)
				continue
			}
			for _, sel := range sels {
				if _, done := selects[sel]; !done {
					vec, err := mon.Query(ctx, sel, now)
					if err != nil {
						t.Fatalf("selector %s of %s: %v", sel, q, err)
					}
					selects[sel] = len(vec) > 0
				}
				if !selects[sel] {
					t.Errorf("%s: its selector %s selects no series", q, sel)
				}
			}
		}
	}

	// The metric names a real scrape holds join the static set.
	vec, err := mon.Query(ctx, `count by (__name__) ({__name__=~".+"})`, now)
	if err != nil {
		t.Fatal(err)
	}
	exported := staticExported(t)
	for _, s := range vec {
		exported[s.Metric.Get("__name__")] = "a live scrape"
	}
	checkNamesExported(t, exported)
}

// requireLab skips unless the test can build its lab: root (namespaces,
// bridges, qemu:///system), libvirtd, QEMU, iproute2 and qemu-img.
func requireLab(t *testing.T) {
	t.Helper()
	needs.Root(t, "the live dashboard test creates network namespaces, a bridge and a QEMU guest")
	needs.Libvirtd(t)
	needs.Programs(t, "ip", "bridge", "qemu-img")
	conn, err := libvirtconn.Dial("qemu:///system")
	if err != nil {
		needs.Missing(t, "the live dashboard test needs qemu:///system: %v", err)
	}
	defer conn.Disconnect()
	caps, err := conn.ConnectGetCapabilities()
	if err != nil || !strings.Contains(caps, "<domain type='qemu'") {
		needs.Missing(t, "the live dashboard test needs QEMU guests of domain type qemu through libvirtd (capabilities: %v)", err)
	}
}

// defineGuest defines (without starting) a 64 MiB QEMU guest with a small
// qcow2 disk and an interface on bridge, carrying caretaker metadata for
// cluster dash, and removes it and its disk with the test.
func defineGuest(t *testing.T, name, bridge string) string {
	t.Helper()
	// libvirt's images directory: QEMU, running as libvirt-qemu, can reach
	// it, unlike a 0700 test temporary directory.
	disk := "/var/lib/libvirt/images/" + name + ".qcow2"
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", disk, "16M")
	t.Cleanup(func() {
		if err := os.Remove(disk); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("remove %s: %v", disk, err)
		}
	})
	meta, err := guestmeta.Metadata{Intent: "running", Cluster: "dash", Role: "worker"}.XML()
	if err != nil {
		t.Fatal(err)
	}
	d := libvirtxml.Domain{
		Type:   "qemu",
		Name:   name,
		Memory: &libvirtxml.DomainMemory{Value: 64, Unit: "MiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: 1},
		OS: &libvirtxml.DomainOS{
			Type: &libvirtxml.DomainOSType{Arch: "x86_64", Machine: "pc", Type: "hvm"},
		},
		Metadata:   &libvirtxml.DomainMetadata{XML: meta},
		OnCrash:    "destroy",
		OnPoweroff: "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{{
				Device: "disk",
				Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2"},
				Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: disk}},
				Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
			}},
			Interfaces: []libvirtxml.DomainInterface{{
				Source: &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: bridge}},
				Model:  &libvirtxml.DomainInterfaceModel{Type: "virtio"},
			}},
		},
	}
	xml, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := libvirtconn.Dial("qemu:///system")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Disconnect()
	dom, err := conn.DomainDefineXML(xml)
	if err != nil {
		t.Fatalf("define guest %s: %v", name, err)
	}
	uuid := libvirtconn.UUIDString(dom.UUID)
	t.Cleanup(func() {
		conn, err := libvirtconn.Dial("qemu:///system")
		if err != nil {
			t.Errorf("remove guest %s: %v", name, err)
			return
		}
		defer conn.Disconnect()
		dom, err := libvirtconn.LookupDomain(conn, uuid)
		if err != nil {
			t.Errorf("remove guest %s: %v", name, err)
			return
		}
		if active, _ := conn.DomainIsActive(dom); active == 1 {
			if err := conn.DomainDestroy(dom); err != nil {
				t.Errorf("destroy guest %s: %v", name, err)
			}
		}
		if err := conn.DomainUndefine(dom); err != nil {
			t.Errorf("undefine guest %s: %v", name, err)
		}
	})
	return uuid
}

// serve runs fn on a new 127.0.0.1 listener until the test ends and
// returns the listener's address.
func serve(t *testing.T, fn func(context.Context, net.Listener) error) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve %s: %v", l.Addr(), err)
		}
	})
	return l.Addr().String()
}

// awaitAll polls the TSDB until every query returns a series. There is no
// event for "the TSDB holds a sample", so polling the thing itself is the
// honest wait; the deadline only guards against a broken lab, and its
// failure says which queries never held and what the agents said.
func awaitAll(t *testing.T, mon *monitoring.Monitor, queries []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), fillTimeout)
	defer cancel()
	tick := time.NewTicker(scrapeInterval / 2)
	defer tick.Stop()
	for {
		var pending []string
		for _, q := range queries {
			vec, err := mon.Query(ctx, q, time.Now())
			if err != nil && ctx.Err() == nil {
				t.Fatal(err)
			}
			if len(vec) == 0 {
				pending = append(pending, q)
			}
		}
		if len(pending) == 0 {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			var diag []string
			for _, ts := range mon.Targets() {
				diag = append(diag, fmt.Sprintf("target %s %s: %s %s", ts.Host, ts.Address, ts.Health, ts.LastError))
			}
			t.Fatalf("after %s these never held:\n  %s\n%s", fillTimeout, strings.Join(pending, "\n  "), strings.Join(diag, "\n"))
		}
	}
}

func randomSuffix(t *testing.T) string {
	t.Helper()
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// run runs a command (no shell) with a timeout, failing the test with its
// output on error.
func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := command(name, args...); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// cleanupRun is run for t.Cleanup: it reports and goes on.
func cleanupRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := command(name, args...); err != nil {
		t.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func command(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	const maxOutput = 16 << 10
	if len(out) > maxOutput {
		out = out[:maxOutput]
	}
	return bytes.TrimSpace(out), err
}

// alertSeries are written only while an alert is pending or firing, which
// none is in a healthy lab.
var alertSeries = []string{"ALERTS", "ALERTS_FOR_STATE"}

// selectors returns expr's vector selectors as instant queries, without
// their ranges, offsets and @ modifiers.
func selectors(p parser.Parser, expr string) ([]string, error) {
	e, err := p.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var out []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok || slices.Contains(alertSeries, vs.Name) {
			return nil
		}
		bare := &parser.VectorSelector{Name: vs.Name, LabelMatchers: vs.LabelMatchers}
		out = append(out, bare.String())
		return nil
	})
	return out, nil
}
