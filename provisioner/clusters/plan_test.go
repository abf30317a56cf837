package clusters

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestPlan asks placement about specs through the handler, as the console
// and runbook do: where nodes would go, why they would not fit, the same
// 400 and 409 as a create, and nothing created either way.
func TestPlan(t *testing.T) {
	s := newStore(t, VNIRange{})
	hosts := newHosts(2)
	r, err := New(Options{Store: s, Hosts: hosts, Nodes: newNodes(), Overlays: newOverlays(), VTEP: vtep, Config: Config{Underlay: "eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(Spec{Name: "taken", Pools: []Pool{{Name: "w", Role: "worker", Count: 1, VCPUs: 1, MemoryBytes: gib, DiskBytes: gib}}}); err != nil {
		t.Fatal(err)
	}
	spec := func(name string, count int, memGiB uint64) string {
		b, _ := json.Marshal(Spec{Name: name, Pools: []Pool{
			{Name: "m", Role: "master", Count: 1, VCPUs: 2, MemoryBytes: memGiB * gib, DiskBytes: gib},
			{Name: "w", Role: "worker", Count: count, VCPUs: 2, MemoryBytes: memGiB * gib, DiskBytes: gib},
		}})
		return string(b)
	}
	h := Handler(s, nil, nil, r.Plan)
	for _, tc := range []struct {
		name, body string
		code       int
		want       []string
	}{
		{"fits", spec("new", 1, 1), 200, []string{`"fits": true`, `"name": "new-m-0"`, `"host": "h`, `"name": "new-w-0"`}},
		// one node of a cluster per host: three nodes, two hosts
		{"one node per host", spec("new", 2, 1), 200, []string{`"fits": false`, `"reason": "`, `"name": "new-w-1"`}},
		{"too large", spec("big", 0, 64), 200, []string{`"fits": false`}},
		{"invalid", `{"name": "Bad Name", "pools": []}`, 400, []string{`plan cluster: name`}},
		{"name taken", spec("taken", 1, 1), 409, []string{`already exists`}},
		{"unknown field", `{"name": "x", "cpus": 4}`, 400, []string{`cpus`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/api/v1/clusters/plan", strings.NewReader(tc.body)))
			if w.Code != tc.code {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.code, w.Body)
			}
			for _, want := range tc.want {
				if !strings.Contains(w.Body.String(), want) {
					t.Errorf("answer lacks %q:\n%s", want, w.Body)
				}
			}
		})
	}
	if cs, err := s.List(); err != nil || len(cs) != 1 {
		t.Fatalf("after planning: %d clusters (%v), want only the one created", len(cs), err)
	}

	t.Run("no planner", func(t *testing.T) {
		w := httptest.NewRecorder()
		Handler(s, nil, nil, nil).ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/api/v1/clusters/plan", strings.NewReader(spec("new", 1, 1))))
		if w.Code != http.StatusServiceUnavailable {
			t.Fatalf("status %d, want 503: %s", w.Code, w.Body)
		}
	})
}
