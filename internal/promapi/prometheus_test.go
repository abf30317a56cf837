package promapi

import (
	"caretaker/internal/testdaemon"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
)

// startPrometheus runs the real Prometheus server without scrape targets
// on a free loopback port and returns its base URL once it is ready.
func startPrometheus(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	// Rules give /api/v1/rules something to list; at a 1h interval they
	// are not evaluated during the test, so it lists them without alerts.
	ruleFile := filepath.Join(dir, "caretaker.rules.yml")
	if err := os.WriteFile(ruleFile, []byte(`groups:
- name: caretaker
  rules:
  - alert: GuestDown
    expr: vector(1)
    for: 5m
    labels: {severity: critical}
    annotations: {summary: down}
  - record: caretaker:one
    expr: vector(1)
`), 0o600); err != nil {
		t.Fatal(err)
	}
	config := "global:\n  scrape_interval: 1h\n  evaluation_interval: 1h\nrule_files: [" + ruleFile + "]\n"
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return testdaemon.Start(t, "prometheus", func(addr string) []string {
		return []string{"--config.file=" + cfg, "--storage.tsdb.path=" + filepath.Join(dir, "data"),
			"--web.listen-address=" + addr, "--log.level=warn"}
	})
}

// shape reduces a JSON document to its keys and value types; arrays take
// the shape of their first element, and "[]" stands for an empty array,
// which matches any array.
func shape(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = shape(e)
		}
		return out
	case []any:
		if len(v) == 0 {
			return "[]"
		}
		return []any{shape(v[0])}
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "bool"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

// sameShape reports the paths where a and b differ in shape.
func sameShape(path string, a, b any) []string {
	if a == "[]" || b == "[]" {
		if _, ok := a.([]any); ok || a == "[]" {
			if _, ok := b.([]any); ok || b == "[]" {
				return nil
			}
		}
	}
	switch a := a.(type) {
	case map[string]any:
		bm, ok := b.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: object vs %v", path, b)}
		}
		keys := map[string]bool{}
		for k := range a {
			keys[k] = true
		}
		for k := range bm {
			keys[k] = true
		}
		var diffs []string
		for k := range keys {
			diffs = append(diffs, sameShape(path+"."+k, a[k], bm[k])...)
		}
		return diffs
	case []any:
		ba, ok := b.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: array vs %v", path, b)}
		}
		return sameShape(path+"[]", a[0], ba[0])
	}
	if !reflect.DeepEqual(a, b) {
		return []string{fmt.Sprintf("%s: %v vs %v", path, a, b)}
	}
	return nil
}

func getJSON(t *testing.T, url string) (int, any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("GET %s: %v in %s", url, err, b)
	}
	return resp.StatusCode, v
}

// TestShapeMatchesPrometheus compares our responses with the real
// Prometheus' (the Debian package, v2.x): same status codes, same keys,
// same JSON types. Values differ (our TSDB has data, its has none).
func TestShapeMatchesPrometheus(t *testing.T) {
	prom := startPrometheus(t)
	ours := newFixture(t).srv.URL
	ts := fmt.Sprint(t0)
	paths := []struct{ name, path string }{
		{"vector", "/api/v1/query" + q("query", "vector(1)", "time", ts)},
		{"scalar", "/api/v1/query" + q("query", "scalar(vector(1))", "time", ts)},
		{"string", "/api/v1/query" + q("query", `"caretaker"`, "time", ts)},
		{"matrix", "/api/v1/query_range" + q("query", "vector(1)", "start", fmt.Sprint(t0-60), "end", ts, "step", "30s")},
		{"exemplars", "/api/v1/query_exemplars" + q("query", "up", "start", fmt.Sprint(t0-60), "end", ts)},
		{"format query", "/api/v1/format_query" + q("query", "sum(rate(up[5m]))")},
		{"labels", "/api/v1/labels"},
		{"label values", "/api/v1/label/__name__/values"},
		{"series", "/api/v1/series" + q("match[]", `{__name__=~".+"}`)},
		{"buildinfo", "/api/v1/status/buildinfo"},
		{"rules", "/api/v1/rules"},
		{"alerts", "/api/v1/alerts"},
		{"metadata", "/api/v1/metadata"},
		{"bad time", "/api/v1/query" + q("query", "up", "time", "yesterday")},
		{"bad query", "/api/v1/query" + q("query", "sum(", "time", ts)},
		{"too many points", "/api/v1/query_range" + q("query", "up", "start", "0", "end", "11001", "step", "1")},
		{"series without match", "/api/v1/series"},
		// Two series on the right match the one on the left: an execution error.
		{"many-to-one", "/api/v1/query" + q("query", `vector(1) + on() (label_replace(vector(1), "b", "1", "", "") or label_replace(vector(1), "b", "2", "", ""))`, "time", ts)},
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			pc, pv := getJSON(t, prom+p.path)
			oc, ov := getJSON(t, ours+p.path)
			if pc != oc {
				t.Errorf("status %d, Prometheus %d", oc, pc)
			}
			diffs := sameShape("", shape(ov), shape(pv))
			sort.Strings(diffs)
			for _, d := range diffs {
				t.Errorf("shape differs at %s (ours vs Prometheus)", d)
			}
			if t.Failed() || testing.Verbose() {
				po, _ := json.Marshal(pv)
				oo, _ := json.Marshal(ov)
				t.Logf("Prometheus: %s\nours:       %s", po, oo)
			}
		})
	}
}
