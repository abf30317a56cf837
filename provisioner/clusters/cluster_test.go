package clusters

import (
	"strings"
	"testing"
)

const gib = 1 << 30

func pools(p ...Pool) []Pool { return p }

func masters(n int) Pool {
	return Pool{Name: "masters", Role: RoleMaster, Count: n, VCPUs: 2, MemoryBytes: 4 * gib, DiskBytes: 20 * gib}
}

func workers(n int) Pool {
	return Pool{Name: "workers", Role: RoleWorker, Count: n, VCPUs: 4, MemoryBytes: 8 * gib, DiskBytes: 40 * gib}
}

func TestSpecValidate(t *testing.T) {
	ok := Spec{Name: "lab", Pools: pools(masters(3), workers(3))}
	with := func(f func(*Spec)) Spec {
		s := ok
		s.Pools = append([]Pool(nil), ok.Pools...)
		f(&s)
		return s
	}
	tests := []struct {
		name string
		spec Spec
		want []string // each must appear in the error; none: valid
	}{
		{"valid", ok, nil},
		{"twelve characters", with(func(s *Spec) { s.Name = "abcdefghijkl" }), nil},
		{"workers only", with(func(s *Spec) { s.Pools = pools(workers(1)) }), nil},
		{"zero count in one pool", with(func(s *Spec) { s.Pools[1].Count = 0 }), nil},
		{"custom pool name", with(func(s *Spec) { s.Pools[1].Name = "gpu-1" }), nil},
		{"base image", with(func(s *Spec) { s.BaseImage = "debian-12.qcow2" }), nil},
		{"thirteen characters", with(func(s *Spec) { s.Name = "abcdefghijklm" }),
			[]string{`name "abcdefghijklm": 13 characters, must be at most 12, so that the bridge br-<name> fits the 15-byte interface name limit`}},
		{"empty name", with(func(s *Spec) { s.Name = "" }), []string{`name "": empty`}},
		{"upper case", with(func(s *Spec) { s.Name = "Lab" }), []string{`name "Lab": must be lowercase letters`}},
		{"leading digit", with(func(s *Spec) { s.Name = "1lab" }), []string{`name "1lab": must be lowercase`}},
		{"trailing dash", with(func(s *Spec) { s.Name = "lab-" }), []string{`name "lab-": must be lowercase`}},
		{"underscore", with(func(s *Spec) { s.Name = "la_b" }), []string{`name "la_b": must be lowercase`}},
		{"no pools", with(func(s *Spec) { s.Pools = nil }), []string{"pools: empty, need at least one pool"}},
		{"no nodes", with(func(s *Spec) { s.Pools[0].Count, s.Pools[1].Count = 0, 0 }), []string{"pools: no nodes"}},
		{"zero vcpus", with(func(s *Spec) { s.Pools[1].VCPUs = 0 }), []string{"pools[1].vcpus: 0, must be at least 1"}},
		{"too many vcpus", with(func(s *Spec) { s.Pools[0].VCPUs = 1000 }), []string{"pools[0].vcpus: 1000, must be at most 256"}},
		{"negative count", with(func(s *Spec) { s.Pools[1].Count = -1 }), []string{"pools[1].count: -1, must not be negative"}},
		{"huge count", with(func(s *Spec) { s.Pools[1].Count = 5000 }), []string{"pools[1].count: 5000, must be at most 1000"}},
		{"too many in all", with(func(s *Spec) { s.Pools[0].Count, s.Pools[1].Count = 600, 600 }), []string{"pools: 1200 nodes in all, must be at most 1000"}},
		{"small memory", with(func(s *Spec) { s.Pools[0].MemoryBytes = 1 << 20 }), []string{"pools[0].memory_bytes: 1048576, must be at least 67108864 (64 MiB)"}},
		{"huge memory", with(func(s *Spec) { s.Pools[0].MemoryBytes = 8 << 40 }), []string{"pools[0].memory_bytes: 8796093022208, must be at most"}},
		{"odd memory", with(func(s *Spec) { s.Pools[0].MemoryBytes = 4*gib + 1 }), []string{"pools[0].memory_bytes: 4294967297, must be a whole number of MiB"}},
		{"no disk", with(func(s *Spec) { s.Pools[1].DiskBytes = 0 }), []string{"pools[1].disk_bytes: 0, must be at least 1048576 (1 MiB)"}},
		{"huge disk", with(func(s *Spec) { s.Pools[1].DiskBytes = 1 << 50 }), []string{"pools[1].disk_bytes: 1125899906842624, must be at most"}},
		// The agents' default bound (--guests.max-disk-bytes), checked before placement.
		{"disk above the agents' bound", with(func(s *Spec) { s.Pools[1].DiskBytes = 2<<40 + 1<<20 }), []string{"pools[1].disk_bytes: 2199024304128, must be at most 2199023255552 (2 TiB, what agents allow by default)"}},
		{"bad role", with(func(s *Spec) { s.Pools[0].Role = "boss" }), []string{`pools[0].role "boss": must be "master" or "worker"`}},
		{"duplicate pool", with(func(s *Spec) { s.Pools[1].Name = "masters" }), []string{`pools[1].name "masters": also the name of pools[0]`}},
		{"long pool name", with(func(s *Spec) { s.Pools[1].Name = strings.Repeat("w", 21) }), []string{"pools[1].name", "21 characters, must be at most 20"}},
		{"empty pool name", with(func(s *Spec) { s.Pools[0].Name = "" }), []string{`pools[0].name "": empty`}},
		{"control character in image", with(func(s *Spec) { s.BaseImage = "a\nb" }), []string{"base_image", "control characters"}},
		{"long image", with(func(s *Spec) { s.BaseImage = strings.Repeat("x", 2000) }), []string{"base_image: 2000 bytes, must be at most 1024"}},
		{"every problem reported", with(func(s *Spec) { s.Name = "X"; s.Pools[0].VCPUs = 0; s.Pools[1].Role = "" }),
			[]string{`name "X"`, "pools[0].vcpus", "pools[1].role"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want an error with %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate: %q\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

func TestNamesFitInterfaceNames(t *testing.T) {
	name := strings.Repeat("a", MaxNameLen)
	for _, ifname := range []string{Bridge(name), Device(name)} {
		if len(ifname) > 15 {
			t.Errorf("%s: %d bytes, the kernel takes 15", ifname, len(ifname))
		}
	}
	if got := NodeName("lab", "workers", 12); got != "lab-workers-12" {
		t.Errorf("NodeName = %q", got)
	}
}
