// Package overlay collects the state of the host's VXLAN overlays: every
// VXLAN device and the bridge it is a port of, the device's forwarding
// database (which remote VTEPs it floods to), and whether the host can reach
// those VTEPs on the underlay. It compares what it finds with the overlays
// the host is expected to carry, so that an alert can say "host A cannot
// reach guest cluster X's overlay on host B".
//
// Everything is read over rtnetlink, in the network namespace given by the
// Config, through sockets opened anew for each scrape: a namespace that is
// deleted and created again under the same path is followed.
package overlay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"caretaker/internal/overlayspec"
)

const namespace = "caretaker_overlay"

// Config configures a Collector.
type Config struct {
	// Overlays is the expected state: of each overlay, the cluster,
	// device, bridge, VNI and peers (host and address) are checked.
	// Devices found on the host but not listed here are still reported,
	// with an empty cluster label.
	Overlays []overlayspec.Overlay
	// NetNS is the network namespace to read: "" for the agent's own,
	// else the path of a namespace file such as /var/run/netns/x.
	NetNS string
	// StaleAfter, when positive, also counts as stale a peer whose
	// underlay neighbour entry is STALE, DELAY or PROBE and was last
	// confirmed more than StaleAfter ago (see caretaker_overlay_stale_peers).
	// Zero counts only FAILED and INCOMPLETE entries.
	StaleAfter time.Duration
}

// Collector is the overlay collector. It implements collectors.Collector.
type Collector struct {
	logger     *slog.Logger
	netNS      string
	staleAfter time.Duration
	// expected is replaced as a whole by SetOverlays, so that a scrape
	// sees either the old or the new expectations, never a mix.
	expected atomic.Pointer[expectation]

	vxlanInfo         *prometheus.Desc
	vxlanPresent      *prometheus.Desc
	vxlanConfigMatch  *prometheus.Desc
	vxlanUp           *prometheus.Desc
	vxlanMTU          *prometheus.Desc
	vxlanParentMTU    *prometheus.Desc
	vxlanMTUOK        *prometheus.Desc
	rxBytes           *prometheus.Desc
	txBytes           *prometheus.Desc
	rxPackets         *prometheus.Desc
	txPackets         *prometheus.Desc
	rxErrors          *prometheus.Desc
	txErrors          *prometheus.Desc
	rxDropped         *prometheus.Desc
	txDropped         *prometheus.Desc
	bridgeUp          *prometheus.Desc
	bridgePorts       *prometheus.Desc
	bridgePortInfo    *prometheus.Desc
	bridgePortSTP     *prometheus.Desc
	peerFDBPresent    *prometheus.Desc
	fdbMissingPeers   *prometheus.Desc
	fdbUnexpected     *prometheus.Desc
	fdbEntries        *prometheus.Desc
	peerNeighborState *prometheus.Desc
	stalePeers        *prometheus.Desc
}

