package overlaynet

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"caretaker/internal/overlaynet/nstest"
	"caretaker/internal/overlayspec"
)

// The test host: underlay u0, a veth (the kernel may lack the dummy
// driver), with 192.0.2.1/24 (TEST-NET-1, inside the test's namespace
// only) and MTU 1500; and two peers.
func desired() overlayspec.Overlay {
	return overlayspec.Overlay{
		Cluster:  "a",
		Device:   "vx-a",
		Bridge:   "br-a",
		VNI:      100,
		Underlay: "u0",
		Peers:    []overlayspec.Peer{{Host: "b", Address: "192.0.2.2"}, {Host: "c", Address: "192.0.2.3"}},
	}
}

// healthy is desired() as nstest reads it back.
var healthy = nstest.Overlay{
	Bridge: "up",
	VXLAN:  "vni 100 local 192.0.2.1 port 4789 underlay u0 mtu 1450 master br-a up",
	Flood:  []string{"192.0.2.2", "192.0.2.3"},
}

// newHost returns a namespace with the underlay u0, up, and nothing else.
func newHost(t *testing.T) nstest.NS {
	t.Helper()
	ns := nstest.New(t)
	ns.IP(t, "link", "add", "u0", "type", "veth", "peer", "name", "u0p")
	ns.IP(t, "addr", "add", "192.0.2.1/24", "dev", "u0")
	ns.IP(t, "link", "set", "u0", "up")
	return ns
}

// ensure runs Ensure in ns and fails the test on error.
func ensure(t *testing.T, ns nstest.NS, d overlayspec.Overlay) Changes {
	t.Helper()
	changes, err := Ensure(ns.Handle(t), d)
	if err != nil {
		t.Fatalf("Ensure: %v (changes so far: %q)", err, changes)
	}
	return changes
}

