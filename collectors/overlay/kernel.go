package overlay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"caretaker/internal/overlayspec"
)

// dumpAttempts bounds the retries of a dump the kernel reports as
// interrupted (the table changed while it was read, so it may be
// inconsistent): a busy FDB may interrupt one dump, rarely three.
const dumpAttempts = 3

// state is what one scrape read from the kernel. fdb, neighbors and
// stpStates are nil when they could not be read.
type state struct {
	linkByIndex map[int]netlink.Link
	linkByName  map[string]netlink.Link
	vxlans      []*netlink.Vxlan
	vxlanByName map[string]*netlink.Vxlan
	// ports maps a bridge's index to its ports.
	ports map[int][]netlink.Link
	// fdb maps a device's index to its FDB entries that have a remote
	// destination.
	fdb       map[int][]netlink.Neigh
	neighbors *neighborTable
	// stpStates maps a bridge port's index to its BR_STATE_*.
	stpStates map[int]uint8
}

// parent returns the underlay device vx is bound to, or nil.
func (s *state) parent(vx *netlink.Vxlan) netlink.Link {
	if vx.VtepDevIndex == 0 {
		return nil
	}
	return s.linkByIndex[vx.VtepDevIndex]
}

// bridgeOf returns the bridge l is a port of, or nil.
func (s *state) bridgeOf(l netlink.Link) netlink.Link {
	m := s.linkByIndex[l.Attrs().MasterIndex]
	if m == nil || !isBridge(m) {
		return nil
	}
	return m
}

// read reads links, FDB, neighbours and bridge port states from the network
// namespace at path ("" for the current one). It returns nil and an error
// when the links cannot be read, and a partial state and an error when
// something else cannot.
func read(ctx context.Context, path string, logger *slog.Logger) (*state, error) {
	h, sock, err := open(ctx, path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	defer sock.Close()

	links, err := dump(ctx, logger, "links", h.LinkList)
	if err != nil {
		return nil, err
	}
	s := newState(links)

	var errs []error
	fdb, err := dump(ctx, logger, "bridge fdb", func() ([]netlink.Neigh, error) {
		return h.NeighList(0, unix.AF_BRIDGE)
	})
	if err != nil {
		errs = append(errs, err)
	} else {
		s.fdb = make(map[int][]netlink.Neigh)
		for _, n := range fdb {
			if n.IP != nil {
				s.fdb[n.LinkIndex] = append(s.fdb[n.LinkIndex], n)
			}
		}
	}

	// AF_UNSPEC asks every neighbour table, ARP and NDP, in one dump.
	neighbors, err := dump(ctx, logger, "neighbours", func() ([]netlink.Neigh, error) {
		return h.NeighList(0, unix.AF_UNSPEC)
	})
	if err != nil {
		errs = append(errs, err)
	} else {
		s.neighbors = newNeighborTable(neighbors)
	}

	states, err := dump(ctx, logger, "bridge ports", func() ([]bridgePort, error) {
		return dumpBridgePorts(sock)
	})
	if err != nil {
		errs = append(errs, err)
	} else {
		s.stpStates = make(map[int]uint8, len(states))
		for _, p := range states {
			s.stpStates[p.index] = p.state
		}
	}
	return s, errors.Join(errs...)
}

// open opens the rtnetlink sockets of one scrape in the namespace at path:
// a netlink.Handle, and a bare socket for the bridge port dump, which the
// handle does not offer. The sockets are created in the namespace by the
// netlink package, on a locked OS thread that it moves back; the calling
// thread's namespace is never touched.
func open(ctx context.Context, path string) (*netlink.Handle, *nl.NetlinkSocket, error) {
	ns := netns.None()
	where := "the current network namespace"
	if path != "" {
		where = "network namespace " + path
		var err error
		ns, err = netns.GetFromPath(path)
		if err != nil {
			return nil, nil, fmt.Errorf("open network namespace %s: %w", path, err)
		}
		// The sockets stay in the namespace once made: the handle on
		// it is needed only to make them.
		defer ns.Close()
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, nil, fmt.Errorf("open netlink handle in %s: %w", where, err)
	}
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("open netlink socket in %s: %w", where, err)
	}
	// The dumps block on the kernel's answer: bound them by the scrape.
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		if left < time.Microsecond {
			h.Close()
			sock.Close()
			return nil, nil, fmt.Errorf("read overlays in %s: %w", where, context.DeadlineExceeded)
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		err := h.SetSocketTimeout(left)
		if err == nil {
			err = sock.SetReceiveTimeout(&tv)
		}
		if err == nil {
			err = sock.SetSendTimeout(&tv)
		}
		if err != nil {
			h.Close()
			sock.Close()
			return nil, nil, fmt.Errorf("set netlink timeout in %s: %w", where, err)
		}
	}
	return h, sock, nil
}

// dump runs a netlink dump, again when the kernel reports it interrupted.
func dump[T any](ctx context.Context, logger *slog.Logger, what string, f func() ([]T, error)) ([]T, error) {
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("dump %s: %w", what, err)
		}
		v, err := f()
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) || attempt == dumpAttempts {
			return nil, fmt.Errorf("dump %s: %w", what, err)
		}
		logger.Debug("netlink dump interrupted, trying again", "dump", what, "attempt", attempt)
	}
}

