// Package kvm collects the state of the host's libvirt domains (KVM
// guests): every defined domain, running or not, so that a guest that crashed
// or was shut off stays visible, together with whether it is meant to run,
// what it uses (CPU, memory, disks, network) and the lifecycle events libvirt
// reported for it between scrapes.
//
// In steady state a scrape makes one bulk stats call to libvirt, plus one
// listing of the autostart domains if a domain has no intent in its
// metadata: what only the domain's XML holds (caretaker's metadata, the
// bridges of its interfaces) is cached, and read again only when libvirt's
// events say it changed or the domain's ID did.
package kvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/prometheus/client_golang/prometheus"

	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
)

const namespace = "caretaker_kvm"

// DefaultLibvirtTimeout is how long a scrape waits for libvirt unless
// WithLibvirtTimeout says otherwise.
const DefaultLibvirtTimeout = 5 * time.Second

// statsTypes are the groups asked of virConnectGetAllDomainStats.
const statsTypes = libvirt.DomainStatsState |
	libvirt.DomainStatsCPUTotal |
	libvirt.DomainStatsVCPU |
	libvirt.DomainStatsBalloon |
	libvirt.DomainStatsBlock |
	libvirt.DomainStatsInterface

// inactiveID is the ID libvirt gives a domain that is not running.
const inactiveID = -1

// ErrBusy is returned (wrapped) by Update while a call to libvirt that an
// earlier scrape gave up waiting for has not returned yet.
var ErrBusy = errors.New("an earlier call to libvirt has not returned yet")

// Collector is the kvm collector. It implements collectors.Collector.
type Collector struct {
	conn   *libvirtconn.Conn
	logger *slog.Logger
	// filter, if set, limits the collector to the domains whose name it
	// accepts.
	filter func(name string) bool
	// timeout bounds how long Update waits for libvirt.
	timeout time.Duration
	// listener, if set, hears the lifecycle events of the domains filter
	// keeps (WithLifecycleListener).
	listener LifecycleListener

	// noWaitRejected is set once the driver has refused the NOWAIT flag,
	// so that later scrapes do not pay for the refusal again.
	noWaitRejected atomic.Bool
	// mu guards inflight.
	mu sync.Mutex
	// inflight is the call to libvirt under way, if any. A libvirt call
	// cannot be cancelled: one that hangs (libvirtd stopped) outlives its
	// scrape. Scrapes share the call under way rather than start another,
	// so there is never more than one; once a scrape has given up on it,
	// later scrapes fail at once instead of waiting for it too.
	inflight *call
	// last is the last call that returned without error, for
	// GuestCommitment.
	last   *call
	memory *memory
	// calls counts the calls to libvirt, and xmlReads the identities read
	// (cache misses), for the tests.
	calls, xmlReads atomic.Uint64

	up              *prometheus.Desc
	domains         *prometheus.Desc
	lifecycleEvents *prometheus.Desc
	info            *prometheus.Desc
	interfaceInfo   *prometheus.Desc
	state           *prometheus.Desc
	stateReason     *prometheus.Desc
	intendedRunning *prometheus.Desc
	// unexpectedState, unexpectedReason and unhealthyInfo exist only for
	// the guests meant to run that do not run (see emitUnexpected).
	unexpectedState  *prometheus.Desc
	unexpectedReason *prometheus.Desc
	unhealthyInfo    *prometheus.Desc
	crashes          *prometheus.Desc
	vcpus            *prometheus.Desc
	cpuSeconds       *prometheus.Desc
	vcpuDelay        *prometheus.Desc
	memoryCurrent    *prometheus.Desc
	memoryMaximum    *prometheus.Desc
	memoryRSS        *prometheus.Desc
	blockReadBytes   *prometheus.Desc
	blockWriteBytes  *prometheus.Desc
	blockReadReqs    *prometheus.Desc
	blockWriteReqs   *prometheus.Desc
	blockReadTime    *prometheus.Desc
	blockWriteTime   *prometheus.Desc
	blockErrors      *prometheus.Desc
	netRxBytes       *prometheus.Desc
	netRxPackets     *prometheus.Desc
	netRxErrors      *prometheus.Desc
	netRxDrops       *prometheus.Desc
	netTxBytes       *prometheus.Desc
	netTxPackets     *prometheus.Desc
	netTxErrors      *prometheus.Desc
	netTxDrops       *prometheus.Desc
}

