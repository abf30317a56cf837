package server

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/prometheus/prometheus/promql"

	"caretaker/internal/api"
	"caretaker/internal/config"
	"caretaker/internal/monitoring"
	"caretaker/internal/version"
	"caretaker/remediation/journal"
)

// status answers the API from the TSDB, the rules and the journal.
type status struct {
	monitor *monitoring.Monitor
	journal *journal.Journal
	hosts   []config.Host
	// more returns the inventory's hosts when the provisioner runs.
	more func() []config.Host
}

func (s *status) History(_ context.Context, f api.HistoryFilter) ([]journal.Record, error) {
	return s.journal.Find(f.Limit, f.Match)
}

func (s *status) Record(_ context.Context, id uint64) (journal.Record, error) {
	return s.journal.Get(id)
}

func (s *status) Status(ctx context.Context) (api.Status, error) {
	now := time.Now()
	out := api.Status{Time: now, Version: version.Get().Version, Hosts: []api.Host{}, Guests: []api.Guest{}, Alerts: []api.Alert{}}
	q := func(expr string) (promql.Vector, error) {
		v, err := s.monitor.Query(ctx, expr, now)
		if err != nil {
			return nil, fmt.Errorf("query %s: %w", expr, err)
		}
		return v, nil
	}
	byHost := func(expr string) (map[string]float64, error) {
		v, err := q(expr)
		if err != nil {
			return nil, err
		}
		m := map[string]float64{}
		for _, s := range v {
			m[s.Metric.Get("host")] = s.F
		}
		return m, nil
	}
	byGuest := func(expr string) (map[[2]string]float64, error) {
		v, err := q(expr)
		if err != nil {
			return nil, err
		}
		m := map[[2]string]float64{}
		for _, s := range v {
			m[[2]string{s.Metric.Get("host"), s.Metric.Get("uuid")}] = s.F
		}
		return m, nil
	}

	agentUp, err := byHost(`up{job="caretaker-agent"}`)
	if err != nil {
		return out, err
	}
	libvirtUp, err := byHost(`caretaker_kvm_up`)
	if err != nil {
		return out, err
	}
	states, err := byGuest(`caretaker_kvm_domain_state`)
	if err != nil {
		return out, err
	}
	reasons, err := byGuest(`caretaker_kvm_domain_state_reason`)
	if err != nil {
		return out, err
	}
	intended, err := byGuest(`caretaker_kvm_domain_intended_running`)
	if err != nil {
		return out, err
	}
	info, err := q(`caretaker_kvm_domain_info`)
	if err != nil {
		return out, err
	}
	guests := map[string]int{}
	for _, s := range info {
		l := s.Metric
		key := [2]string{l.Get("host"), l.Get("uuid")}
		st, ok := states[key]
		if !ok {
			continue // the domain is gone; only its info series is still fresh
		}
		state, reason := int(st), int(reasons[key])
		out.Guests = append(out.Guests, api.Guest{
			Host: key[0], UUID: key[1], Domain: l.Get("domain"), Cluster: l.Get("cluster"), Role: l.Get("role"),
			State: StateName(state), Reason: ReasonName(state, reason), StateCode: state, ReasonCode: reason,
			IntendedRunning: intended[key] == 1,
		})
		guests[key[0]]++
	}
	sort.Slice(out.Guests, func(i, j int) bool {
		a, b := out.Guests[i], out.Guests[j]
		if a.Host != b.Host {
			return a.Host < b.Host
		}
		return a.Domain < b.Domain
	})
	hosts := s.hosts
	if s.more != nil {
		seen := map[string]bool{}
		for _, h := range hosts {
			seen[h.Name] = true
		}
		for _, h := range s.more() {
			if !seen[h.Name] {
				hosts = append(hosts, h)
			}
		}
	}
	for _, h := range hosts {
		out.Hosts = append(out.Hosts, api.Host{
			Name: h.Name, Agent: h.Agent, AgentUp: agentUp[h.Name] == 1, LibvirtUp: libvirtUp[h.Name] == 1,
			Guests: guests[h.Name],
		})
	}
	for _, a := range s.monitor.Alerts() {
		out.Alerts = append(out.Alerts, api.Alert{
			Name: a.Name, State: a.State, Labels: a.Labels, Annotations: a.Annotations, ActiveAt: a.ActiveAt,
		})
	}
	return out, nil
}

// StateName names a libvirt domain state code (virDomainState).
func StateName(code int) string {
	stateNames := [...]string{"no state", "running", "blocked", "paused", "shutting down", "shut off", "crashed", "suspended"}
	if code >= 0 && code < len(stateNames) {
		return stateNames[code]
	}
	return fmt.Sprintf("state %d", code)
}

// ReasonName names the reason code of a libvirt domain state, for the
// states operators meet most (running, paused, shut off, crashed).
func ReasonName(state, reason int) string {
	var names []string
	switch state {
	case 1:
		names = []string{"unknown", "booted", "migrated", "restored", "from snapshot", "unpaused", "migration canceled", "save canceled", "wakeup", "crashed", "post-copy"}
	case 3:
		names = []string{"unknown", "user", "migration", "save", "dump", "I/O error", "watchdog", "from snapshot", "shutting down", "snapshot", "crashed", "starting up", "post-copy", "post-copy failed"}
	case 5:
		names = []string{"unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from snapshot", "daemon"}
	case 6:
		names = []string{"unknown", "panicked"}
	}
	if reason >= 0 && reason < len(names) {
		return names[reason]
	}
	return fmt.Sprintf("reason %d", reason)
}