func newState(links []netlink.Link) *state {
	s := &state{
		linkByIndex: make(map[int]netlink.Link, len(links)),
		linkByName:  make(map[string]netlink.Link, len(links)),
		vxlanByName: make(map[string]*netlink.Vxlan),
		ports:       make(map[int][]netlink.Link),
	}
	for _, l := range links {
		a := l.Attrs()
		s.linkByIndex[a.Index] = l
		s.linkByName[a.Name] = l
		if vx, ok := l.(*netlink.Vxlan); ok {
			s.vxlans = append(s.vxlans, vx)
			s.vxlanByName[a.Name] = vx
		}
	}
	for _, l := range links {
		if br := s.bridgeOf(l); br != nil {
			s.ports[br.Attrs().Index] = append(s.ports[br.Attrs().Index], l)
		}
	}
	return s
}

// neighborTable indexes ARP and NDP entries by device and address.
type neighborTable struct {
	byKey map[neighborKey]*netlink.Neigh
	// byAddr holds, for each address, the entry on the device with the
	// lowest index, for VXLAN devices without a parent.
	byAddr map[netip.Addr]*netlink.Neigh
}

type neighborKey struct {
	ifindex int
	addr    netip.Addr
}

func newNeighborTable(entries []netlink.Neigh) *neighborTable {
	t := &neighborTable{
		byKey:  make(map[neighborKey]*netlink.Neigh, len(entries)),
		byAddr: make(map[netip.Addr]*netlink.Neigh, len(entries)),
	}
	for i := range entries {
		n := &entries[i]
		if n.Family != unix.AF_INET && n.Family != unix.AF_INET6 {
			continue
		}
		addr, ok := overlayspec.AddrOf(n.IP)
		if !ok {
			continue
		}
		t.byKey[neighborKey{n.LinkIndex, addr}] = n
		if old := t.byAddr[addr]; old == nil || n.LinkIndex < old.LinkIndex {
			t.byAddr[addr] = n
		}
	}
	return t
}

// lookup returns the entry for addr on the device ifindex, or on any device
// when ifindex is 0; nil when there is none.
func (t *neighborTable) lookup(ifindex int, addr netip.Addr) *netlink.Neigh {
	if ifindex == 0 {
		return t.byAddr[addr]
	}
	return t.byKey[neighborKey{ifindex, addr}]
}

// bridgePort is a bridge port's STP state, from an AF_BRIDGE link dump.
type bridgePort struct {
	index int
	state uint8
}

// dumpBridgePorts asks for the AF_BRIDGE view of the links, in which the
// kernel sends each bridge port's IFLA_PROTINFO with its STP state; the
// netlink package parses neither that nor the bridge slave data.
func dumpBridgePorts(sock *nl.NetlinkSocket) ([]bridgePort, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_DUMP)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: sock}}
	req.AddData(nl.NewIfInfomsg(unix.AF_BRIDGE))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return nil, err
	}
	var ports []bridgePort
	for _, m := range msgs {
		p, ok, err := parseBridgePort(m)
		if err != nil {
			return nil, err
		}
		if ok {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// parseBridgePort reads the payload of one RTM_NEWLINK message of an
// AF_BRIDGE dump: an ifinfomsg, then attributes, among them the nested
// IFLA_PROTINFO holding IFLA_BRPORT_STATE. ok is false when the message
// carries no state.
func parseBridgePort(msg []byte) (p bridgePort, ok bool, err error) {
	if len(msg) < unix.SizeofIfInfomsg {
		return p, false, fmt.Errorf("parse bridge port: message of %d bytes is shorter than an ifinfomsg", len(msg))
	}
	// struct ifinfomsg: family, pad, type (2), index (4), flags, change.
	p.index = int(int32(binary.NativeEndian.Uint32(msg[4:8])))
	var protinfo []byte
	err = walkAttrs(msg[unix.SizeofIfInfomsg:], func(typ uint16, val []byte) {
		if typ == unix.IFLA_PROTINFO {
			protinfo = val
		}
	})
	if err != nil {
		return p, false, fmt.Errorf("parse bridge port %d: %w", p.index, err)
	}
	if protinfo == nil {
		return p, false, nil
	}
	err = walkAttrs(protinfo, func(typ uint16, val []byte) {
		if typ == nl.IFLA_BRPORT_STATE && len(val) >= 1 {
			p.state, ok = val[0], true
		}
	})
	if err != nil {
		return p, false, fmt.Errorf("parse bridge port %d protinfo: %w", p.index, err)
	}
	return p, ok, nil
}

// nlaTypeMask clears an attribute type's NLA_F_NESTED and
// NLA_F_NET_BYTEORDER flags (linux/netlink.h NLA_TYPE_MASK).
const nlaTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)

// walkAttrs calls f with the type (without the nested and byte-order flags)
// and value of each netlink attribute in b. nl.ParseRouteAttr would do, but
// it panics on a last attribute whose padding is cut off.
func walkAttrs(b []byte, f func(typ uint16, val []byte)) error {
	for len(b) > 0 {
		if len(b) < unix.SizeofRtAttr {
			return fmt.Errorf("%d trailing bytes after the last attribute", len(b))
		}
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4])
		if l < unix.SizeofRtAttr || l > len(b) {
			return fmt.Errorf("attribute %d: length %d out of range 4-%d", typ&nlaTypeMask, l, len(b))
		}
		f(typ&nlaTypeMask, b[unix.SizeofRtAttr:l])
		next := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if next > len(b) {
			next = len(b)
		}
		b = b[next:]
	}
	return nil
}
