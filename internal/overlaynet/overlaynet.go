// Package overlaynet makes a host's VXLAN overlay match its desired state:
// the bridge, the VXLAN device bound to the underlay and enslaved to the
// bridge, and the all-zeros FDB entries that flood broadcast, unknown-unicast
// and multicast traffic to the other hosts' VTEPs. It is the repair side of
// collectors/overlay, which only reports.
package overlaynet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"caretaker/internal/overlayspec"
)

// dumpAttempts bounds the retries of a dump the kernel reports as
// interrupted (the table changed while it was read).
const dumpAttempts = 3

// ErrConflict marks what Ensure will not fix by itself: the desired state is
// incomplete or invalid, the underlay is missing or has no address, or a
// device of another kind holds the bridge's or the VXLAN device's name.
var ErrConflict = errors.New("conflict")

// Changes says, in words, what Ensure changed; empty when nothing was needed.
type Changes []string

// Open returns a netlink handle in the network namespace at path ("" for
// the caller's own), whose calls give up at ctx's deadline. The caller's
// thread never changes namespace: the netlink package makes the socket in
// the namespace and moves back.
func Open(ctx context.Context, path string) (*netlink.Handle, error) {
	ns := netns.None()
	where := "the current network namespace"
	if path != "" {
		where = "network namespace " + path
		var err error
		ns, err = netns.GetFromPath(path)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", path, err)
		}
		defer ns.Close()
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink handle in %s: %w", where, err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		if left < time.Microsecond {
			h.Close()
			return nil, fmt.Errorf("open netlink handle in %s: %w", where, context.DeadlineExceeded)
		}
		if err := h.SetSocketTimeout(left); err != nil {
			h.Close()
			return nil, fmt.Errorf("set netlink timeout in %s: %w", where, err)
		}
	}
	return h, nil
}

// Ensure makes the host seen through h match d (see
// overlayspec.Overlay.ValidateRepair) and says what it changed; the peers'
// host names are not needed here.
// It is idempotent: a second call on an unchanged host changes nothing. It
// never deletes a device that is not a VXLAN device; it re-creates the VXLAN
// device when its VNI, local address, port or underlay differ, because the
// kernel cannot change them in place. On error, the changes made so far are
// returned with it.
func Ensure(h *netlink.Handle, d overlayspec.Overlay) (Changes, error) {
	if err := d.ValidateRepair(); err != nil {
		return nil, fmt.Errorf("ensure overlay %q: %w: %w", d.Cluster, ErrConflict, err)
	}
	e := ensurer{h: h, d: d, changes: Changes{}}
	for _, p := range d.Peers {
		a, _ := overlayspec.ParseAddr(p.Address) // valid: checked above
		e.peers = append(e.peers, a)
	}
	err := e.run()
	return e.changes, err
}

type ensurer struct {
	h       *netlink.Handle
	d       overlayspec.Overlay
	peers   []netip.Addr // d.Peers' addresses
	changes Changes
}

func (e *ensurer) note(format string, args ...any) {
	e.changes = append(e.changes, fmt.Sprintf(format, args...))
}

