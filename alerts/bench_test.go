package alerts

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	promrules "github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
)

// The fleet the rules must keep up with (issue 4): 1,000 hosts × 50 guests.
const (
	benchHosts  = 1000
	benchGuests = 50
	// benchSamples scrapes 15 s apart give rate() and predict_linear() data.
	benchSamples = 4
	// benchCrashedEvery: the first guest of every benchCrashedEvery-th host
	// is meant to run but crashed (20 guests in the fleet), so that
	// GuestCrashed fires from the agent's unexpected-state series.
	benchCrashedEvery = 50
)

// BenchmarkRuleEvaluation appends the series the collectors really export
// for 1,000 hosts with 50 guests each — one host's real agent output (host
// and overlay collectors on the fixture trees) and one real QEMU guest's kvm
// series, replicated, but for a few guests meant to run that crashed (the
// collector's series for one, with its unexpected-state series) — to a TSDB, then evaluates every rule group the way
// the server's rules manager does: the groups side by side, recording rules
// before the alerts that read them, the independent rules of a group
// concurrently. It evaluates at least benchEvals times (b.N if more) and
// reports the series count, the median wall seconds of one evaluation of all
// rules against the 1 s target, the CPU seconds per evaluation, the slowest
// rules and the resident memory per series.
func BenchmarkRuleEvaluation(b *testing.B) {
	f := benchFleet(b)

	// The engine and rules manager as internal/monitoring configures them:
	// groups evaluate concurrently (each on its own goroutine, as the
	// manager runs them), and so do the independent rules of a group.
	engine := promql.NewEngine(promql.EngineOpts{
		MaxSamples:               50_000_000,
		Timeout:                  2 * time.Minute,
		NoStepSubqueryIntervalFn: func(int64) int64 { return 15_000 },
		EnableAtModifier:         true,
		EnableNegativeOffset:     true,
		Parser:                   parser.NewParser(parser.Options{}),
	})
	mgr := promrules.NewManager(&promrules.ManagerOptions{
		NameValidationScheme:   model.UTF8Validation,
		ExternalURL:            &url.URL{},
		QueryFunc:              promrules.EngineQueryFunc(engine, f.db),
		NotifyFunc:             func(context.Context, string, ...*promrules.Alert) {},
		AppendableV2:           f.db,
		Queryable:              f.db,
		Logger:                 slog.New(slog.DiscardHandler),
		GroupLoader:            embeddedLoader{},
		ConcurrentEvalsEnabled: true,
		MaxConcurrentEvals:     4,
	})
	files, err := fs.Glob(Rules(), "*.rules.yml")
	if err != nil || len(files) == 0 {
		b.Fatalf("no rule files: %v", err)
	}
	groupMap, errs := mgr.LoadGroups(15*time.Second, labels.EmptyLabels(), "", nil, false, files...)
	if len(errs) > 0 {
		b.Fatal(errs)
	}
	groups := slices.Collect(maps.Values(groupMap))
	var nrules int
	for _, g := range groups {
		nrules += len(g.Rules())
	}

	evalAll := func() time.Duration {
		// Each evaluation a moment later than any before it, this run's or
		// an earlier one's on the same fleet: recording rules append samples.
		f.evals++
		ts := f.end.Add(time.Duration(f.evals) * time.Second)
		t0 := time.Now()
		var wg sync.WaitGroup
		for _, g := range groups {
			wg.Go(func() { g.Eval(context.Background(), ts) })
		}
		wg.Wait()
		return time.Since(t0)
	}
	// One evaluation untimed, as a server has always evaluated before: the
	// first creates the recorded series.
	evalAll()

	evals := max(b.N, benchEvals)
	walls := make([]time.Duration, 0, evals)
	var firing, crashedFiring int
	took := map[string]time.Duration{}
	runtime.GC()
	cpuBefore := cpuTime(b)
	b.ResetTimer()
	for i := 0; i < evals; i++ {
		walls = append(walls, evalAll())
		firing, crashedFiring = 0, 0
		for _, g := range groups {
			for _, r := range g.Rules() {
				if err := r.LastError(); err != nil {
					b.Fatalf("%s: %v", r.Name(), err)
				}
				took[r.Name()] += r.GetEvaluationDuration()
				if ar, ok := r.(*promrules.AlertingRule); ok {
					firing += len(ar.ActiveAlerts())
					if ar.Name() == "GuestCrashed" {
						crashedFiring += len(ar.ActiveAlerts())
					}
				}
			}
		}
	}
	b.StopTimer()
	if want := (benchHosts + benchCrashedEvery - 1) / benchCrashedEvery; crashedFiring != want {
		b.Errorf("GuestCrashed fired for %d guests, want the fixture's %d crashed guests", crashedFiring, want)
	}
	// CPU time too: on a shared machine it varies less than the wall time.
	cpu := (cpuTime(b) - cpuBefore).Seconds() / float64(evals)
	each := make([]string, len(walls))
	for i, w := range walls {
		each[i] = fmt.Sprintf("%.2f", w.Seconds())
	}
	slices.Sort(walls)
	median := walls[len(walls)/2]
	if len(walls)%2 == 0 {
		median = (walls[len(walls)/2-1] + median) / 2
	}
	b.ReportMetric(cpu, "cpu-s/eval")
	b.ReportMetric(float64(f.series), "series")
	b.ReportMetric(float64(nrules), "rules")
	b.ReportMetric(b.Elapsed().Seconds()/float64(evals), "s/eval")
	b.ReportMetric(median.Seconds(), "median-s/eval")
	b.ReportMetric(f.perSeries, "rss-bytes/series")
	type ruleTook struct {
		name string
		d    time.Duration
	}
	var slow []ruleTook
	for name, d := range took {
		slow = append(slow, ruleTook{name, d / time.Duration(evals)})
	}
	slices.SortFunc(slow, func(a, b ruleTook) int { return int(b.d - a.d) })
	var slowest []string
	for _, r := range slow[:min(4, len(slow))] {
		slowest = append(slowest, fmt.Sprintf("%s %.2f s", r.name, r.d.Seconds()))
	}
	// Three lines: the testing package keeps 10 of a benchmark's lines, and
	// it runs this one twice with -benchtime Nx (b.N 1 first).
	b.Logf("one evaluation of all rules: median %.2f s wall (target ≤ 1 s) of %d (%s s), %.2f CPU-s each, %d cores",
		median.Seconds(), evals, strings.Join(each, ", "), cpu, runtime.GOMAXPROCS(0))
	b.Logf("slowest rules (wall, sharing the cores with the rules beside them): %s", strings.Join(slowest, ", "))
	b.Logf("%d series, %d rules, %d alert instances per evaluation, %.0f bytes of RSS per series", f.series, nrules, firing, f.perSeries)
}