// Option configures a Collector.
type Option func(*Collector)

// WithDomainMatch limits the collector to the domains whose name match
// accepts; the others are neither reported nor counted. It lets several
// simulated hosts share one libvirtd (caretaker lab). match may change its
// answers over time (an agent that creates domains adds them), and is
// called from several goroutines.
func WithDomainMatch(match func(name string) bool) Option {
	return func(c *Collector) { c.filter = match }
}

// WithLibvirtTimeout bounds how long one scrape waits for libvirt
// (--libvirt.timeout); the scrape's own deadline still applies when it is
// shorter. After d the scrape reports caretaker_kvm_up 0 and fails. d <= 0
// leaves only the scrape's deadline. The default is DefaultLibvirtTimeout.
func WithLibvirtTimeout(d time.Duration) Option {
	return func(c *Collector) { c.timeout = d }
}

// LifecycleListener hears the lifecycle events the collector's
// subscription gets. The collector subscribes once per connection, and
// whoever else in the agent needs the events hears them through it: one
// subscription, so one order of the events for all.
type LifecycleListener interface {
	// Registered says whether the lifecycle subscription is made now:
	// true once it is on a new connection, false once it is ended (the
	// connection is being closed, dead or not). It runs with the
	// libvirtconn.Conn's lock held: it must not block or call the Conn.
	Registered(ok bool)
	// Lifecycle is one event of a domain the collector's filter keeps,
	// with its UUID and name, in the order libvirtd sent them. It runs
	// on the goroutine that reads the events: it must not block or call
	// libvirt.
	Lifecycle(uuid, name string, event libvirt.DomainEventType, detail int)
}

// WithLifecycleListener has l hear the lifecycle events of the domains
// the collector reports (see LifecycleListener).
func WithLifecycleListener(l LifecycleListener) Option {
	return func(c *Collector) { c.listener = l }
}

