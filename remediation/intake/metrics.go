package intake

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"caretaker/internal/authlimit"
)

// Metrics count the webhook's deliveries and what became of their alerts.
// One value serves every Handler of a server.
type Metrics struct {
	deliveries *prometheus.CounterVec
	alerts     *prometheus.CounterVec
	cancelled  prometheus.Counter
	truncated  prometheus.Counter
	entries    prometheus.Gauge
	pruned     prometheus.Counter
	authFailed *prometheus.CounterVec
}

// Results of an alert, as the result label of the alerts counter.
const (
	resultRecorded  = "recorded"
	resultDuplicate = "duplicate"
)

// NewMetrics registers the intake metrics with reg (nil registers nothing).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caretaker_remediation_intake_deliveries_total",
			Help: "Alertmanager webhook deliveries by HTTP status code answered.",
		}, []string{"code"}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caretaker_remediation_intake_alerts_total",
			Help: "Alerts in accepted deliveries by result: recorded (new) or duplicate (delivered before).",
		}, []string{"result"}),
		cancelled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_remediation_intake_cancelled_total",
			Help: "Firing alerts withdrawn from the inbox because their resolution arrived before the engine consumed them.",
		}),
		truncated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_remediation_intake_truncated_alerts_total",
			Help: "Alerts Alertmanager left out of deliveries because of the receiver's max_alerts.",
		}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "caretaker_remediation_inbox_entries",
			Help: "Alert instances the webhook inbox holds, pending or consumed; at its bound (100,000) deliveries get 503.",
		}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_remediation_inbox_pruned_total",
			Help: "Consumed webhook inbox entries pruned after their retention.",
		}),
		authFailed: authlimit.NewCounter("caretaker_remediation_intake_auth_failures_total",
			"Failed authentications of the Alertmanager webhook by reason: missing or invalid token, or rate_limited (a client with too many failures, refused with 429)."),
	}
	// Every series exists from the start, so rate() works before the first
	// refusal and a dashboard shows 0, not "no data".
	for _, code := range []int{http.StatusOK, http.StatusBadRequest, http.StatusUnauthorized,
		http.StatusMethodNotAllowed, http.StatusRequestEntityTooLarge, http.StatusInternalServerError,
		http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		m.deliveries.WithLabelValues(strconv.Itoa(code))
	}
	m.alerts.WithLabelValues(resultRecorded)
	m.alerts.WithLabelValues(resultDuplicate)
	if reg == nil {
		return m, nil
	}
	cs := []prometheus.Collector{m.deliveries, m.alerts, m.cancelled, m.truncated, m.entries, m.pruned, m.authFailed}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			// All or nothing, so a retry does not trip over half of an
			// earlier attempt.
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("register intake metrics: %w", err)
		}
	}
	return m, nil
}

func (m *Metrics) delivered(code int) {
	if m != nil {
		m.deliveries.WithLabelValues(strconv.Itoa(code)).Inc()
	}
}

func (m *Metrics) recorded(rc Receipt, truncated uint64) {
	if m == nil {
		return
	}
	m.alerts.WithLabelValues(resultRecorded).Add(float64(len(rc.Recorded)))
	m.alerts.WithLabelValues(resultDuplicate).Add(float64(rc.Duplicates))
	m.cancelled.Add(float64(rc.Cancelled))
	m.truncated.Add(float64(truncated))
}

// inbox reports the inbox's size and what a prune removed.
func (m *Metrics) inbox(entries, pruned int) {
	if m == nil {
		return
	}
	m.entries.Set(float64(entries))
	m.pruned.Add(float64(pruned))
}

// authFailures is the counter of failed authentications, nil without
// metrics.
func (m *Metrics) authFailures() *prometheus.CounterVec {
	if m == nil {
		return nil
	}
	return m.authFailed
}
