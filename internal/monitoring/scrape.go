package monitoring

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// JobName is the `job` label of every series scraped from an agent.
const JobName = "caretaker-agent"

// HostLabel is the label naming the host a series was scraped from.
const HostLabel = "host"

// targetApplyTimeout bounds the wait for the scrape manager to take up new
// targets. It only guards against a bug: applying takes a reload interval.
const targetApplyTimeout = time.Minute

// scrapeConfig builds the configuration of the one scrape job. It goes
// through config.Load because only a loaded Config hands out scrape configs
// (GetScrapeConfigs refuses others), and loading is what fills in the
// defaults v0.316.0 insists on: name validation and escaping schemes,
// scrape protocols, histogram and compression settings. Prometheus 3 fails
// a scrape whose Content-Type it does not know unless a fallback protocol is
// set; the agents use promhttp, but a proxy in between may not keep it.
func scrapeConfig(interval, timeout, evalInterval time.Duration, logger *slog.Logger) (*config.Config, error) {
	yml := fmt.Sprintf(`global:
  scrape_interval: %s
  scrape_timeout: %s
  evaluation_interval: %s
scrape_configs:
  - job_name: %s
    metrics_path: /metrics
    scheme: http
    fallback_scrape_protocol: PrometheusText0.0.4
`, model.Duration(interval), model.Duration(timeout), model.Duration(evalInterval), JobName)
	cfg, err := config.Load(yml, logger)
	if err != nil {
		return nil, fmt.Errorf("build scrape config: %w", err)
	}
	return cfg, nil
}

// targetGroups turns targets into the scrape manager's input: one group per
// target so each carries its own host label; `instance` defaults to the
// address.
func targetGroups(targets []Target) (map[string][]*targetgroup.Group, error) {
	groups := make([]*targetgroup.Group, 0, len(targets))
	seen := make(map[string]string, len(targets))
	var errs []error
	for i, t := range targets {
		if t.Host == "" {
			errs = append(errs, fmt.Errorf("target %d (%s): host is empty", i, t.Address))
			continue
		}
		if _, _, err := net.SplitHostPort(t.Address); err != nil {
			errs = append(errs, fmt.Errorf("target %d (host %s): address %q is not host:port: %w", i, t.Host, t.Address, err))
			continue
		}
		if other, dup := seen[t.Address]; dup {
			errs = append(errs, fmt.Errorf("target %d (host %s): address %s is already the target of host %s", i, t.Host, t.Address, other))
			continue
		}
		seen[t.Address] = t.Host
		groups = append(groups, &targetgroup.Group{
			Source:  t.Address,
			Targets: []model.LabelSet{{model.AddressLabel: model.LabelValue(t.Address)}},
			Labels:  model.LabelSet{HostLabel: model.LabelValue(t.Host)},
		})
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("scrape targets: %w", errors.Join(errs...))
	}
	return map[string][]*targetgroup.Group{JobName: groups}, nil
}

// awaitTargets waits until the scrape manager has a scrape loop for exactly
// the given targets. The manager applies updates asynchronously and offers
// no signal, so this polls its target list.
func (m *Monitor) awaitTargets(targets []Target) error {
	want := make(map[[2]string]bool, len(targets))
	for _, t := range targets {
		want[[2]string{t.Host, t.Address}] = true
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(targetApplyTimeout)
	defer deadline.Stop()
	for {
		active, ok := m.scraper.TargetsActive()[JobName]
		if ok {
			got := make(map[[2]string]bool, len(active))
			for _, t := range active {
				got[[2]string{t.GetValue(HostLabel), t.GetValue(model.AddressLabel)}] = true
			}
			if maps.Equal(got, want) {
				return nil
			}
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			return fmt.Errorf("scrape manager did not take up the targets within %s", targetApplyTimeout)
		case <-m.ctx.Done():
			return ErrStopped
		}
	}
}

// Targets returns the scraped targets with their health, sorted by host.
func (m *Monitor) Targets() []TargetStatus {
	var out []TargetStatus
	for _, t := range m.scraper.TargetsActive()[JobName] {
		s := TargetStatus{
			Target:         Target{Host: t.GetValue(HostLabel), Address: t.GetValue(model.AddressLabel)},
			Health:         string(t.Health()),
			LastScrape:     t.LastScrape(),
			ScrapeDuration: t.LastScrapeDuration(),
		}
		if err := t.LastError(); err != nil {
			s.LastError = err.Error()
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b TargetStatus) int {
		return cmp.Or(strings.Compare(a.Host, b.Host), strings.Compare(a.Address, b.Address))
	})
	return out
}

// TargetStatus is a scraped target and how its last scrape went.
type TargetStatus struct {
	Target
	Health         string // "up", "down" or "unknown"
	LastScrape     time.Time
	ScrapeDuration time.Duration
	LastError      string
}
