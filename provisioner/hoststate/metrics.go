package hoststate

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	transitions *prometheus.CounterVec
	refusals    prometheus.Counter
	hosts       hostsCollector
}

// hostsCollector counts the hosts in each state at each scrape, from the
// hosts themselves, so the gauge cannot drift from them.
type hostsCollector struct {
	desc   *prometheus.Desc
	counts func() map[State]int
}

func (c hostsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c hostsCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.counts()
	// Every state, 0 when none, so a dashboard shows 0 and not "no data".
	for _, s := range States() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n[s]), string(s))
	}
}

func newMetrics(reg prometheus.Registerer, counts func() map[State]int) (*metrics, error) {
	m := &metrics{
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caretaker_provisioner_transitions_total",
			Help: "Host state transitions, by the state entered; a retry counts as one into powering-on.",
		}, []string{"to"}),
		refusals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_provisioner_pxe_refusals_total",
			Help: "PXE requests about a known host that were refused: no attempt in flight, a script served already, a bad, stale or replayed token.",
		}),
		hosts: hostsCollector{
			desc: prometheus.NewDesc("caretaker_provisioner_hosts",
				"Hosts in each provisioning state.", []string{"state"}, nil),
			counts: counts,
		},
	}
	for _, s := range States() {
		m.transitions.WithLabelValues(string(s))
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.transitions, m.refusals, m.hosts} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register host state metrics: %w", err)
		}
	}
	return m, nil
}
