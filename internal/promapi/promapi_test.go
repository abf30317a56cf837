package promapi

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/tsdb"

	"caretaker/internal/golden"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// t0 is the fixed "now" of the tests (2023-11-14T22:13:20Z): every sample,
// rule evaluation and default query time derives from it, so the responses
// are byte-stable.
const t0 = 1_700_000_000

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// groupRules is a RulesRetriever over rule groups evaluated by hand, the
// way the rules manager holds them.
type groupRules []*rules.Group

func (g groupRules) RuleGroups() []*rules.Group { return g }

func (g groupRules) AlertingRules() []*rules.AlertingRule {
	var out []*rules.AlertingRule
	for _, grp := range g {
		for _, r := range grp.Rules() {
			if ar, ok := r.(*rules.AlertingRule); ok {
				out = append(out, ar)
			}
		}
	}
	return out
}

type fixture struct {
	db     *tsdb.DB
	engine *promql.Engine
	rules  groupRules
	srv    *httptest.Server
}

// newFixture opens a real TSDB, writes ten minutes of samples up to t0,
// evaluates a real rule group once at t0, and serves the API over them.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	logger := testLogger(t)
	db, err := tsdb.Open(t.TempDir(), logger, nil, tsdb.DefaultOptions(), nil)
	if err != nil {
		t.Fatalf("open tsdb: %v", err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("close tsdb: %v", err)
		}
	})

	type series struct {
		lset  labels.Labels
		value func(i int) float64 // the i-th sample, every 15s
	}
	all := []series{
		{labels.FromStrings("__name__", "caretaker_kvm_guest_up", "host", "h1", "guest", "g1"), func(int) float64 { return 1 }},
		{labels.FromStrings("__name__", "caretaker_kvm_guest_up", "host", "h1", "guest", "g2"), func(int) float64 { return 0 }},
		{labels.FromStrings("__name__", "caretaker_kvm_guest_up", "host", "h2", "guest", "g3"), func(int) float64 { return 1 }},
		{labels.FromStrings("__name__", "caretaker_host_cpu_seconds_total", "host", "h1", "mode", "idle"), func(i int) float64 { return 15 * float64(i) }},
		{labels.FromStrings("__name__", "caretaker_host_cpu_seconds_total", "host", "h2", "mode", "idle"), func(i int) float64 { return 7.5 * float64(i) }},
		{labels.FromStrings("__name__", "caretaker_host_entropy_ratio", "host", "h1"), func(int) float64 { return 1e-7 }},
	}
	app := db.Appender(context.Background())
	for _, s := range all {
		for i := 0; i <= 40; i++ {
			ts := (t0 - 600 + 15*int64(i)) * 1000
			if _, err := app.Append(0, s.lset, ts, s.value(i)); err != nil {
				t.Fatalf("append %s: %v", s.lset, err)
			}
		}
	}
	if err := app.Commit(); err != nil {
		t.Fatalf("commit: %v", err)
	}

	p := parser.NewParser(parser.Options{})
	engine := promql.NewEngine(promql.EngineOpts{
		Logger:                   logger,
		MaxSamples:               1_000_000,
		Timeout:                  time.Minute,
		NoStepSubqueryIntervalFn: func(int64) int64 { return 15_000 },
		EnableAtModifier:         true,
		EnableNegativeOffset:     true,
		Parser:                   p,
	})
	t.Cleanup(func() { _ = engine.Close() })

	f := &fixture{db: db, engine: engine}
	f.rules = groupRules{f.evalRules(t, p)}

	api, err := New(Options{
		Queryable: db,
		Engine:    engine,
		Rules:     f.rules,
		Parser:    p,
		Logger:    logger,
		Now:       func() time.Time { return time.Unix(t0, 0) },
	})
	if err != nil {
		t.Fatalf("new api: %v", err)
	}
	mux := http.NewServeMux()
	for _, p := range api.Paths() {
		mux.Handle(p, api.Handler())
	}
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) evalRules(t *testing.T, p parser.Parser) *rules.Group {
	t.Helper()
	mustParse := func(s string) parser.Expr {
		e, err := p.ParseExpr(s)
		if err != nil {
			t.Fatalf("parse %q: %v", s, err)
		}
		return e
	}
	guestDown := rules.NewAlertingRule("GuestDown", mustParse(`caretaker_kvm_guest_up == 0`), 0, 0,
		labels.FromStrings("severity", "critical"),
		labels.FromStrings("summary", "Guest {{ $labels.guest }} on {{ $labels.host }} is down"),
		labels.EmptyLabels(), "", false, testLogger(t))
	hostGone := rules.NewAlertingRule("HostGone", mustParse(`absent(caretaker_kvm_guest_up{host="h9"})`), 5*time.Minute, 0,
		labels.EmptyLabels(), labels.EmptyLabels(), labels.EmptyLabels(), "", false, testLogger(t))
	idle := rules.NewRecordingRule("host:caretaker_host_cpu_idle:rate1m", mustParse(`rate(caretaker_host_cpu_seconds_total{mode="idle"}[1m])`), labels.EmptyLabels())
	g := rules.NewGroup(rules.GroupOptions{
		Name:     "caretaker",
		File:     "alerts/caretaker.rules.yml",
		Interval: 15 * time.Second,
		Rules:    []rules.Rule{guestDown, hostGone, idle},
		Opts: &rules.ManagerOptions{
			QueryFunc:    rules.EngineQueryFunc(f.engine, f.db),
			NotifyFunc:   func(context.Context, string, ...*rules.Alert) {},
			AppendableV2: f.db,
			Queryable:    f.db,
			Context:      context.Background(),
			Logger:       testLogger(t),
		},
	})
	g.Eval(context.Background(), time.Unix(t0, 0))
	return g
}

