package monitoring

import (
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/common/model"
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
