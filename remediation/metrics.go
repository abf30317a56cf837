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
	// resultHeld counts each time a guard holds an action back (pending).
	resultHeld = "held"
)

type metrics struct {
	actions  *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inflight prometheus.Gauge
	// heal runs from an alert's start to its verified healing.
	heal             *prometheus.HistogramVec
	escalations      *prometheus.CounterVec
	approvalsExpired prometheus.Counter
	// sameIncident counts alerts taken as another report of an event's
	// or a rule's instance (keyFor).
	sameIncident prometheus.Counter
	// The guards' state, read from the engine at each scrape.
	breakerOpen, unhealthy, paused, pauseAge, awaiting, givenUp prometheus.GaugeFunc
}

func newMetrics(reg prometheus.Registerer, state func() guardState) (*metrics, error) {
	m := &metrics{
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caretaker_remediation_actions_total",
			Help: "Remediation actions by action and result (succeeded, failed, skipped, held, cancelled, expired).",
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
		heal: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "caretaker_remediation_time_to_heal_seconds",
			Help: "Time from an alert's start to its target verified healthy, by the action that healed it.",
			// The lab heals a crashed guest in a few seconds; alerts
			// with a for: clause start minutes before any action.
			Buckets: []float64{1, 2, 3, 5, 8, 13, 30, 60, 120, 300, 600, 1800},
		}, []string{"action"}),
		escalations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caretaker_remediation_escalations_total",
			Help: "Escalations along a rule's chain, by the action escalated to; \"human\" when the chain was spent.",
		}, []string{"to"}),
		approvalsExpired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_remediation_approvals_expired_total",
			Help: "Actions whose approval was not given within its TTL.",
		}),
		sameIncident: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_remediation_same_incident_alerts_total",
			Help: "Alerts of a rule taken as another report of a crash an agent's event already raised, or the other way round: one instance, one action.",
		}),
		awaiting: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "caretaker_remediation_awaiting_approval",
			Help: "Remediation actions waiting for a human's approval.",
		}, func() float64 { return float64(state().awaiting) }),
		givenUp: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "caretaker_remediation_given_up",
			Help: "Alerts still firing whose every remediation action failed: a human must act.",
		}, func() float64 { return float64(state().givenUp) }),
		breakerOpen: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "caretaker_remediation_circuit_breaker_open",
			Help: "1 while the circuit breaker is open and remediation acts on nothing, else 0.",
		}, func() float64 {
			if state().breakerOpen {
				return 1
			}
			return 0
		}),
		unhealthy: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "caretaker_remediation_unhealthy_targets",
			Help: "Distinct targets with a firing alert that a remediation rule matches.",
		}, func() float64 { return float64(state().unhealthy) }),
		paused: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "caretaker_remediation_paused",
			Help: "Remediation pauses in force.",
		}, func() float64 { return float64(state().paused) }),
		pauseAge: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "caretaker_remediation_pause_age_seconds",
			Help: "Age of the oldest remediation pause in force; 0 when none.",
		}, func() float64 { return state().pauseAge.Seconds() }),
	}
	// Every series exists from the start, so a rate() over them works
	// before the first action and a dashboard shows 0, not "no data".
	for _, a := range policy.KnownActions() {
		for _, r := range []string{resultSucceeded, resultFailed, resultSkipped} {
			m.actions.WithLabelValues(a, r)
		}
		m.duration.WithLabelValues(a)
		m.heal.WithLabelValues(a)
		m.escalations.WithLabelValues(a)
	}
	m.escalations.WithLabelValues(escalateHuman)
	if reg == nil {
		return m, nil
	}
	cs := []prometheus.Collector{m.actions, m.duration, m.inflight, m.heal, m.escalations, m.approvalsExpired, m.sameIncident,
		m.breakerOpen, m.unhealthy, m.paused, m.pauseAge, m.awaiting, m.givenUp}
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
