package overlay

import (
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"caretaker/internal/overlayspec"
)

// userHZ is the unit of the neighbour cache's times (ndm_confirmed and the
// rest): clock_t ticks of USER_HZ, which Linux fixes at 100 on the
// architectures caretaker runs on.
const userHZ = 100

// usable tells whether a link can pass traffic: administratively up and
// operationally up. Virtual devices without carrier detection, VXLAN among
// them, report the operational state UNKNOWN for their whole life; for them
// the carrier flag (IFF_LOWER_UP) decides.
func usable(l netlink.Link) bool {
	a := l.Attrs()
	if a.Flags&net.FlagUp == 0 {
		return false
	}
	switch a.OperState {
	case netlink.OperUp:
		return true
	case netlink.OperUnknown:
		return a.RawFlags&unix.IFF_LOWER_UP != 0
	}
	return false
}

// vxlanUp tells whether a VXLAN device can carry traffic. The kernel does
// not propagate its parent's state: a VXLAN device stays UNKNOWN with
// carrier when its underlay NIC goes down, so the parent is judged too.
// Without a parent (no "dev" given) the kernel picks the underlay by route
// at each packet and only the device itself is judged.
func vxlanUp(vx *netlink.Vxlan, parent netlink.Link) bool {
	return usable(vx) && (parent == nil || usable(parent))
}

// mtuOK tells whether a guest frame of the VXLAN device's MTU still fits
// in one packet of its parent once encapsulated. The underlay is taken to
// be IPv6 when the device's local or group address is; otherwise IPv4.
func mtuOK(vx *netlink.Vxlan, parentMTU int) bool {
	// The inner frame's own Ethernet header counts against the VXLAN
	// device's MTU as it does on any Ethernet device.
	overhead := overlayspec.OverheadIPv4
	if isIPv6(vx.SrcAddr) || isIPv6(vx.Group) {
		overhead = overlayspec.OverheadIPv6
	}
	return vx.MTU <= parentMTU-overhead
}

func isIPv6(ip net.IP) bool {
	return ip != nil && ip.To4() == nil && ip.To16() != nil
}

// peerUnreachable tells whether the underlay neighbour entry n of a peer's
// VTEP says this host cannot reach that VTEP at L2:
//
//   - FAILED: address resolution got no answer;
//   - INCOMPLETE: resolution is under way and has had no answer yet;
//   - with staleAfter > 0, STALE, DELAY or PROBE and not confirmed for
//     longer than staleAfter: the host has had no proof of the peer for that
//     long. The kernel moves an entry that is used to DELAY and PROBE and
//     from there to REACHABLE or FAILED within seconds, so a long-unconfirmed
//     entry mostly means an overlay that has been idle.
//
// No entry (nil) is not unreachable: nothing has been sent to the peer
// lately, so there is nothing to judge. REACHABLE, NOARP and PERMANENT
// entries are reachable.
func peerUnreachable(n *netlink.Neigh, staleAfter time.Duration) bool {
	if n == nil {
		return false
	}
	switch n.State {
	case netlink.NUD_FAILED, netlink.NUD_INCOMPLETE:
		return true
	case netlink.NUD_STALE, netlink.NUD_DELAY, netlink.NUD_PROBE:
		return staleAfter > 0 && ticks(n.Confirmed) > staleAfter
	}
	return false
}

func ticks(t uint32) time.Duration {
	return time.Duration(t) * time.Second / userHZ
}

// fdbCheck is how a VXLAN device's FDB compares with the expected peers.
type fdbCheck struct {
	// flooded holds the destinations of the all-zeros entries.
	flooded map[netip.Addr]bool
	// missing counts the expected peers not in flooded.
	missing int
	// unexpected counts the distinct destinations, of any entry, that
	// are neither expected peers nor the device's multicast group.
	unexpected int
}

// checkFDB compares the FDB entries with a remote destination of one VXLAN
// device with its expected peers. group is the device's multicast group, a
// destination the kernel itself puts in the FDB.
func checkFDB(entries []netlink.Neigh, peers []expectedPeer, group net.IP) fdbCheck {
	check := fdbCheck{flooded: make(map[netip.Addr]bool)}
	expectedAddrs := make(map[netip.Addr]bool, len(peers)+1)
	for _, p := range peers {
		expectedAddrs[p.addr] = true
	}
	if g, ok := overlayspec.AddrOf(group); ok {
		expectedAddrs[g] = true
	}
	unexpected := make(map[netip.Addr]bool)
	for _, n := range entries {
		dst, ok := overlayspec.AddrOf(n.IP)
		if !ok {
			continue
		}
		if overlayspec.IsFloodMAC(n.HardwareAddr) {
			check.flooded[dst] = true
		}
		if !expectedAddrs[dst] {
			unexpected[dst] = true
		}
	}
	for _, p := range peers {
		if !check.flooded[p.addr] {
			check.missing++
		}
	}
	check.unexpected = len(unexpected)
	return check
}

func isBridge(l netlink.Link) bool {
	return l.Type() == "bridge"
}