// New returns a kvm collector reading through conn, which it shares with
// the agent's actions and does not close. It subscribes to libvirt's
// domain events on every connection conn opens; where libvirtd refuses
// them the collector still works, but counts no events and reads every
// domain's XML on every scrape.
func New(conn *libvirtconn.Conn, logger *slog.Logger, opts ...Option) *Collector {
	uuid := []string{"uuid"}
	device := []string{"uuid", "device"}
	desc := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	c := &Collector{
		conn:    conn,
		logger:  logger,
		timeout: DefaultLibvirtTimeout,
		memory:  newMemory(),
		up: desc("up",
			"Whether libvirt answered the last scrape (1) or not (0).", nil),
		domains: desc("domains",
			"Number of domains defined in libvirt, running or not.", nil),
		lifecycleEvents: desc("lifecycle_events_total",
			"Domain events libvirt reported since the agent started, by kind: libvirt's lifecycle events (defined, undefined, started, suspended, resumed, stopped, shutdown, pmsuspended, crashed) and reboots (rebooted).",
			[]string{"event"}),
		info: desc("domain_info",
			"Identity of a libvirt domain; always 1. cluster and role come from caretaker's domain metadata, or else from a name of the form <cluster>-<role>-<n>, and are empty without either.",
			[]string{"uuid", "domain", "cluster", "role"}),
		interfaceInfo: desc("domain_interface_info",
			"A network interface of a domain; always 1. device is its host-side device (empty while the domain is shut off), bridge the host bridge it is plugged into (empty when none or not known), mac its MAC address.",
			[]string{"uuid", "device", "bridge", "mac"}),
		state: desc("domain_state",
			"State of the domain, libvirt's virDomainState: 0 nostate, 1 running, 2 blocked, 3 paused, 4 shutdown (shutting down), 5 shutoff, 6 crashed, 7 pmsuspended.",
			uuid),
		stateReason: desc("domain_state_reason",
			"Reason for the domain's state, libvirt's numeric reason code, whose meaning depends on the state (virDomain<State>Reason). For shutoff (state 5): 0 unknown, 1 shutdown, 2 destroyed, 3 crashed, 4 migrated, 5 saved, 6 failed, 7 from snapshot, 8 daemon.",
			uuid),
		intendedRunning: desc("domain_intended_running",
			"Whether the domain is meant to run (1) or not (0): the intent in caretaker's domain metadata, or the domain's autostart flag without it.",
			uuid),
		unexpectedState: desc("domain_unexpected_state",
			"State of a domain meant to run that does not run (domain_intended_running 1, domain_state not 1), as in domain_state. Exists only for such domains: the guest alerts read these few series rather than every domain's state and intent.",
			uuid),
		unexpectedReason: desc("domain_unexpected_state_reason",
			"Reason for the state of a domain meant to run that does not run, as in domain_state_reason. Exists only for such domains, for the guest alerts (see domain_unexpected_state).",
			uuid),
		unhealthyInfo: desc("domain_unhealthy_info",
			"Identity of a domain meant to run that does not run, with domain_info's labels; always 1. Exists only for such domains: the guest alerts join these rather than every domain's domain_info.",
			[]string{"uuid", "domain", "cluster", "role"}),
		crashes: desc("domain_crashes_total",
			"Crashes of the domain libvirt reported since the agent started (its process died, or the guest panicked), even when the domain was restarted before the scrape saw it down.",
			uuid),
		vcpus: desc("domain_vcpus",
			"Number of online virtual CPUs of an active domain.", uuid),
		cpuSeconds: desc("domain_cpu_seconds_total",
			"CPU time used by the domain, in seconds.", uuid),
		vcpuDelay: desc("domain_vcpu_delay_seconds_total",
			"Time the domain's vCPUs were ready to run but waited for a host CPU, summed over its vCPUs, in seconds: what the guest sees as steal time. Reported by QEMU domains on hosts with scheduler statistics.",
			uuid),
		memoryCurrent: desc("domain_memory_current_bytes",
			"Memory currently assigned to the domain (its balloon size), in bytes.", uuid),
		memoryMaximum: desc("domain_memory_maximum_bytes",
			"Maximum memory the domain may be given, in bytes.", uuid),
		memoryRSS: desc("domain_memory_rss_bytes",
			"Resident memory of the domain's process on the host, in bytes.", uuid),
		blockReadBytes: desc("domain_block_read_bytes_total",
			"Bytes read from a block device of the domain.", device),
		blockWriteBytes: desc("domain_block_write_bytes_total",
			"Bytes written to a block device of the domain.", device),
		blockReadReqs: desc("domain_block_read_requests_total",
			"Read requests completed on a block device of the domain.", device),
		blockWriteReqs: desc("domain_block_write_requests_total",
			"Write requests completed on a block device of the domain.", device),
		blockReadTime: desc("domain_block_read_time_seconds_total",
			"Time spent on read requests on a block device of the domain, in seconds.", device),
		blockWriteTime: desc("domain_block_write_time_seconds_total",
			"Time spent on write requests on a block device of the domain, in seconds.", device),
		blockErrors: desc("domain_block_errors_total",
			"Errors on a block device of the domain, where the hypervisor reports them.", device),
		netRxBytes: desc("domain_interface_receive_bytes_total",
			"Bytes received by a network interface of the domain.", device),
		netRxPackets: desc("domain_interface_receive_packets_total",
			"Packets received by a network interface of the domain.", device),
		netRxErrors: desc("domain_interface_receive_errors_total",
			"Receive errors on a network interface of the domain.", device),
		netRxDrops: desc("domain_interface_receive_drops_total",
			"Received packets dropped on a network interface of the domain.", device),
		netTxBytes: desc("domain_interface_transmit_bytes_total",
			"Bytes sent by a network interface of the domain.", device),
		netTxPackets: desc("domain_interface_transmit_packets_total",
			"Packets sent by a network interface of the domain.", device),
		netTxErrors: desc("domain_interface_transmit_errors_total",
			"Transmit errors on a network interface of the domain.", device),
		netTxDrops: desc("domain_interface_transmit_drops_total",
			"Packets to send dropped on a network interface of the domain.", device),
	}
	for _, o := range opts {
		o(c)
	}
	if conn != nil {
		conn.OnConnect(c.registerEvents)
	}
	return c
}

