package pxe

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"caretaker/internal/golden"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// Good files load, bad ones fail with the exact error in their .err
// golden file.
func TestLoad(t *testing.T) {
	t.Parallel()
	golden.ConfigFiles(t, func(path string) error {
		_, err := Load(path)
		return err
	}, *update)
}

func TestLoadReadsTemplateFile(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/good/full.yml")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/good/templates/worker.ign.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Profiles[0].Ignition; got != string(want) {
		t.Errorf("profile %s ignition = %q, want the file's text", cfg.Profiles[0].ID, got)
	}
}

func TestMatch(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/good/full.yml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		labels map[string]string
		group  string // "" = no match
	}{
		{"no labels: the default group", map[string]string{}, "default"},
		{"unknown host: the default group", map[string]string{"mac": "52:54:00:00:00:99"}, "default"},
		{"mac written with hyphens in the file", map[string]string{"mac": "52:54:00:aa:bb:01"}, "hv-a1"},
		{"mac and uuid beat mac alone", map[string]string{"mac": "52:54:00:aa:bb:01", "uuid": "4c4c4544-0031-3510-8052-b2c04f4a4e31"}, "hv-a1-by-uuid-and-mac"},
		{"uuid of another host with this mac", map[string]string{"mac": "52:54:00:aa:bb:01", "uuid": "00000000-0000-0000-0000-000000000001"}, "hv-a1"},
		{"uuid alone", map[string]string{"uuid": "00000000-0000-0000-0000-0000000000b2"}, "hv-b2"},
		{"arbitrary label", map[string]string{"rack": "b", "mac": "52:54:00:00:00:99"}, "rack-b"},
		{"equally specific: first in the file", map[string]string{"rack": "b", "mac": "52:54:00:aa:bb:01"}, "hv-a1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, p, ok := cfg.Match(tt.labels)
			if !ok {
				t.Fatalf("no match, want group %s", tt.group)
			}
			if g.ID != tt.group || p.ID != g.Profile {
				t.Errorf("group %s profile %s, want group %s with its profile", g.ID, p.ID, tt.group)
			}
		})
	}

	minimal, err := Load("testdata/good/minimal.yml")
	if err != nil {
		t.Fatal(err)
	}
	if g, _, ok := minimal.Match(map[string]string{"mac": "52:54:00:aa:bb:01"}); ok {
		t.Errorf("config without groups matched group %s", g.ID)
	}
}

func TestMatchConfigBuiltInCode(t *testing.T) {
	t.Parallel()
	cfg := &Config{
		Profiles: []Profile{{ID: "p", Kernel: "/k"}},
		Groups:   []Group{{ID: "g", Profile: "p", Selector: map[string]string{"mac": "52-54-00-AA-BB-01"}}},
	}
	if _, _, ok := cfg.Match(map[string]string{"mac": "52:54:00:aa:bb:01"}); !ok {
		t.Error("a selector MAC in hyphenated upper case did not match its canonical form")
	}
}

func TestNormalizeMAC(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"52:54:00:aa:bb:01", "52:54:00:aa:bb:01"},
		{"52-54-00-AA-BB-01", "52:54:00:aa:bb:01"},
		{"5254.00aa.bb01", "52:54:00:aa:bb:01"},
		{"52:54:00:aa:bb", ""},
		{"02:00:00:00:00:00:00:01", ""}, // EUI-64 is not a NIC's MAC
		{"52:54:00:aa:bb:0g", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got, err := NormalizeMAC(tt.in)
		if tt.want == "" {
			if err == nil {
				t.Errorf("NormalizeMAC(%q) = %q, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("NormalizeMAC(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, pattern := range []string{"testdata/good/*.yml", "testdata/bad/*.yml"} {
		files, _ := filepath.Glob(pattern)
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// Relative files resolve against a directory that does not exist.
		cfg, err := Parse("/nonexistent/pxe.yml", data)
		if err != nil {
			return
		}
		// What loads must be valid: every group names a real profile.
		for _, g := range cfg.Groups {
			found := false
			for _, p := range cfg.Profiles {
				found = found || p.ID == g.Profile
			}
			if !found {
				t.Fatalf("loaded group %q with unknown profile %q", g.ID, g.Profile)
			}
		}
	})
}
