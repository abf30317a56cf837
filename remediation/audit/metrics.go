package audit

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	sent, failed, dropped, batches prometheus.Counter
	duration                       prometheus.Histogram
}

// newMetrics registers the metrics with reg, unless nil; queue is the
// buffer whose length is reported.
func newMetrics(reg prometheus.Registerer, queue chan entry) (*metrics, error) {
	m := &metrics{
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_audit_entries_sent_total",
			Help: "Remediation records Loki accepted.",
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_audit_entries_failed_total",
			Help: "Remediation records not sent to Loki: refused (4xx), out of retries, or still unsent at shutdown.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_audit_entries_dropped_total",
			Help: "Remediation records dropped because the audit buffer was full or the client closed.",
		}),
		batches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_audit_batches_sent_total",
			Help: "Push requests Loki accepted.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "caretaker_audit_push_duration_seconds",
			Help:    "Duration of one push request to Loki, including failed ones.",
			Buckets: prometheus.DefBuckets,
		}),
	}
	if reg == nil {
		return m, nil
	}
	buffered := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "caretaker_audit_buffered_entries",
		Help: "Remediation records waiting to be pushed to Loki.",
	}, func() float64 { return float64(len(queue)) })
	var registered []prometheus.Collector
	for _, c := range []prometheus.Collector{m.sent, m.failed, m.dropped, m.batches, m.duration, buffered} {
		if err := reg.Register(c); err != nil {
			for _, r := range registered { // all or nothing, so New can be retried
				reg.Unregister(r)
			}
			return nil, fmt.Errorf("register audit metrics: %w", err)
		}
		registered = append(registered, c)
	}
	return m, nil
}
