package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"caretaker/internal/agentapi"
	"caretaker/internal/config"
	"caretaker/internal/monitoring"
	"caretaker/remediation"
)

// The alerts the event path raises: the rules' names for a guest meant to
// run that stopped (alerts/guests.rules.yml).
const (
	alertGuestCrashed    = "GuestCrashed"
	alertGuestShutOff    = "GuestShutOffUnexpectedly"
	stateRunning         = 1
	stateShutOff         = 5
	stateCrashed         = 6
	reasonShutOffCrashed = 3
)

// Timing of the streams.
const (
	// streamStall: no line (not even a heartbeat) for this long and the
	// stream is taken for dead.
	streamStall = 3 * agentapi.HeartbeatEvery
	// Reconnects back off from retryMin to retryMax, with jitter, and
	// start over after a stream that lasted stableAfter.
	retryMin    = 200 * time.Millisecond
	retryMax    = 10 * time.Second
	stableAfter = time.Minute
	// hostsEvery: how often the list of hosts (configured, inventory) is
	// looked at for streams to open or close.
	hostsEvery = 5 * time.Second
	// maxEventAge: an event dated further back (or ahead) on the agent's
	// clock than this is dated when it arrived.
	maxEventAge = time.Minute
	// seriesWindow is how far back the guest's series are looked for: a
	// scrape that failed while libvirtd was busy with the very stop marks
	// them stale, and the labels do not change.
	seriesWindow = "15m"
	// keepRunning bounds how long a guest's reports of running are kept
	// (SameOutage), and how many.
	keepRunning    = time.Hour
	maxRunningKept = 8
)

// guestEvents is the server's end of the agents' event streams. While this
// server acts (a single server always, a clustered one while it leads), it
// holds one stream per agent, turns "a guest meant to run stopped or
// crashed" into the alert the rules would raise for it — same name, same
// labels, so the same fingerprint — and hands it to the engine, seconds
// before the next scrape and evaluation could. It is the engine's
// GuestEvents: it knows which streams have been unbroken since when, and
// wakes verifications on a guest's started event.
type guestEvents struct {
	hosts   *agentapi.Hosts
	monitor *atomic.Pointer[monitoring.Monitor]
	logger  *slog.Logger
	now     func() time.Time
	metrics eventMetrics
	// lag is how old the data of a rule's alert may be when it first
	// fires: a scrape interval and a scrape's time (a later scrape
	// would have replaced it), and a second for the rest.
	lag time.Duration

	mu      sync.Mutex
	streams map[string]*hostStream // by host
}

// hostStream is the state of one agent's stream.
type hostStream struct {
	client *agentapi.Client
	stop   context.CancelFunc
	done   chan struct{}

	pos       agentapi.Position
	connected bool
	// unbrokenSince: every event of the agent since this time has been
	// received (zero: not known to be, e.g. the agent's libvirt events
	// are down).
	unbrokenSince time.Time
	// waiters wait for a guest's started event, by UUID.
	waiters map[string][]chan struct{}
	// raised are the alerts raised from events of guests that have not
	// been reported running since, by UUID.
	raised map[string]raised
	// running are when guests were last reported running (the latest
	// few, oldest first), by UUID.
	running map[string][]time.Time
}

// raised is an alert raised from an event, and when.
type raised struct {
	alert remediation.Alert
	at    time.Time
}

// sameStopWithin: events of one stop come together (a guest panic, then
// its stop; a destroy's shutdown, then its stop): a second alert of the
// same name for the guest within it is not raised.
const sameStopWithin = 10 * time.Second

type eventMetrics struct {
	up       *prometheus.GaugeVec
	received *prometheus.CounterVec
	alerts   *prometheus.CounterVec
	gaps     prometheus.Counter
	failures prometheus.Counter
	unknown  prometheus.Counter
}

