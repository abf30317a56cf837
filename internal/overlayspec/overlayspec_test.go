package overlayspec

import (
	"encoding/json"
	"net"
	"reflect"
	"strings"
	"testing"
)

func valid() Overlay {
	return Overlay{
		Cluster: "a", Device: "vx-a", Bridge: "br-a", VNI: 100, Underlay: "u0",
		Peers: []Peer{{Host: "b", Address: "192.0.2.2"}, {Host: "c", Address: "192.0.2.3"}},
	}
}

// Each check is made once, here, and names its field; the agent's file,
// its PUT, overlaynet and the collector all report these.
func TestProblems(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		f    func(o *Overlay)
		want string // "" for valid
	}{
		{"valid", func(o *Overlay) {}, ""},
		{"no underlay: only a repair needs it", func(o *Overlay) { o.Underlay = "" }, ""},
		{"all set", func(o *Overlay) { o.Local, o.Port, o.MTU = "2001:db8::1", 1, 68 }, ""},
		{"no cluster", func(o *Overlay) { o.Cluster = "" }, "cluster: empty"},
		{"no device", func(o *Overlay) { o.Device = "" }, "device: empty"},
		{"long device", func(o *Overlay) { o.Device = "vx-0123456789abc" }, `device: "vx-0123456789abc": longer than 15 bytes`},
		{"bridge with slash", func(o *Overlay) { o.Bridge = "br/a" }, `bridge: "br/a": not a valid interface name`},
		{"bridge is the device", func(o *Overlay) { o.Bridge = "vx-a" }, `bridge: "vx-a" is also the device`},
		{"underlay is the bridge", func(o *Overlay) { o.Underlay = "br-a" }, `underlay: "br-a" is also the bridge`},
		{"vni", func(o *Overlay) { o.VNI = MaxVNI + 1 }, "vni: 16777216: out of range 0-16777215"},
		{"local no address", func(o *Overlay) { o.Local = "host-a" }, `local: "host-a" is not an IP address`},
		{"local multicast", func(o *Overlay) { o.Local = "239.1.1.1" }, `local: "239.1.1.1" is not a unicast IP address`},
		{"port", func(o *Overlay) { o.Port = 65536 }, "port: 65536: out of range 1-65535"},
		{"mtu", func(o *Overlay) { o.MTU = 67 }, "mtu: 67: out of range 68-65535"},
		{"peer without host", func(o *Overlay) { o.Peers[0].Host = "" }, "peers[0].host: empty"},
		{"peer without address", func(o *Overlay) { o.Peers[0].Address = "" }, "peers[0].address: empty"},
		{"peer no address", func(o *Overlay) { o.Peers[1].Address = "10.0.0.300" }, `peers[1].address: "10.0.0.300" is not an IP address`},
		{"peer unspecified", func(o *Overlay) { o.Peers[1].Address = "0.0.0.0" }, `peers[1].address: "0.0.0.0" is not a unicast IP address`},
		{"peer multicast", func(o *Overlay) { o.Peers[1].Address = "239.1.1.1" }, `peers[1].address: "239.1.1.1" is not a unicast IP address`},
		{"peer twice, once mapped", func(o *Overlay) { o.Peers[1].Address = "::ffff:192.0.2.2" }, "peers[1].address: 192.0.2.2: listed twice"},
		{"several", func(o *Overlay) { o.Cluster, o.Port = "", -1 }, "cluster: empty\nport: -1: out of range 1-65535"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := valid()
			tt.f(&o)
			err := o.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tt.want != "" && (err == nil || err.Error() != tt.want):
				t.Errorf("Validate: %v, want %q", err, tt.want)
			}
		})
	}
	o := valid()
	o.Underlay = ""
	if err := o.ValidateRepair(); err == nil || err.Error() != "underlay: empty" {
		t.Errorf("ValidateRepair without underlay: %v", err)
	}
}

func TestSetProblems(t *testing.T) {
	t.Parallel()
	a, b := valid(), valid()
	b.Cluster, b.VNI = "b", -1
	got := ValidateSet([]Overlay{a, b})
	want := `overlay 1 (cluster "b"): vni: -1: out of range 0-16777215` + "\n" +
		`overlay 1 (cluster "b"): device: "vx-a" is also the device of overlay 0`
	if got == nil || got.Error() != want {
		t.Errorf("ValidateSet: %v, want %q", got, want)
	}
	if err := ValidateSet([]Overlay{valid()}); err != nil {
		t.Errorf("ValidateSet(valid) = %v", err)
	}
}

// The PUT body is the overlay as is, without the cluster (the URL names
// it); a body from a server before peers were named still decodes.
func TestJSON(t *testing.T) {
	t.Parallel()
	o := valid()
	o.Local, o.Port, o.MTU = "192.0.2.1", 4789, 1450
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"device":"vx-a","bridge":"br-a","vni":100,"underlay":"u0","local":"192.0.2.1","port":4789,"mtu":1450,` +
		`"peers":[{"host":"b","address":"192.0.2.2"},{"host":"c","address":"192.0.2.3"}]}`
	if string(b) != want {
		t.Errorf("JSON\n got %s\nwant %s", b, want)
	}
	var back Overlay
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	back.Cluster = o.Cluster
	if !back.Equal(o) || !reflect.DeepEqual(back, o) {
		t.Errorf("round trip %+v, want %+v", back, o)
	}
	old := `{"device":"vx-a","bridge":"br-a","vni":100,"underlay":"u0","peers":[{"address":"192.0.2.2"}]}`
	dec := json.NewDecoder(strings.NewReader(old))
	dec.DisallowUnknownFields()
	var got Overlay
	if err := dec.Decode(&got); err != nil || len(got.Peers) != 1 || got.Peers[0] != (Peer{Address: "192.0.2.2"}) {
		t.Errorf("old body: %+v, %v", got, err)
	}
}

func TestEqual(t *testing.T) {
	t.Parallel()
	for _, f := range []func(o *Overlay){
		func(o *Overlay) { o.Cluster = "x" },
		func(o *Overlay) { o.MTU = 1400 },
		func(o *Overlay) { o.Local = "192.0.2.1" },
		func(o *Overlay) { o.Peers[0].Host = "x" },
		func(o *Overlay) { o.Peers = o.Peers[:1] },
	} {
		o := valid()
		f(&o)
		if o.Equal(valid()) {
			t.Errorf("%+v equals %+v", o, valid())
		}
	}
	a, b := valid(), valid()
	a.Peers, b.Peers = nil, []Peer{}
	if !a.Equal(b) {
		t.Error("no peers differs from an empty list")
	}
}

func TestIsFloodMAC(t *testing.T) {
	t.Parallel()
	for mac, want := range map[string]bool{
		"00:00:00:00:00:00": true, "00:00:00:00:00:01": false, "02:00:00:00:00:00": false,
		"00:00:00:00:00:00:00:00": false,
	} {
		hw, err := net.ParseMAC(mac)
		if err != nil {
			t.Fatal(err)
		}
		if got := IsFloodMAC(hw); got != want {
			t.Errorf("IsFloodMAC(%s) = %v", mac, got)
		}
	}
	if IsFloodMAC(nil) {
		t.Error("IsFloodMAC(nil)")
	}
}
