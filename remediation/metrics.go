package remediation

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"caretaker/remediation/policy"
)

// Results of an action, as the result label of the actions counter.
const (
	resultSucceeded = "succeeded"
	resultFailed    = "failed"
	resultSkipped   = "skipped"
)

type metrics struct {
	actions  *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inflight prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caretaker_remediation_actions_total",
			Help: "Remediation actions by action and result (succeeded, failed, skipped).",
		}, []string{"action", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "caretaker_remediation_action_duration_seconds",
			Help: "Time from handing an action to the agent to its verified outcome.",
			// Starting a guest takes seconds; the default action timeout
			// is two minutes.
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"action"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "caretaker_remediation_inflight_actions",
			Help: "Remediation actions started and not yet finished.",
		}),
	}
	// Every series exists from the start, so a rate() over them works
	// before the first action and a dashboard shows 0, not "no data".
	for _, a := range policy.KnownActions() {
		for _, r := range []string{resultSucceeded, resultFailed, resultSkipped} {
			m.actions.WithLabelValues(a, r)
		}
		m.duration.WithLabelValues(a)
	}
	if reg == nil {
		return m, nil
	}
	cs := []prometheus.Collector{m.actions, m.duration, m.inflight}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			// All or nothing, so a retried New does not trip over
			// half of an earlier attempt.
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("register remediation metrics: %w", err)
		}
	}
	return m, nil
}
