package overlay

import (
	"caretaker/internal/golden"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"caretaker/collectors"
	"caretaker/internal/overlayspec"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func testLogger(tb testing.TB) *slog.Logger {
	if t, ok := tb.(*testing.T); ok {
		return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// underlay creates ul0, the host's underlay NIC with the local VTEP
// address 10.0.0.1/24: a veth whose peer ul0p stays in the namespace so
// that ul0 has carrier.
func (ns testNS) underlay(tb testing.TB) {
	tb.Helper()
	ns.IP(tb, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0p")
	ns.IP(tb, "addr", "add", "10.0.0.1/24", "dev", "ul0")
	ns.IP(tb, "link", "set", "ul0p", "up")
	ns.IP(tb, "link", "set", "ul0", "up")
}

// overlay creates the bridge br, without multicast snooping (whose queries
// would flood the overlay), and the VXLAN device dev with the given VNI on
// ul0 as its port, both up.
func (ns testNS) overlay(tb testing.TB, dev, br string, vni int) {
	tb.Helper()
	ns.IP(tb, "link", "add", br, "type", "bridge", "mcast_snooping", "0")
	ns.IP(tb, "link", "add", dev, "type", "vxlan", "id", strconv.Itoa(vni),
		"local", "10.0.0.1", "dstport", "4789", "dev", "ul0")
	ns.IP(tb, "link", "set", dev, "master", br)
	ns.IP(tb, "link", "set", dev, "up")
	ns.IP(tb, "link", "set", br, "up")
}

// guestPort adds a veth port to br, standing for a guest's tap device, and
// waits until the bridge has enabled it.
func (ns testNS) guestPort(tb testing.TB, port, br string) {
	tb.Helper()
	ns.IP(tb, "link", "add", port, "type", "veth", "peer", "name", port+"p")
	ns.IP(tb, "link", "set", port, "master", br)
	ns.IP(tb, "link", "set", port+"p", "up")
	ns.IP(tb, "link", "set", port, "up")
	ns.AwaitOperUp(tb, port, br)
}

// setMTUAboveParent gives the VXLAN device dev an MTU the kernel refuses
// while its parent ul0 has 1500 bytes: it raises ul0's MTU, sets dev's,
// and lowers ul0's again, as happens when an underlay's MTU is lowered
// under existing overlays.
func (ns testNS) setMTUAboveParent(tb testing.TB, dev string, mtu int) {
	tb.Helper()
	ns.IP(tb, "link", "set", "ul0", "mtu", "9000")
	ns.IP(tb, "link", "set", dev, "mtu", strconv.Itoa(mtu))
	ns.IP(tb, "link", "set", "ul0", "mtu", "1500")
}

func peer(host, addr string) overlayspec.Peer { return overlayspec.Peer{Host: host, Address: addr} }

// labOverlays are the expectations of the golden test: cluster lab on
// vx-x with three peers, the third without FDB entry, and cluster gone,
// whose device does not exist.
func labOverlays() []overlayspec.Overlay {
	return []overlayspec.Overlay{
		{
			Cluster: "lab", Device: "vx-x", Bridge: "br-x", VNI: 100,
			Peers: []overlayspec.Peer{peer("host-b", "10.0.0.2"), peer("host-c", "10.0.0.3"), peer("host-d", "10.0.0.4")},
		},
		{
			Cluster: "gone", Device: "vx-gone", Bridge: "br-gone", VNI: 300,
			Peers: []overlayspec.Peer{peer("host-b", "10.0.0.2")},
		},
	}
}

func newCollector(tb testing.TB, cfg Config) *Collector {
	tb.Helper()
	c, err := New(cfg, testLogger(tb))
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return c
}

// TestCollectorGolden builds one host's overlays in a namespace and compares
// the whole scrape with testdata/lab.golden.prom:
//
//   - vx-x (VNI 100, local 10.0.0.1 on ul0) is a port of br-x beside the
//     guest port gst0, which is learning; it floods to 10.0.0.2, 10.0.0.3
//     and the unexpected 10.0.0.9 and has a unicast entry towards 10.0.0.2;
//     on ul0 the neighbour 10.0.0.2 is permanent and 10.0.0.3 failed;
//   - vx-stray (VNI 200) is expected by no overlay, down, with the MTU of
//     its parent;
//   - vx-gone and br-gone are expected but missing.
func TestCollectorGolden(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay(t)
	ns.overlay(t, "vx-x", "br-x", 100)
	ns.guestPort(t, "gst0", "br-x")
	ns.Bridge(t, "link", "set", "dev", "gst0", "state", "2")
	for _, dst := range []string{"10.0.0.2", "10.0.0.3", "10.0.0.9"} {
		ns.Bridge(t, "fdb", "append", "00:00:00:00:00:00", "dev", "vx-x", "dst", dst)
	}
	ns.Bridge(t, "fdb", "add", "02:00:00:00:01:01", "dev", "vx-x", "dst", "10.0.0.2")
	ns.IP(t, "neigh", "add", "10.0.0.2", "lladdr", "02:00:00:00:00:02", "dev", "ul0", "nud", "permanent")
	ns.IP(t, "neigh", "add", "10.0.0.3", "dev", "ul0", "nud", "failed")
	ns.IP(t, "link", "add", "vx-stray", "type", "vxlan", "id", "200", "dstport", "4789", "dev", "ul0")
	ns.setMTUAboveParent(t, "vx-stray", 1500)
	ns.AwaitOperUp(t, "ul0", "br-x", "gst0")

	logger := testLogger(t)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collectors.NewSet(logger, time.Minute, map[string]collectors.Collector{
		"overlay": newCollector(t, Config{Overlays: labOverlays(), NetNS: ns.Path}),
	}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	t.Run("promtool", func(t *testing.T) { golden.CheckMetrics(t, golden.Encode(t, mfs)) })
	golden.Compare(t, filepath.Join("testdata", "lab.golden.prom"), golden.Encode(t, stable(t, mfs)), *update)
}

// stable drops the scrape duration and zeroes the traffic counters, which
// vary from run to run, after checking that they are there.
func stable(t *testing.T, mfs []*dto.MetricFamily) []*dto.MetricFamily {
	t.Helper()
	var out []*dto.MetricFamily
	counters := 0
	for _, mf := range mfs {
		switch {
		case mf.GetName() == "caretaker_scrape_collector_duration_seconds":
			continue
		case mf.GetType() == dto.MetricType_COUNTER:
			counters++
			for _, m := range mf.GetMetric() {
				m.GetCounter().Value = new(float64)
			}
		}
		out = append(out, mf)
	}
	if len(out) == len(mfs) {
		t.Errorf("no caretaker_scrape_collector_duration_seconds in the output")
	}
	if counters != 8 {
		t.Errorf("got %d counter families, want the 8 link statistics", counters)
	}
	return out
}

// TestFDBPeers checks the FDB against the expected peers: a peer without
// flooding entry is missing, a destination nobody expects is unexpected,
// and a unicast entry neither floods to a peer nor is a stale destination
// when it points at one.
func TestFDBPeers(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay(t)
	ns.overlay(t, "vx-x", "br-x", 100)
	ns.Bridge(t, "fdb", "append", "00:00:00:00:00:00", "dev", "vx-x", "dst", "10.0.0.2")
	ns.Bridge(t, "fdb", "append", "00:00:00:00:00:00", "dev", "vx-x", "dst", "10.0.0.8")
	ns.Bridge(t, "fdb", "add", "02:00:00:00:01:03", "dev", "vx-x", "dst", "10.0.0.3")
	ns.Bridge(t, "fdb", "add", "02:00:00:00:01:09", "dev", "vx-x", "dst", "10.0.0.9")

	c := newCollector(t, Config{NetNS: ns.Path, Overlays: []overlayspec.Overlay{{
		Cluster: "lab", Device: "vx-x", Bridge: "br-x", VNI: 100,
		Peers: []overlayspec.Peer{peer("host-b", "10.0.0.2"), peer("host-c", "10.0.0.3")},
	}}})
	const want = `
# HELP caretaker_overlay_fdb_entries Number of FDB entries of a VXLAN device that have a remote destination (all-zeros flooding entries and unicast ones, one per destination).
# TYPE caretaker_overlay_fdb_entries gauge
caretaker_overlay_fdb_entries{device="vx-x"} 4
# HELP caretaker_overlay_fdb_missing_peers Number of an expected overlay's peers without an all-zeros FDB entry on its VXLAN device; all its peers when the device is missing.
# TYPE caretaker_overlay_fdb_missing_peers gauge
caretaker_overlay_fdb_missing_peers{device="vx-x"} 1
# HELP caretaker_overlay_fdb_unexpected_peers Number of distinct remote destinations in an expected overlay's VXLAN FDB that are neither expected peers nor the device's multicast group: stale configuration.
# TYPE caretaker_overlay_fdb_unexpected_peers gauge
caretaker_overlay_fdb_unexpected_peers{device="vx-x"} 2
# HELP caretaker_overlay_peer_fdb_present Whether an expected overlay's VXLAN device has an all-zeros FDB entry with the expected peer's VTEP as destination (1), so that broadcast, unknown-unicast and multicast traffic is flooded to it, or not (0).
# TYPE caretaker_overlay_peer_fdb_present gauge
caretaker_overlay_peer_fdb_present{cluster="lab",device="vx-x",peer="10.0.0.2",peer_host="host-b"} 1
caretaker_overlay_peer_fdb_present{cluster="lab",device="vx-x",peer="10.0.0.3",peer_host="host-c"} 0
`
	assertMetrics(t, c, want, "caretaker_overlay_fdb_entries", "caretaker_overlay_fdb_missing_peers",
		"caretaker_overlay_fdb_unexpected_peers", "caretaker_overlay_peer_fdb_present")
}

// TestMTU checks vxlan_mtu_ok against a parent of 1500 bytes: the kernel's
// own default of 1450 fits, one byte more does not.
func TestMTU(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay(t)
	ns.overlay(t, "vx-x", "br-x", 100)
	c := newCollector(t, Config{NetNS: ns.Path})
	tests := []struct {
		mtu  int
		want int
	}{
		{mtu: 1500, want: 0},
		{mtu: 1451, want: 0},
		{mtu: 1450, want: 1},
		{mtu: 1400, want: 1},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.mtu), func(t *testing.T) {
			ns.setMTUAboveParent(t, "vx-x", tt.mtu)
			want := fmt.Sprintf(`
# HELP caretaker_overlay_vxlan_mtu_bytes MTU of a VXLAN device, in bytes.
# TYPE caretaker_overlay_vxlan_mtu_bytes gauge
caretaker_overlay_vxlan_mtu_bytes{device="vx-x"} %d
# HELP caretaker_overlay_vxlan_mtu_ok Whether a VXLAN device's MTU is at most its parent's MTU minus the encapsulation overhead, 50 bytes over IPv4 and 70 over IPv6 (1), so that a full-size guest frame fits in one underlay packet, or not (0).
# TYPE caretaker_overlay_vxlan_mtu_ok gauge
caretaker_overlay_vxlan_mtu_ok{device="vx-x"} %d
# HELP caretaker_overlay_vxlan_parent_mtu_bytes MTU of a VXLAN device's parent underlay device, in bytes.
# TYPE caretaker_overlay_vxlan_parent_mtu_bytes gauge
caretaker_overlay_vxlan_parent_mtu_bytes{device="vx-x"} 1500
`, tt.mtu, tt.want)
			assertMetrics(t, c, want, "caretaker_overlay_vxlan_mtu_bytes", "caretaker_overlay_vxlan_mtu_ok",
				"caretaker_overlay_vxlan_parent_mtu_bytes")
		})
	}
}

// TestMissingDevice checks that an expected overlay whose device does not
// exist is reported as such, every peer missing, without failing the
// collector, and that a namespace that cannot be opened does fail it.
func TestMissingDevice(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay(t)
	overlays := []overlayspec.Overlay{{
		Cluster: "lab", Device: "vx-lab", Bridge: "br-lab", VNI: 100,
		Peers: []overlayspec.Peer{peer("host-b", "10.0.0.2")},
	}}

	t.Run("device missing", func(t *testing.T) {
		c := newCollector(t, Config{NetNS: ns.Path, Overlays: overlays})
		const want = `
# HELP caretaker_overlay_bridge_up Whether a bridge of an overlay is administratively and operationally up (1) or not, or missing (0). Reported for expected bridges and for every bridge with a VXLAN port.
# TYPE caretaker_overlay_bridge_up gauge
caretaker_overlay_bridge_up{bridge="br-lab"} 0
# HELP caretaker_overlay_fdb_missing_peers Number of an expected overlay's peers without an all-zeros FDB entry on its VXLAN device; all its peers when the device is missing.
# TYPE caretaker_overlay_fdb_missing_peers gauge
caretaker_overlay_fdb_missing_peers{device="vx-lab"} 1
# HELP caretaker_overlay_peer_fdb_present Whether an expected overlay's VXLAN device has an all-zeros FDB entry with the expected peer's VTEP as destination (1), so that broadcast, unknown-unicast and multicast traffic is flooded to it, or not (0).
# TYPE caretaker_overlay_peer_fdb_present gauge
caretaker_overlay_peer_fdb_present{cluster="lab",device="vx-lab",peer="10.0.0.2",peer_host="host-b"} 0
# HELP caretaker_overlay_vxlan_present Whether the VXLAN device of an expected overlay exists (1) or not (0).
# TYPE caretaker_overlay_vxlan_present gauge
caretaker_overlay_vxlan_present{cluster="lab",device="vx-lab"} 0
# HELP caretaker_scrape_collector_success Whether a collector succeeded (1) or failed or timed out (0) in this scrape.
# TYPE caretaker_scrape_collector_success gauge
caretaker_scrape_collector_success{collector="overlay"} 1
`
		assertMetrics(t, c, want, "caretaker_overlay_bridge_up", "caretaker_overlay_fdb_missing_peers",
			"caretaker_overlay_peer_fdb_present", "caretaker_overlay_vxlan_present", "caretaker_scrape_collector_success")
		for _, name := range []string{"caretaker_overlay_vxlan_info", "caretaker_overlay_vxlan_config_match", "caretaker_overlay_stale_peers"} {
			if n := testutil.CollectAndCount(set(t, c), name); n != 0 {
				t.Errorf("got %d %s series without any VXLAN device, want none", n, name)
			}
		}
	})

	t.Run("namespace missing", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "no-such-netns")
		c := newCollector(t, Config{NetNS: path, Overlays: overlays})
		ch := make(chan prometheus.Metric, 64)
		err := c.Update(t.Context(), ch)
		close(ch)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("Update = %v, want an error naming %s", err, path)
		}
		if len(ch) != 0 {
			t.Errorf("Update sent %d metrics without a namespace, want none", len(ch))
		}
	})
}