// get sends a request and returns the status and body. A non-nil form is
// sent as a POST body.
func (f *fixture) do(t *testing.T, method, target string, form url.Values) (int, []byte) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, f.srv.URL+target, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); len(b) > 0 && resp.StatusCode != http.StatusMethodNotAllowed && ct != "application/json" {
		t.Errorf("%s %s: content type %q", method, target, ct)
	}
	return resp.StatusCode, b
}

// normalize zeroes the only unstable fields: the wall-clock timings of
// rule evaluations and of query stats.
func normalize(b []byte) []byte {
	durations := regexp.MustCompile(`"(\w*Time)":[0-9.e+-]+`)
	lastEval := regexp.MustCompile(`"lastEvaluation":"[^"]*"`)
	b = durations.ReplaceAll(b, []byte(`"$1":0`))
	return lastEval.ReplaceAll(b, []byte(`"lastEvaluation":"(normalized)"`))
}

func q(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Add(kv[i], kv[i+1])
	}
	return "?" + v.Encode()
}

func TestEndpoints(t *testing.T) {
	f := newFixture(t)
	ts := fmt.Sprint(t0)
	tests := []struct {
		name   string
		method string
		target string
		form   url.Values // POST body
		code   int
		golden string // testdata/<golden>.json; several cases may share one
	}{
		// Instant queries.
		{"vector", "GET", "/api/v1/query" + q("query", "caretaker_kvm_guest_up"), nil, 200, "query_vector"},
		{"vector at rfc3339 time", "GET", "/api/v1/query" + q("query", "caretaker_kvm_guest_up", "time", "2023-11-14T22:13:20Z"), nil, 200, "query_vector"},
		{"vector at float time", "GET", "/api/v1/query" + q("query", "caretaker_kvm_guest_up", "time", ts+".000"), nil, 200, "query_vector"},
		{"vector by POST", "POST", "/api/v1/query", url.Values{"query": {"caretaker_kvm_guest_up"}, "time": {ts}}, 200, "query_vector"},
		{"vector limit", "GET", "/api/v1/query" + q("query", "caretaker_kvm_guest_up", "limit", "1"), nil, 200, "query_vector_limit"},
		{"vector at millisecond time", "GET", "/api/v1/query" + q("query", "caretaker_host_entropy_ratio", "time", ts+".1234"), nil, 200, "query_vector_small"},
		{"scalar", "GET", "/api/v1/query" + q("query", "scalar(sum(caretaker_kvm_guest_up))", "time", ts), nil, 200, "query_scalar"},
		{"string", "GET", "/api/v1/query" + q("query", `"caretaker"`, "time", ts), nil, 200, "query_string"},
		{"empty vector", "GET", "/api/v1/query" + q("query", "nonexistent_metric", "time", ts), nil, 200, "query_empty"},
		{"rate over lookback", "GET", "/api/v1/query" + q("query", "rate(caretaker_host_cpu_seconds_total[1m])", "lookback_delta", "1m"), nil, 200, "query_rate"},
		{"stats", "GET", "/api/v1/query" + q("query", "sum(caretaker_kvm_guest_up)", "stats", "yes"), nil, 200, "query_stats"},

		// Range queries.
		{"matrix", "GET", "/api/v1/query_range" + q("query", "rate(caretaker_host_cpu_seconds_total[1m])", "start", fmt.Sprint(t0-120), "end", ts, "step", "30s"), nil, 200, "query_range"},
		{"matrix float step rfc3339", "POST", "/api/v1/query_range", url.Values{"query": {"rate(caretaker_host_cpu_seconds_total[1m])"}, "start": {"2023-11-14T22:11:20Z"}, "end": {"2023-11-14T22:13:20Z"}, "step": {"30"}, "max_source_resolution": {"5m"}}, 200, "query_range"},
		{"matrix limit", "GET", "/api/v1/query_range" + q("query", "caretaker_kvm_guest_up", "start", fmt.Sprint(t0-60), "end", ts, "step", "1m", "limit", "2"), nil, 200, "query_range_limit"},
		{"range of a scalar", "GET", "/api/v1/query_range" + q("query", "time()", "start", fmt.Sprint(t0-60), "end", ts, "step", "60"), nil, 200, "query_range_scalar"},
		{"11000 points allowed", "GET", "/api/v1/query_range" + q("query", "nonexistent_metric", "start", "0", "end", "11000", "step", "1"), nil, 200, "query_range_empty"},

		{"format query", "POST", "/api/v1/format_query", url.Values{"query": {"sum by(host)(rate(caretaker_host_cpu_seconds_total{mode='idle'}[5m]))"}}, 200, "format_query"},
		{"exemplars", "GET", "/api/v1/query_exemplars" + q("query", "caretaker_kvm_guest_up", "start", fmt.Sprint(t0-60), "end", ts), nil, 200, "query_exemplars"},
		{"exemplars without selectors", "GET", "/api/v1/query_exemplars" + q("query", "1"), nil, 204, ""},

		// Series, labels, label values.
		{"series", "GET", "/api/v1/series" + q("match[]", "caretaker_kvm_guest_up", "match[]", `{host="h2"}`), nil, 200, "series"},
		{"series by POST", "POST", "/api/v1/series", url.Values{"match[]": {"caretaker_kvm_guest_up", `{host="h2"}`}}, 200, "series"},
		{"series in range", "GET", "/api/v1/series" + q("match[]", `{__name__=~"caretaker_host_.+"}`, "start", fmt.Sprint(t0-60), "end", ts), nil, 200, "series_range"},
		{"series before the data", "GET", "/api/v1/series" + q("match[]", "caretaker_kvm_guest_up", "end", fmt.Sprint(t0-3600)), nil, 200, "series_none"},
		{"series limit", "GET", "/api/v1/series" + q("match[]", "caretaker_kvm_guest_up", "limit", "2"), nil, 200, "series_limit"},
		{"labels", "GET", "/api/v1/labels", nil, 200, "labels"},
		{"labels by POST", "POST", "/api/v1/labels", url.Values{}, 200, "labels"},
		{"labels match", "GET", "/api/v1/labels" + q("match[]", "caretaker_host_entropy_ratio", "match[]", "caretaker_host_cpu_seconds_total"), nil, 200, "labels_match"},
		{"labels limit", "GET", "/api/v1/labels" + q("limit", "2"), nil, 200, "labels_limit"},
		{"label values", "GET", "/api/v1/label/guest/values", nil, 200, "label_values"},
		{"metric names", "GET", "/api/v1/label/__name__/values", nil, 200, "label_values_name"},
		{"label values match", "GET", "/api/v1/label/host/values" + q("match[]", "caretaker_host_entropy_ratio"), nil, 200, "label_values_match"},
		{"label values escaped name", "GET", "/api/v1/label/U__host/values" + q("match[]", "caretaker_host_entropy_ratio"), nil, 200, "label_values_match"},
		{"label values limit", "GET", "/api/v1/label/guest/values" + q("limit", "1"), nil, 200, "label_values_limit"},

		// Rules, alerts, metadata.
		{"rules", "GET", "/api/v1/rules", nil, 200, "rules"},
		{"alerting rules without alerts", "GET", "/api/v1/rules" + q("type", "alert", "exclude_alerts", "true"), nil, 200, "rules_alert"},
		{"recording rules", "GET", "/api/v1/rules" + q("type", "record"), nil, 200, "rules_record"},
		{"alerts", "GET", "/api/v1/alerts", nil, 200, "alerts"},
		{"metadata", "GET", "/api/v1/metadata", nil, 200, "metadata"},

		// Bad parameters: 400 with Prometheus' texts.
		{"bad time", "GET", "/api/v1/query" + q("query", "up", "time", "yesterday"), nil, 400, "err_time"},
		{"bad query", "GET", "/api/v1/query" + q("query", "sum(", "time", ts), nil, 400, "err_query"},
		{"empty query", "GET", "/api/v1/query" + q("time", ts), nil, 400, "err_query_empty"},
		{"bad limit", "GET", "/api/v1/query" + q("query", "up", "limit", "-1"), nil, 400, "err_limit"},
		{"bad timeout", "GET", "/api/v1/query" + q("query", "up", "timeout", "0"), nil, 400, "err_timeout_param"},
		{"bad lookback", "GET", "/api/v1/query" + q("query", "up", "lookback_delta", "soon"), nil, 400, "err_lookback"},
		{"range without start", "GET", "/api/v1/query_range" + q("query", "up", "end", ts, "step", "15"), nil, 400, "err_start"},
		{"range end before start", "GET", "/api/v1/query_range" + q("query", "up", "start", ts, "end", fmt.Sprint(t0-1), "step", "15"), nil, 400, "err_end"},
		{"range bad step", "GET", "/api/v1/query_range" + q("query", "up", "start", ts, "end", ts, "step", "often"), nil, 400, "err_step"},
		{"range zero step", "GET", "/api/v1/query_range" + q("query", "up", "start", ts, "end", ts, "step", "0"), nil, 400, "err_step_zero"},
		{"range too many points", "GET", "/api/v1/query_range" + q("query", "up", "start", "0", "end", "11001", "step", "1"), nil, 400, "err_points"},
		{"series without match", "GET", "/api/v1/series", nil, 400, "err_series_no_match"},
		{"series bad match", "GET", "/api/v1/series" + q("match[]", "up{"), nil, 400, "err_series_match"},
		{"series empty matcher", "GET", "/api/v1/series" + q("match[]", `{host=""}`), nil, 400, "err_series_empty_matcher"},
		{"labels bad start", "GET", "/api/v1/labels" + q("start", "x"), nil, 400, "err_labels_start"},
		{"label values bad name", "GET", "/api/v1/label/%ff/values", nil, 400, "err_label_name"},
		{"rules bad type", "GET", "/api/v1/rules" + q("type", "both"), nil, 400, "err_rules_type"},
		{"exemplars bad query", "GET", "/api/v1/query_exemplars" + q("query", "up{"), nil, 400, "err_exemplars_query"},
		{"format bad query", "GET", "/api/v1/format_query" + q("query", "up{"), nil, 400, "err_format_query"},
		{"metadata bad limit", "GET", "/api/v1/metadata" + q("limit", "x"), nil, 400, "err_metadata_limit"},

		// Failures while executing.
		{"many-to-many", "GET", "/api/v1/query" + q("query", "caretaker_kvm_guest_up * on() caretaker_kvm_guest_up", "time", ts), nil, 422, "err_exec"},
		{"deadline passed", "GET", "/api/v1/query" + q("query", "caretaker_kvm_guest_up", "time", ts, "timeout", "1m"), nil, 503, "err_timeout"},

		// Methods.
		{"options", "OPTIONS", "/api/v1/query", nil, 204, ""},
		{"label values by POST", "POST", "/api/v1/label/guest/values", url.Values{}, 405, ""},
		{"delete", "DELETE", "/api/v1/series", nil, 405, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := f.do(t, tt.method, tt.target, tt.form)
			if code != tt.code {
				t.Errorf("status %d, want %d; body %s", code, tt.code, body)
			}
			if tt.golden == "" {
				return
			}
			golden.Compare(t, filepath.Join("testdata", tt.golden+".json"), append(normalize(body), '\n'), *update)
		})
	}
}