// benchEvals is how many evaluations BenchmarkRuleEvaluation takes the
// median of at least.
const benchEvals = 5

// fleet is the TSDB of benchFleet.
type fleet struct {
	db        *tsdb.DB
	dir       string
	end       time.Time // the last sample's time
	series    int
	perSeries float64 // bytes of RSS per series
	evals     int     // evaluations run on it so far
}

var (
	fleetOnce sync.Once
	theFleet  *fleet
	fleetErr  error
)

// benchFleet builds the fleet's TSDB once per test binary: the benchmark
// framework calls a benchmark more than once (b.N 1 first), and building it
// takes longer than the evaluations. TestMain removes it.
func benchFleet(tb testing.TB) *fleet {
	fleetOnce.Do(func() { theFleet, fleetErr = buildFleet() })
	if fleetErr != nil {
		tb.Fatal(fleetErr)
	}
	return theFleet
}

func TestMain(m *testing.M) {
	code := m.Run()
	if theFleet != nil {
		theFleet.db.Close()
		os.RemoveAll(theFleet.dir)
	}
	os.Exit(code)
}

func buildFleet() (*fleet, error) {
	host, err := seriesOf("../internal/agent/testdata/metrics.golden.prom", func(name string) bool {
		return !strings.HasPrefix(name, "caretaker_kvm_") // the fixture's guests come from the kvm file below
	})
	if err != nil {
		return nil, err
	}
	guest, err := seriesOf("../collectors/kvm/testdata/emit/running.metrics", func(string) bool { return true })
	if err != nil {
		return nil, err
	}
	crashed, err := seriesOf("../collectors/kvm/testdata/emit/crashed-intended.metrics", func(string) bool { return true })
	if err != nil {
		return nil, err
	}

	// Return an earlier run's memory to the OS so that it does not count.
	debug.FreeOSMemory()
	rssBefore, err := rss()
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", "caretaker-alerts-bench-")
	if err != nil {
		return nil, err
	}
	db, err := tsdb.Open(dir, slog.New(slog.DiscardHandler), nil, tsdb.DefaultOptions(), nil)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	f := &fleet{db: db, dir: dir, end: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	fail := func(err error) (*fleet, error) {
		db.Close()
		os.RemoveAll(dir)
		return nil, err
	}

	start := f.end.Add(-time.Duration(benchSamples-1) * 15 * time.Second)
	for h := 0; h < benchHosts; h++ {
		hostName := fmt.Sprintf("host-%04d", h)
		base := map[string]string{"job": "caretaker-agent", "instance": hostName + ":9301", "host": hostName}
		app := db.Appender(context.Background())
		add := func(extra map[string]string, s sample) error {
			lb := labels.NewBuilder(labels.EmptyLabels())
			for k, v := range base {
				lb.Set(k, v)
			}
			for k, v := range s.labels {
				lb.Set(k, v)
			}
			for k, v := range extra {
				lb.Set(k, v)
			}
			ls := lb.Labels()
			var ref storage.SeriesRef
			for i := 0; i < benchSamples; i++ {
				v := s.value
				if s.counter && !s.fault {
					v += float64(i) * s.step // traffic grows; error and drop counters stay flat
				}
				var err error
				if ref, err = app.Append(ref, ls, start.Add(time.Duration(i)*15*time.Second).UnixMilli(), v); err != nil {
					return err
				}
			}
			f.series++
			return nil
		}
		if err := add(nil, sample{labels: map[string]string{"__name__": "up"}, value: 1}); err != nil {
			return fail(err)
		}
		for _, s := range host {
			if err := add(nil, s); err != nil {
				return fail(err)
			}
		}
		for g := 0; g < benchGuests; g++ {
			uuid := fmt.Sprintf("%08x-0000-4000-8000-%012x", h, g)
			series := guest
			if g == 0 && h%benchCrashedEvery == 0 {
				series = crashed
			}
			for _, s := range series {
				extra := map[string]string{"uuid": uuid}
				if _, ok := s.labels["domain"]; ok { // domain_info, domain_unhealthy_info
					extra["domain"] = fmt.Sprintf("c%d-worker-%d", h%20, g)
				}
				if err := add(extra, s); err != nil {
					return fail(err)
				}
			}
		}
		if err := app.Commit(); err != nil {
			return fail(err)
		}
	}

	runtime.GC()
	rssAfter, err := rss()
	if err != nil {
		return fail(err)
	}
	f.perSeries = float64(rssAfter-rssBefore) / float64(f.series)
	return f, nil
}

// embeddedLoader loads the embedded rule files, as the server's loader does.
type embeddedLoader struct{}

func (embeddedLoader) Load(name string, ignoreUnknownFields bool, scheme model.ValidationScheme) (*rulefmt.RuleGroups, []error) {
	data, err := fs.ReadFile(Rules(), name)
	if err != nil {
		return nil, []error{err}
	}
	return rulefmt.Parse(data, ignoreUnknownFields, scheme, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
}

func (embeddedLoader) Parse(query string) (parser.Expr, error) {
	return parser.NewParser(parser.Options{}).ParseExpr(query)
}

type sample struct {
	labels  map[string]string
	value   float64
	counter bool
	fault   bool    // an error, drop or crash counter
	step    float64 // a counter's growth per scrape
}

// seriesOf reads an exposition golden file into samples.
func seriesOf(path string, keep func(string) bool) ([]sample, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []sample
	for name, mf := range families {
		if !keep(name) || mf.GetType() == dto.MetricType_HISTOGRAM || mf.GetType() == dto.MetricType_SUMMARY {
			continue
		}
		for _, m := range mf.GetMetric() {
			s := sample{labels: map[string]string{"__name__": name}, counter: mf.GetType() == dto.MetricType_COUNTER,
				fault: strings.Contains(name, "error") || strings.Contains(name, "drop") || strings.Contains(name, "crash"),
				step:  1000}
			if strings.HasSuffix(name, "_seconds_total") {
				s.step = 0.15 // 1% of a core over a 15 s scrape interval
			}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				s.value = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				s.value = m.GetGauge().GetValue()
			case m.GetUntyped() != nil:
				s.value = m.GetUntyped().GetValue()
			}
			out = append(out, s)
		}
	}
	return out, nil
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rss is this process's resident set size in bytes.
func rss() (int64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024, nil
		}
	}
	return 0, errors.New("no VmRSS in /proc/self/status")
}