// TestBridgePortSTPState sets port states by hand on a guest port, which
// the kernel allows on a bridge without STP, and reads them back. Blocking
// is not among them: without STP the kernel moves a blocking port straight
// on to forwarding. TestParseBridgePort covers its value.
func TestBridgePortSTPState(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay(t)
	ns.overlay(t, "vx-x", "br-x", 100)
	ns.guestPort(t, "gst0", "br-x")
	c := newCollector(t, Config{NetNS: ns.Path})
	for state, name := range []string{"disabled", "listening", "learning", "forwarding"} {
		t.Run(name, func(t *testing.T) {
			ns.Bridge(t, "link", "set", "dev", "gst0", "state", strconv.Itoa(state))
			want := fmt.Sprintf(`
# HELP caretaker_overlay_bridge_port_stp_state STP state of a bridge port, the kernel's BR_STATE_*: 0 disabled, 1 listening, 2 learning, 3 forwarding, 4 blocking. A port forwards only in state 3.
# TYPE caretaker_overlay_bridge_port_stp_state gauge
caretaker_overlay_bridge_port_stp_state{bridge="br-x",port="gst0"} %d
caretaker_overlay_bridge_port_stp_state{bridge="br-x",port="vx-x"} 3
# HELP caretaker_overlay_bridge_ports Number of ports of a bridge of an overlay.
# TYPE caretaker_overlay_bridge_ports gauge
caretaker_overlay_bridge_ports{bridge="br-x"} 2
`, state)
			assertMetrics(t, c, want, "caretaker_overlay_bridge_port_stp_state", "caretaker_overlay_bridge_ports")
		})
	}
}

