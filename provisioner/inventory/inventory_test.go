package inventory

import (
	"flag"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"caretaker/internal/golden"
	"caretaker/provisioner/bmc"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// Good files load, bad ones fail with the exact error in their .err
// golden file.
func TestLoad(t *testing.T) {
	golden.ConfigFiles(t, func(path string) error {
		_, err := Load(path)
		return err
	}, *update)
}

// Loading normalises MACs and fills the agent; password files stay names
// inside the secrets directory.
func TestLoadNormalises(t *testing.T) {
	inv, err := Load("testdata/good/full.yml")
	if err != nil {
		t.Fatal(err)
	}
	want := []Host{
		{
			Name: "kvm-a1", Serial: "CZ2150ABCD",
			MACs: []string{"52:54:00:aa:bb:01", "52:54:00:aa:bb:02"},
			BMC: bmc.Config{Type: "ipmi", Address: "10.0.0.11", Username: "admin",
				PasswordFile: "kvm-a1.bmc", Timeout: 5 * time.Second, Retries: 2},
			Role: "worker", Labels: map[string]string{"rack": "a", "zone": "eu-1"},
			Agent: "kvm-a1:9301", CPUs: 64, MemoryBytes: 256 << 30,
		},
		{
			Name: "kvm-b1", MACs: []string{"52:54:00:aa:bb:11"},
			BMC: bmc.Config{Type: "redfish", Address: "https://10.0.1.11", Username: "root",
				PasswordFile: "kvm-b1", Insecure: true},
			Role: "worker", Labels: map[string]string{"rack": "b", "zone": "eu-2"},
			Agent: "10.0.1.21:9301", UnderlayAddress: "10.0.2.21",
		},
		{
			Name: "mon-1", Serial: "CZ2150EFGH", MACs: []string{"52:54:00:aa:bb:21"},
			BMC: bmc.Config{Type: "ipmi", Address: "10.0.2.11:6230", Username: "admin",
				PasswordFile: "mon-1"},
			Role: "monitoring", Agent: "mon-1:9301",
		},
	}
	if !reflect.DeepEqual(inv.Hosts, want) {
		t.Errorf("hosts:\n got %+v\nwant %+v", inv.Hosts, want)
	}
}

// A host built in code is checked by Validate with paths but no file.
func TestValidateInCode(t *testing.T) {
	inv := &Inventory{Hosts: []Host{validHost("kvm-1", "52:54:00:00:00:01"), validHost("kvm-1", "52:54:00:00:00:01")}}
	err := inv.Validate()
	want := "hosts[1].name: \"kvm-1\" is also the name of hosts[0]\n" +
		"hosts[1].macs[0]: 52:54:00:00:00:01 is also a MAC of hosts[0] (kvm-1)"
	if err == nil || err.Error() != want {
		t.Errorf("Validate = %v, want\n%s", err, want)
	}
}

func validHost(name string, macs ...string) Host {
	return Host{
		Name: name, MACs: macs, Role: RoleWorker,
		BMC: bmc.Config{Type: bmc.TypeIPMI, Address: "192.0.2.1", Username: "admin", PasswordFile: name},
	}
}

// The JSON of a host has the YAML's field names: the API and the file
// speak one language, down to fields bmc.Config gains later.
func TestJSONNamesAreYAMLNames(t *testing.T) {
	for _, tt := range []struct{ yamlType, jsonType reflect.Type }{
		{reflect.TypeFor[Host](), reflect.TypeFor[hostJSON]()},
		{reflect.TypeFor[bmc.Config](), reflect.TypeFor[bmcJSON]()},
	} {
		names := func(t reflect.Type, tag string) []string {
			var out []string
			for f := range t.Fields() {
				if f.Tag.Get(tag) == "-" || f.Name == "AddedBy" {
					continue // not part of the inventory file (bmc.Config.SecretsDir; AddedBy, the API's record)
				}
				out = append(out, strings.Split(f.Tag.Get(tag), ",")[0])
			}
			return out
		}
		if y, j := names(tt.yamlType, "yaml"), names(tt.jsonType, "json"); !reflect.DeepEqual(y, j) {
			t.Errorf("%s YAML fields %v, %s JSON fields %v", tt.yamlType, y, tt.jsonType, j)
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	inv, err := Load("testdata/good/full.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range inv.Hosts {
		b, err := h.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var got Host
		if err := got.UnmarshalJSON(b); err != nil {
			t.Fatalf("unmarshal %s: %v", b, err)
		}
		if !reflect.DeepEqual(got, h) {
			t.Errorf("round trip of %s:\n got %+v\nwant %+v", b, got, h)
		}
	}
}

// FuzzParse wants no panic, and of every inventory it accepts: valid
// canonical MACs, unique names and MACs, an agent address, and the same
// result when parsed again.
func FuzzParse(f *testing.F) {
	for _, p := range []string{"testdata/good/full.yml", "testdata/bad/duplicates.yml", "testdata/bad/fields.yml", "testdata/bad/types.yml"} {
		b, err := readFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("hosts:\n- {name: a, macs: [00:00:00:00:00:01], role: worker, bmc: {type: redfish, address: h, username: u, password_file: p}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		inv, err := Parse("/etc/caretaker/inventory.yml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "/etc/caretaker/inventory.yml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		names, macs := map[string]bool{}, map[string]bool{}
		for _, h := range inv.Hosts {
			if names[h.Name] || !nameRE.MatchString(h.Name) {
				t.Fatalf("name %q accepted twice or invalid", h.Name)
			}
			names[h.Name] = true
			for _, m := range h.MACs {
				hw, err := net.ParseMAC(m)
				if err != nil || hw.String() != m || macs[m] {
					t.Fatalf("MAC %q accepted: not canonical or used twice", m)
				}
				macs[m] = true
			}
			if checkHostPort(h.Agent) != nil {
				t.Fatalf("agent %q accepted", h.Agent)
			}
			if bmc.CheckPasswordFile(h.BMC.PasswordFile) != nil {
				t.Fatalf("password_file %q accepted", h.BMC.PasswordFile)
			}
		}
		again := &Inventory{Hosts: inv.Hosts}
		if err := again.Validate(); err != nil {
			t.Fatalf("a parsed inventory fails validation: %v", err)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("hosts:\n")
	for i := range 1000 {
		fmt.Fprintf(&sb, "  - name: kvm-%d\n    serial: S%d\n    macs: [\"52:54:00:00:%02x:%02x\"]\n    role: worker\n    labels: {rack: r%d, zone: z%d}\n    bmc: {type: ipmi, address: 10.0.%d.%d, username: admin, password_file: pw}\n",
			i, i, i>>8, i&0xff, i%20, i%3, i>>8, i&0xff)
	}
	data := []byte(sb.String())
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse("inventory.yml", data); err != nil {
			b.Fatal(err)
		}
	}
}

func readFile(path string) ([]byte, error) { return os.ReadFile(path) }