// New returns an overlay collector expecting cfg.Overlays. It fails when
// the configuration is invalid (see ValidateOverlays); it does not open the
// namespace, which is read at each scrape.
func New(cfg Config, logger *slog.Logger) (*Collector, error) {
	if cfg.StaleAfter < 0 {
		return nil, fmt.Errorf("configure overlay collector: stale after %s: must not be negative", cfg.StaleAfter)
	}
	exp, problems := newExpectation(cfg.Overlays)
	if len(problems) > 0 {
		return nil, fmt.Errorf("configure overlay collector: %w", errors.Join(problems...))
	}

	device := []string{"device"}
	bridge := []string{"bridge"}
	port := []string{"bridge", "port"}
	desc := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	c := &Collector{
		logger:     logger,
		netNS:      cfg.NetNS,
		staleAfter: cfg.StaleAfter,
		vxlanInfo: desc("vxlan_info",
			"Identity of a VXLAN device found on the host; always 1. parent is the underlay device it is bound to, bridge the bridge it is a port of, cluster the guest cluster it is expected for (empty when not expected).",
			[]string{"device", "vni", "local", "port", "parent", "bridge", "cluster"}),
		vxlanPresent: desc("vxlan_present",
			"Whether the VXLAN device of an expected overlay exists (1) or not (0).",
			[]string{"device", "cluster"}),
		vxlanConfigMatch: desc("vxlan_config_match",
			"Whether an expected overlay's VXLAN device has the expected VNI and is a port of the expected bridge (1) or not (0).",
			[]string{"device", "cluster"}),
		vxlanUp: desc("vxlan_up",
			"Whether a VXLAN device can carry traffic (1) or not (0): it is administratively up, its operational state is up or unknown with carrier, and so is its parent underlay device, whose state the kernel does not pass on to the VXLAN device.",
			device),
		vxlanMTU: desc("vxlan_mtu_bytes",
			"MTU of a VXLAN device, in bytes.", device),
		vxlanParentMTU: desc("vxlan_parent_mtu_bytes",
			"MTU of a VXLAN device's parent underlay device, in bytes.", device),
		vxlanMTUOK: desc("vxlan_mtu_ok",
			"Whether a VXLAN device's MTU is at most its parent's MTU minus the encapsulation overhead, 50 bytes over IPv4 and 70 over IPv6 (1), so that a full-size guest frame fits in one underlay packet, or not (0).",
			device),
		rxBytes: desc("vxlan_receive_bytes_total",
			"Bytes received by a VXLAN device.", device),
		txBytes: desc("vxlan_transmit_bytes_total",
			"Bytes transmitted by a VXLAN device.", device),
		rxPackets: desc("vxlan_receive_packets_total",
			"Packets received by a VXLAN device.", device),
		txPackets: desc("vxlan_transmit_packets_total",
			"Packets transmitted by a VXLAN device.", device),
		rxErrors: desc("vxlan_receive_errors_total",
			"Receive errors of a VXLAN device.", device),
		txErrors: desc("vxlan_transmit_errors_total",
			"Transmit errors of a VXLAN device, among them packets to a remote VTEP the underlay has no route or neighbour for.", device),
		rxDropped: desc("vxlan_receive_dropped_total",
			"Packets dropped on receive by a VXLAN device.", device),
		txDropped: desc("vxlan_transmit_dropped_total",
			"Packets dropped on transmit by a VXLAN device.", device),
		bridgeUp: desc("bridge_up",
			"Whether a bridge of an overlay is administratively and operationally up (1) or not, or missing (0). Reported for expected bridges and for every bridge with a VXLAN port.",
			bridge),
		bridgePorts: desc("bridge_ports",
			"Number of ports of a bridge of an overlay.", bridge),
		bridgePortInfo: desc("bridge_port_info",
			"A port of a bridge of an overlay; always 1.", port),
		bridgePortSTP: desc("bridge_port_stp_state",
			"STP state of a bridge port, the kernel's BR_STATE_*: 0 disabled, 1 listening, 2 learning, 3 forwarding, 4 blocking. A port forwards only in state 3.",
			port),
		peerFDBPresent: desc("peer_fdb_present",
			"Whether an expected overlay's VXLAN device has an all-zeros FDB entry with the expected peer's VTEP as destination (1), so that broadcast, unknown-unicast and multicast traffic is flooded to it, or not (0).",
			[]string{"device", "cluster", "peer_host", "peer"}),
		fdbMissingPeers: desc("fdb_missing_peers",
			"Number of an expected overlay's peers without an all-zeros FDB entry on its VXLAN device; all its peers when the device is missing.",
			device),
		fdbUnexpected: desc("fdb_unexpected_peers",
			"Number of distinct remote destinations in an expected overlay's VXLAN FDB that are neither expected peers nor the device's multicast group: stale configuration.",
			device),
		fdbEntries: desc("fdb_entries",
			"Number of FDB entries of a VXLAN device that have a remote destination (all-zeros flooding entries and unicast ones, one per destination).",
			device),
		peerNeighborState: desc("peer_neighbor_state",
			"Kernel NUD state of the underlay neighbour entry for an expected peer's VTEP on the VXLAN device's parent: 0 none (no entry), 1 incomplete, 2 reachable, 4 stale, 8 delay, 16 probe, 32 failed, 64 noarp, 128 permanent.",
			[]string{"device", "peer"}),
		stalePeers: desc("stale_peers",
			"Number of an expected overlay's peers whose VTEP this host cannot reach at L2 on the underlay: the neighbour entry is failed or incomplete, or, if configured, stale, delay or probe and unconfirmed for longer than the configured stale-after time. Peers without an entry are not counted.",
			device),
	}
	c.expected.Store(exp)
	return c, nil
}