// newGuestEvents follows hosts' agents; scrape is the agents' job's
// interval and timeout.
func newGuestEvents(hosts *agentapi.Hosts, monitor *atomic.Pointer[monitoring.Monitor], scrape config.ScrapeJob, reg prometheus.Registerer, logger *slog.Logger) (*guestEvents, error) {
	m := eventMetrics{
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "caretaker_event_stream_up",
			Help: "1 while this server holds the host agent's libvirt event stream, else 0 (only the acting server holds them).",
		}, []string{"host"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caretaker_events_received_total",
			Help: "Events received on the agents' streams, by type (libvirt's lifecycle events, and gap).",
		}, []string{"type"}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caretaker_event_alerts_total",
			Help: "Alerts raised from agents' events (a guest meant to run stopped or crashed) and handed to the engine, by alertname.",
		}, []string{"alertname"}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_event_stream_gaps_total",
			Help: "Times an agent's events may have been lost: a stream that could not resume, a hole in the sequence, or the agent's own libvirt events lost. The rules stay the backstop.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_event_stream_failures_total",
			Help: "Event streams that could not be opened or broke.",
		}),
		unknown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_events_unmatched_total",
			Help: "Events of a stopped guest meant to run that raised nothing: the guest's series are not (yet) in the server's TSDB, so the rule would not fire either.",
		}),
	}
	for _, c := range []prometheus.Collector{m.up, m.received, m.alerts, m.gaps, m.failures, m.unknown} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register event stream metrics: %w", err)
		}
	}
	for _, a := range []string{alertGuestCrashed, alertGuestShutOff} {
		m.alerts.WithLabelValues(a)
	}
	return &guestEvents{hosts: hosts, monitor: monitor, logger: logger, now: time.Now, metrics: m,
		lag: scrape.ScrapeInterval + scrape.ScrapeTimeout + time.Second, streams: map[string]*hostStream{}}, nil
}

// Run holds a stream to every agent the server knows until ctx is done,
// and hands the alerts it raises to handle.
func (g *guestEvents) Run(ctx context.Context, handle func(context.Context, []remediation.Alert)) {
	t := time.NewTicker(hostsEvery)
	defer t.Stop()
	for {
		g.follow(ctx, handle)
		select {
		case <-ctx.Done():
			g.mu.Lock()
			streams := g.streams
			g.streams = map[string]*hostStream{}
			g.mu.Unlock()
			for host, hs := range streams {
				hs.stop()
				<-hs.done
				g.metrics.up.DeleteLabelValues(host)
			}
			return
		case <-t.C:
		}
	}
}

// follow opens the streams of hosts without one (or whose agent moved)
// and closes those of hosts gone.
func (g *guestEvents) follow(ctx context.Context, handle func(context.Context, []remediation.Alert)) {
	clients := g.hosts.Clients()
	g.mu.Lock()
	defer g.mu.Unlock()
	for host, hs := range g.streams {
		if c, ok := clients[host]; !ok || c != hs.client {
			hs.stop()
			delete(g.streams, host)
			g.metrics.up.DeleteLabelValues(host)
		}
	}
	for host, c := range clients {
		if _, ok := g.streams[host]; ok {
			continue
		}
		sctx, stop := context.WithCancel(ctx)
		hs := &hostStream{client: c, stop: stop, done: make(chan struct{}),
			waiters: map[string][]chan struct{}{}, raised: map[string]raised{}, running: map[string][]time.Time{}}
		g.streams[host] = hs
		g.metrics.up.WithLabelValues(host).Set(0)
		go g.stream(sctx, host, hs, handle)
	}
}

// stream reads host's stream, and opens it again when it breaks.
func (g *guestEvents) stream(ctx context.Context, host string, hs *hostStream, handle func(context.Context, []remediation.Alert)) {
	defer close(hs.done)
	log := g.logger.With("host", host)
	wait := retryMin
	for ctx.Err() == nil {
		opened := g.now()
		g.mu.Lock()
		pos := hs.pos
		g.mu.Unlock()
		err := hs.client.Events(ctx, pos, streamStall, func(l agentapi.StreamLine) error {
			return g.line(ctx, host, hs, l, handle)
		})
		if ctx.Err() != nil {
			g.lost(hs)
			return
		}
		was := g.lost(hs)
		g.metrics.up.WithLabelValues(host).Set(0)
		g.metrics.failures.Inc()
		if was {
			log.Warn("event stream of the host's agent broke; reconnecting (the rules are the backstop meanwhile)", "err", err)
		} else {
			log.Debug("cannot open the event stream of the host's agent", "err", err, "retry_in", wait)
		}
		if g.now().Sub(opened) >= stableAfter {
			wait = retryMin
		}
		jitter := time.Duration(rand.Int64N(int64(wait) / 2))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait + jitter):
		}
		wait = min(2*wait, retryMax)
	}
}

// lost marks hs disconnected, wakes those waiting for its events (they
// poll again), and reports whether it was connected.
func (g *guestEvents) lost(hs *hostStream) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	was := hs.connected
	hs.connected = false
	for uuid, ws := range hs.waiters {
		for _, w := range ws {
			close(w)
		}
		delete(hs.waiters, uuid)
	}
	return was
}