func (e *ensurer) run() error {
	d := e.d
	underlay, err := e.h.LinkByName(d.Underlay)
	if err != nil {
		if isNotFound(err) {
			return fmt.Errorf("look up underlay %s: %w: no such device", d.Underlay, ErrConflict)
		}
		return fmt.Errorf("look up underlay %s: %w", d.Underlay, err)
	}
	local, err := e.local(underlay)
	if err != nil {
		return err
	}
	port := d.Port
	if port == 0 {
		port = overlayspec.DefaultPort
	}
	mtu := d.MTU
	if mtu == 0 {
		overhead := overlayspec.OverheadIPv4
		if local.To4() == nil {
			overhead = overlayspec.OverheadIPv6
		}
		mtu = underlay.Attrs().MTU - overhead
	}

	br, err := e.bridge()
	if err != nil {
		return err
	}
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: d.Device},
		VxlanId:      d.VNI,
		VtepDevIndex: underlay.Attrs().Index,
		SrcAddr:      local,
		Port:         port,
		// As `ip link add … type vxlan` does: guests' MACs are learnt
		// from the traffic, only flooding is configured.
		Learning: true,
	}
	vx, err := e.vxlan(want, underlay.Attrs().Name)
	if err != nil {
		return err
	}
	if a := vx.Attrs(); a.MTU != mtu {
		if err := e.h.LinkSetMTU(vx, mtu); err != nil {
			return fmt.Errorf("set mtu of vxlan %s to %d: %w", d.Device, mtu, err)
		}
		e.note("set mtu of vxlan %s to %d (was %d)", d.Device, mtu, a.MTU)
	}
	if vx.Attrs().MasterIndex != br.Attrs().Index {
		if err := e.h.LinkSetMaster(vx, br); err != nil {
			return fmt.Errorf("enslave vxlan %s to bridge %s: %w", d.Device, d.Bridge, err)
		}
		e.note("enslaved vxlan %s to bridge %s", d.Device, d.Bridge)
	}
	if vx.Attrs().Flags&net.FlagUp == 0 {
		if err := e.h.LinkSetUp(vx); err != nil {
			return fmt.Errorf("set vxlan %s up: %w", d.Device, err)
		}
		e.note("set vxlan %s up", d.Device)
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := e.h.LinkSetUp(br); err != nil {
			return fmt.Errorf("set bridge %s up: %w", d.Bridge, err)
		}
		e.note("set bridge %s up", d.Bridge)
	}
	return e.fdb(vx)
}

// local returns d.Local, or else the underlay's first global address.
func (e *ensurer) local(underlay netlink.Link) (net.IP, error) {
	if e.d.Local != "" {
		a, _ := overlayspec.ParseAddr(e.d.Local) // valid: checked by Ensure
		return net.IP(a.AsSlice()), nil
	}
	addrs, err := e.h.AddrList(underlay, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of underlay %s: %w", e.d.Underlay, err)
	}
	for _, a := range addrs {
		if a.Scope == unix.RT_SCOPE_UNIVERSE && unicast(a.IP) {
			return a.IP, nil
		}
	}
	return nil, fmt.Errorf("find local address on underlay %s: %w: it has no global address (set local)", e.d.Underlay, ErrConflict)
}

// bridge returns the bridge, created if missing.
func (e *ensurer) bridge() (netlink.Link, error) {
	name := e.d.Bridge
	br, err := e.h.LinkByName(name)
	switch {
	case err == nil && br.Type() != "bridge":
		return nil, fmt.Errorf("check bridge %s: %w: it is a %s device, not a bridge", name, ErrConflict, br.Type())
	case err == nil:
		return br, nil
	case !isNotFound(err):
		return nil, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	if err := e.h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		return nil, fmt.Errorf("create bridge %s: %w", name, err)
	}
	e.note("created bridge %s", name)
	// Read it back for its index and flags.
	br, err = e.h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up bridge %s after creating it: %w", name, err)
	}
	return br, nil
}

// vxlan returns the VXLAN device, created if missing and re-created if its
// identity differs from want.
func (e *ensurer) vxlan(want *netlink.Vxlan, underlayName string) (netlink.Link, error) {
	name := want.Name
	l, err := e.h.LinkByName(name)
	if err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("look up vxlan %s: %w", name, err)
	}
	what := fmt.Sprintf("vxlan %s (vni %d, local %s, port %d, underlay %s)", name, want.VxlanId, want.SrcAddr, want.Port, underlayName)
	verb := "created"
	if err == nil {
		vx, ok := l.(*netlink.Vxlan)
		if !ok {
			return nil, fmt.Errorf("check vxlan %s: %w: it is a %s device, not a vxlan", name, ErrConflict, l.Type())
		}
		diff := e.vxlanDiff(vx, want)
		if diff == "" {
			return vx, nil
		}
		if err := e.h.LinkDel(vx); err != nil {
			return nil, fmt.Errorf("delete vxlan %s to re-create it (%s): %w", name, diff, err)
		}
		verb = "re-created"
		what += ": " + diff
	}
	if err := e.h.LinkAdd(want); err != nil {
		return nil, fmt.Errorf("create vxlan %s: %w", name, err)
	}
	e.note("%s %s", verb, what)
	l, err = e.h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up vxlan %s after creating it: %w", name, err)
	}
	return l, nil
}

