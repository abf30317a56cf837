// Package overlayspec is the one description of a guest cluster's VXLAN
// overlay on one host: the agent's configuration file holds it, the server
// PUTs it to the agent, the clusters record it per host, overlaynet makes
// the host match it and the overlay collector derives its expectations
// from it. It also holds the checks all of them share: of an overlay, of an
// interface name, of a flooding FDB entry's MAC.
//
// It imports nothing of caretaker, so every side may import it.
package overlayspec

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// DefaultPort is the IANA VXLAN port, used when Overlay.Port is 0.
const DefaultPort = 4789

// MaxVNI is the largest VXLAN network identifier: VNIs have 24 bits.
const MaxVNI = 1<<24 - 1

// The VXLAN encapsulation overhead: outer Ethernet 14 + outer IP + UDP 8 +
// VXLAN 8 bytes. A device with the underlay's MTU minus this carries
// full-size guest frames in one underlay packet.
const (
	OverheadIPv4 = 14 + 20 + 8 + 8
	OverheadIPv6 = 14 + 40 + 8 + 8
)

// Overlay is one guest cluster's overlay as one host should have it. It is
// serialised as is: YAML in the agent's configuration file, JSON in the
// body of PUT /api/v1/overlays/{cluster} and in a cluster's record. In JSON
// the cluster is not a field: the URL or the record names it.
type Overlay struct {
	Cluster string `json:"-" yaml:"cluster"`
	// Device is the VXLAN device's name, Bridge the bridge it is a port of.
	Device string `json:"device" yaml:"device"`
	Bridge string `json:"bridge" yaml:"bridge"`
	VNI    int    `json:"vni" yaml:"vni"`
	// Underlay is the device the VXLAN device sends on; only a repair
	// needs it (see ValidateRepair).
	Underlay string `json:"underlay" yaml:"underlay"`
	// Local is the VTEP's source address; empty takes the underlay's
	// first global address.
	Local string `json:"local,omitempty" yaml:"local"`
	// Port is the UDP destination port; 0 means DefaultPort.
	Port int `json:"port,omitempty" yaml:"port"`
	// MTU is the VXLAN device's MTU; 0 means the underlay's MTU minus the
	// encapsulation overhead.
	MTU int `json:"mtu,omitempty" yaml:"mtu"`
	// Peers are the other hosts' VTEPs the device floods to.
	Peers []Peer `json:"peers" yaml:"peers"`
}

// Peer is another host's VTEP on the overlay.
type Peer struct {
	// Host is the peer host's name, the overlay collector's peer_host
	// label, so that an alert names the host and not only its address.
	Host string `json:"host,omitempty" yaml:"host"`
	// Address is the peer's VTEP address on the underlay.
	Address string `json:"address" yaml:"address"`
}

// Equal tells whether o and p are the same overlay.
func (o Overlay) Equal(p Overlay) bool {
	return o.Cluster == p.Cluster && o.Device == p.Device && o.Bridge == p.Bridge && o.VNI == p.VNI &&
		o.Underlay == p.Underlay && o.Local == p.Local && o.Port == p.Port && o.MTU == p.MTU &&
		slices.Equal(o.Peers, p.Peers)
}

// PeerAddrs returns the peers' addresses in order, as written.
func (o Overlay) PeerAddrs() []string {
	out := make([]string, 0, len(o.Peers))
	for _, p := range o.Peers {
		out = append(out, p.Address)
	}
	return out
}

// Problem is one thing wrong with an overlay: the field it is in, as a path
// ("vni", "peers[1].address"), and what is wrong with it.
type Problem struct {
	Field  string
	Detail string
}

func (p Problem) Error() string { return p.Field + ": " + p.Detail }