// line takes one line of host's stream.
func (g *guestEvents) line(ctx context.Context, host string, hs *hostStream, l agentapi.StreamLine, handle func(context.Context, []remediation.Alert)) error {
	now := g.now()
	g.mu.Lock()
	var ev agentapi.Event
	switch {
	case l.Hello != nil:
		h := l.Hello
		resumed := h.Resumed && hs.pos.Boot == h.Boot && hs.pos.Boot != ""
		if !resumed {
			if hs.pos.Boot != "" {
				g.metrics.gaps.Inc()
				g.logger.Warn("the host's agent could not resume its event stream: events may have been lost (the rules are the backstop)",
					"host", host, "boot", h.Boot, "previous_boot", hs.pos.Boot)
			}
			// Replayed events, if any, give the position; a hole is
			// not looked for before the first.
			hs.pos = agentapi.Position{Boot: h.Boot}
			hs.unbrokenSince = now
		}
		if !h.Libvirt {
			hs.unbrokenSince = time.Time{}
		}
		hs.connected = true
		g.metrics.up.WithLabelValues(host).Set(1)
		g.logger.Debug("event stream of the host's agent open", "host", host, "boot", h.Boot, "seq", h.Seq, "resumed", resumed)
		g.mu.Unlock()
		return nil
	case l.Heartbeat != nil:
		switch {
		case !l.Heartbeat.Libvirt:
			hs.unbrokenSince = time.Time{}
		case hs.unbrokenSince.IsZero():
			hs.unbrokenSince = now
		}
		g.mu.Unlock()
		return nil
	default:
		ev = *l.Event
	}
	g.metrics.received.WithLabelValues(ev.Type).Inc()
	if hs.pos.Seq != 0 && ev.Seq != hs.pos.Seq+1 {
		g.metrics.gaps.Inc()
		g.logger.Warn("events of the host's agent are missing", "host", host, "after", hs.pos.Seq, "got", ev.Seq)
		hs.unbrokenSince = now
	}
	hs.pos.Seq = ev.Seq
	if hs.unbrokenSince.IsZero() && ev.Type != agentapi.EventGap {
		// The stream opened before the agent's libvirt callbacks were
		// registered (hello said so): an event proves they are now, and
		// every event from then on comes. Without this a crash in the
		// first heartbeat's time would not count as seen.
		hs.unbrokenSince = eventTime(ev.Time, now)
	}
	if ev.Type == agentapi.EventGap {
		g.metrics.gaps.Inc()
		g.logger.Warn("the host's agent lost libvirt's events for a while (the rules are the backstop)", "host", host, "since", ev.Since)
		hs.unbrokenSince = now
		g.mu.Unlock()
		return nil
	}
	var send []remediation.Alert
	name := stoppedAlert(ev)
	switch {
	case ev.StateKnown && ev.State == stateRunning:
		// Running: what waited for it is over, the alert raised for
		// its stop resolved.
		hs.ranAt(ev.UUID, now)
		for _, w := range hs.waiters[ev.UUID] {
			close(w)
		}
		delete(hs.waiters, ev.UUID)
		if r, ok := hs.raised[ev.UUID]; ok {
			r.alert.Status, r.alert.EndsAt = remediation.StatusResolved, now
			send = append(send, r.alert)
			delete(hs.raised, ev.UUID)
		}
	case ev.Type == agentapi.EventUndefined:
		// Gone: nothing left to heal, nothing to remember.
		if r, ok := hs.raised[ev.UUID]; ok {
			r.alert.Status, r.alert.EndsAt = remediation.StatusResolved, now
			send = append(send, r.alert)
		}
		delete(hs.raised, ev.UUID)
		delete(hs.running, ev.UUID)
	case name == "":
	case hs.raised[ev.UUID].alert.Name == name && now.Sub(hs.raised[ev.UUID].at) < sameStopWithin:
		name = "" // the same stop, told again
	}
	g.mu.Unlock()

	if name != "" {
		a, err := g.alert(ctx, host, name, ev, eventTime(ev.Time, now))
		switch {
		case err != nil:
			g.metrics.unknown.Inc()
			g.logger.Debug("an event of a stopped guest raised no alert", "host", host, "uuid", ev.UUID, "err", err)
		default:
			g.mu.Lock()
			hs.raised[ev.UUID] = raised{alert: a, at: now}
			g.mu.Unlock()
			g.metrics.alerts.WithLabelValues(name).Inc()
			g.logger.Info("a guest meant to run stopped: alert raised from the agent's event", "host", host,
				"domain", ev.Domain, "uuid", ev.UUID, "alert", name, "event", ev.Type, "detail", ev.Detail)
			send = append(send, a)
		}
	}
	if len(send) > 0 {
		handle(ctx, send)
	}
	return nil
}

// stoppedAlert is the alert the rules raise for a guest in the event's
// state, "" for none: a guest meant to run that crashed or is shut off.
func stoppedAlert(ev agentapi.Event) string {
	if !ev.StateKnown || ev.IntendedRunning == nil || !*ev.IntendedRunning {
		return ""
	}
	switch {
	case ev.State == stateCrashed, ev.State == stateShutOff && ev.Reason == reasonShutOffCrashed:
		return alertGuestCrashed
	case ev.State == stateShutOff:
		return alertGuestShutOff
	}
	return ""
}