// Update implements collectors.Collector. When libvirt cannot be reached, or
// does not answer within the timeout, it sends caretaker_kvm_up 0 and returns
// the error.
func (c *Collector) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	cl, err := c.await(ctx, true)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return err
	}

	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(c.domains, prometheus.GaugeValue, float64(len(cl.doms)))
	if cl.eventsOK {
		for k, n := range c.memory.eventCounts() {
			ch <- prometheus.MustNewConstMetric(c.lifecycleEvents, prometheus.CounterValue, float64(n), eventKind(k).String())
		}
	}
	for i := range cl.doms {
		c.emit(ch, cl.doms[i])
	}
	return nil
}

// await returns the result of the call to libvirt under way, which it
// starts if there is none, waiting for it at most the libvirt timeout.
// update says the caller is Update (see join).
func (c *Collector) await(ctx context.Context, update bool) (*call, error) {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	cl, err := c.joinFor(ctx, update)
	if err != nil {
		return nil, err
	}
	select {
	case <-cl.done:
		return cl, cl.err
	case <-ctx.Done():
		c.mu.Lock()
		cl.abandoned = true
		c.mu.Unlock()
		return nil, fmt.Errorf("collect kvm domains: libvirt %s did not answer in time: %w", c.conn.URI(), ctx.Err())
	}
}

// GuestReuse is the age up to which a call's result serves the other
// collector of the same scrape when no call is under way: the host and kvm
// collectors of one scrape run together and share the call under way, but
// the one that comes a moment after it returned would otherwise make a
// second pass over every domain. GuestCommitment takes any call this
// recent; Update only one that GuestCommitment started and no Update has
// reported yet, so that no scrape reports the kvm metrics of another.
const GuestReuse = time.Second

// GuestCommitment returns the vCPUs and the maximum memory of the running
// (active) domains the collector reports, for the host collector's
// caretaker_host_guest_vcpus and caretaker_host_guest_memory_bytes: from
// the scrape's call to libvirt under way, or one that returned less than
// GuestReuse ago, or else a call of its own, bounded as Update's is.
func (c *Collector) GuestCommitment(ctx context.Context) (vcpus int, memoryBytes uint64, err error) {
	cl, err := c.await(ctx, false)
	if err != nil {
		return 0, 0, fmt.Errorf("guest commitment: %w", err)
	}
	return cl.vcpus, cl.memoryBytes, nil
}

// call is one round of calls to libvirt, shared by the scrapes that come
// while it runs. Its results are set before done is closed, and read-only
// after.
type call struct {
	done chan struct{}
	doms []domain
	// eventsOK says the event subscriptions were made: without them,
	// the event and crash counters are left out rather than reported as
	// zero.
	eventsOK bool
	err      error
	// vcpus and memoryBytes are the online vCPUs and the maximum memory
	// of the active domains in doms (GuestCommitment).
	vcpus       int
	memoryBytes uint64
	// returned is when the call returned.
	returned time.Time
	// claimed is set, under Collector.mu, once an Update reports the
	// call (see GuestReuse).
	claimed bool
	// abandoned is set, under Collector.mu, once a scrape has stopped
	// waiting for the call: it is presumed hung.
	abandoned bool
}