// Problems returns every problem in o, in field order: a missing cluster,
// device or bridge, an invalid interface name, two of device, bridge and
// underlay alike, a VNI, port or MTU out of range, a local or peer address
// that is no unicast IP address, a peer without a host, an address listed
// twice. The underlay may be empty (see ValidateRepair).
func (o Overlay) Problems() []Problem {
	var ps []Problem
	add := func(field, format string, args ...any) {
		ps = append(ps, Problem{Field: field, Detail: fmt.Sprintf(format, args...)})
	}
	if o.Cluster == "" {
		add("cluster", "empty")
	}
	names := []struct{ field, value string }{{"device", o.Device}, {"bridge", o.Bridge}, {"underlay", o.Underlay}}
	for i, f := range names {
		if f.field == "underlay" && f.value == "" {
			continue
		}
		if err := ValidIfName(f.value); err != nil {
			add(f.field, "%v", err)
			continue
		}
		for _, g := range names[:i] {
			if f.value == g.value {
				add(f.field, "%q is also the %s", f.value, g.field)
				break
			}
		}
	}
	if o.VNI < 0 || o.VNI > MaxVNI {
		add("vni", "%d: out of range 0-%d", o.VNI, MaxVNI)
	}
	if o.Local != "" {
		if _, err := unicast(o.Local); err != nil {
			add("local", "%v", err)
		}
	}
	if o.Port < 0 || o.Port > 65535 {
		add("port", "%d: out of range 1-65535", o.Port)
	}
	if o.MTU != 0 && (o.MTU < 68 || o.MTU > 65535) {
		add("mtu", "%d: out of range 68-65535", o.MTU)
	}
	seen := make(map[netip.Addr]bool, len(o.Peers))
	for i, p := range o.Peers {
		if p.Host == "" {
			add(fmt.Sprintf("peers[%d].host", i), "empty")
		}
		a, err := unicast(p.Address)
		switch {
		case err != nil:
			add(fmt.Sprintf("peers[%d].address", i), "%v", err)
		case seen[a]:
			add(fmt.Sprintf("peers[%d].address", i), "%s: listed twice", a)
		}
		seen[a] = true
	}
	return ps
}

// Validate reports every problem in o (see Problems), each naming its
// field, joined.
func (o Overlay) Validate() error {
	return join(o.Problems())
}

// ValidateRepair is Validate for an overlay the host is to be made to
// match: it also needs the underlay.
func (o Overlay) ValidateRepair() error {
	ps := o.Problems()
	if o.Underlay == "" {
		ps = append(ps, Problem{Field: "underlay", Detail: "empty"})
	}
	return join(ps)
}

// SetProblem is a problem of one overlay among several on one host.
type SetProblem struct {
	// Index is the overlay's index in the list.
	Index   int
	Cluster string
	Problem
}

func (p SetProblem) Error() string {
	return fmt.Sprintf("overlay %d (cluster %q): %v", p.Index, p.Cluster, p.Problem)
}

// SetProblems returns every problem of each overlay and those of the list
// as a whole: a device listed twice, which one host cannot have.
func SetProblems(overlays []Overlay) []SetProblem {
	var ps []SetProblem
	devices := make(map[string]int, len(overlays))
	for i, o := range overlays {
		for _, p := range o.Problems() {
			ps = append(ps, SetProblem{Index: i, Cluster: o.Cluster, Problem: p})
		}
		if j, dup := devices[o.Device]; dup && o.Device != "" {
			ps = append(ps, SetProblem{Index: i, Cluster: o.Cluster, Problem: Problem{"device", fmt.Sprintf("%q is also the device of overlay %d", o.Device, j)}})
		} else {
			devices[o.Device] = i
		}
	}
	return ps
}

// ValidateSet reports SetProblems, joined.
func ValidateSet(overlays []Overlay) error {
	var errs []error
	for _, p := range SetProblems(overlays) {
		errs = append(errs, p)
	}
	return errors.Join(errs...)
}

func join(ps []Problem) error {
	var errs []error
	for _, p := range ps {
		errs = append(errs, p)
	}
	return errors.Join(errs...)
}

// ParseAddr parses a valid overlay's address (Local or a peer's), the form
// of IPv4 addresses unmapped.
func ParseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return a.Unmap(), nil
}

// unicast parses s and checks that it is a unicast address.
func unicast(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, errors.New("empty")
	}
	a, err := ParseAddr(s)
	if err != nil {
		return a, err
	}
	if a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
		return a, fmt.Errorf("%q is not a unicast IP address", s)
	}
	return a, nil
}

// ValidIfName checks what the kernel would refuse in an interface name, so
// that a typo is reported at configuration rather than as a device that is
// never present.
func ValidIfName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case len(name) > 15: // IFNAMSIZ - 1
		return fmt.Errorf("%q: longer than 15 bytes", name)
	case name == "." || name == "..", strings.ContainsAny(name, "/: \t\n"):
		return fmt.Errorf("%q: not a valid interface name", name)
	}
	return nil
}

// IsFloodMAC tells whether mac is the all-zeros MAC of the FDB entries
// that flood broadcast, unknown-unicast and multicast traffic to a VTEP.
func IsFloodMAC(mac net.HardwareAddr) bool {
	if len(mac) != 6 {
		return false
	}
	for _, b := range mac {
		if b != 0 {
			return false
		}
	}
	return true
}

// AddrOf converts a netlink address to a netip.Addr, IPv4 unmapped.
func AddrOf(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}
