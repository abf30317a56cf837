package alerts

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
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
// series, replicated — to a TSDB, then evaluates every alerting rule once
// per iteration. It reports the series count, the seconds one evaluation of
// all rules takes, and the resident memory per series.
func BenchmarkRuleEvaluation(b *testing.B) {
	host := seriesOf(b, "../internal/agent/testdata/metrics.golden.prom", func(name string) bool {
		return !strings.HasPrefix(name, "caretaker_kvm_") // the fixture's guests come from the kvm file below
	})
	guest := seriesOf(b, "../collectors/kvm/testdata/emit/running.metrics", func(string) bool { return true })

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
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

	engine := promql.NewEngine(promql.EngineOpts{
		MaxSamples:               100_000_000,
		Timeout:                  time.Minute,
		NoStepSubqueryIntervalFn: func(int64) int64 { return 15_000 },
		Parser:                   parser.NewParser(parser.Options{}),
	})
	exprs := ruleExprs(b)
	b.ResetTimer()
	var firing int
	took := make([]time.Duration, len(exprs))
	for i := 0; i < b.N; i++ {
		firing = 0
		for j, e := range exprs {
			t0 := time.Now()
			q, err := engine.NewInstantQuery(context.Background(), db, nil, e, end)
			if err != nil {
				b.Fatalf("%s: %v", e, err)
			}
			res := q.Exec(context.Background())
			if res.Err != nil {
				b.Fatalf("%s: %v", e, res.Err)
			}
			if v, ok := res.Value.(promql.Vector); ok {
				firing += len(v)
			}
			q.Close()
			took[j] += time.Since(t0)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(series), "series")
	b.ReportMetric(float64(len(exprs)), "rules")
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/eval")
	b.ReportMetric(perSeries, "rss-bytes/series")
	for j, e := range exprs {
		if d := took[j] / time.Duration(b.N); d > 50*time.Millisecond {
			b.Logf("slow rule (%s): %s", d, strings.Join(strings.Fields(e), " "))
		}
	}
	b.Logf("%d series, %d rules, %d alert instances per evaluation, %.0f bytes of RSS per series", series, len(exprs), firing, perSeries)
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

func ruleExprs(b *testing.B) []string {
	files, err := fs.Glob(Rules(), "*.rules.yml")
	if err != nil || len(files) == 0 {
		b.Fatalf("no rule files: %v", err)
	}
	var exprs []string
	for _, f := range files {
		data, _ := fs.ReadFile(Rules(), f)
		groups, errs := rulefmt.Parse(data, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
		if len(errs) > 0 {
			b.Fatalf("%s: %v", f, errs)
		}
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				exprs = append(exprs, r.Expr)
			}
		}
	}
	return exprs
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
