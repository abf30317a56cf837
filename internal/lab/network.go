package lab

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"caretaker/internal/nsrun"
	"caretaker/internal/overlaynet"
	"caretaker/internal/overlayspec"
)

// The lab's network, with QEMU guests as root. Every host is a network
// namespace, as a real host is a machine of its own:
//
//	root namespace                          host-a's namespace
//	┌────────────────────────────┐           ┌───────────────────────────────────────────┐
//	│ ck<id>mg  management       │── veth ──▶│ mgmt     10.198.X.1/24: the agent listens │
//	│           10.198.X.254/24  │           │                                            │
//	│ ck<id>ul  underlay bridge  │── veth ──▶│ underlay 10.199.X.1/24: VXLAN sends on it │
//	│                            │           │          (the host's VTEP)                 │
//	│ ck<id>a<n>  guest bridge   │── veth ──▶│ br-<cluster> ── vx-<cluster> (VNI, peers)  │
//	│   ▲ the guests' taps       │           │ 10.77.C.20H/24 the lab's probe address     │
//	└────────────────────────────┘           └───────────────────────────────────────────┘
//
// libvirt plugs a guest's tap into a bridge of the root namespace: each
// host has its own bridge there per guest cluster, joined to that host's
// br-<cluster> by a veth pair, so that a guest's frames reach a guest of
// another host only through the VXLAN devices, over the underlay. The
// server in the root namespace reaches the agents through the management
// bridge's address. Management and underlay are apart, as on many real
// fleets: an underlay link down cuts the overlays, not the agent.

// Guest addresses: every cluster's guests are in guestNet (a /16, so a
// guest takes an address of another cluster for on-link and asks for it
// by ARP on its own overlay, where nobody answers); cluster number c has
// 10.77.c.0/24, in which the lab's probe address on host h (from 0) is
// .200+h, on that host's br-<cluster>: the game day asks the guests from it.
var guestNet = netip.MustParsePrefix("10.77.0.0/16")

// underlayName is the underlay's name in every host's namespace, the
// provisioner's provisioner.underlay; mgmtName the management network's.
const (
	underlayName = "underlay"
	mgmtName     = "mgmt"
)

// labNet is the lab's network: the namespaces, bridges and veth pairs.
type labNet struct {
	id       string // from the guest prefix: the root links' names
	underlay netip.Prefix
	mgmt     netip.Prefix
	hosts    []*hostNet
	logger   *slog.Logger

	mu       sync.Mutex
	clusters []string          // index+1 is a cluster's number in names
	bridges  map[string]string // host/cluster → guest bridge in the root namespace
}

// hostNet is one host's part of the network.
type hostNet struct {
	name string     // the host's
	ns   string     // its namespace's name
	path string     // /var/run/netns/<ns>
	addr netip.Addr // on the underlay: the VTEP
	mgmt netip.Addr // on the management network: the agent's
	idx  int
}

// netID is the lab's 6 hex digits in its root links' names, from the guest
// prefix: labs of different prefixes never touch each other's links.
func netID(prefix string) string {
	sum := sha256.Sum256([]byte(prefix))
	return fmt.Sprintf("%x", sum[:3])
}

func rootLinkPrefix(id string) string { return "ck" + id }

