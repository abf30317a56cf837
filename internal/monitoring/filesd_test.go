package monitoring

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/prometheus/discovery/targetgroup"
	"gopkg.in/yaml.v3"
)

// sdGroup is one entry of a file_sd file.
type sdGroup struct {
	Targets []string          `json:"targets" yaml:"targets"`
	Labels  map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
}

// writeSDFile replaces path atomically, as a configuration tool should, so
// that the poller never reads half a file.
func writeSDFile(t *testing.T, path string, marshal func(any) ([]byte, error), groups []sdGroup) {
	t.Helper()
	b, err := marshal(groups)
	if err != nil {
		t.Fatalf("marshal %s: %v", path, err)
	}
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// awaitTargets waits until Targets() lists exactly want (sorted by host).
func awaitTargetList(t *testing.T, m *Monitor, want []Target) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var got []Target
		for _, s := range m.Targets() {
			got = append(got, s.Target)
		}
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Targets() = %+v after %s, want %+v", got, waitLimit, want)
		}
		// Polling Targets is the only signal the scrape manager gives.
		<-tick.C
	}
}

func TestFileSD(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ext     string
		marshal func(any) ([]byte, error)
	}{
		{"json", json.Marshal},
		{"yml", yaml.Marshal},
	} {
		t.Run(tc.ext, func(t *testing.T) {
			t.Parallel()
			static, first, second := newAgent(t, 1), newAgent(t, 1), newAgent(t, 1)
			dir := t.TempDir()
			path := filepath.Join(dir, "agents."+tc.ext)
			writeSDFile(t, path, tc.marshal, []sdGroup{{Targets: []string{first.address()}, Labels: map[string]string{"host": "kvm-1"}}})

			m := startMonitor(t, Options{
				Targets: []Target{{Host: "kvm-0", Address: static.address()}},
				FileSD:  []string{filepath.Join(dir, "*."+tc.ext)},
			})
			// Start reads the files before it returns.
			if ts := m.Targets(); len(ts) != 2 || ts[0].Host != "kvm-0" || ts[1].Host != "kvm-1" || ts[1].Address != first.address() {
				t.Fatalf("Targets() after Start = %+v, want kvm-0 (static) and kvm-1 (file_sd)", ts)
			}
			first.awaitScrapes(t, 2)
			if vec, err := m.Query(t.Context(), `caretaker_kvm_domain_state{host="kvm-1",job="caretaker-agent"}`, time.Now()); err != nil || len(vec) != 1 {
				t.Fatalf("query of the file_sd target = %v, %v; want one series", vec, err)
			}

			// The second target has no host label: it gets its hostname.
			writeSDFile(t, path, tc.marshal, []sdGroup{
				{Targets: []string{first.address()}, Labels: map[string]string{"host": "kvm-1"}},
				{Targets: []string{second.address()}},
			})
			awaitTargetList(t, m, []Target{
				{Host: "127.0.0.1", Address: second.address()},
				{Host: "kvm-0", Address: static.address()},
				{Host: "kvm-1", Address: first.address()},
			})
			second.awaitScrapes(t, 2)
			first.awaitScrapes(t, 1)
			static.awaitScrapes(t, 1)
			vec, err := m.Query(t.Context(), `caretaker_kvm_domain_state`, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			hosts := map[string]string{}
			for _, s := range vec {
				hosts[s.Metric.Get("host")] = s.Metric.Get("instance")
			}
			want := map[string]string{"kvm-0": static.address(), "kvm-1": first.address(), "127.0.0.1": second.address()}
			if len(hosts) != len(want) {
				t.Fatalf("scraped hosts = %v, want %v", hosts, want)
			}
			for h, inst := range want {
				if hosts[h] != inst {
					t.Errorf("host %s scraped from %q, want %q", h, hosts[h], inst)
				}
			}

			// SetTargets replaces the static targets and keeps the file's.
			if err := m.SetTargets(nil); err != nil {
				t.Fatalf("SetTargets(nil): %v", err)
			}
			if ts := m.Targets(); len(ts) != 2 || ts[0].Host != "127.0.0.1" || ts[1].Host != "kvm-1" {
				t.Errorf("Targets() after SetTargets(nil) = %+v, want the two file_sd targets", ts)
			}

			// A removed file drops its targets.
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			awaitTargetList(t, m, nil)
		})
	}
}

func TestFileGroupHost(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		file   string
		hosts  []string // of the targets kept, in order
		errors bool
	}{
		{"group label", `[{"targets":["a:1"],"labels":{"host":"g"}}]`, []string{"g"}, false},
		{"hostname derived", `[{"targets":["kvm-7.lab:9301","[::1]:9301"]}]`, []string{"kvm-7.lab", "::1"}, false},
		{"no port dropped", `[{"targets":["kvm-7","kvm-8:9301"]}]`, []string{"kvm-8"}, false},
		{"not a list", `{"targets":["a:1"]}`, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			groups, err := parseFileSD("x.json", []byte(tc.file), testLogger(t))
			if (err != nil) != tc.errors {
				t.Fatalf("parseFileSD error = %v, want error %v", err, tc.errors)
			}
			var hosts []string
			for _, g := range groups {
				for _, tg := range g.Targets {
					hosts = append(hosts, string(tg["host"]))
				}
			}
			if !slices.Equal(hosts, tc.hosts) {
				t.Errorf("hosts = %v, want %v", hosts, tc.hosts)
			}
		})
	}
}

func TestFileSDRead(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "a.json")
	sd := newFileSD([]string{filepath.Join(dir, "*.json")}, testLogger(t))
	hostsOf := func(groups map[string]*targetgroup.Group) []string {
		var out []string
		for _, g := range groups {
			for _, tg := range g.Targets {
				out = append(out, string(tg["host"]))
			}
		}
		slices.Sort(out)
		return out
	}
	for _, step := range []struct {
		name    string
		content string // "" removes the file
		changed bool
		hosts   []string
	}{
		{"first read", `[{"targets":["kvm-1:9301"]}]`, true, []string{"kvm-1"}},
		{"unchanged", `[{"targets":["kvm-1:9301"]}]`, false, []string{"kvm-1"}},
		{"grown", `[{"targets":["kvm-1:9301","kvm-2:9301"]}]`, true, []string{"kvm-1", "kvm-2"}},
		{"broken keeps the previous targets", `[{"targets":`, false, []string{"kvm-1", "kvm-2"}},
		{"removed", "", true, nil},
	} {
		if step.content == "" {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(path, []byte(step.content), 0o644); err != nil {
			t.Fatal(err)
		}
		groups, changed := sd.read()
		if changed != step.changed || !slices.Equal(hostsOf(groups), step.hosts) {
			t.Errorf("%s: read() = hosts %v, changed %v; want %v, %v", step.name, hostsOf(groups), changed, step.hosts, step.changed)
		}
	}
}