// vxlanDiff says how have's identity differs from want's, "" if it does not.
func (e *ensurer) vxlanDiff(have, want *netlink.Vxlan) string {
	var diffs []string
	if have.VxlanId != want.VxlanId {
		diffs = append(diffs, fmt.Sprintf("vni was %d", have.VxlanId))
	}
	if !have.SrcAddr.Equal(want.SrcAddr) {
		diffs = append(diffs, fmt.Sprintf("local was %s", orNone(have.SrcAddr)))
	}
	if have.Port != want.Port {
		diffs = append(diffs, fmt.Sprintf("port was %d", have.Port))
	}
	if have.VtepDevIndex != want.VtepDevIndex {
		was := "none"
		if have.VtepDevIndex != 0 {
			// The name only makes the change readable: an index will do.
			was = fmt.Sprintf("index %d", have.VtepDevIndex)
			if l, err := e.h.LinkByIndex(have.VtepDevIndex); err == nil {
				was = l.Attrs().Name
			}
		}
		diffs = append(diffs, "underlay was "+was)
	}
	return strings.Join(diffs, ", ")
}

func orNone(ip net.IP) string {
	if ip == nil {
		return "none"
	}
	return ip.String()
}

// fdb adds the missing flooding entries and removes those to addresses that
// are not peers. The device's multicast group, if it has one, is left: the
// kernel made that entry, and the collector does not count it as stale.
func (e *ensurer) fdb(vx netlink.Link) error {
	name := e.d.Device
	entries, err := dump(func() ([]netlink.Neigh, error) { return e.h.NeighList(vx.Attrs().Index, unix.AF_BRIDGE) })
	if err != nil {
		return fmt.Errorf("list fdb of vxlan %s: %w", name, err)
	}
	var group netip.Addr
	if v, ok := vx.(*netlink.Vxlan); ok {
		group, _ = overlayspec.AddrOf(v.Group)
	}
	have := make(map[netip.Addr]netlink.Neigh)
	for _, n := range entries {
		if dst, ok := overlayspec.AddrOf(n.IP); ok && n.Flags&unix.NTF_SELF != 0 && overlayspec.IsFloodMAC(n.HardwareAddr) {
			have[dst] = n
		}
	}
	want := make(map[netip.Addr]bool, len(e.peers))
	for _, a := range e.peers {
		want[a] = true
		if _, ok := have[a]; ok {
			continue
		}
		if err := e.h.NeighAppend(floodEntry(vx, a, 0)); err != nil {
			return fmt.Errorf("add fdb entry to %s on vxlan %s: %w", a, name, err)
		}
		e.note("added fdb entry to %s", a)
	}
	// Removed in address order, so that the changes read the same each time.
	var stale []netip.Addr
	for a := range have {
		if !want[a] && a != group {
			stale = append(stale, a)
		}
	}
	slices.SortFunc(stale, netip.Addr.Compare)
	for _, a := range stale {
		if err := e.h.NeighDel(floodEntry(vx, a, have[a].VNI)); err != nil {
			return fmt.Errorf("remove fdb entry to %s on vxlan %s: %w", a, name, err)
		}
		e.note("removed fdb entry to %s", a)
	}
	return nil
}

// floodEntry is `bridge fdb append 00:00:00:00:00:00 dev <vx> dst <a> self
// permanent`; vni is the entry's own VNI, 0 for the device's.
func floodEntry(vx netlink.Link, a netip.Addr, vni int) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    vx.Attrs().Index,
		Family:       unix.AF_BRIDGE,
		Flags:        unix.NTF_SELF,
		State:        unix.NUD_PERMANENT,
		HardwareAddr: make(net.HardwareAddr, 6),
		IP:           net.IP(a.AsSlice()),
		VNI:          vni,
	}
}

// dump runs a netlink dump, again when the kernel reports it interrupted.
func dump[T any](f func() ([]T, error)) ([]T, error) {
	for attempt := 1; ; attempt++ {
		v, err := f()
		if err == nil || !errors.Is(err, netlink.ErrDumpInterrupted) || attempt == dumpAttempts {
			return v, err
		}
	}
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

func unicast(ip net.IP) bool {
	a, ok := overlayspec.AddrOf(ip)
	return ok && a.IsValid() && !a.IsUnspecified() && !a.IsMulticast()
}