// join returns the call to libvirt under way, or starts one, for Update.
// It fails at once if a scrape has already given up on the call under way.
func (c *Collector) join(ctx context.Context) (*call, error) {
	return c.joinFor(ctx, true)
}

// joinFor is join for Update (update) or GuestCommitment, which may also
// be given a call that returned less than GuestReuse ago.
func (c *Collector) joinFor(ctx context.Context, update bool) (*call, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl := c.inflight; cl != nil {
		if cl.abandoned {
			return nil, fmt.Errorf("collect kvm domains from libvirt %s: %w", c.conn.URI(), ErrBusy)
		}
		cl.claimed = cl.claimed || update
		return cl, nil
	}
	if last := c.last; last != nil && time.Since(last.returned) <= GuestReuse && (!update || !last.claimed) {
		last.claimed = last.claimed || update
		return last, nil
	}
	cl := &call{done: make(chan struct{}), claimed: update}
	c.inflight = cl
	c.calls.Add(1)
	// The call may serve scrapes other than the one starting it: it keeps
	// this scrape's deadline but not its cancellation.
	rctx, cancel := context.WithoutCancel(ctx), context.CancelFunc(func() {})
	if deadline, ok := ctx.Deadline(); ok {
		rctx, cancel = context.WithDeadline(rctx, deadline)
	}
	go func() {
		defer cancel()
		doms, eventsOK, err := c.read(rctx)
		cl.doms, cl.eventsOK, cl.err = doms, eventsOK, err
		cl.vcpus, cl.memoryBytes = commitment(doms)
		cl.returned = time.Now()
		// Clear inflight before waking the waiters, so that a scrape
		// after them starts a fresh call.
		c.mu.Lock()
		c.inflight = nil
		if err == nil {
			c.last = cl
		}
		c.mu.Unlock()
		close(cl.done)
	}()
	return cl, nil
}

// read gets everything a scrape reports from libvirt: the stats of every
// domain in one call, the identities missing from the cache, and the
// autostart flags if a domain needs them. It gives up reading identities
// once ctx is done; the ones read so far stay cached for the next scrape.
// eventsOK tells whether the domains' crash counts are set (see call).
func (c *Collector) read(ctx context.Context) (doms []domain, eventsOK bool, err error) {
	conn, err := c.conn.Get()
	if err != nil {
		return nil, false, fmt.Errorf("collect kvm domains: %w", err)
	}
	since := c.memory.now()
	stats, err := c.domainStats(conn)
	if err != nil {
		return nil, false, err
	}

	type miss struct {
		stat, dom int
		id        int32
		ticket    ticket
	}
	var misses []miss
	seen := make(map[string]struct{}, len(stats))
	doms = make([]domain, 0, len(stats))
	for i := range stats {
		// UUID, name and ID come with the record.
		dom := stats[i].Dom
		uuid := libvirtconn.UUIDString(dom.UUID)
		seen[uuid] = struct{}{}
		name := dom.Name
		if c.filter != nil && !c.filter(name) {
			continue
		}
		st := parseStats(stats[i].Params)
		d := domain{uuid: uuid, name: name, active: dom.ID != inactiveID, stats: &st}
		ident, ok, t := c.memory.identity(uuid, dom.ID)
		if ok {
			d.ident = ident
		} else {
			misses = append(misses, miss{stat: i, dom: len(doms), id: dom.ID, ticket: t})
		}
		doms = append(doms, d)
	}
	c.memory.prune(seen, since)

	for _, m := range misses {
		if err := ctx.Err(); err != nil {
			return nil, false, fmt.Errorf("collect kvm domains: read domain XML: %w", err)
		}
		d := &doms[m.dom]
		c.xmlReads.Add(1)
		ident, err := readIdentity(conn, stats[m.stat].Dom, m.id != inactiveID)
		if err != nil {
			// The domain is reported without metadata and
			// interfaces; the next scrape tries again.
			level := slog.LevelWarn
			if libvirtconn.IsCode(err, libvirt.ErrNoDomain) {
				level = slog.LevelDebug // gone since the stats call
			}
			c.logger.Log(ctx, level, "read domain XML", "uuid", d.uuid, "domain", d.name, "err", err)
			continue
		}
		c.memory.storeIdentity(d.uuid, m.id, ident, m.ticket)
		d.ident = &ident
	}

	c.intents(conn, doms)
	eventsOK = c.memory.crashes(doms)
	return doms, eventsOK, nil
}

