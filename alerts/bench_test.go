package alerts

import (
	"bytes"
	"context"
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
)

// BenchmarkRuleEvaluation appends the series the collectors really export
// for 1,000 hosts with 50 guests each — one host's real agent output (host
// and overlay collectors on the fixture trees) and one real QEMU guest's kvm
// series, replicated — to a TSDB, then evaluates every rule group once per
// iteration the way the server's rules manager does: the groups side by
// side, recording rules before the alerts that read them, the independent
// rules of a group concurrently. It reports the series count, the seconds
// (wall and CPU) one evaluation of all rules takes, and the resident memory
// per series.
func BenchmarkRuleEvaluation(b *testing.B) {
	host := seriesOf(b, "../internal/agent/testdata/metrics.golden.prom", func(name string) bool {
		return !strings.HasPrefix(name, "caretaker_kvm_") // the fixture's guests come from the kvm file below
	})
	guest := seriesOf(b, "../collectors/kvm/testdata/emit/running.metrics", func(string) bool { return true })

	// Return an earlier run's fleet to the OS so that it does not count.
	debug.FreeOSMemory()
	rssBefore := rss(b)

	db, err := tsdb.Open(b.TempDir(), slog.New(slog.DiscardHandler), nil, tsdb.DefaultOptions(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()

	end := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	start := end.Add(-time.Duration(benchSamples-1) * 15 * time.Second)
	series := 0
	for h := 0; h < benchHosts; h++ {
		hostName := fmt.Sprintf("host-%04d", h)
		base := map[string]string{"job": "caretaker-agent", "instance": hostName + ":9301", "host": hostName}
		app := db.Appender(context.Background())
		add := func(extra map[string]string, s sample) {
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
				if ref, err = app.Append(ref, ls, start.Add(time.Duration(i)*15*time.Second).UnixMilli(), v); err != nil {
					b.Fatal(err)
				}
			}
			series++
		}
		add(nil, sample{labels: map[string]string{"__name__": "up"}, value: 1})
		for _, s := range host {
			add(nil, s)
		}
		for g := 0; g < benchGuests; g++ {
			uuid := fmt.Sprintf("%08x-0000-4000-8000-%012x", h, g)
			extra := map[string]string{"uuid": uuid}
			for _, s := range guest {
				if s.labels["__name__"] == "caretaker_kvm_domain_info" {
					extra = map[string]string{"uuid": uuid, "domain": fmt.Sprintf("c%d-worker-%d", h%20, g)}
				} else {
					extra = map[string]string{"uuid": uuid}
				}
				add(extra, s)
			}
		}
		if err := app.Commit(); err != nil {
			b.Fatal(err)
		}
	}

	runtime.GC()
	perSeries := float64(rss(b)-rssBefore) / float64(series)

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
		QueryFunc:              promrules.EngineQueryFunc(engine, db),
		NotifyFunc:             func(context.Context, string, ...*promrules.Alert) {},
		AppendableV2:           db,
		Queryable:              db,
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

	cpuBefore := cpuTime(b)
	b.ResetTimer()
	var firing int
	took := map[string]time.Duration{}
	for i := 0; i < b.N; i++ {
		// Each evaluation a moment later: recording rules append samples.
		ts := end.Add(time.Duration(i) * time.Second)
		t0 := time.Now()
		var wg sync.WaitGroup
		for _, g := range groups {
			wg.Go(func() { g.Eval(context.Background(), ts) })
		}
		wg.Wait()
		b.Logf("evaluation %d: %s", i+1, time.Since(t0).Round(time.Millisecond))
		firing = 0
		for _, g := range groups {
			for _, r := range g.Rules() {
				if err := r.LastError(); err != nil {
					b.Fatalf("%s: %v", r.Name(), err)
				}
				took[r.Name()] += r.GetEvaluationDuration()
				if ar, ok := r.(*promrules.AlertingRule); ok {
					firing += len(ar.ActiveAlerts())
				}
			}
		}
	}
	b.StopTimer()
	// CPU time too: on a shared machine it varies less than the wall time.
	b.ReportMetric((cpuTime(b)-cpuBefore).Seconds()/float64(b.N), "cpu-s/eval")
	b.ReportMetric(float64(series), "series")
	b.ReportMetric(float64(nrules), "rules")
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/eval")
	b.ReportMetric(perSeries, "rss-bytes/series")
	for name, d := range took {
		if d /= time.Duration(b.N); d > 50*time.Millisecond {
			b.Logf("slow rule %s: %s", name, d)
		}
	}
	b.Logf("%d series, %d rules, %d alert instances per evaluation, %.0f bytes of RSS per series", series, nrules, firing, perSeries)
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
func seriesOf(b *testing.B, path string, keep func(string) bool) []sample {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		b.Fatalf("%s: %v", path, err)
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
	return out
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
func rss(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}
