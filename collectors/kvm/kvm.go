// Package kvm collects the state of the host's libvirt domains (KVM
// guests): every defined domain, running or not, so that a guest that crashed
// or was shut off stays visible, together with whether it is meant to run.
package kvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"libvirt.org/go/libvirt"

	"caretaker/internal/libvirtconn"
)

const namespace = "caretaker_kvm"

// statsTypes are the groups asked of virConnectGetAllDomainStats.
const statsTypes = libvirt.DOMAIN_STATS_STATE |
	libvirt.DOMAIN_STATS_CPU_TOTAL |
	libvirt.DOMAIN_STATS_VCPU |
	libvirt.DOMAIN_STATS_BALLOON

// Collector is the kvm collector. It implements collectors.Collector.
type Collector struct {
	conn   *libvirtconn.Conn
	logger *slog.Logger
	// filter, if set, limits the collector to the domains whose name
	// matches it.
	filter *regexp.Regexp

	// noWaitRejected is set once the driver has refused the NOWAIT flag,
	// so that later scrapes do not pay for the refusal again.
	noWaitRejected atomic.Bool

	up              *prometheus.Desc
	domains         *prometheus.Desc
	info            *prometheus.Desc
	state           *prometheus.Desc
	stateReason     *prometheus.Desc
	intendedRunning *prometheus.Desc
	vcpus           *prometheus.Desc
	cpuSeconds      *prometheus.Desc
	memoryCurrent   *prometheus.Desc
	memoryMaximum   *prometheus.Desc
}

// Option configures a Collector.
type Option func(*Collector)

// WithDomainFilter limits the collector to the domains whose name matches
// re; the others are neither reported nor counted. It lets several
// simulated hosts share one libvirtd (caretaker lab).
func WithDomainFilter(re *regexp.Regexp) Option {
	return func(c *Collector) { c.filter = re }
}

// New returns a kvm collector reading through conn, which it shares with
// the agent's actions and does not close.
func New(conn *libvirtconn.Conn, logger *slog.Logger, opts ...Option) *Collector {
	uuid := []string{"uuid"}
	desc := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	c := &Collector{
		conn:   conn,
		logger: logger,
		up: desc("up",
			"Whether libvirt answered the last scrape (1) or not (0).", nil),
		domains: desc("domains",
			"Number of domains defined in libvirt, running or not.", nil),
		info: desc("domain_info",
			"Identity of a libvirt domain; always 1. cluster and role come from caretaker's domain metadata and are empty without it.",
			[]string{"uuid", "domain", "cluster", "role"}),
		state: desc("domain_state",
			"State of the domain, libvirt's virDomainState: 0 nostate, 1 running, 2 blocked, 3 paused, 4 shutdown (shutting down), 5 shutoff, 6 crashed, 7 pmsuspended.",
			uuid),
		stateReason: desc("domain_state_reason",
			"Reason for the domain's state, libvirt's numeric reason code, whose meaning depends on the state (virDomain<State>Reason). For shutoff (state 5): 0 unknown, 1 shutdown, 2 destroyed, 3 crashed, 4 migrated, 5 saved, 6 failed, 7 from snapshot, 8 daemon.",
			uuid),
		intendedRunning: desc("domain_intended_running",
			"Whether the domain is meant to run (1) or not (0): the intent in caretaker's domain metadata, or the domain's autostart flag without it.",
			uuid),
		vcpus: desc("domain_vcpus",
			"Number of online virtual CPUs of an active domain.", uuid),
		cpuSeconds: desc("domain_cpu_seconds_total",
			"CPU time used by the domain, in seconds.", uuid),
		memoryCurrent: desc("domain_memory_current_bytes",
			"Memory currently assigned to the domain (its balloon size), in bytes.", uuid),
		memoryMaximum: desc("domain_memory_maximum_bytes",
			"Maximum memory the domain may be given, in bytes.", uuid),
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Update implements collectors.Collector. When libvirt cannot be reached it
// sends caretaker_kvm_up 0 and returns the error.
func (c *Collector) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	stats, err := c.domainStats()
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return err
	}
	defer func() {
		for i := range stats {
			if err := stats[i].Domain.Free(); err != nil {
				c.logger.Debug("free libvirt domain", "err", err)
			}
		}
	}()

	ours := stats
	if c.filter != nil {
		ours = nil
		for i := range stats {
			// GetName reads the client-side object: no round trip.
			if name, err := stats[i].Domain.GetName(); err == nil && c.filter.MatchString(name) {
				ours = append(ours, stats[i])
			}
		}
	}

	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(c.domains, prometheus.GaugeValue, float64(len(ours)))
	for i := range ours {
		// Each domain costs a round trip or two to libvirt: stop once
		// the scrape has given up on us.
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("collect kvm domains: %w", err)
		}
		c.collectDomain(ch, &ours[i])
	}
	return nil
}

