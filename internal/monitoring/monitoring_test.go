package monitoring

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// waitLimit bounds every wait in these tests. It is a deadline for a
// failure report, not an expectation of how long things take.
const waitLimit = 30 * time.Second

// agent is a scrape target serving a Prometheus text exposition whose value
// the test sets. Each served scrape is counted, so a test can wait for the
// scrape after a change: samples of scrape N are committed to the TSDB
// before the scrape loop starts scrape N+1.
type agent struct {
	srv     *httptest.Server
	state   atomic.Int64
	scrapes atomic.Int64
	served  chan struct{} // signalled (without blocking) after each scrape
}

func newAgent(t *testing.T, state int64) *agent {
	t.Helper()
	a := &agent{served: make(chan struct{}, 1)}
	a.state.Store(state)
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		fmt.Fprintf(w, "# HELP caretaker_kvm_domain_state libvirt domain state.\n"+
			"# TYPE caretaker_kvm_domain_state gauge\n"+
			"caretaker_kvm_domain_state{uuid=\"u1\"} %d\n", a.state.Load())
		a.scrapes.Add(1)
		select {
		case a.served <- struct{}{}:
		default:
		}
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *agent) address() string { return strings.TrimPrefix(a.srv.URL, "http://") }

// awaitScrapes waits until n more scrapes have been served.
func (a *agent) awaitScrapes(t *testing.T, n int64) {
	t.Helper()
	target := a.scrapes.Load() + n
	deadline := time.After(waitLimit)
	for a.scrapes.Load() < target {
		select {
		case <-a.served:
		case <-deadline:
			t.Fatalf("agent %s: waited %s for %d scrapes", a.address(), waitLimit, n)
		}
	}
}

// notifications records what Notify receives.
type notifications struct {
	mu     sync.Mutex
	alerts []Alert
	added  chan struct{}
}

func newNotifications() *notifications {
	return &notifications{added: make(chan struct{}, 1)}
}

func (n *notifications) notify(_ context.Context, alerts []Alert) {
	n.mu.Lock()
	n.alerts = append(n.alerts, alerts...)
	n.mu.Unlock()
	select {
	case n.added <- struct{}{}:
	default:
	}
}

func (n *notifications) all() []Alert {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]Alert(nil), n.alerts...)
}

// await returns the first received alert matching ok.
func (n *notifications) await(t *testing.T, what string, ok func(Alert) bool) Alert {
	t.Helper()
	return n.awaitN(t, what, 1, ok)
}