// TestSetOverlays checks that new expectations apply from the next scrape,
// and that invalid ones are left out while the valid ones are taken.
func TestSetOverlays(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay(t)
	ns.overlay(t, "vx-x", "br-x", 100)
	ns.Bridge(t, "fdb", "append", "00:00:00:00:00:00", "dev", "vx-x", "dst", "10.0.0.2")
	c := newCollector(t, Config{NetNS: ns.Path})
	names := []string{
		"caretaker_overlay_fdb_missing_peers",
		"caretaker_overlay_fdb_unexpected_peers",
		"caretaker_overlay_vxlan_config_match",
		"caretaker_overlay_vxlan_info",
		"caretaker_overlay_vxlan_present",
	}
	const info = `
# HELP caretaker_overlay_vxlan_info Identity of a VXLAN device found on the host; always 1. parent is the underlay device it is bound to, bridge the bridge it is a port of, cluster the guest cluster it is expected for (empty when not expected).
# TYPE caretaker_overlay_vxlan_info gauge
caretaker_overlay_vxlan_info{bridge="br-x",cluster=%q,device="vx-x",local="10.0.0.1",parent="ul0",port="4789",vni="100"} 1
`
	const expected = `
# HELP caretaker_overlay_fdb_missing_peers Number of an expected overlay's peers without an all-zeros FDB entry on its VXLAN device; all its peers when the device is missing.
# TYPE caretaker_overlay_fdb_missing_peers gauge
caretaker_overlay_fdb_missing_peers{device="vx-x"} %d
# HELP caretaker_overlay_fdb_unexpected_peers Number of distinct remote destinations in an expected overlay's VXLAN FDB that are neither expected peers nor the device's multicast group: stale configuration.
# TYPE caretaker_overlay_fdb_unexpected_peers gauge
caretaker_overlay_fdb_unexpected_peers{device="vx-x"} %d
# HELP caretaker_overlay_vxlan_config_match Whether an expected overlay's VXLAN device has the expected VNI and is a port of the expected bridge (1) or not (0).
# TYPE caretaker_overlay_vxlan_config_match gauge
caretaker_overlay_vxlan_config_match{cluster=%[3]q,device="vx-x"} %[4]d
# HELP caretaker_overlay_vxlan_present Whether the VXLAN device of an expected overlay exists (1) or not (0).
# TYPE caretaker_overlay_vxlan_present gauge
caretaker_overlay_vxlan_present{cluster=%[3]q,device="vx-x"} 1
`
	lab := overlayspec.Overlay{Cluster: "lab", Device: "vx-x", Bridge: "br-x", VNI: 100, Peers: []overlayspec.Peer{peer("host-b", "10.0.0.2")}}
	moved := overlayspec.Overlay{Cluster: "lab2", Device: "vx-x", Bridge: "br-x", VNI: 101, Peers: []overlayspec.Peer{peer("host-c", "10.0.0.3")}}
	invalid := overlayspec.Overlay{Cluster: "broken", Device: "vx-broken", Bridge: "br-broken", VNI: 1 << 24}

	tests := []struct {
		name     string
		overlays []overlayspec.Overlay
		want     string
	}{
		{name: "none expected", want: fmt.Sprintf(info, "")},
		{name: "lab expected", overlays: []overlayspec.Overlay{lab},
			want: fmt.Sprintf(info, "lab") + fmt.Sprintf(expected, 0, 0, "lab", 1)},
		{name: "other VNI and peer", overlays: []overlayspec.Overlay{moved},
			want: fmt.Sprintf(info, "lab2") + fmt.Sprintf(expected, 1, 1, "lab2", 0)},
		{name: "invalid left out", overlays: []overlayspec.Overlay{invalid, lab},
			want: fmt.Sprintf(info, "lab") + fmt.Sprintf(expected, 0, 0, "lab", 1)},
		{name: "none again", overlays: nil, want: fmt.Sprintf(info, "")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.SetOverlays(tt.overlays)
			assertMetrics(t, c, tt.want, names...)
		})
	}

	t.Run("caller's slices not kept", func(t *testing.T) {
		overlays := []overlayspec.Overlay{lab}
		overlays[0].Peers = []overlayspec.Peer{peer("host-b", "10.0.0.2")}
		c.SetOverlays(overlays)
		overlays[0].Device = "vx-other"
		overlays[0].Peers[0].Address = "10.0.0.7"
		assertMetrics(t, c, fmt.Sprintf(info, "lab")+fmt.Sprintf(expected, 0, 0, "lab", 1), names...)
	})
}