func TestNewRejects(t *testing.T) {
	db, err := tsdb.Open(t.TempDir(), testLogger(t), nil, tsdb.DefaultOptions(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 10, Timeout: time.Second})
	defer engine.Close()
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no queryable", Options{Engine: engine}, "prometheus api: no queryable"},
		{"no engine", Options{Queryable: db}, "prometheus api: no query engine"},
		{"negative timeout", Options{Queryable: db, Engine: engine, QueryTimeout: -time.Second}, "prometheus api: negative query timeout -1s, lookback delta 0s or max concurrency 0"},
		{"negative concurrency", Options{Queryable: db, Engine: engine, MaxConcurrency: -1}, "prometheus api: negative query timeout 0s, lookback delta 0s or max concurrency -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.opts); err == nil || err.Error() != tt.want {
				t.Errorf("New: %v, want %q", err, tt.want)
			}
		})
	}
	// Without rules, /api/v1/rules and /api/v1/alerts answer empty.
	api, err := New(Options{Queryable: db, Engine: engine})
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]string{
		"/api/v1/rules":  `{"status":"success","data":{"groups":[]}}`,
		"/api/v1/alerts": `{"status":"success","data":{"alerts":[]}}`,
	} {
		rec := httptest.NewRecorder()
		api.Handler().ServeHTTP(rec, httptest.NewRequest("GET", target, nil))
		if rec.Code != 200 || rec.Body.String() != want {
			t.Errorf("%s: %d %s, want %s", target, rec.Code, rec.Body, want)
		}
	}
}