// awaitN waits until count received alerts match ok and returns the first.
func (n *notifications) awaitN(t *testing.T, what string, count int, ok func(Alert) bool) Alert {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		var matched []Alert
		for _, a := range n.all() {
			if ok(a) {
				matched = append(matched, a)
			}
		}
		if len(matched) >= count {
			return matched[0]
		}
		select {
		case <-n.added:
		case <-deadline:
			t.Fatalf("waited %s for Notify to receive %s; received %+v", waitLimit, what, n.all())
		}
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func startMonitor(t *testing.T, opts Options) *Monitor {
	t.Helper()
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	if opts.ScrapeInterval == 0 {
		opts.ScrapeInterval = 100 * time.Millisecond
	}
	if opts.EvaluationInterval == 0 {
		opts.EvaluationInterval = 100 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	m, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return m
}

func TestScrapeRulesNotify(t *testing.T) {
	t.Parallel()
	ag := newAgent(t, 1) // running
	got := newNotifications()
	reg := prometheus.NewRegistry()
	m := startMonitor(t, Options{
		Targets:    []Target{{Host: "kvm-1", Address: ag.address()}},
		Rules:      os.DirFS("testdata/rules"),
		Notify:     got.notify,
		Registerer: reg,
	})

	// Two scrapes: the first one's samples are committed by then.
	ag.awaitScrapes(t, 2)
	vec, err := m.Query(t.Context(), `caretaker_kvm_domain_state`, time.Now())
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	if len(vec) != 1 {
		t.Fatalf("Query returned %d samples, want 1: %v", len(vec), vec)
	}
	s := vec[0]
	for name, want := range map[string]string{"host": "kvm-1", "job": JobName, "instance": ag.address(), "uuid": "u1"} {
		if v := s.Metric.Get(name); v != want {
			t.Errorf("scraped series label %s = %q, want %q (series %s)", name, v, want, s.Metric)
		}
	}
	if s.F != 1 {
		t.Errorf("scraped value = %v, want 1", s.F)
	}
	if alerts := m.Alerts(); len(alerts) != 0 {
		t.Errorf("Alerts() before the guest crashed = %+v, want none", alerts)
	}

	ag.state.Store(6) // crashed
	firing := got.await(t, "GuestCrashed firing", func(a Alert) bool {
		return a.Name == "GuestCrashed" && a.State == "firing"
	})
	wantLabels := map[string]string{
		"alertname": "GuestCrashed", "host": "kvm-1", "uuid": "u1", "job": JobName,
		"instance": ag.address(), "severity": "critical", "remediation": "restart-vm",
	}
	if fmt.Sprint(firing.Labels) != fmt.Sprint(wantLabels) {
		t.Errorf("firing alert labels = %v, want %v", firing.Labels, wantLabels)
	}
	if want := "Guest u1 on kvm-1 crashed"; firing.Annotations["summary"] != want {
		t.Errorf("summary annotation = %q, want %q", firing.Annotations["summary"], want)
	}
	if firing.FiredAt.IsZero() || firing.ActiveAt.IsZero() || !firing.ResolvedAt.IsZero() {
		t.Errorf("firing alert times: active %v fired %v resolved %v", firing.ActiveAt, firing.FiredAt, firing.ResolvedAt)
	}
	if firing.Value != 6 {
		t.Errorf("firing alert value = %v, want 6", firing.Value)
	}
	if len(firing.Fingerprint) != 16 {
		t.Errorf("fingerprint %q is not 16 hex digits", firing.Fingerprint)
	}

	// A group notifies rule by rule, so the pending rule after GuestCrashed
	// may not be evaluated yet. Firing alerts are resent every evaluation
	// (ResendDelay defaults to the evaluation interval): the second sending
	// comes from the next evaluation, after the whole group ran once.
	got.awaitN(t, "GuestCrashed resent", 2, func(a Alert) bool {
		return a.Name == "GuestCrashed" && a.State == "firing"
	})
	// The state stays 6, so both rules stay active until the test changes it.
	alerts := m.Alerts()
	if len(alerts) != 2 {
		t.Fatalf("Alerts() = %+v, want GuestCrashed firing and GuestCrashedForAnHour pending", alerts)
	}
	if a := alerts[0]; a.Name != "GuestCrashed" || a.State != "firing" || a.Fingerprint != firing.Fingerprint {
		t.Errorf("Alerts()[0] = %+v, want the firing GuestCrashed %s", a, firing.Fingerprint)
	}
	if a := alerts[1]; a.Name != "GuestCrashedForAnHour" || a.State != "pending" || a.Labels["host"] != "kvm-1" {
		t.Errorf("Alerts()[1] = %+v, want GuestCrashedForAnHour pending on kvm-1", a)
	}

	ag.state.Store(1) // restarted
	resolved := got.await(t, "GuestCrashed resolved", func(a Alert) bool {
		return a.Name == "GuestCrashed" && a.State == "inactive"
	})
	if resolved.Fingerprint != firing.Fingerprint || resolved.ResolvedAt.IsZero() {
		t.Errorf("resolved alert = %+v, want fingerprint %s and a resolve time", resolved, firing.Fingerprint)
	}
	for _, a := range got.all() {
		if a.State == "pending" || a.Name == "GuestCrashedForAnHour" {
			t.Errorf("Notify received a pending alert: %+v", a)
		}
	}

	groups := m.RuleGroups()
	if len(groups) != 1 || groups[0].File != "test.rules.yml" || groups[0].Interval != 100*time.Millisecond || len(groups[0].Rules) != 2 {
		t.Fatalf("RuleGroups() = %+v, want group test of test.rules.yml with 2 rules at 100ms", groups)
	}
	if r := groups[0].Rules[1]; r.Kind != "alerting" || r.Expr != "caretaker_kvm_domain_state == 6" || r.For != time.Hour || r.Health != "ok" {
		t.Errorf("RuleGroups() rule = %+v", r)
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	seen := map[string]bool{}
	for _, f := range families {
		seen[f.GetName()] = true
	}
	for _, name := range []string{"prometheus_tsdb_head_series", "prometheus_target_scrape_pools_total", "prometheus_rule_evaluations_total", "prometheus_engine_queries"} {
		if !seen[name] {
			t.Errorf("metric %s is not registered with Options.Registerer", name)
		}
	}
}

func TestQueryKinds(t *testing.T) {
	t.Parallel()
	ag := newAgent(t, 1)
	m := startMonitor(t, Options{Targets: []Target{{Host: "kvm-1", Address: ag.address()}}})
	ag.awaitScrapes(t, 2)

	vec, err := m.Query(t.Context(), "1 + 1", time.Now())
	if err != nil || len(vec) != 1 || vec[0].F != 2 {
		t.Errorf("Query(1 + 1) = %v, %v; want one sample 2", vec, err)
	}
	if _, err := m.Query(t.Context(), "up[1m]", time.Now()); err == nil {
		t.Error("Query of a range vector succeeded, want an error: it is not a vector")
	}
	if _, err := m.Query(t.Context(), "up{", time.Now()); err == nil || !strings.Contains(err.Error(), "up{") {
		t.Errorf("Query of a bad expression: err = %v, want a parse error naming it", err)
	}

	now := time.Now()
	mat, err := m.QueryRange(t.Context(), `up{host="kvm-1"}`, now.Add(-time.Minute), now, time.Second)
	if err != nil {
		t.Fatalf("QueryRange: %v", err)
	}
	if len(mat) != 1 || len(mat[0].Floats) == 0 || mat[0].Floats[len(mat[0].Floats)-1].F != 1 {
		t.Errorf("QueryRange(up) = %v, want one series ending in 1", mat)
	}
}

func TestSetTargets(t *testing.T) {
	t.Parallel()
	first, second := newAgent(t, 1), newAgent(t, 1)
	m := startMonitor(t, Options{Targets: []Target{{Host: "kvm-1", Address: first.address()}}})
	if ts := m.Targets(); len(ts) != 1 || ts[0].Host != "kvm-1" || ts[0].Address != first.address() {
		t.Fatalf("Targets() after Start = %+v, want kvm-1 only", ts)
	}

	if err := m.SetTargets([]Target{{Host: "kvm-2", Address: second.address()}}); err != nil {
		t.Fatalf("SetTargets: %v", err)
	}
	if ts := m.Targets(); len(ts) != 1 || ts[0].Host != "kvm-2" || ts[0].Address != second.address() {
		t.Fatalf("Targets() after SetTargets = %+v, want kvm-2 only", ts)
	}
	second.awaitScrapes(t, 2)
	vec, err := m.Query(t.Context(), `caretaker_kvm_domain_state{host="kvm-2"}`, time.Now())
	if err != nil || len(vec) != 1 {
		t.Errorf("Query for the new target = %v, %v; want one series", vec, err)
	}

	if err := m.SetTargets([]Target{{Host: "kvm-3", Address: "no-port"}}); err == nil {
		t.Error("SetTargets with an address without a port succeeded")
	}
}

func TestBadRulesFailStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, err := Start(t.Context(), Options{DataDir: dir, Rules: os.DirFS("testdata/badrules"), Logger: testLogger(t)})
	if err == nil {
		t.Fatal("Start with bad rule files succeeded")
	}
	for _, want := range []string{"bad-expr.rules.yml", "unknown-field.rules.yml", "anotations"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Start error does not mention %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "good.rules.yml") {
		t.Errorf("Start error blames the valid file: %v", err)
	}
	if _, serr := os.Stat(filepath.Join(dir, "tsdb")); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("Start created the TSDB before validating rules (stat: %v)", serr)
	}
	if err := ValidateRules(os.DirFS("testdata/badrules")); err == nil || !strings.Contains(err.Error(), "bad-expr.rules.yml") {
		t.Errorf("ValidateRules(badrules) = %v, want an error naming bad-expr.rules.yml", err)
	}
	if err := ValidateRules(os.DirFS("testdata/rules")); err != nil {
		t.Errorf("ValidateRules(rules) = %v", err)
	}
}

func TestOptionsRejected(t *testing.T) {
	t.Parallel()
	good := fstest.MapFS{"a.rules.yml": {Data: []byte("groups: []\n")}}
	for name, opts := range map[string]Options{
		"no data dir":           {Rules: good},
		"timeout over interval": {ScrapeInterval: time.Second, ScrapeTimeout: 2 * time.Second},
		"no rule files":         {Rules: fstest.MapFS{"README.md": {Data: []byte("x")}}},
		"empty host":            {Targets: []Target{{Address: "127.0.0.1:9301"}}},
		"address without port":  {Targets: []Target{{Host: "kvm-1", Address: "127.0.0.1"}}},
		"duplicate address": {Targets: []Target{
			{Host: "kvm-1", Address: "127.0.0.1:9301"}, {Host: "kvm-2", Address: "127.0.0.1:9301"},
		}},
	} {
		t.Run(name, func(t *testing.T) {
			if name != "no data dir" {
				opts.DataDir = t.TempDir()
			}
			opts.Logger = testLogger(t)
			m, err := Start(t.Context(), opts)
			if err == nil {
				_ = m.Stop()
				t.Fatal("Start succeeded")
			}
		})
	}
}

func TestStop(t *testing.T) {
	t.Parallel()
	ag := newAgent(t, 1)
	dir := t.TempDir()
	m, err := Start(t.Context(), Options{
		DataDir: dir, ScrapeInterval: 100 * time.Millisecond, EvaluationInterval: 100 * time.Millisecond,
		Targets: []Target{{Host: "kvm-1", Address: ag.address()}}, Rules: os.DirFS("testdata/rules"),
		Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := m.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := m.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, err := m.Query(t.Context(), "up", time.Now()); !errors.Is(err, ErrStopped) {
		t.Errorf("Query after Stop: err = %v, want ErrStopped", err)
	}
	if err := m.SetTargets(nil); !errors.Is(err, ErrStopped) {
		t.Errorf("SetTargets after Stop: err = %v, want ErrStopped", err)
	}

	// The TSDB is closed (its lock released): the same directory opens again.
	again, err := Start(t.Context(), Options{DataDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Start on the stopped Monitor's data dir: %v", err)
	}
	if err := again.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

func newRegistry() *prometheus.Registry { return prometheus.NewRegistry() }

// counterValue returns the value of the metric name of reg whose labels
// include remoteName as remote_name (any, if remoteName is empty).
func counterValue(t *testing.T, reg *prometheus.Registry, name, remoteName string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			match := remoteName == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "remote_name" && l.GetValue() == remoteName {
					match = true
				}
			}
			if !match {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("metric %s{remote_name=%q} is not registered", name, remoteName)
	return 0
}

func TestSelfScrape(t *testing.T) {
	t.Parallel()
	// The server's own registry, as server.go serves it at /metrics.
	serverReg := prometheus.NewRegistry()
	actions := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "caretaker_remediation_actions_total", Help: "Remediation actions executed.",
	})
	serverReg.MustRegister(actions)
	actions.Add(3)
	served := make(chan struct{}, 1)
	handler := promhttp.HandlerFor(serverReg, promhttp.HandlerOpts{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handler.ServeHTTP(w, r)
		select {
		case served <- struct{}{}:
		default:
		}
	}))
	t.Cleanup(srv.Close)

	ag := newAgent(t, 1)
	m := startMonitor(t, Options{
		Targets:     []Target{{Host: "kvm-1", Address: ag.address()}},
		SelfAddress: strings.TrimPrefix(srv.URL, "http://"),
	})
	// Two scrapes: the first one's samples are committed by the second.
	for range 2 {
		select {
		case <-served:
		case <-time.After(waitLimit):
			t.Fatalf("the server's /metrics was not scraped within %s", waitLimit)
		}
	}
	vec, err := m.Query(t.Context(), `caretaker_remediation_actions_total{job="caretaker-server"}`, time.Now())
	if err != nil || len(vec) != 1 || vec[0].F != 3 {
		t.Fatalf("query of the self-scraped counter = %v, %v; want one sample 3", vec, err)
	}
	if inst := vec[0].Metric.Get("instance"); inst != strings.TrimPrefix(srv.URL, "http://") {
		t.Errorf("self-scraped instance = %q, want the SelfAddress", inst)
	}
	// Targets lists the agents only.
	if ts := m.Targets(); len(ts) != 1 || ts[0].Host != "kvm-1" {
		t.Errorf("Targets() = %+v, want the agent kvm-1 only", ts)
	}
}

func TestRetentionSize(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	startMonitor(t, Options{RetentionSize: 64 << 20, Registerer: reg})
	if got := counterValue(t, reg, "prometheus_tsdb_retention_limit_bytes", ""); got != 64<<20 {
		t.Errorf("prometheus_tsdb_retention_limit_bytes = %v, want %d", got, 64<<20)
	}
}

func TestNewOptionsRejected(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts Options
		want string // in the error: the option's name
	}{
		{"negative retention size", Options{RetentionSize: -1}, "RetentionSize"},
		{"file_sd without extension", Options{FileSD: []string{"/etc/caretaker/targets/*"}}, "FileSD[0]"},
		{"file_sd glob in a directory", Options{FileSD: []string{"/etc/*/targets.json"}}, "FileSD[0]"},
		{"file_sd bad glob", Options{FileSD: []string{"/etc/caretaker/[.json"}}, "FileSD[0]"},
		{"self address without port", Options{SelfAddress: "127.0.0.1"}, "SelfAddress"},
		{"alertmanager without scheme", Options{Alertmanagers: []string{"127.0.0.1:9093"}}, "Alertmanagers[0]"},
		{"alertmanager with credentials", Options{Alertmanagers: []string{"http://u:p@127.0.0.1:9093"}}, "Alertmanagers[0]"},
		{"alertmanager twice", Options{Alertmanagers: []string{"http://a:9093", "http://a:9093"}}, "Alertmanagers[1]"},
		{"remote write ftp", Options{RemoteWrite: []RemoteWriteConfig{{URL: "ftp://x/"}}}, "RemoteWrite[0].URL"},
		{"remote write no host", Options{RemoteWrite: []RemoteWriteConfig{{URL: "http:///api/v1/write"}}}, "RemoteWrite[0].URL"},
		{"remote write same name", Options{RemoteWrite: []RemoteWriteConfig{{URL: "http://a/w", Name: "x"}, {URL: "http://b/w", Name: "x"}}}, "RemoteWrite[1].Name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.DataDir = t.TempDir()
			tc.opts.Logger = testLogger(t)
			m, err := Start(t.Context(), tc.opts)
			if err == nil {
				_ = m.Stop()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start error %q does not name %s", err, tc.want)
			}
			if _, serr := os.Stat(filepath.Join(tc.opts.DataDir, "tsdb")); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("Start created the TSDB before validating options (stat: %v)", serr)
			}
		})
	}
}
