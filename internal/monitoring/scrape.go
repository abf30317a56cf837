package monitoring

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// JobName is the `job` label of every series scraped from an agent.
const JobName = "caretaker-agent"

// ServerJobName is the `job` label of the series the server scrapes from
// its own /metrics (Options.SelfAddress).
const ServerJobName = "caretaker-server"

// HostLabel is the label naming the host a series was scraped from.
const HostLabel = "host"

// targetApplyTimeout bounds the wait for the scrape manager to take up new
// targets. It only guards against a bug: applying takes a reload interval.
const targetApplyTimeout = time.Minute

// targetGroups turns targets into the scrape manager's input: one group per
// target so each carries its own host label; `instance` defaults to the
// address.
func targetGroups(targets []Target) ([]*targetgroup.Group, error) {
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
	return groups, nil
}

// sendTargetsLocked hands the scrape manager the merged target sets of both
// jobs, the agent job being the static targets plus the file_sd ones, and
// returns the agent targets it sent. targetsMu must be held. The manager
// replaces all target sets at each update, so each update carries all.
func (m *Monitor) sendTargetsLocked() []Target {
	agentGroups := slices.Clone(m.staticGroups)
	want := slices.Clone(m.staticTargets)
	for _, src := range slices.Sorted(maps.Keys(m.fileGroups)) {
		g := m.fileGroups[src]
		agentGroups = append(agentGroups, g)
		for _, t := range g.Targets {
			want = append(want, Target{Host: string(t[HostLabel]), Address: string(t[model.AddressLabel])})
		}
	}
	sets := map[string][]*targetgroup.Group{JobName: agentGroups}
	if m.selfGroup != nil {
		sets[ServerJobName] = []*targetgroup.Group{m.selfGroup}
	}
	select {
	case m.targetSets <- sets:
	case <-m.ctx.Done():
	}
	return want
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
		// A job without targets may have no entry at all.
		active, ok := m.scraper.TargetsActive()[JobName]
		if ok || len(want) == 0 {
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

// Targets returns the scraped agents, static and from file_sd, with their
// health, sorted by host. The server's own target (SelfAddress) is not one.
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