// setupNetwork makes the hosts' namespaces and the underlay, after removing
// what an earlier lab of the same prefix left.
func setupNetwork(ctx context.Context, prefix string, hosts []*host, logger *slog.Logger) (*labNet, error) {
	n := &labNet{id: netID(prefix), logger: logger, bridges: map[string]string{}}
	for i, h := range hosts {
		ns := netnsName(prefix, h.name)
		n.hosts = append(n.hosts, &hostNet{name: h.name, ns: ns, path: filepath.Join("/var/run/netns", ns), idx: i})
	}
	if err := n.teardown(ctx); err != nil {
		return nil, fmt.Errorf("remove what an earlier lab left: %w", err)
	}
	x, err := freeSubnet()
	if err != nil {
		return n, err
	}
	n.mgmt = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 198, x, 0}), 24)
	n.underlay = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 199, x, 0}), 24)
	nth := func(p netip.Prefix, i int) netip.Addr {
		b := p.Addr().As4()
		return netip.AddrFrom4([4]byte{b[0], b[1], b[2], byte(i)})
	}
	// The root namespace has .254 of the management network, to reach
	// the agents; none of the underlay, which is the hosts' alone.
	mg, err := rootBridge(rootLinkPrefix(n.id)+"mg", netip.PrefixFrom(nth(n.mgmt, 254), 24))
	if err != nil {
		return n, err
	}
	ul, err := rootBridge(rootLinkPrefix(n.id)+"ul", netip.Prefix{})
	if err != nil {
		return n, err
	}
	for _, hn := range n.hosts {
		hn.addr, hn.mgmt = nth(n.underlay, hn.idx+1), nth(n.mgmt, hn.idx+1)
		if err := runCommand(ctx, "ip", "netns", "add", hn.ns); err != nil {
			return n, err
		}
		h, err := overlaynet.Open(ctx, hn.path)
		if err != nil {
			return n, err
		}
		err = plugHost(h, hn, []hostLink{
			{n.mgmtLink(hn), mgmtName, mg, netip.PrefixFrom(hn.mgmt, 24)},
			{n.underlayLink(hn), underlayName, ul, netip.PrefixFrom(hn.addr, 24)},
		})
		h.Close()
		if err != nil {
			return n, fmt.Errorf("network of %s: %w", hn.name, err)
		}
	}
	return n, nil
}

// underlayLink and mgmtLink are a host's links to the underlay and the
// management network, in the root namespace: the "switch ports".
func (n *labNet) underlayLink(hn *hostNet) string {
	return fmt.Sprintf("%s%cu", rootLinkPrefix(n.id), 'a'+hn.idx)
}

func (n *labNet) mgmtLink(hn *hostNet) string {
	return fmt.Sprintf("%s%cm", rootLinkPrefix(n.id), 'a'+hn.idx)
}

// rootBridge makes a bridge in the root namespace, up, with addr if valid.
func rootBridge(name string, addr netip.Prefix) (netlink.Link, error) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("create bridge %s: %w", name, err)
	}
	if addr.IsValid() {
		if err := addAddr(nil, name, addr); err != nil {
			return nil, err
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("bring up %s: %w", name, err)
	}
	return br, nil
}

// hostLink is one of a host's links: outer in the root namespace on
// bridge, inner in the host's with addr.
type hostLink struct {
	outer, inner string
	bridge       netlink.Link
	addr         netip.Prefix
}

// plugHost brings up a host's lo and its links.
func plugHost(h *netlink.Handle, hn *hostNet, links []hostLink) error {
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	for _, l := range links {
		if err := vethInto(l.outer, l.inner, l.bridge, hn.path); err != nil {
			return err
		}
		if err := addAddr(h, l.inner, l.addr); err != nil {
			return err
		}
		in, err := h.LinkByName(l.inner)
		if err == nil {
			err = h.LinkSetUp(in)
		}
		if err != nil {
			return fmt.Errorf("bring up %s: %w", l.inner, err)
		}
	}
	return nil
}

// vethInto makes a veth pair: outer in the root namespace, a port of
// master and up; inner moved into the namespace at nsPath (down, for the
// caller to set up).
func vethInto(outer, inner string, master netlink.Link, nsPath string) error {
	tmp := outer + "p" // the inner end's name until it is in the namespace
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: outer}, PeerName: tmp}); err != nil {
		return fmt.Errorf("create veth %s: %w", outer, err)
	}
	o, err := netlink.LinkByName(outer)
	if err != nil {
		return fmt.Errorf("look up %s: %w", outer, err)
	}
	if err := netlink.LinkSetMaster(o, master); err != nil {
		return fmt.Errorf("add %s to %s: %w", outer, master.Attrs().Name, err)
	}
	if err := netlink.LinkSetUp(o); err != nil {
		return fmt.Errorf("bring up %s: %w", outer, err)
	}
	p, err := netlink.LinkByName(tmp)
	if err != nil {
		return fmt.Errorf("look up %s: %w", tmp, err)
	}
	fd, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", nsPath, err)
	}
	defer fd.Close()
	if err := netlink.LinkSetNsFd(p, int(fd)); err != nil {
		return fmt.Errorf("move %s into %s: %w", tmp, nsPath, err)
	}
	h, err := netlink.NewHandleAt(fd)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", nsPath, err)
	}
	defer h.Close()
	in, err := h.LinkByName(tmp)
	if err == nil {
		err = h.LinkSetName(in, inner)
	}
	if err != nil {
		return fmt.Errorf("name %s %s in %s: %w", tmp, inner, nsPath, err)
	}
	return nil
}