// domainStats asks libvirt for the stats of every defined domain in one call.
func (c *Collector) domainStats() ([]libvirt.DomainStats, error) {
	conn, err := c.conn.Get()
	if err != nil {
		return nil, fmt.Errorf("collect kvm domains: %w", err)
	}
	// NOWAIT: a domain busy with a long job (migration, snapshot) reports
	// what libvirt knows without waiting for the job, instead of stalling
	// the whole scrape. No filter flags: every domain, active or not.
	var flags libvirt.ConnectGetAllDomainStatsFlags
	if !c.noWaitRejected.Load() {
		flags = libvirt.CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
	}
	stats, err := conn.GetAllDomainStats(nil, statsTypes, flags)
	if err != nil && flags != 0 && isLibvirtError(err, libvirt.ERR_INVALID_ARG) {
		c.noWaitRejected.Store(true)
		c.logger.Info("libvirt driver does not accept NOWAIT for domain stats, collecting without it", "err", err)
		stats, err = conn.GetAllDomainStats(nil, statsTypes, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("get all domain stats from libvirt %s: %w", c.conn.URI(), err)
	}
	return stats, nil
}

// domain is what the collector reports about one domain.
type domain struct {
	uuid, name string
	meta       Metadata
	// intendedKnown is false when neither the metadata nor the autostart
	// flag could be read; intended_running is then left out rather than
	// guessed.
	intendedKnown bool
	intended      bool
	stats         *libvirt.DomainStats
}

func (c *Collector) collectDomain(ch chan<- prometheus.Metric, st *libvirt.DomainStats) {
	dom := st.Domain
	uuid, err := dom.GetUUIDString()
	if err != nil {
		c.logger.Warn("read domain uuid, skipping the domain", "err", err)
		return
	}
	name, err := dom.GetName()
	if err != nil {
		c.logger.Warn("read domain name", "uuid", uuid, "err", err)
	}
	logger := c.logger.With("uuid", uuid, "domain", name)

	d := domain{uuid: uuid, name: name, stats: st}
	meta, hasMeta, err := readMetadata(dom)
	if err != nil {
		logger.Warn("read caretaker metadata, falling back to autostart", "err", err)
	}
	d.meta = meta
	if hasMeta && meta.Intent != "" {
		d.intendedKnown = true
		d.intended = meta.Intent == IntentRunning
		if meta.Intent != IntentRunning && meta.Intent != IntentStopped {
			logger.Debug("unknown intent in caretaker metadata, counting the domain as not meant to run", "intent", meta.Intent)
		}
	} else {
		autostart, err := dom.GetAutostart()
		if err != nil {
			logger.Warn("read domain autostart flag, leaving out intended_running", "err", err)
		} else {
			d.intendedKnown, d.intended = true, autostart
		}
	}
	c.emit(ch, d)
}

// readMetadata reads caretaker's element from the domain's persistent
// definition. It reports false, and no error, when the domain has none.
func readMetadata(dom *libvirt.Domain) (Metadata, bool, error) {
	// AFFECT_CONFIG reads the persistent definition, which exists for
	// running and shut-off domains alike and is where an intent set with
	// --config lands (a running domain's live definition would miss it).
	// Transient domains have no persistent definition: read theirs live.
	s, err := dom.GetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, MetadataNamespace, libvirt.DOMAIN_AFFECT_CONFIG)
	if isLibvirtError(err, libvirt.ERR_OPERATION_INVALID) {
		s, err = dom.GetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, MetadataNamespace, libvirt.DOMAIN_AFFECT_CURRENT)
	}
	if isLibvirtError(err, libvirt.ERR_NO_DOMAIN_METADATA) {
		return Metadata{}, false, nil
	}
	if err != nil {
		return Metadata{}, false, fmt.Errorf("get domain metadata %s: %w", MetadataNamespace, err)
	}
	m, err := ParseMetadata(s)
	if err != nil {
		return Metadata{}, false, err
	}
	return m, true, nil
}

// emit sends the metrics of one domain. Values libvirt did not report are
// left out.
func (c *Collector) emit(ch chan<- prometheus.Metric, d domain) {
	gauge := func(desc *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, d.uuid)
	}
	ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, d.uuid, d.name, d.meta.Cluster, d.meta.Role)
	if d.intendedKnown {
		gauge(c.intendedRunning, boolFloat(d.intended))
	}
	st := d.stats
	if st == nil {
		return
	}
	if st.State != nil {
		if st.State.StateSet {
			gauge(c.state, float64(st.State.State))
		}
		if st.State.ReasonSet {
			gauge(c.stateReason, float64(st.State.Reason))
		}
	}
	if online := onlineVcpus(st.Vcpu); online > 0 {
		gauge(c.vcpus, float64(online))
	}
	if st.Cpu != nil && st.Cpu.TimeSet {
		ch <- prometheus.MustNewConstMetric(c.cpuSeconds, prometheus.CounterValue, float64(st.Cpu.Time)/1e9, d.uuid)
	}
	if st.Balloon != nil {
		// libvirt reports balloon sizes in KiB.
		if st.Balloon.CurrentSet {
			gauge(c.memoryCurrent, float64(st.Balloon.Current)*1024)
		}
		if st.Balloon.MaximumSet {
			gauge(c.memoryMaximum, float64(st.Balloon.Maximum)*1024)
		}
	}
}

// onlineVcpus counts the online vCPUs. The binding sizes the list by
// vcpu.maximum and marks every vCPU libvirt said nothing about as offline;
// libvirt reports per-vCPU state only for an active domain, so a shut-off
// domain counts 0 and is left out rather than reported as having none.
func onlineVcpus(vcpus []libvirt.DomainStatsVcpu) int {
	n := 0
	for _, v := range vcpus {
		if v.StateSet && v.State != libvirt.VCPU_OFFLINE {
			n++
		}
	}
	return n
}

func isLibvirtError(err error, code libvirt.ErrorNumber) bool {
	var lverr libvirt.Error
	return errors.As(err, &lverr) && lverr.Code == code
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