// TestNeighbors checks peer_neighbor_state and stale_peers on the parent's
// neighbour table. A STALE entry added by hand was last confirmed twice the
// base reachable time (2 × 30 s) before it was made, which separates the
// stale-after times below.
func TestNeighbors(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay(t)
	ns.overlay(t, "vx-x", "br-x", 100)
	ns.IP(t, "neigh", "add", "10.0.0.2", "lladdr", "02:00:00:00:00:02", "dev", "ul0", "nud", "permanent")
	ns.IP(t, "neigh", "add", "10.0.0.3", "lladdr", "02:00:00:00:00:03", "dev", "ul0", "nud", "stale")
	ns.IP(t, "neigh", "add", "10.0.0.4", "dev", "ul0", "nud", "failed")
	ns.IP(t, "neigh", "add", "10.0.0.5", "dev", "ul0", "nud", "incomplete")
	// On another device than the parent: not the underlay neighbour.
	ns.IP(t, "neigh", "add", "10.0.0.6", "lladdr", "02:00:00:00:00:06", "dev", "ul0p", "nud", "failed")
	overlays := []overlayspec.Overlay{{
		Cluster: "lab", Device: "vx-x", Bridge: "br-x", VNI: 100,
		Peers: []overlayspec.Peer{
			peer("host-b", "10.0.0.2"), peer("host-c", "10.0.0.3"), peer("host-d", "10.0.0.4"),
			peer("host-e", "10.0.0.5"), peer("host-f", "10.0.0.6"), peer("host-g", "10.0.0.7"),
		},
	}}
	const states = `
# HELP caretaker_overlay_peer_neighbor_state Kernel NUD state of the underlay neighbour entry for an expected peer's VTEP on the VXLAN device's parent: 0 none (no entry), 1 incomplete, 2 reachable, 4 stale, 8 delay, 16 probe, 32 failed, 64 noarp, 128 permanent.
# TYPE caretaker_overlay_peer_neighbor_state gauge
caretaker_overlay_peer_neighbor_state{device="vx-x",peer="10.0.0.2"} 128
caretaker_overlay_peer_neighbor_state{device="vx-x",peer="10.0.0.3"} 4
caretaker_overlay_peer_neighbor_state{device="vx-x",peer="10.0.0.4"} 32
caretaker_overlay_peer_neighbor_state{device="vx-x",peer="10.0.0.5"} 1
caretaker_overlay_peer_neighbor_state{device="vx-x",peer="10.0.0.6"} 0
caretaker_overlay_peer_neighbor_state{device="vx-x",peer="10.0.0.7"} 0
# HELP caretaker_overlay_stale_peers Number of an expected overlay's peers whose VTEP this host cannot reach at L2 on the underlay: the neighbour entry is failed or incomplete, or, if configured, stale, delay or probe and unconfirmed for longer than the configured stale-after time. Peers without an entry are not counted.
# TYPE caretaker_overlay_stale_peers gauge
caretaker_overlay_stale_peers{device="vx-x"} %d
`
	tests := []struct {
		staleAfter time.Duration
		want       int
	}{
		{staleAfter: 0, want: 2},                // failed and incomplete
		{staleAfter: time.Hour, want: 2},        // the stale entry is younger
		{staleAfter: 30 * time.Second, want: 3}, // and older than this
	}
	for _, tt := range tests {
		t.Run(tt.staleAfter.String(), func(t *testing.T) {
			c := newCollector(t, Config{NetNS: ns.Path, Overlays: overlays, StaleAfter: tt.staleAfter})
			assertMetrics(t, c, fmt.Sprintf(states, tt.want),
				"caretaker_overlay_peer_neighbor_state", "caretaker_overlay_stale_peers")
		})
	}
}