func TestPaths(t *testing.T) {
	db, err := tsdb.Open(t.TempDir(), testLogger(t), nil, tsdb.DefaultOptions(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 10, Timeout: time.Second})
	defer engine.Close()
	api, err := New(Options{Queryable: db, Engine: engine})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/api/v1/query", "/api/v1/query_range", "/api/v1/query_exemplars", "/api/v1/format_query", "/api/v1/series", "/api/v1/labels",
		"/api/v1/label/{name}/values", "/api/v1/metadata", "/api/v1/rules", "/api/v1/alerts",
		"/api/v1/status/buildinfo",
	}
	if got := api.Paths(); !slices.Equal(got, want) {
		t.Errorf("Paths() = %q, want %q", got, want)
	}
	// Every path is served (OPTIONS answers all of them), and nothing else
	// under /api/v1/ is, so the server's own API keeps its paths.
	for _, p := range want {
		rec := httptest.NewRecorder()
		api.Handler().ServeHTTP(rec, httptest.NewRequest("OPTIONS", strings.Replace(p, "{name}", "job", 1), nil))
		if rec.Code != http.StatusNoContent {
			t.Errorf("OPTIONS %s: %d", p, rec.Code)
		}
	}
	rec := httptest.NewRecorder()
	api.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/status", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("GET /api/v1/status: %d, want 404", rec.Code)
	}
}

func TestBuildInfo(t *testing.T) {
	tests := []struct {
		module string
		want   string
		ok     bool
	}{
		{"v0.316.0", "3.16.0", true},
		{"v0.300.1", "3.0.1", true},
		{"v0.54.1", "", false}, // 2.x releases were tagged v2.54.1, not as module versions
		{"v0.316.0-rc.1", "3.16.0", true},
		{"(devel)", "", false},
	}
	for _, tt := range tests {
		got, ok := releaseOf(tt.module)
		if got != tt.want || ok != tt.ok {
			t.Errorf("releaseOf(%q) = %q, %v; want %q, %v", tt.module, got, ok, tt.want, tt.ok)
		}
	}
	if v := readBuildInfo(); v.Version != "3.16.0" || v.GoVersion == "" {
		t.Errorf("build info %+v: want version 3.16.0 (prometheus v0.316.0) and a Go version", v)
	}
}
