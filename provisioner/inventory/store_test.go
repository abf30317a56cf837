package inventory

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"caretaker/internal/kv"
	"caretaker/internal/yamlfile"
)

func openDB(t testing.TB) *kv.Bolt {
	t.Helper()
	db, err := kv.OpenBolt(filepath.Join(t.TempDir(), "caretaker.db"), "test database")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// fileInventory is testdata/good/full.yml: kvm-a1 (serial CZ2150ABCD,
// MACs 52:54:00:aa:bb:01 and :02), kvm-b1, mon-1.
func fileInventory(t testing.TB) *Inventory {
	t.Helper()
	inv, err := Load("testdata/good/full.yml")
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

// storeMaker makes an empty Store whose inventory file is file: newStore
// in a bbolt file, or one in etcd (TestStoreOnEtcd).
type storeMaker func(t testing.TB, file *Inventory) *Store

func newStore(t testing.TB, file *Inventory) *Store {
	t.Helper()
	s, err := NewStore(openDB(t), func() *Inventory { return file })
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStoreAdd(t *testing.T) { testStoreAdd(t, newStore) }

// testStoreAdd runs on the stores newStore makes (TestStoreOnEtcd).
func testStoreAdd(t *testing.T, newStore storeMaker) {
	s := newStore(t, fileInventory(t))
	first := validHost("kvm-c1", "52:54:00:cc:00:01")
	first.Serial = "C1"
	if err := s.Add(first); err != nil {
		t.Fatalf("add kvm-c1: %v", err)
	}
	withSerial := func(h Host, serial string) Host { h.Serial = serial; return h }
	tests := []struct {
		name     string
		host     Host
		want     string // the exact error
		conflict bool
	}{
		{
			name: "invalid fields by their path in the host",
			host: Host{Name: "Bad", MACs: []string{"zz", "52:54:00:cc:00:09", "52:54:00:CC:00:09"}, Role: "db",
				BMC: validHost("x").BMC, Labels: map[string]string{"9": "x"}},
			want: `name: "Bad" is not a DNS label: lower-case letters, digits and '-', at most 63, beginning and ending with a letter or digit` + "\n" +
				`macs[0]: "zz" is not a MAC address` + "\n" +
				`role: "db" is neither "worker" nor "monitoring"` + "\n" +
				`labels.9: "9" is not a Prometheus label name: letters, digits and '_', not beginning with a digit` + "\n" +
				`macs[2]: 52:54:00:cc:00:09 is also macs[1]`,
		},
		{
			name: "invalid BMC under bmc.",
			host: func() Host {
				h := validHost("kvm-c2", "52:54:00:cc:00:02")
				h.BMC.Type = ""
				h.BMC.PasswordFile = "/etc/shadow"
				return h
			}(),
			want: `bmc.type: must be "ipmi" or "redfish"` + "\n" +
				`bmc.password_file: "/etc/shadow": password_file names a file inside the BMC secrets directory (provisioner.bmc.secrets_dir): a file name or a relative path without "..", not an absolute path`,
		},
		{
			name:     "name of a file host",
			host:     validHost("kvm-a1", "52:54:00:cc:00:03"),
			want:     "name: host kvm-a1 already exists (in the inventory file)",
			conflict: true,
		},
		{
			name:     "MAC and serial of a file host, in another spelling",
			host:     withSerial(validHost("kvm-c3", "52:54:00:cc:00:04", "52-54-00-AA-BB-02"), "CZ2150ABCD"),
			want:     `serial: "CZ2150ABCD" is the serial of host kvm-a1 (in the inventory file)` + "\n" + "macs[1]: 52:54:00:aa:bb:02 is a MAC of host kvm-a1 (in the inventory file)",
			conflict: true,
		},
		{
			name:     "name, MAC and serial of a stored host",
			host:     withSerial(validHost("kvm-c1", "52:54:00:cc:00:01"), "C1"),
			want:     "name: host kvm-c1 already exists (added through the API)\n" + `serial: "C1" is the serial of host kvm-c1 (added through the API)` + "\nmacs[0]: 52:54:00:cc:00:01 is a MAC of host kvm-c1 (added through the API)",
			conflict: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Add(tt.host)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Add = %v, want\n%s", err, tt.want)
			}
			if got := errors.Is(err, ErrConflict); got != tt.conflict {
				t.Errorf("errors.Is(err, ErrConflict) = %v, want %v", got, tt.conflict)
			}
			var fe *yamlfile.FieldError
			if !tt.conflict && !errors.As(err, &fe) {
				t.Errorf("invalid host's error %v holds no FieldError", err)
			}
		})
	}
	hosts, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	first.Agent = "kvm-c1:9301"
	if !reflect.DeepEqual(hosts, []Host{first}) {
		t.Errorf("after the failed adds List = %+v, want only %+v", hosts, first)
	}
}

func TestStoreGetRemove(t *testing.T) { testStoreGetRemove(t, newStore) }

// testStoreGetRemove runs on the stores newStore makes (TestStoreOnEtcd).
func testStoreGetRemove(t *testing.T, newStore storeMaker) {
	s := newStore(t, nil)
	h := validHost("kvm-c1", "52:54:00:CC:00:01")
	if err := s.Add(h); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get("kvm-c1")
	if err != nil {
		t.Fatal(err)
	}
	if got.MACs[0] != "52:54:00:cc:00:01" || got.Agent != "kvm-c1:9301" {
		t.Errorf("Get = %+v, want the MAC normalised and the agent defaulted", got)
	}
	if h.MACs[0] != "52:54:00:CC:00:01" {
		t.Errorf("Add changed the caller's MACs: %v", h.MACs)
	}
	if err := s.Remove("kvm-c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("kvm-c1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Remove = %v, want ErrNotFound", err)
	}
	if err := s.Remove("kvm-c1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove = %v, want ErrNotFound", err)
	}
	// The MAC is free again.
	if err := s.Add(validHost("kvm-c9", "52:54:00:cc:00:01")); err != nil {
		t.Errorf("add with a removed host's MAC: %v", err)
	}
}

