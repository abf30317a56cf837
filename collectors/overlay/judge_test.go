package overlay

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

func link(flags net.Flags, oper netlink.LinkOperState, lowerUp bool) *netlink.Device {
	d := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "x", Flags: flags, OperState: oper}}
	if lowerUp {
		d.RawFlags = unix.IFF_LOWER_UP
	}
	return d
}

func TestUsable(t *testing.T) {
	tests := []struct {
		name string
		link netlink.Link
		want bool
	}{
		{"up", link(net.FlagUp, netlink.OperUp, true), true},
		{"unknown with carrier", link(net.FlagUp, netlink.OperUnknown, true), true},
		{"unknown without carrier", link(net.FlagUp, netlink.OperUnknown, false), false},
		{"admin down", link(0, netlink.OperUnknown, true), false},
		{"down", link(net.FlagUp, netlink.OperDown, false), false},
		{"lower layer down", link(net.FlagUp, netlink.OperLowerLayerDown, false), false},
		{"dormant", link(net.FlagUp, netlink.OperDormant, true), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := usable(tt.link); got != tt.want {
				t.Errorf("usable = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestVXLANUpJudgement(t *testing.T) {
	vx := func(up bool) *netlink.Vxlan {
		v := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{OperState: netlink.OperUnknown, RawFlags: unix.IFF_LOWER_UP}}
		if up {
			v.Flags = net.FlagUp
		}
		return v
	}
	tests := []struct {
		name   string
		vx     *netlink.Vxlan
		parent netlink.Link
		want   bool
	}{
		{"no parent", vx(true), nil, true},
		{"parent up", vx(true), link(net.FlagUp, netlink.OperUp, true), true},
		{"parent without carrier", vx(true), link(net.FlagUp, netlink.OperLowerLayerDown, false), false},
		{"device down", vx(false), link(net.FlagUp, netlink.OperUp, true), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := vxlanUp(tt.vx, tt.parent); got != tt.want {
				t.Errorf("vxlanUp = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMTUOK(t *testing.T) {
	tests := []struct {
		name   string
		mtu    int
		local  string
		group  string
		parent int
		want   bool
	}{
		{"IPv4 default", 1450, "10.0.0.1", "", 1500, true},
		{"IPv4 one byte over", 1451, "10.0.0.1", "", 1500, false},
		{"IPv4 same as parent", 1500, "10.0.0.1", "", 1500, false},
		{"no local address", 1450, "", "", 1500, true},
		{"jumbo underlay", 1500, "10.0.0.1", "", 9000, true},
		{"IPv6 default", 1430, "fd00::1", "", 1500, true},
		{"IPv6 with the IPv4 MTU", 1450, "fd00::1", "", 1500, false},
		{"IPv6 group", 1450, "", "ff05::100", 1500, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{MTU: tt.mtu}, SrcAddr: net.ParseIP(tt.local), Group: net.ParseIP(tt.group)}
			if got := mtuOK(vx, tt.parent); got != tt.want {
				t.Errorf("mtuOK = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPeerUnreachable(t *testing.T) {
	// Cache times are in USER_HZ ticks: 100 a second.
	const minute = 60 * userHZ
	tests := []struct {
		name       string
		n          *netlink.Neigh
		staleAfter time.Duration
		want       bool
	}{
		{"no entry", nil, time.Minute, false},
		{"failed", &netlink.Neigh{State: netlink.NUD_FAILED}, 0, true},
		{"incomplete", &netlink.Neigh{State: netlink.NUD_INCOMPLETE}, 0, true},
		{"reachable", &netlink.Neigh{State: netlink.NUD_REACHABLE, Confirmed: 10 * minute}, time.Minute, false},
		{"permanent", &netlink.Neigh{State: netlink.NUD_PERMANENT, Confirmed: 10 * minute}, time.Minute, false},
		{"noarp", &netlink.Neigh{State: netlink.NUD_NOARP, Confirmed: 10 * minute}, time.Minute, false},
		{"stale, stale after off", &netlink.Neigh{State: netlink.NUD_STALE, Confirmed: 10 * minute}, 0, false},
		{"stale, confirmed lately", &netlink.Neigh{State: netlink.NUD_STALE, Confirmed: minute / 2}, time.Minute, false},
		{"stale, at the limit", &netlink.Neigh{State: netlink.NUD_STALE, Confirmed: minute}, time.Minute, false},
		{"stale, too long unconfirmed", &netlink.Neigh{State: netlink.NUD_STALE, Confirmed: minute + 1}, time.Minute, true},
		{"delay, too long unconfirmed", &netlink.Neigh{State: netlink.NUD_DELAY, Confirmed: 2 * minute}, time.Minute, true},
		{"probe, too long unconfirmed", &netlink.Neigh{State: netlink.NUD_PROBE, Confirmed: 2 * minute}, time.Minute, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := peerUnreachable(tt.n, tt.staleAfter); got != tt.want {
				t.Errorf("peerUnreachable = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCheckFDB(t *testing.T) {
	zero := net.HardwareAddr{0, 0, 0, 0, 0, 0}
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	entry := func(hw net.HardwareAddr, dst string) netlink.Neigh {
		return netlink.Neigh{HardwareAddr: hw, IP: net.ParseIP(dst)}
	}
	peers := []expectedPeer{
		{host: "b", addr: netip.MustParseAddr("10.0.0.2")},
		{host: "c", addr: netip.MustParseAddr("10.0.0.3")},
	}
	tests := []struct {
		name           string
		entries        []netlink.Neigh
		group          string
		wantFlooded    []string
		wantMissing    int
		wantUnexpected int
	}{
		{name: "empty", wantMissing: 2},
		{
			name:        "all flooded",
			entries:     []netlink.Neigh{entry(zero, "10.0.0.2"), entry(zero, "10.0.0.3")},
			wantFlooded: []string{"10.0.0.2", "10.0.0.3"},
		},
		{
			name:        "unicast only is missing",
			entries:     []netlink.Neigh{entry(zero, "10.0.0.2"), entry(mac, "10.0.0.3")},
			wantFlooded: []string{"10.0.0.2"}, wantMissing: 1,
		},
		{
			name:        "unexpected counted once",
			entries:     []netlink.Neigh{entry(zero, "10.0.0.2"), entry(zero, "10.0.0.3"), entry(zero, "10.0.0.9"), entry(mac, "10.0.0.9")},
			wantFlooded: []string{"10.0.0.2", "10.0.0.3", "10.0.0.9"}, wantUnexpected: 1,
		},
		{
			name:        "group is expected",
			entries:     []netlink.Neigh{entry(zero, "10.0.0.2"), entry(zero, "10.0.0.3"), entry(zero, "239.1.1.1")},
			group:       "239.1.1.1",
			wantFlooded: []string{"10.0.0.2", "10.0.0.3", "239.1.1.1"},
		},
		{
			name:        "IPv4-mapped destination",
			entries:     []netlink.Neigh{entry(zero, "::ffff:10.0.0.2"), entry(zero, "10.0.0.3")},
			wantFlooded: []string{"10.0.0.2", "10.0.0.3"},
		},
		{
			name:        "IPv6",
			entries:     []netlink.Neigh{entry(zero, "10.0.0.2"), entry(zero, "10.0.0.3"), entry(zero, "fd00::2")},
			wantFlooded: []string{"10.0.0.2", "10.0.0.3", "fd00::2"}, wantUnexpected: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := checkFDB(tt.entries, peers, net.ParseIP(tt.group))
			if len(got.flooded) != len(tt.wantFlooded) {
				t.Errorf("flooded = %v, want %v", got.flooded, tt.wantFlooded)
			}
			for _, a := range tt.wantFlooded {
				if !got.flooded[netip.MustParseAddr(a)] {
					t.Errorf("flooded = %v, want %v", got.flooded, tt.wantFlooded)
				}
			}
			if got.missing != tt.wantMissing || got.unexpected != tt.wantUnexpected {
				t.Errorf("missing, unexpected = %d, %d, want %d, %d", got.missing, got.unexpected, tt.wantMissing, tt.wantUnexpected)
			}
		})
	}
}

// rtattr encodes one netlink attribute, padded to 4 bytes.
func rtattr(typ uint16, val []byte) []byte {
	b := make([]byte, unix.SizeofRtAttr, unix.SizeofRtAttr+len(val)+3)
	binary.NativeEndian.PutUint16(b[0:2], uint16(unix.SizeofRtAttr+len(val)))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	b = append(b, val...)
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// bridgePortMessage is the payload of the RTM_NEWLINK the kernel sends for
// a bridge port in an AF_BRIDGE dump, cut to the attributes that matter.
func bridgePortMessage(index int32, state byte) []byte {
	msg := make([]byte, unix.SizeofIfInfomsg)
	msg[0] = unix.AF_BRIDGE
	binary.NativeEndian.PutUint32(msg[4:8], uint32(index))
	msg = append(msg, rtattr(unix.IFLA_IFNAME, []byte("gst0\x00"))...)
	master := binary.NativeEndian.AppendUint32(nil, 4)
	msg = append(msg, rtattr(unix.IFLA_MASTER, master)...)
	var protinfo []byte
	protinfo = append(protinfo, rtattr(nl.IFLA_BRPORT_PRIORITY, []byte{32, 0})...)
	protinfo = append(protinfo, rtattr(nl.IFLA_BRPORT_STATE, []byte{state})...)
	protinfo = append(protinfo, rtattr(nl.IFLA_BRPORT_COST, []byte{2, 0, 0, 0})...)
	return append(msg, rtattr(unix.IFLA_PROTINFO|unix.NLA_F_NESTED, protinfo)...)
}

func TestParseBridgePort(t *testing.T) {
	noProtinfo := make([]byte, unix.SizeofIfInfomsg)
	noProtinfo = append(noProtinfo, rtattr(unix.IFLA_IFNAME, []byte("br-x\x00"))...)
	full := bridgePortMessage(5, 4)
	tests := []struct {
		name    string
		msg     []byte
		want    bridgePort
		wantOK  bool
		wantErr bool
	}{
		{name: "blocking", msg: bridgePortMessage(5, 4), want: bridgePort{index: 5, state: 4}, wantOK: true},
		{name: "forwarding", msg: bridgePortMessage(7, 3), want: bridgePort{index: 7, state: 3}, wantOK: true},
		{name: "no protinfo", msg: noProtinfo, want: bridgePort{index: 0}},
		{name: "short header", msg: full[:8], wantErr: true},
		{name: "attribute cut short", msg: full[:len(full)-4], wantErr: true},
		{name: "attribute length below header", msg: append(noProtinfo[:unix.SizeofIfInfomsg:unix.SizeofIfInfomsg], 2, 0, 1, 0), wantErr: true},
		{name: "trailing bytes", msg: append(bridgePortMessage(5, 4), 0, 0), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := parseBridgePort(tt.msg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseBridgePort error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if ok != tt.wantOK || got != tt.want {
				t.Errorf("parseBridgePort = %+v, %v, want %+v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// FuzzParseBridgePort feeds parseBridgePort kernel-shaped and broken
// messages: it must return an error or a state, never panic.
func FuzzParseBridgePort(f *testing.F) {
	f.Add(bridgePortMessage(5, 4))
	f.Add(bridgePortMessage(-1, 0))
	f.Add(bridgePortMessage(5, 3)[:unix.SizeofIfInfomsg+3])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, msg []byte) {
		p, ok, err := parseBridgePort(msg)
		if err != nil && ok {
			t.Errorf("parseBridgePort returned a state (%+v) with error %v", p, err)
		}
	})
}