func TestEnsureFromNothing(t *testing.T) {
	explicit := desired()
	explicit.Local = "192.0.2.1"
	explicit.Port = 4790
	explicit.MTU = 1400
	explicit.Peers = explicit.Peers[:1]

	tests := []struct {
		name        string
		d           overlayspec.Overlay
		wantChanges Changes
		want        nstest.Overlay
	}{
		{
			name: "defaults",
			d:    desired(),
			wantChanges: Changes{
				"created bridge br-a",
				"created vxlan vx-a (vni 100, local 192.0.2.1, port 4789, underlay u0)",
				"enslaved vxlan vx-a to bridge br-a",
				"set vxlan vx-a up",
				"set bridge br-a up",
				"added fdb entry to 192.0.2.2",
				"added fdb entry to 192.0.2.3",
			},
			want: healthy,
		},
		{
			name: "explicit local, port and mtu",
			d:    explicit,
			wantChanges: Changes{
				"created bridge br-a",
				"created vxlan vx-a (vni 100, local 192.0.2.1, port 4790, underlay u0)",
				"set mtu of vxlan vx-a to 1400 (was 1450)",
				"enslaved vxlan vx-a to bridge br-a",
				"set vxlan vx-a up",
				"set bridge br-a up",
				"added fdb entry to 192.0.2.2",
			},
			want: nstest.Overlay{
				Bridge: "up",
				VXLAN:  "vni 100 local 192.0.2.1 port 4790 underlay u0 mtu 1400 master br-a up",
				Flood:  []string{"192.0.2.2"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := newHost(t)
			if got := ensure(t, ns, tt.d); !reflect.DeepEqual(got, tt.wantChanges) {
				t.Errorf("first Ensure changes:\n got %q\nwant %q", got, tt.wantChanges)
			}
			if got := ns.Overlay(t, "vx-a", "br-a"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("after first Ensure:\n got %+v\nwant %+v", got, tt.want)
			}
			if got := ensure(t, ns, tt.d); len(got) != 0 {
				t.Errorf("second Ensure changed %q, want nothing", got)
			}
			if got := ns.Overlay(t, "vx-a", "br-a"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("after second Ensure:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// Each case breaks one thing on a healthy host; Ensure must repair exactly
// that, say so, and leave the overlay healthy.
func TestEnsureRepairs(t *testing.T) {
	recreated := func(diff string) Changes {
		return Changes{
			"re-created vxlan vx-a (vni 100, local 192.0.2.1, port 4789, underlay u0): " + diff,
			"enslaved vxlan vx-a to bridge br-a",
			"set vxlan vx-a up",
			"added fdb entry to 192.0.2.2",
			"added fdb entry to 192.0.2.3",
		}
	}
	tests := []struct {
		name   string
		damage func(t *testing.T, ns nstest.NS)
		want   Changes
	}{
		{
			name: "fdb entry deleted",
			damage: func(t *testing.T, ns nstest.NS) {
				ns.Bridge(t, "fdb", "del", "00:00:00:00:00:00", "dev", "vx-a", "dst", "192.0.2.3", "self")
			},
			want: Changes{"added fdb entry to 192.0.2.3"},
		},
		{
			name: "stale peer",
			damage: func(t *testing.T, ns nstest.NS) {
				ns.Bridge(t, "fdb", "append", "00:00:00:00:00:00", "dev", "vx-a", "dst", "192.0.2.9", "self", "permanent")
				ns.Bridge(t, "fdb", "append", "00:00:00:00:00:00", "dev", "vx-a", "dst", "192.0.2.8", "self", "permanent")
			},
			want: Changes{"removed fdb entry to 192.0.2.8", "removed fdb entry to 192.0.2.9"},
		},
		{
			name:   "vxlan down",
			damage: func(t *testing.T, ns nstest.NS) { ns.IP(t, "link", "set", "vx-a", "down") },
			want:   Changes{"set vxlan vx-a up"},
		},
		{
			name:   "bridge down",
			damage: func(t *testing.T, ns nstest.NS) { ns.IP(t, "link", "set", "br-a", "down") },
			want:   Changes{"set bridge br-a up"},
		},
		{
			name:   "vxlan removed from bridge",
			damage: func(t *testing.T, ns nstest.NS) { ns.IP(t, "link", "set", "vx-a", "nomaster") },
			want:   Changes{"enslaved vxlan vx-a to bridge br-a"},
		},
		{
			name: "vxlan on another bridge",
			damage: func(t *testing.T, ns nstest.NS) {
				ns.IP(t, "link", "add", "br-x", "type", "bridge")
				ns.IP(t, "link", "set", "vx-a", "master", "br-x")
			},
			want: Changes{"enslaved vxlan vx-a to bridge br-a"},
		},
		{
			name:   "mtu changed",
			damage: func(t *testing.T, ns nstest.NS) { ns.IP(t, "link", "set", "vx-a", "mtu", "1300") },
			want:   Changes{"set mtu of vxlan vx-a to 1450 (was 1300)"},
		},
		{
			name:   "bridge deleted",
			damage: func(t *testing.T, ns nstest.NS) { ns.IP(t, "link", "del", "br-a") },
			want: Changes{
				"created bridge br-a",
				"enslaved vxlan vx-a to bridge br-a",
				"set bridge br-a up",
			},
		},
		{
			name:   "vxlan deleted",
			damage: func(t *testing.T, ns nstest.NS) { ns.IP(t, "link", "del", "vx-a") },
			want: Changes{
				"created vxlan vx-a (vni 100, local 192.0.2.1, port 4789, underlay u0)",
				"enslaved vxlan vx-a to bridge br-a",
				"set vxlan vx-a up",
				"added fdb entry to 192.0.2.2",
				"added fdb entry to 192.0.2.3",
			},
		},
		{
			name: "wrong vni",
			damage: func(t *testing.T, ns nstest.NS) {
				ns.IP(t, "link", "del", "vx-a")
				ns.IP(t, "link", "add", "vx-a", "type", "vxlan", "id", "200", "local", "192.0.2.1", "dstport", "4789", "dev", "u0")
			},
			want: recreated("vni was 200"),
		},
		{
			name: "wrong port and local",
			damage: func(t *testing.T, ns nstest.NS) {
				ns.IP(t, "link", "del", "vx-a")
				ns.IP(t, "link", "add", "vx-a", "type", "vxlan", "id", "100", "local", "192.0.2.7", "dstport", "8472", "dev", "u0")
			},
			want: recreated("local was 192.0.2.7, port was 8472"),
		},
		{
			name: "wrong underlay",
			damage: func(t *testing.T, ns nstest.NS) {
				ns.IP(t, "link", "add", "u1", "type", "veth", "peer", "name", "u1p")
				ns.IP(t, "link", "del", "vx-a")
				ns.IP(t, "link", "add", "vx-a", "type", "vxlan", "id", "100", "local", "192.0.2.1", "dstport", "4789", "dev", "u1")
			},
			want: recreated("underlay was u1"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := newHost(t)
			ensure(t, ns, desired())
			tt.damage(t, ns)
			if got := ns.Overlay(t, "vx-a", "br-a"); reflect.DeepEqual(got, healthy) {
				t.Fatalf("breaking the overlay left it healthy: %+v", got)
			}
			if got := ensure(t, ns, desired()); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Ensure changes:\n got %q\nwant %q", got, tt.want)
			}
			if got := ns.Overlay(t, "vx-a", "br-a"); !reflect.DeepEqual(got, healthy) {
				t.Errorf("after Ensure:\n got %+v\nwant %+v", got, healthy)
			}
			if got := ensure(t, ns, desired()); len(got) != 0 {
				t.Errorf("Ensure after the repair changed %q, want nothing", got)
			}
		})
	}
}

// What Ensure will not fix: it changes nothing, and says what and where.
func TestEnsureConflicts(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, ns nstest.NS)
		d       func(d *overlayspec.Overlay)
		wantErr string
		// want is the overlay after Ensure: nothing of it was made.
		want nstest.Overlay
	}{
		{
			name:    "underlay missing",
			d:       func(d *overlayspec.Overlay) { d.Underlay = "eth9" },
			wantErr: "look up underlay eth9: conflict: no such device",
		},
		{
			name: "underlay without address",
			setup: func(t *testing.T, ns nstest.NS) {
				ns.IP(t, "addr", "flush", "dev", "u0")
			},
			wantErr: "find local address on underlay u0: conflict: it has no global address (set local)",
		},
		{
			name: "bridge name taken",
			setup: func(t *testing.T, ns nstest.NS) {
				ns.IP(t, "link", "add", "br-a", "type", "veth", "peer", "name", "br-ap")
			},
			wantErr: "check bridge br-a: conflict: it is a veth device, not a bridge",
			want:    nstest.Overlay{Bridge: "veth down"},
		},
		{
			name: "vxlan name taken",
			setup: func(t *testing.T, ns nstest.NS) {
				ns.IP(t, "link", "add", "vx-a", "type", "veth", "peer", "name", "vx-ap")
			},
			wantErr: "check vxlan vx-a: conflict: it is a veth device, not a vxlan",
			// The bridge comes first; the veth is left alone.
			want: nstest.Overlay{Bridge: "down", VXLAN: "veth down"},
		},
		{
			name:    "invalid",
			d:       func(d *overlayspec.Overlay) { d.VNI = 1 << 24 },
			wantErr: `ensure overlay "a": conflict: vni: 16777216: out of range 0-16777215`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := newHost(t)
			if tt.setup != nil {
				tt.setup(t, ns)
			}
			d := desired()
			if tt.d != nil {
				tt.d(&d)
			}
			_, err := Ensure(ns.Handle(t), d)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("Ensure error %v, want %q", err, tt.wantErr)
			}
			if !errors.Is(err, ErrConflict) {
				t.Errorf("Ensure error %v is not ErrConflict", err)
			}
			if got := ns.Overlay(t, "vx-a", "br-a"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("after Ensure:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		d    func(d *overlayspec.Overlay)
		want string // "" for valid
	}{
		{"valid", func(d *overlayspec.Overlay) {}, ""},
		{"all set", func(d *overlayspec.Overlay) { d.Local, d.Port, d.MTU = "2001:db8::1", 1, 68 }, ""},
		{"no cluster", func(d *overlayspec.Overlay) { d.Cluster = "" }, "cluster: empty"},
		{"no underlay", func(d *overlayspec.Overlay) { d.Underlay = "" }, "underlay: empty"},
		{"long device", func(d *overlayspec.Overlay) { d.Device = "vx-0123456789abc" }, `device: "vx-0123456789abc": longer than 15 bytes`},
		{"bridge with slash", func(d *overlayspec.Overlay) { d.Bridge = "br/a" }, `bridge: "br/a": not a valid interface name`},
		{"bridge is the device", func(d *overlayspec.Overlay) { d.Bridge = "vx-a" }, `bridge: "vx-a" is also the device`},
		{"vni negative", func(d *overlayspec.Overlay) { d.VNI = -1 }, "vni: -1: out of range 0-16777215"},
		{"multicast local", func(d *overlayspec.Overlay) { d.Local = "239.1.1.1" }, `local: "239.1.1.1" is not a unicast IP address`},
		{"port too big", func(d *overlayspec.Overlay) { d.Port = 65536 }, "port: 65536: out of range 1-65535"},
		{"mtu too small", func(d *overlayspec.Overlay) { d.MTU = 67 }, "mtu: 67: out of range 68-65535"},
		{"peer unspecified", func(d *overlayspec.Overlay) { d.Peers[1].Address = "0.0.0.0" }, `peers[1].address: "0.0.0.0" is not a unicast IP address`},
		{"peer nil", func(d *overlayspec.Overlay) { d.Peers[0].Address = "" }, `peers[0].address: empty`},
		{"peer twice", func(d *overlayspec.Overlay) { d.Peers[1].Address = "::ffff:192.0.2.2" }, "peers[1].address: 192.0.2.2: listed twice"},
		{"several", func(d *overlayspec.Overlay) { d.Cluster, d.Port = "", -1 }, "cluster: empty\nport: -1: out of range 1-65535"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := desired()
			tt.d(&d)
			err := d.ValidateRepair()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tt.want != "" && (err == nil || err.Error() != tt.want):
				t.Errorf("Validate: %v, want %q", err, tt.want)
			}
		})
	}
}

// Errors from the kernel name the device and the operation.
func TestEnsureKernelError(t *testing.T) {
	ns := newHost(t)
	d := desired()
	// The kernel refuses an MTU above the underlay's minus the overhead.
	d.MTU = 1490
	changes, err := Ensure(ns.Handle(t), d)
	if err == nil || !strings.HasPrefix(err.Error(), "set mtu of vxlan vx-a to 1490: ") {
		t.Fatalf("Ensure error %v, want one about setting vx-a's mtu", err)
	}
	if errors.Is(err, ErrConflict) {
		t.Errorf("kernel refusal %v reported as ErrConflict", err)
	}
	want := Changes{"created bridge br-a", "created vxlan vx-a (vni 100, local 192.0.2.1, port 4789, underlay u0)"}
	if !reflect.DeepEqual(changes, want) {
		t.Errorf("changes so far:\n got %q\nwant %q", changes, want)
	}
}

// BenchmarkEnsureNoChange measures the check of a healthy overlay, what a
// repair costs when nothing is broken.
func BenchmarkEnsureNoChange(b *testing.B) {
	ns := nstest.New(b)
	ns.IP(b, "link", "add", "u0", "type", "veth", "peer", "name", "u0p")
	ns.IP(b, "addr", "add", "192.0.2.1/24", "dev", "u0")
	ns.IP(b, "link", "set", "u0", "up")
	h := ns.Handle(b)
	if _, err := Ensure(h, desired()); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		changes, err := Ensure(h, desired())
		if err != nil || len(changes) != 0 {
			b.Fatalf("Ensure: %q, %v", changes, err)
		}
	}
}
