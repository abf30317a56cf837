package policy

import (
	"caretaker/internal/golden"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the .err golden files")

// Good files load, bad ones fail with the exact error in their .err
// golden file.
func TestLoad(t *testing.T) {
	golden.ConfigFiles(t, func(path string) error {
		_, err := Load(path)
		return err
	}, *update)
}

func TestDefault(t *testing.T) {
	p := Default()
	for _, alert := range []string{"GuestCrashed", "GuestShutOffUnexpectedly"} {
		r, ok := p.Match(map[string]string{"alertname": alert, "host": "hv-a1", "uuid": "u"})
		if !ok || r.Action != ActionRestartVM {
			t.Errorf("default policy on %s: rule %+v, matched %v; want %s", alert, r, ok, ActionRestartVM)
		}
	}
	if r, ok := p.Match(map[string]string{"alertname": "HostDown"}); ok {
		t.Errorf("default policy matched HostDown with rule %q", r.Name)
	}
}

func TestMatch(t *testing.T) {
	p, err := Load("testdata/good/full.yml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		labels map[string]string
		rule   string // "" = no match
	}{
		{
			name:   "all matchers of the first rule",
			labels: map[string]string{"alertname": "GuestCrashed", "severity": "critical", "domain": "lab-1", "host": "hv-a1"},
			rule:   "restart-crashed-lab-guests",
		},
		{
			name:   "first rule fails on equality, second matches",
			labels: map[string]string{"alertname": "GuestCrashed", "severity": "warning", "domain": "lab-1", "host": "hv-a1"},
			rule:   "restart-any-guest-by-regexp",
		},
		{
			name:   "regexp is anchored at the start",
			labels: map[string]string{"alertname": "GuestCrashed", "severity": "critical", "domain": "prod-lab-1", "host": "hv-a1"},
			rule:   "restart-any-guest-by-regexp",
		},
		{
			name:   "regexp is anchored at the end",
			labels: map[string]string{"alertname": "GuestCrashed", "severity": "critical", "domain": "lab-1", "host": "hv-a1x"},
			rule:   "restart-any-guest-by-regexp",
		},
		{
			name:   "an absent label is the empty string",
			labels: map[string]string{"alertname": "GuestCrashed", "severity": "critical", "host": "hv-a1"},
			rule:   "restart-any-guest-by-regexp",
		},
		{
			name:   "alternation inside the anchors",
			labels: map[string]string{"alertname": "GuestShutOffUnexpectedly"},
			rule:   "restart-any-guest-by-regexp",
		},
		{
			name:   "prefix of an alternative does not match",
			labels: map[string]string{"alertname": "GuestCrashedTwice"},
		},
		{
			name:   "no labels",
			labels: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, ok := p.Match(tt.labels)
			if got := map[bool]string{true: r.Name}[ok]; got != tt.rule {
				t.Errorf("Match = %q (matched %v), want %q", got, ok, tt.rule)
			}
		})
	}
}

// A Rule built in code has no compiled regexps; Match must still honour them.
func TestMatchRuleBuiltInCode(t *testing.T) {
	p := &Policy{Rules: []Rule{
		{Name: "broken", MatchRE: map[string]string{"domain": "("}, Action: ActionRestartVM},
		{Name: "lab", MatchRE: map[string]string{"domain": "lab-.*"}, Action: ActionRestartVM},
	}}
	if r, ok := p.Match(map[string]string{"domain": "lab-2"}); !ok || r.Name != "lab" {
		t.Errorf("Match = %q, %v; want lab", r.Name, ok)
	}
	if _, ok := p.Match(map[string]string{"domain": "xlab-2"}); ok {
		t.Error("unanchored match")
	}
	var nilPolicy *Policy
	if _, ok := nilPolicy.Match(map[string]string{"a": "b"}); ok {
		t.Error("nil policy matched")
	}
}

func FuzzParse(f *testing.F) {
	for _, dir := range []string{"testdata/good", "testdata/bad"} {
		files, _ := filepath.Glob(dir + "/*.yml")
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Add(defaultPolicy)
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yml", data)
		if err != nil {
			if p != nil {
				t.Fatalf("Parse returned a policy and an error: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "fuzz.yml") {
				t.Fatalf("error does not name the file: %q", err)
			}
			return
		}
		if len(p.Rules) == 0 {
			t.Fatal("Parse accepted a policy without rules")
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("Parse accepted a policy that does not validate: %v", err)
		}
		for _, r := range p.Rules {
			if len(r.re) != len(r.MatchRE) {
				t.Fatalf("rule %q: %d compiled regexps for %d matchers", r.Name, len(r.re), len(r.MatchRE))
			}
			// The rule's own equalities, with every regexp label empty,
			// must not crash the matcher whatever the answer.
			p.Match(r.Match)
		}
	})
}

func TestGuards(t *testing.T) {
	tests := []struct {
		name string
		yml  string
		want Guards
	}{
		{"no guards section", "rules: [{name: r, match: {a: b}, action: restart-vm}]\n", DefaultGuards()},
		{"partial section keeps the other defaults", "rules: [{name: r, match: {a: b}, action: restart-vm}]\nguards: {max_unhealthy: \"3\", cooldown: 1m}\n",
			func() Guards { g := DefaultGuards(); g.MaxUnhealthy, g.Cooldown = "3", time.Minute; return g }()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yml", []byte(tt.yml))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(p.GuardSettings(), tt.want) {
				t.Errorf("guards = %+v, want %+v", p.GuardSettings(), tt.want)
			}
		})
	}
	if got := (&Policy{}).GuardSettings(); !reflect.DeepEqual(got, DefaultGuards()) {
		t.Errorf("guards of a policy built in code = %+v, want the defaults", got)
	}
	if got := DefaultGuards().Target(); got.BackoffBase != 10*time.Second || got.MaxAttempts != 3 {
		t.Errorf("default target policy = %+v", got)
	}
}