// TestVXLANUp checks that a VXLAN device, UNKNOWN with carrier all its
// life, is judged down with its parent.
func TestVXLANUp(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay(t)
	ns.overlay(t, "vx-x", "br-x", 100)
	ns.AwaitOperUp(t, "ul0")
	c := newCollector(t, Config{NetNS: ns.Path})
	const want = `
# HELP caretaker_overlay_vxlan_up Whether a VXLAN device can carry traffic (1) or not (0): it is administratively up, its operational state is up or unknown with carrier, and so is its parent underlay device, whose state the kernel does not pass on to the VXLAN device.
# TYPE caretaker_overlay_vxlan_up gauge
caretaker_overlay_vxlan_up{device="vx-x"} %d
`
	steps := []struct {
		name string
		args []string
		want int
	}{
		{name: "up", want: 1},
		{name: "parent down", args: []string{"link", "set", "ul0", "down"}, want: 0},
		{name: "parent up again", args: []string{"link", "set", "ul0", "up"}, want: 1},
		{name: "device down", args: []string{"link", "set", "vx-x", "down"}, want: 0},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.args != nil {
				ns.IP(t, s.args...)
			}
			if s.name == "parent up again" {
				ns.AwaitOperUp(t, "ul0")
			}
			assertMetrics(t, c, fmt.Sprintf(want, s.want), "caretaker_overlay_vxlan_up")
		})
	}
}

