package leader

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	leader, leaderKnown, etcdUp, epoch prometheus.Gauge
	terms                              prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "caretaker_cluster_leader",
			Help: "1 while this server leads the cluster of servers and may act, 0 otherwise.",
		}),
		leaderKnown: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "caretaker_cluster_leader_known",
			Help: "1 when etcd, as last read by this server (every second), names a leader; 0 when none leads or etcd cannot be read.",
		}),
		etcdUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "caretaker_cluster_etcd_up",
			Help: "1 when this server's last read of etcd (every second) succeeded.",
		}),
		epoch: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "caretaker_cluster_epoch",
			Help: "The leader's epoch (its election revision) as last read from etcd.",
		}),
		terms: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_cluster_terms_total",
			Help: "Terms this server has led since it started.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.leader, m.leaderKnown, m.etcdUp, m.epoch, m.terms} {
		if err := reg.Register(c); err != nil {
			return metrics{}, err
		}
	}
	return m, nil
}