// eventTime is when the alert of an event starts: when the agent got the
// event, unless its clock is too far off the server's.
func eventTime(at, now time.Time) time.Time {
	if at.After(now) || now.Sub(at) > maxEventAge {
		return now
	}
	return at
}

// errNoSeries: the guest's series are not in the TSDB.
var errNoSeries = errors.New("no series of the guest in the TSDB")

// alert builds the alert the rule name would raise for the guest: the
// labels of its caretaker_kvm_domain_state series, and domain, cluster and
// role from caretaker_kvm_domain_info, as the rule's expression joins them
// (monitoring.AlertAs adds the rule's own).
func (g *guestEvents) alert(ctx context.Context, host, name string, ev agentapi.Event, at time.Time) (remediation.Alert, error) {
	m := g.monitor.Load()
	if m == nil {
		return remediation.Alert{}, errors.New("the monitor is not running yet")
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	last := func(metric string) string {
		return fmt.Sprintf("last_over_time(%s{%s=%q,uuid=%q}[%s])", metric, monitoring.HostLabel, host, ev.UUID, seriesWindow)
	}
	state, err := m.Query(qctx, last("caretaker_kvm_domain_state"), g.now())
	if err != nil {
		return remediation.Alert{}, err
	}
	info, err := m.Query(qctx, last("caretaker_kvm_domain_info"), g.now())
	if err != nil {
		return remediation.Alert{}, err
	}
	if len(state) != 1 || len(info) != 1 {
		return remediation.Alert{}, fmt.Errorf("%w: %d state and %d info series", errNoSeries, len(state), len(info))
	}
	labels := state[0].Metric.Map()
	delete(labels, "__name__")
	for _, l := range []string{"domain", "cluster", "role"} {
		if v := info[0].Metric.Get(l); v != "" {
			labels[l] = v
		}
	}
	a, err := m.AlertAs(qctx, name, labels, float64(ev.State), at)
	if err != nil {
		return remediation.Alert{}, err
	}
	return remediation.Alert{Name: a.Name, Labels: a.Labels, Annotations: a.Annotations, Status: remediation.StatusFiring,
		StartsAt: at, Fingerprint: a.Fingerprint, FromEvent: true}, nil
}

// ranAt notes that the guest was reported running at t. Called with g.mu
// held.
func (hs *hostStream) ranAt(uuid string, t time.Time) {
	times := hs.running[uuid]
	for len(times) > 0 && (len(times) >= maxRunningKept || t.Sub(times[0]) > keepRunning) {
		times = times[1:]
	}
	hs.running[uuid] = append(times, t)
	for u, ts := range hs.running {
		if t.Sub(ts[len(ts)-1]) > keepRunning {
			delete(hs.running, u)
		}
	}
}

// SameOutage is remediation.GuestEvents'. The data of a rule's alert that
// first fired at alertAt was scraped at most lag before: a guest reported
// running between the event and then was seen stopped again by the rule.
func (g *guestEvents) SameOutage(host, uuid string, eventAt, alertAt time.Time) (bool, string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	hs := g.streams[host]
	switch {
	case hs == nil || !hs.connected:
		return false, "the host's event stream is not connected"
	case hs.unbrokenSince.IsZero():
		return false, "the host's event stream may have missed events (libvirt's callbacks not known registered)"
	case hs.unbrokenSince.After(eventAt):
		return false, fmt.Sprintf("the host's event stream is whole only since %s, after the event", hs.unbrokenSince.Format(time.RFC3339Nano))
	}
	for _, t := range hs.running[uuid] {
		if t.After(eventAt) && t.Before(alertAt.Add(-g.lag)) {
			return false, fmt.Sprintf("the guest was reported running at %s, after the event and before the rule's data", t.Format(time.RFC3339Nano))
		}
	}
	return true, ""
}

// Started is remediation.GuestEvents'.
func (g *guestEvents) Started(host, uuid string) (<-chan struct{}, func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	hs := g.streams[host]
	if hs == nil || !hs.connected {
		return nil, func() {}
	}
	ch := make(chan struct{})
	hs.waiters[uuid] = append(hs.waiters[uuid], ch)
	return ch, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		ws := hs.waiters[uuid]
		for i, w := range ws {
			if w == ch {
				hs.waiters[uuid] = append(ws[:i:i], ws[i+1:]...)
				break
			}
		}
		if len(hs.waiters[uuid]) == 0 {
			delete(hs.waiters, uuid)
		}
	}
}
