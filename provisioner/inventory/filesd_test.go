package inventory

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"caretaker/internal/golden"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

func TestFileSDTargets(t *testing.T) {
	s := newStore(t, fileInventory(t))
	h := validHost("kvm-c1", "52:54:00:cc:00:01")
	h.Labels = map[string]string{"rack": "c", "zone": "eu-1", "chassis": "blade-7"}
	if err := s.Add(h); err != nil {
		t.Fatal(err)
	}
	all, err := s.All()
	if err != nil {
		t.Fatal(err)
	}
	got := FileSDTargets(all)
	golden.Compare(t, "testdata/golden/filesd.json", got, *update)

	// Prometheus reads it as target groups with the labels the rules
	// expect.
	var groups []*targetgroup.Group
	if err := json.Unmarshal(got, &groups); err != nil {
		t.Fatalf("Prometheus's target groups cannot read the file: %v", err)
	}
	if len(groups) != 4 {
		t.Fatalf("%d groups, want 4", len(groups))
	}
	g := groups[0]
	if g.Targets[0][model.AddressLabel] != "kvm-a1:9301" || g.Labels["host"] != "kvm-a1" || g.Labels["role"] != "worker" || g.Labels["rack"] != "a" {
		t.Errorf("first group = %v, want kvm-a1's agent and labels", g)
	}
}

func TestFileSDTargetsEmpty(t *testing.T) {
	if got := string(FileSDTargets(nil)); got != "[]\n" {
		t.Errorf("FileSDTargets(nil) = %q, want an empty list", got)
	}
}

func TestWriteFileSD(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hosts.json")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	hosts := fileInventory(t).Hosts
	if err := WriteFileSD(path, hosts); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, FileSDTargets(hosts)) {
		t.Errorf("file holds %q, want FileSDTargets", got)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("file mode %v (%v), want 0644 for Prometheus to read", fi.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d files, want only hosts.json (no temporary file left)", len(entries))
	}

	err = WriteFileSD(filepath.Join(dir, "absent", "hosts.json"), hosts)
	if err == nil || !strings.Contains(err.Error(), "write file_sd "+filepath.Join(dir, "absent", "hosts.json")) {
		t.Errorf("WriteFileSD into a missing directory = %v, want an error naming the file", err)
	}
}

func BenchmarkFileSDTargets(b *testing.B) {
	hosts := make([]Host, 1000)
	for i := range hosts {
		hosts[i] = validHost(fmt.Sprintf("kvm-%d", i), fmt.Sprintf("52:54:00:00:%02x:%02x", i>>8, i&0xff))
		hosts[i].Agent = hosts[i].Name + ":9301"
		hosts[i].Labels = map[string]string{"rack": "r1", "zone": "z1"}
	}
	for b.Loop() {
		FileSDTargets(hosts)
	}
}
