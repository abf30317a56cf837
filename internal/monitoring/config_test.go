package monitoring

import (
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
)

// A job's own interval and timeout go into its scrape config; the other
// job keeps the server-wide ones.
func TestPromConfigJobs(t *testing.T) {
	t.Parallel()
	opts := &Options{ScrapeInterval: 5 * time.Second, ScrapeTimeout: 4 * time.Second, EvaluationInterval: 5 * time.Second,
		SelfAddress: "127.0.0.1:9300",
		Jobs:        map[string]JobScrape{JobName: {Interval: 2 * time.Second, Timeout: time.Second}}}
	cfg, err := promConfig(opts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	scs, err := cfg.GetScrapeConfigs()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]model.Duration{
		JobName:       {model.Duration(2 * time.Second), model.Duration(time.Second)},
		ServerJobName: {model.Duration(5 * time.Second), model.Duration(4 * time.Second)},
	}
	if len(scs) != len(want) {
		t.Fatalf("%d scrape configs, want %d", len(scs), len(want))
	}
	for _, sc := range scs {
		if w := want[sc.JobName]; sc.ScrapeInterval != w[0] || sc.ScrapeTimeout != w[1] {
			t.Errorf("job %s: interval %s, timeout %s; want %s, %s", sc.JobName, sc.ScrapeInterval, sc.ScrapeTimeout, w[0], w[1])
		}
	}
}

// A clustered server's replica label goes with its samples, and not with
// its alerts: Alertmanager takes the same alert from every server as one.
func TestPromConfigExternalLabels(t *testing.T) {
	t.Parallel()
	opts := &Options{ScrapeInterval: 5 * time.Second, ScrapeTimeout: 4 * time.Second, EvaluationInterval: 5 * time.Second,
		Alertmanagers: []string{"http://am:9093"}, ExternalLabels: map[string]string{ReplicaLabel: "s2", "site": "fra"}}
	cfg, err := promConfig(opts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.GlobalConfig.ExternalLabels.String(); got != `{replica="s2", site="fra"}` {
		t.Errorf("external labels %s", got)
	}
	rc := cfg.AlertingConfig.AlertRelabelConfigs
	if len(rc) != 1 || rc[0].Action != "labeldrop" || rc[0].Regex.String() != ReplicaLabel {
		t.Errorf("alert relabelling %+v, want the replica label dropped", rc)
	}
	ls := withExternal(labels.FromStrings("__name__", "up", "site", "own"), labels.FromMap(opts.ExternalLabels))
	if got := ls.String(); got != `{__name__="up", replica="s2", site="own"}` {
		t.Errorf("remote-written labels %s: the series' own label wins, the others are added", got)
	}
}