// SetOverlays replaces the expected overlays; the next scrape uses them. It
// is safe for concurrent use. Invalid overlays (see ValidateOverlays) are
// logged and left out, the others are taken.
func (c *Collector) SetOverlays(overlays []overlayspec.Overlay) {
	exp, problems := newExpectation(overlays)
	for _, p := range problems {
		c.logger.Warn("ignoring invalid expected overlay", "err", p)
	}
	c.expected.Store(exp)
}

// ValidateOverlays reports every problem in overlays, as
// overlayspec.ValidateSet does: the collector expects what it accepts.
func ValidateOverlays(overlays []overlayspec.Overlay) error {
	return overlayspec.ValidateSet(overlays)
}

// expectation is what the collector checks the host against, derived
// from the valid expected overlays.
type expectation struct {
	overlays []*expected
	byDevice map[string]*expected
}

// expected is what the collector checks of one overlay.
type expected struct {
	Cluster, Device, Bridge string
	VNI                     int
	peers                   []expectedPeer
}

type expectedPeer struct {
	host string
	addr netip.Addr
}

// newExpectation derives the expectation from overlays, leaving out each
// overlay with a problem (see overlayspec.SetProblems), which it returns.
func newExpectation(overlays []overlayspec.Overlay) (*expectation, []error) {
	exp := &expectation{byDevice: make(map[string]*expected, len(overlays))}
	bad := make(map[int][]error)
	for _, p := range overlayspec.SetProblems(overlays) {
		bad[p.Index] = append(bad[p.Index], p.Problem)
	}
	var problems []error
	for i, o := range overlays {
		if errs := bad[i]; len(errs) > 0 {
			problems = append(problems, fmt.Errorf("overlay %d (cluster %q): %w", i, o.Cluster, errors.Join(errs...)))
			continue
		}
		e := &expected{Cluster: o.Cluster, Device: o.Device, Bridge: o.Bridge, VNI: o.VNI}
		for _, p := range o.Peers {
			addr, _ := overlayspec.ParseAddr(p.Address) // valid: checked above
			e.peers = append(e.peers, expectedPeer{host: p.Host, addr: addr})
		}
		exp.overlays = append(exp.overlays, e)
		exp.byDevice[o.Device] = e
	}
	return exp, problems
}

// Update implements collectors.Collector. It fails when the namespace or
// its links cannot be read; when only the FDB, the neighbour table or the
// bridge ports cannot be read, it sends everything else, leaves out what
// depends on the missing part, and returns the error.
func (c *Collector) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	exp := c.expected.Load()
	s, err := read(ctx, c.netNS, c.logger)
	if s == nil {
		return err
	}
	c.emitVXLANs(ch, exp, s)
	c.emitExpected(ch, exp, s)
	c.emitBridges(ch, exp, s)
	return err
}

// emitVXLANs reports every VXLAN device found, expected or not.
func (c *Collector) emitVXLANs(ch chan<- prometheus.Metric, exp *expectation, s *state) {
	for _, vx := range s.vxlans {
		a := vx.Attrs()
		gauge := func(desc *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, a.Name)
		}
		counter := func(desc *prometheus.Desc, v uint64) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), a.Name)
		}

		var cluster, local, parentName, bridgeName string
		if e := exp.byDevice[a.Name]; e != nil {
			cluster = e.Cluster
		}
		if vx.SrcAddr != nil {
			local = vx.SrcAddr.String()
		}
		parent := s.parent(vx)
		if parent != nil {
			parentName = parent.Attrs().Name
		}
		if br := s.bridgeOf(vx); br != nil {
			bridgeName = br.Attrs().Name
		}
		ch <- prometheus.MustNewConstMetric(c.vxlanInfo, prometheus.GaugeValue, 1,
			a.Name, strconv.Itoa(vx.VxlanId), local, strconv.Itoa(vx.Port), parentName, bridgeName, cluster)

		gauge(c.vxlanUp, boolFloat(vxlanUp(vx, parent)))
		gauge(c.vxlanMTU, float64(a.MTU))
		if parent != nil {
			gauge(c.vxlanParentMTU, float64(parent.Attrs().MTU))
			gauge(c.vxlanMTUOK, boolFloat(mtuOK(vx, parent.Attrs().MTU)))
		}
		if st := a.Statistics; st != nil {
			counter(c.rxBytes, st.RxBytes)
			counter(c.txBytes, st.TxBytes)
			counter(c.rxPackets, st.RxPackets)
			counter(c.txPackets, st.TxPackets)
			counter(c.rxErrors, st.RxErrors)
			counter(c.txErrors, st.TxErrors)
			counter(c.rxDropped, st.RxDropped)
			counter(c.txDropped, st.TxDropped)
		}
		if s.fdb != nil {
			gauge(c.fdbEntries, float64(len(s.fdb[a.Index])))
		}
	}
}