// commitment sums the vCPUs and the maximum memory of the active domains:
// the vCPUs libvirt reports a state for (it does for the online vCPUs of an
// active domain only) and the balloon's maximum.
func commitment(doms []domain) (vcpus int, memoryBytes uint64) {
	for i := range doms {
		d := &doms[i]
		if !d.active || d.stats == nil {
			continue
		}
		for _, v := range d.stats.Vcpu {
			if v.StateSet {
				vcpus++
			}
		}
		if b := d.stats.Balloon; b != nil && b.MaximumSet {
			memoryBytes += b.Maximum * 1024 // KiB
		}
	}
	return vcpus, memoryBytes
}

// intents sets whether each domain is meant to run: the intent in its
// metadata, or its autostart flag. The autostart flags of all domains come
// in one call, made only if a domain has no intent: libvirt reports no
// event when the flag changes, so it cannot be cached.
func (c *Collector) intents(conn *libvirt.Libvirt, doms []domain) {
	needAutostart := false
	for i := range doms {
		d := &doms[i]
		running, stated := statedIntent(d.ident)
		if !stated {
			needAutostart = true
			continue
		}
		d.intendedKnown = true
		d.intended = running
		if !running && d.ident.meta.Intent != guestmeta.IntentStopped {
			c.logger.Debug("unknown intent in caretaker metadata, counting the domain as not meant to run", "uuid", d.uuid, "domain", d.name, "intent", d.ident.meta.Intent)
		}
	}
	if !needAutostart {
		return
	}
	autostart, err := autostartUUIDs(conn)
	if err != nil {
		c.logger.Warn("read domain autostart flags, leaving out intended_running of domains without an intent", "err", err)
		return
	}
	for i := range doms {
		d := &doms[i]
		if !d.intendedKnown {
			_, d.intended = autostart[d.uuid]
			d.intendedKnown = true
		}
	}
}

// autostartUUIDs returns the UUIDs of the domains set to autostart.
func autostartUUIDs(conn *libvirt.Libvirt) (map[string]struct{}, error) {
	doms, _, err := conn.ConnectListAllDomains(1, libvirt.ConnectListDomainsAutostart)
	if err != nil {
		return nil, fmt.Errorf("list autostart domains: %w", err)
	}
	uuids := make(map[string]struct{}, len(doms))
	for i := range doms {
		uuids[libvirtconn.UUIDString(doms[i].UUID)] = struct{}{}
	}
	return uuids, nil
}

