package guests

import (
	"flag"
	"path/filepath"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"caretaker/internal/golden"
	"caretaker/internal/guestmeta"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func testNode() Node {
	return Node{
		Cluster: "c1", Name: "c1-worker-0", Role: RoleWorker,
		VCPUs: 2, MemoryBytes: 2 << 30, DiskBytes: 20 << 30,
		Bridge: "br-c1", BaseImage: "debian-12.qcow2", Pool: "guests",
		UserData: "#cloud-config\n",
	}
}

func TestDomainXMLGolden(t *testing.T) {
	t.Parallel()
	ign := testNode()
	ign.Name, ign.Role, ign.UserData = "c1-master-0", RoleMaster, ""
	ign.Ignition = `{"ignition":{"version":"3.4.0"}}`
	ign.MAC = "52:54:00:AA:BB:01"
	ign.UUID = "0F0E0D0C-0B0A-0908-0706-050403020100"
	for _, tc := range []struct {
		golden string
		node   Node
		opts   []Option
	}{
		{"cloud-init-kvm.xml", testNode(), nil},
		{"cloud-init-qemu.xml", testNode(), []Option{DomainType(TypeQEMU)}},
		{"ignition-kvm.xml", ign, []Option{IgnitionFile("/var/lib/libvirt/images/c1-master-0.ign")}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			got, err := DomainXML(tc.node, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			golden.Compare(t, filepath.Join("testdata", tc.golden), []byte(got), *update)
			// What the kvm collector reads back.
			var d libvirtxml.Domain
			if err := d.Unmarshal(got); err != nil {
				t.Fatal(err)
			}
			meta, err := guestmeta.Parse(d.Metadata.XML)
			if err != nil {
				t.Fatal(err)
			}
			want := guestmeta.Metadata{Intent: guestmeta.IntentRunning, Cluster: tc.node.Cluster, Role: tc.node.Role}
			if meta != want {
				t.Errorf("metadata reads back as %+v, want %+v", meta, want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		change func(*Node)
		want   string // "" for valid
	}{
		{"valid", func(*Node) {}, ""},
		{"uppercase name", func(n *Node) { n.Name = "Worker" }, `node "Worker" of cluster "c1": name "Worker": want 1-63 lowercase letters`},
		{"empty cluster", func(n *Node) { n.Cluster = "" }, `cluster "": want 1-63`},
		{"role", func(n *Node) { n.Role = "infra" }, `role "infra": want "master" or "worker"`},
		{"vcpus", func(n *Node) { n.VCPUs = 0 }, "vcpus 0: want at least 1"},
		{"memory odd", func(n *Node) { n.MemoryBytes = 64<<20 + 1 }, "memory 67108865 bytes: want at least 1 MiB, a whole number of KiB"},
		{"disk", func(n *Node) { n.DiskBytes = 0 }, "disk bytes: want more than 0"},
		{"bridge long", func(n *Node) { n.Bridge = "br-a-very-long-name" }, `bridge "br-a-very-long-name": want an interface name of 1-15 letters`},
		{"mac multicast", func(n *Node) { n.MAC = "01:00:5e:00:00:01" }, `mac "01:00:5e:00:00:01": want a unicast MAC`},
		{"mac garbage", func(n *Node) { n.MAC = "52:54" }, `mac "52:54"`},
		{"no pool", func(n *Node) { n.Pool = "" }, "pool: empty"},
		{"base path", func(n *Node) { n.BaseImage = "/var/lib/x.qcow2" }, `base image "/var/lib/x.qcow2": want a volume name in pool "guests"`},
		{"two seeds", func(n *Node) { n.Ignition = "{}" }, "ignition and user data/meta data both set"},
		{"no seed", func(n *Node) { n.UserData = "" }, "neither user data nor ignition set"},
		{"uuid", func(n *Node) { n.UUID = "1234" }, `uuid "1234": want the form`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := testNode()
			tc.change(&n)
			err := n.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("got %v, want no error", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if _, xerr := DomainXML(n); (xerr == nil) != (err == nil) {
				t.Errorf("DomainXML error %v disagrees with Validate's %v", xerr, err)
			}
		})
	}
}

func TestDomainXMLOptions(t *testing.T) {
	t.Parallel()
	if _, err := DomainXML(testNode(), DomainType("xen")); err == nil || !strings.Contains(err.Error(), `domain type "xen"`) {
		t.Errorf("unknown domain type: got %v", err)
	}
	n := testNode()
	n.UserData, n.Ignition = "", "{}"
	if _, err := DomainXML(n); err == nil || !strings.Contains(err.Error(), "no IgnitionFile option") {
		t.Errorf("ignition without a file: got %v", err)
	}
}

func TestMAC(t *testing.T) {
	t.Parallel()
	a, b := testNode(), testNode()
	b.Name = "c1-worker-1"
	c := testNode()
	c.Cluster = "c2"
	for _, n := range []Node{a, b, c} {
		if m := n.mac(); !strings.HasPrefix(m, "52:54:00:") || len(m) != 17 {
			t.Errorf("MAC(%s/%s) = %q, want 52:54:00:xx:xx:xx", n.Cluster, n.Name, m)
		}
	}
	if a.mac() != testNode().mac() {
		t.Error("derived MAC is not stable")
	}
	if a.mac() == b.mac() || a.mac() == c.mac() {
		t.Errorf("derived MACs collide: %s %s %s", a.mac(), b.mac(), c.mac())
	}
	a.MAC = "52:54:00:AB:CD:EF"
	if a.mac() != "52:54:00:ab:cd:ef" {
		t.Errorf("given MAC: got %s", a.mac())
	}
}

// FuzzDomainXML feeds stored desired state (outside input) to DomainXML:
// it either refuses the node or gives XML that libvirtxml reads back with
// the node's name, MAC, bridge and metadata intact.
func FuzzDomainXML(f *testing.F) {
	f.Add("c1", "c1-worker-0", "worker", "br-c1", "", "base", "#cloud-config\n", "")
	f.Add("c&d", "n", "master", "br<", "52:54:00:00:00:01", "b", "", "{}")
	f.Fuzz(func(t *testing.T, cluster, name, role, bridge, mac, base, userData, ignition string) {
		n := Node{Cluster: cluster, Name: name, Role: role, VCPUs: 1, MemoryBytes: 64 << 20, DiskBytes: 1 << 30,
			Bridge: bridge, MAC: mac, BaseImage: base, Pool: "p", UserData: userData, Ignition: ignition}
		s, err := DomainXML(n, IgnitionFile("/p/x.ign"))
		if err != nil {
			return
		}
		var d libvirtxml.Domain
		if err := d.Unmarshal(s); err != nil {
			t.Fatalf("output does not parse: %v\n%s", err, s)
		}
		meta, err := guestmeta.Parse(d.Metadata.XML)
		if err != nil || meta.Cluster != cluster || meta.Role != role {
			t.Fatalf("metadata %+v, %v; want cluster %q role %q", meta, err, cluster, role)
		}
		nic := d.Devices.Interfaces[0]
		if d.Name != name || nic.Source.Bridge.Bridge != bridge || nic.MAC.Address != n.mac() {
			t.Fatalf("name %q bridge %q mac %q do not read back", d.Name, nic.Source.Bridge.Bridge, nic.MAC.Address)
		}
	})
}