// addAddr adds an address to a link (h nil: the root namespace's).
func addAddr(h *netlink.Handle, link string, p netip.Prefix) error {
	if h == nil {
		h = &netlink.Handle{}
	}
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("look up %s: %w", link, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
	if err := h.AddrAdd(l, a); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("add %s to %s: %w", p, link, err)
	}
	return nil
}

// freeSubnet picks X for the lab's 10.198.X.0/24 (management) and
// 10.199.X.0/24 (underlay): the first X whose management subnet nothing in
// the root namespace has (another lab, say).
func freeSubnet() (byte, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	for i := 0; errors.Is(err, netlink.ErrDumpInterrupted) && i < 5; i++ {
		addrs, err = netlink.AddrList(nil, netlink.FAMILY_V4) // addresses changed during the dump
	}
	if err != nil {
		return 0, fmt.Errorf("list addresses: %w", err)
	}
	for x := 1; x < 255; x++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 198, byte(x), 0}), 24)
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool {
			ip, ok := netip.AddrFromSlice(a.IP.To4())
			return ok && p.Contains(ip)
		}) {
			return byte(x), nil
		}
	}
	return 0, errors.New("no free 10.198.X.0/24 for the lab's management network")
}

// host returns a host's part of the network.
func (n *labNet) host(name string) *hostNet {
	for _, hn := range n.hosts {
		if hn.name == name {
			return hn
		}
	}
	return nil
}

// clusterNumber is a cluster's number in the lab's link names and guest
// addresses, given on first use; the lab's own clusters come first.
func (n *labNet) clusterNumber(cluster string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.number(cluster)
}

// number is clusterNumber with n.mu held.
func (n *labNet) number(cluster string) int {
	for i, c := range n.clusters {
		if c == cluster {
			return i + 1
		}
	}
	n.clusters = append(n.clusters, cluster)
	return len(n.clusters)
}

// guestBridge returns the root namespace's bridge that host's guests of
// cluster plug into, made with its veth to br-<cluster> in the host's
// namespace (made too if the agent has not yet) when missing.
func (n *labNet) guestBridge(ctx context.Context, host, cluster, nsBridge string) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	hn := n.host(host)
	if hn == nil {
		return "", fmt.Errorf("no lab host %s", host)
	}
	key := host + "/" + cluster
	if br, ok := n.bridges[key]; ok {
		return br, nil
	}
	c := n.number(cluster)
	name := fmt.Sprintf("%s%c%d", rootLinkPrefix(n.id), 'a'+hn.idx, c)
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("create guest bridge %s: %w", name, err)
	}
	br, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetUp(br)
	}
	if err != nil {
		return "", fmt.Errorf("bring up %s: %w", name, err)
	}
	h, err := overlaynet.Open(ctx, hn.path)
	if err != nil {
		return "", err
	}
	defer h.Close()
	inner := fmt.Sprintf("guests%d", c)
	if _, err := h.LinkByName(inner); err != nil {
		if err := vethInto(name+"v", inner, br, hn.path); err != nil {
			return "", err
		}
	}
	nb, err := h.LinkByName(nsBridge)
	if err != nil {
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: nsBridge}}); err != nil && !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("create %s in %s: %w", nsBridge, hn.ns, err)
		}
		if nb, err = h.LinkByName(nsBridge); err != nil {
			return "", fmt.Errorf("look up %s in %s: %w", nsBridge, hn.ns, err)
		}
	}
	in, err := h.LinkByName(inner)
	if err != nil {
		return "", fmt.Errorf("look up %s in %s: %w", inner, hn.ns, err)
	}
	if err := h.LinkSetMaster(in, nb); err != nil {
		return "", fmt.Errorf("add %s to %s in %s: %w", inner, nsBridge, hn.ns, err)
	}
	for _, l := range []netlink.Link{in, nb} {
		if err := h.LinkSetUp(l); err != nil {
			return "", fmt.Errorf("bring up %s in %s: %w", l.Attrs().Name, hn.ns, err)
		}
	}
	if err := addAddr(h, nsBridge, n.probeAddr(hn.idx, c)); err != nil {
		return "", err
	}
	n.bridges[key] = name
	return name, nil
}