// domainStats asks libvirt for the stats of every defined domain in one
// call: one round trip, whose records parseStats reads.
func (c *Collector) domainStats(conn *libvirt.Libvirt) ([]libvirt.DomainStatsRecord, error) {
	// NOWAIT: a domain busy with a long job (migration, snapshot) reports
	// what libvirt knows without waiting for the job, instead of stalling
	// the whole scrape. No filter flags: every domain, active or not.
	var flags libvirt.ConnectGetAllDomainStatsFlags
	if !c.noWaitRejected.Load() {
		flags = libvirt.ConnectGetAllDomainsStatsNowait
	}
	stats, err := conn.ConnectGetAllDomainStats(nil, uint32(statsTypes), uint32(flags))
	if err != nil && flags != 0 && libvirtconn.IsCode(err, libvirt.ErrInvalidArg) {
		c.noWaitRejected.Store(true)
		c.logger.Info("libvirt driver does not accept NOWAIT for domain stats, collecting without it", "err", err)
		stats, err = conn.ConnectGetAllDomainStats(nil, uint32(statsTypes), 0)
	}
	if err != nil {
		return nil, fmt.Errorf("get all domain stats from libvirt %s: %w", c.conn.URI(), err)
	}
	return stats, nil
}

// domain is what the collector reports about one domain.
type domain struct {
	uuid, name string
	// ident is nil when the domain's XML could not be read.
	ident *identity
	// intendedKnown is false when neither the metadata nor the autostart
	// flag could be read; intended_running is then left out rather than
	// guessed.
	intendedKnown bool
	intended      bool
	// crashes is nil when libvirt's events are not available.
	crashes *uint64
	// active says the domain runs (has an ID): running, paused or any
	// state but shut off.
	active bool
	stats  *domainStats
}

// emit sends the metrics of one domain. Values libvirt did not report are
// left out.
func (c *Collector) emit(ch chan<- prometheus.Metric, d domain) {
	gauge := func(desc *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, d.uuid)
	}
	counter := func(desc *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, d.uuid)
	}
	cluster, role := clusterRole(d.name, d.ident)
	ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, d.uuid, d.name, cluster, role)
	if d.ident != nil {
		type key struct{ device, bridge, mac string }
		seen := make(map[key]bool, len(d.ident.ifaces))
		for _, f := range d.ident.ifaces {
			k := key{f.device, f.bridge, f.mac}
			if seen[k] {
				continue // would be a duplicate series
			}
			seen[k] = true
			ch <- prometheus.MustNewConstMetric(c.interfaceInfo, prometheus.GaugeValue, 1, d.uuid, f.device, f.bridge, f.mac)
		}
	}
	if d.intendedKnown {
		gauge(c.intendedRunning, boolFloat(d.intended))
	}
	if d.crashes != nil {
		counter(c.crashes, float64(*d.crashes))
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
		c.emitUnexpected(ch, d, st.State, cluster, role)
	}
	if online := onlineVcpus(st.Vcpu); online > 0 {
		gauge(c.vcpus, float64(online))
	}
	if delay, ok := vcpuDelay(st.Vcpu); ok {
		counter(c.vcpuDelay, float64(delay)/1e9)
	}
	if st.Cpu != nil && st.Cpu.TimeSet {
		counter(c.cpuSeconds, float64(st.Cpu.Time)/1e9)
	}
	if b := st.Balloon; b != nil {
		// libvirt reports balloon sizes in KiB.
		if b.CurrentSet {
			gauge(c.memoryCurrent, float64(b.Current)*1024)
		}
		if b.MaximumSet {
			gauge(c.memoryMaximum, float64(b.Maximum)*1024)
		}
		if b.RssSet {
			gauge(c.memoryRSS, float64(b.Rss)*1024)
		}
	}
	c.emitBlock(ch, d.uuid, st.Block)
	c.emitNet(ch, d.uuid, st.Net)
}

// emitUnexpected sends, for a domain meant to run (intended_running known
// and 1) whose state is known and not running, its state, state reason
// and identity again under the unexpected/unhealthy names; for any other
// domain nothing. A fleet has few such guests: the rules that look for them
// read these series rather than the state, intent and identity of every
// guest, which cost an evaluation most of its time at 50,000 guests.
func (c *Collector) emitUnexpected(ch chan<- prometheus.Metric, d domain, st *statsState, cluster, role string) {
	if !d.intendedKnown || !d.intended || !st.StateSet || st.State == libvirt.DomainRunning {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.unexpectedState, prometheus.GaugeValue, float64(st.State), d.uuid)
	if st.ReasonSet {
		ch <- prometheus.MustNewConstMetric(c.unexpectedReason, prometheus.GaugeValue, float64(st.Reason), d.uuid)
	}
	ch <- prometheus.MustNewConstMetric(c.unhealthyInfo, prometheus.GaugeValue, 1, d.uuid, d.name, cluster, role)
}