// TestConcurrentSetOverlays runs scrapes while the expectations change;
// run with -race.
func TestConcurrentSetOverlays(t *testing.T) {
	ns := newTestNS(t)
	ns.underlay(t)
	ns.overlay(t, "vx-x", "br-x", 100)
	c := newCollector(t, Config{NetNS: ns.Path})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 10 {
				ch := make(chan prometheus.Metric)
				go func() {
					for range ch {
					}
				}()
				if err := c.Update(t.Context(), ch); err != nil {
					t.Errorf("Update: %v", err)
				}
				close(ch)
			}
		})
	}
	for i := range 50 {
		overlays := labOverlays()
		overlays[0].VNI = i
		c.SetOverlays(overlays)
	}
	wg.Wait()
}

func TestNewInvalid(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string
	}{
		{
			name: "negative stale after",
			cfg:  Config{StaleAfter: -time.Second},
			want: []string{"stale after -1s: must not be negative"},
		},
		{
			name: "fields",
			cfg: Config{Overlays: []overlayspec.Overlay{{
				Device: "a-very-long-device-name", Bridge: "br/x", VNI: -1,
				Peers: []overlayspec.Peer{{Address: "10.0.0.2"}, {Host: "b"}, {Host: "c", Address: "0.0.0.0"}},
			}}},
			want: []string{
				`overlay 0 (cluster "")`,
				`device: "a-very-long-device-name": longer than 15 bytes`,
				`bridge: "br/x": not a valid interface name`,
				"cluster: empty",
				"vni: -1: out of range 0-16777215",
				"peers[0].host: empty",
				`peers[1].address: empty`,
				`peers[2].address: "0.0.0.0" is not a unicast IP address`,
			},
		},
		{
			name: "duplicates",
			cfg: Config{Overlays: []overlayspec.Overlay{
				{Cluster: "a", Device: "vx-a", Bridge: "br-a"},
				{Cluster: "a2", Device: "vx-a", Bridge: "br-a"},
				{Cluster: "p", Device: "vx-p", Bridge: "br-p", Peers: []overlayspec.Peer{peer("b", "10.0.0.2"), peer("c", "::ffff:10.0.0.2")}},
			}},
			want: []string{
				`overlay 1 (cluster "a2"): device: "vx-a" is also the device of overlay 0`,
				`overlay 2 (cluster "p"): peers[1].address: 10.0.0.2: listed twice`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, testLogger(t))
			if err == nil {
				t.Fatal("New accepted the configuration")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if len(tt.cfg.Overlays) > 0 {
				if verr := ValidateOverlays(tt.cfg.Overlays); verr == nil {
					t.Errorf("ValidateOverlays accepted what New refused")
				}
			}
		})
	}
	if err := ValidateOverlays(labOverlays()); err != nil {
		t.Errorf("ValidateOverlays(labOverlays()) = %v", err)
	}
}