// The hosts survive the store: a new Store over a reopened file has them.
func TestStoreDurable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "caretaker.db")
	db, err := kv.OpenBolt(path, "test database")
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewStore(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Add(validHost("kvm-c1", "52:54:00:cc:00:01")); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = kv.OpenBolt(path, "test database")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err = NewStore(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	hosts, err := s.List()
	if err != nil || len(hosts) != 1 || hosts[0].Name != "kvm-c1" {
		t.Errorf("List after reopening = %+v, %v; want kvm-c1", hosts, err)
	}
}

func TestStoreAll(t *testing.T) { testStoreAll(t, newStore) }

// testStoreAll runs on the stores newStore makes (TestStoreOnEtcd).
func testStoreAll(t *testing.T, newStore storeMaker) {
	file := fileInventory(t)
	s := newStore(t, file)
	for _, h := range []Host{validHost("a-first", "52:54:00:cc:00:01"), validHost("zz-last", "52:54:00:cc:00:02")} {
		if err := s.Add(h); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.All()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, h := range all {
		names = append(names, h.Name)
	}
	if want := []string{"a-first", "kvm-a1", "kvm-b1", "mon-1", "zz-last"}; !reflect.DeepEqual(names, want) {
		t.Errorf("All = %v, want %v", names, want)
	}
	all[1].MACs[0] = "changed"
	if file.Hosts[0].MACs[0] == "changed" {
		t.Error("All handed out the file's own MAC slice")
	}
}

// A reloaded file that now holds a host added through the API is refused,
// with the file, line and field of each clash.
func TestCheckFile(t *testing.T) { testCheckFile(t, newStore) }

// testCheckFile runs on the stores newStore makes (TestStoreOnEtcd).
func testCheckFile(t *testing.T, newStore storeMaker) {
	s := newStore(t, nil)
	h := validHost("kvm-b1", "52:54:00:aa:bb:02")
	h.Serial = "CZ2150EFGH"
	if err := s.Add(h); err != nil {
		t.Fatal(err)
	}
	err := s.CheckFile(fileInventory(t))
	want := "testdata/good/full.yml:5: hosts[0].macs[1]: 52:54:00:aa:bb:02 is a MAC of host kvm-b1 (added through the API)\n" +
		"testdata/good/full.yml:19: hosts[1].name: host kvm-b1 already exists (added through the API)\n" +
		`testdata/good/full.yml:32: hosts[2].serial: "CZ2150EFGH" is the serial of host kvm-b1 (added through the API)`
	if err == nil || err.Error() != want {
		t.Fatalf("CheckFile = %v, want\n%s", err, want)
	}
	if !errors.Is(err, ErrConflict) {
		t.Errorf("CheckFile's error does not wrap ErrConflict")
	}
	var ye *yamlfile.Error
	if !errors.As(err, &ye) || ye.Line != 5 {
		t.Errorf("CheckFile's error holds no located yamlfile.Error: %v", ye)
	}
	if err := newStore(t, nil).CheckFile(fileInventory(t)); err != nil {
		t.Errorf("CheckFile against an empty store: %v", err)
	}
	if err := s.CheckFile(&Inventory{Hosts: []Host{validHost("kvm-b1", "52:54:00:00:00:01")}}); err == nil ||
		!strings.HasPrefix(err.Error(), "hosts[0].name: ") {
		t.Errorf("CheckFile of an inventory built in code = %v, want the path without file", err)
	}
}