// emitBlock sends the stats of each block device, named by its target
// (vda). Without the BACKING flag libvirt reports each disk once; a name
// seen twice is skipped rather than sent as a duplicate series.
func (c *Collector) emitBlock(ch chan<- prometheus.Metric, uuid string, blocks []statsBlock) {
	seen := make(map[string]bool, len(blocks))
	for _, b := range blocks {
		if !b.NameSet || b.Name == "" || seen[b.Name] {
			continue
		}
		seen[b.Name] = true
		counter := func(desc *prometheus.Desc, set bool, v float64) {
			if set {
				ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, uuid, b.Name)
			}
		}
		counter(c.blockReadBytes, b.RdBytesSet, float64(b.RdBytes))
		counter(c.blockWriteBytes, b.WrBytesSet, float64(b.WrBytes))
		counter(c.blockReadReqs, b.RdReqsSet, float64(b.RdReqs))
		counter(c.blockWriteReqs, b.WrReqsSet, float64(b.WrReqs))
		// libvirt reports times in nanoseconds.
		counter(c.blockReadTime, b.RdTimesSet, float64(b.RdTimes)/1e9)
		counter(c.blockWriteTime, b.WrTimesSet, float64(b.WrTimes)/1e9)
		counter(c.blockErrors, b.ErrorsSet, float64(b.Errors))
	}
}

// emitNet sends the stats of each network interface, named by its
// host-side device (vnet0), as in domain_interface_info.
func (c *Collector) emitNet(ch chan<- prometheus.Metric, uuid string, nets []statsNet) {
	seen := make(map[string]bool, len(nets))
	for _, n := range nets {
		if !n.NameSet || n.Name == "" || seen[n.Name] {
			continue
		}
		seen[n.Name] = true
		counter := func(desc *prometheus.Desc, set bool, v uint64) {
			if set {
				ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), uuid, n.Name)
			}
		}
		counter(c.netRxBytes, n.RxBytesSet, n.RxBytes)
		counter(c.netRxPackets, n.RxPktsSet, n.RxPkts)
		counter(c.netRxErrors, n.RxErrsSet, n.RxErrs)
		counter(c.netRxDrops, n.RxDropSet, n.RxDrop)
		counter(c.netTxBytes, n.TxBytesSet, n.TxBytes)
		counter(c.netTxPackets, n.TxPktsSet, n.TxPkts)
		counter(c.netTxErrors, n.TxErrsSet, n.TxErrs)
		counter(c.netTxDrops, n.TxDropSet, n.TxDrop)
	}
}

// vcpuDelay sums the vCPUs' delay (vcpu.<n>.delay, nanoseconds) and reports
// whether libvirt gave any. One sum per domain rather than one series per
// vCPU: steal is judged per guest, and per-vCPU series would multiply the
// collector's output by the guests' vCPU counts.
func vcpuDelay(vcpus []statsVcpu) (uint64, bool) {
	var sum uint64
	set := false
	for _, v := range vcpus {
		if v.DelaySet {
			sum += v.Delay
			set = true
		}
	}
	return sum, set
}

// onlineVcpus counts the online vCPUs: those libvirt reports a state
// other than offline for. libvirt reports per-vCPU state only for an
// active domain, so a shut-off domain counts 0 and is left out rather than
// reported as having none.
func onlineVcpus(vcpus []statsVcpu) int {
	n := 0
	for _, v := range vcpus {
		if v.StateSet && v.State != vcpuOffline {
			n++
		}
	}
	return n
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