// emitExpected reports, for every expected overlay, whether its device is
// there and whether it reaches the expected peers.
func (c *Collector) emitExpected(ch chan<- prometheus.Metric, exp *expectation, s *state) {
	for _, e := range exp.overlays {
		gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
		}
		vx := s.vxlanByName[e.Device]
		gauge(c.vxlanPresent, boolFloat(vx != nil), e.Device, e.Cluster)
		if vx == nil {
			// No device, no flooding to anyone: every peer is missing.
			for _, p := range e.peers {
				gauge(c.peerFDBPresent, 0, e.Device, e.Cluster, p.host, p.addr.String())
			}
			gauge(c.fdbMissingPeers, float64(len(e.peers)), e.Device)
			continue
		}

		br := s.bridgeOf(vx)
		match := vx.VxlanId == e.VNI && br != nil && br.Attrs().Name == e.Bridge
		gauge(c.vxlanConfigMatch, boolFloat(match), e.Device, e.Cluster)

		if s.fdb != nil {
			check := checkFDB(s.fdb[vx.Index], e.peers, vx.Group)
			for _, p := range e.peers {
				gauge(c.peerFDBPresent, boolFloat(check.flooded[p.addr]), e.Device, e.Cluster, p.host, p.addr.String())
			}
			gauge(c.fdbMissingPeers, float64(check.missing), e.Device)
			gauge(c.fdbUnexpected, float64(check.unexpected), e.Device)
		}

		// Only the underlay entry of each peer's VTEP, on the parent,
		// says whether the overlay can reach it: entries on the VXLAN
		// device or its bridge are the guests', where the host usually
		// has no address of its own.
		if s.neighbors != nil {
			parentIndex := 0
			if p := s.parent(vx); p != nil {
				parentIndex = p.Attrs().Index
			}
			stale := 0
			for _, p := range e.peers {
				n := s.neighbors.lookup(parentIndex, p.addr)
				st := netlink.NUD_NONE
				if n != nil {
					st = n.State
				}
				gauge(c.peerNeighborState, float64(st), e.Device, p.addr.String())
				if peerUnreachable(n, c.staleAfter) {
					stale++
				}
			}
			gauge(c.stalePeers, float64(stale), e.Device)
		}
	}
}

// emitBridges reports the expected bridges and every bridge with a VXLAN
// port, with their ports.
func (c *Collector) emitBridges(ch chan<- prometheus.Metric, exp *expectation, s *state) {
	names := make(map[string]bool)
	for _, e := range exp.overlays {
		names[e.Bridge] = true
	}
	for _, vx := range s.vxlans {
		if br := s.bridgeOf(vx); br != nil {
			names[br.Attrs().Name] = true
		}
	}
	for name := range names {
		br := s.linkByName[name]
		if br == nil || !isBridge(br) {
			ch <- prometheus.MustNewConstMetric(c.bridgeUp, prometheus.GaugeValue, 0, name)
			ch <- prometheus.MustNewConstMetric(c.bridgePorts, prometheus.GaugeValue, 0, name)
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.bridgeUp, prometheus.GaugeValue, boolFloat(usable(br)), name)
		ports := s.ports[br.Attrs().Index]
		ch <- prometheus.MustNewConstMetric(c.bridgePorts, prometheus.GaugeValue, float64(len(ports)), name)
		for _, p := range ports {
			port := p.Attrs()
			ch <- prometheus.MustNewConstMetric(c.bridgePortInfo, prometheus.GaugeValue, 1, name, port.Name)
			if st, ok := s.stpStates[port.Index]; ok {
				ch <- prometheus.MustNewConstMetric(c.bridgePortSTP, prometheus.GaugeValue, float64(st), name, port.Name)
			}
		}
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