// BenchmarkUpdate scrapes a namespace with 20 overlays, each a bridge and a
// VXLAN device with 50 FDB entries: 40 flooding entries, one per peer, and
// 10 unicast ones.
func BenchmarkUpdate(b *testing.B) {
	const (
		devices = 20
		peers   = 40
		unicast = 10
	)
	ns := newTestNS(b)
	ns.underlay(b)
	h := ns.Handle(b)
	ul0, err := h.LinkByName("ul0")
	if err != nil {
		b.Fatal(err)
	}
	var overlays []overlayspec.Overlay
	for i := range devices {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("br-%d", i)}}
		if err := h.LinkAdd(br); err != nil {
			b.Fatalf("add %s: %v", br.Name, err)
		}
		vx := &netlink.Vxlan{
			LinkAttrs:    netlink.LinkAttrs{Name: fmt.Sprintf("vx-%d", i), MasterIndex: br.Index},
			VxlanId:      1000 + i,
			VtepDevIndex: ul0.Attrs().Index,
			SrcAddr:      net.ParseIP("10.0.0.1"),
			Port:         4789,
		}
		if err := h.LinkAdd(vx); err != nil {
			b.Fatalf("add %s: %v", vx.Name, err)
		}
		o := overlayspec.Overlay{Cluster: fmt.Sprintf("c%d", i), Device: vx.Name, Bridge: br.Name, VNI: vx.VxlanId}
		for j := range peers + unicast {
			dst := net.IPv4(10, 1, byte(j), 1)
			mac := net.HardwareAddr{0, 0, 0, 0, 0, 0}
			if j >= peers {
				dst = net.IPv4(10, 1, byte(j-peers), 1)
				mac = net.HardwareAddr{2, 0, 0, 0, byte(i), byte(j)}
			} else {
				o.Peers = append(o.Peers, overlayspec.Peer{Host: fmt.Sprintf("host-%d", j), Address: dst.String()})
			}
			err := h.NeighAppend(&netlink.Neigh{
				LinkIndex: vx.Index, Family: unix.AF_BRIDGE,
				State: netlink.NUD_PERMANENT | netlink.NUD_NOARP, Flags: netlink.NTF_SELF,
				IP: dst, HardwareAddr: mac,
			})
			if err != nil {
				b.Fatalf("add FDB entry %s dst %s to %s: %v", mac, dst, vx.Name, err)
			}
		}
		overlays = append(overlays, o)
	}
	c := newCollector(b, Config{NetNS: ns.Path, Overlays: overlays})

	ch := make(chan prometheus.Metric, 1024)
	drained := make(chan int)
	go func() {
		n := 0
		for range ch {
			n++
		}
		drained <- n
	}()
	ctx := context.Background()
	for b.Loop() {
		if err := c.Update(ctx, ch); err != nil {
			b.Fatal(err)
		}
	}
	close(ch)
	if n := <-drained; n == 0 {
		b.Fatal("Update sent nothing")
	}
}

// set wraps c in a collectors.Set, as the agent runs it.
func set(t *testing.T, c *Collector) *collectors.Set {
	return collectors.NewSet(testLogger(t), time.Minute, map[string]collectors.Collector{"overlay": c})
}

func assertMetrics(t *testing.T, c *Collector, want string, names ...string) {
	t.Helper()
	if err := testutil.CollectAndCompare(set(t, c), strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
}