// dropGuestBridge removes what guestBridge made for host's guests of
// cluster: the veth pair and the root namespace's bridge.
func (n *labNet) dropGuestBridge(ctx context.Context, host, cluster string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	br, ok := n.bridges[host+"/"+cluster]
	if !ok {
		return nil
	}
	delete(n.bridges, host+"/"+cluster)
	var errs []error
	for _, name := range []string{br + "v", br} { // the veth takes its peer along
		l, err := netlink.LinkByName(name)
		if err == nil {
			err = netlink.LinkDel(l)
		}
		if err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) && !errors.Is(err, syscall.ENODEV) {
			errs = append(errs, fmt.Errorf("delete %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// guestAddr is the address of a lab guest: the i-th (from 1) of host h in
// cluster number c.
func guestAddr(c, h, i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(c), byte(h*20 + i)}), guestNet.Bits())
}

// probeAddr is the lab's address on host h's br-<cluster> of cluster c,
// from which it pings and asks that host's guests.
func (n *labNet) probeAddr(h, c int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(c), byte(200 + h)}), 24)
}

// labOverlay is the overlay of one of the lab's own guest clusters on host
// hn: the agent is given it (Config.Overlays and OverlayRepairs), and the
// lab makes it once at the start.
func (n *labNet) labOverlay(cluster string, vni int, hn *hostNet) overlayspec.Overlay {
	o := overlayspec.Overlay{Cluster: cluster, Device: "vx-" + cluster, Bridge: "br-" + cluster, VNI: vni, Underlay: underlayName}
	for _, p := range n.hosts {
		if p != hn {
			o.Peers = append(o.Peers, overlayspec.Peer{Host: p.name, Address: p.addr.String()})
		}
	}
	return o
}

// ensureOverlay makes an overlay in a host's namespace.
func (n *labNet) ensureOverlay(ctx context.Context, hn *hostNet, o overlayspec.Overlay) error {
	h, err := overlaynet.Open(ctx, hn.path)
	if err != nil {
		return err
	}
	defer h.Close()
	if _, err := overlaynet.Ensure(h, o); err != nil {
		return fmt.Errorf("overlay %s on %s: %w", o.Cluster, hn.name, err)
	}
	return nil
}

// listen listens on addr inside a host's namespace: the socket stays
// there, whichever thread later serves it.
func (n *labNet) listen(hn *hostNet, addr string) (net.Listener, error) {
	return nsrun.Do(hn.path, func() (net.Listener, error) { return net.Listen("tcp", addr) })
}

// teardown removes the namespaces and the root namespace's links of the
// lab (of this one, or one that left them).
func (n *labNet) teardown(ctx context.Context) error {
	var errs []error
	for _, hn := range n.hosts {
		if _, err := os.Stat(hn.path); err == nil {
			errs = append(errs, runCommand(ctx, "ip", "netns", "del", hn.ns))
		}
	}
	links, err := netlink.LinkList()
	for i := 0; errors.Is(err, netlink.ErrDumpInterrupted) && i < 5; i++ {
		links, err = netlink.LinkList() // links changed during the dump
	}
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list links: %w", err))...)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, rootLinkPrefix(n.id)) {
			// A veth whose peer went with its namespace is gone too.
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
				errs = append(errs, fmt.Errorf("delete %s: %w", l.Attrs().Name, err))
			}
		}
	}
	n.mu.Lock()
	n.bridges = map[string]string{}
	n.mu.Unlock()
	return errors.Join(errs...)
}
