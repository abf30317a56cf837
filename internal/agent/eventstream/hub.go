// Package eventstream is the agent's stream of libvirt lifecycle events,
// GET /api/v1/events (agentapi.EventsPath): a Hub that numbers the events
// of this run of the agent, keeps the last ones for readers that resume,
// and writes them to every open stream; and a Source that hears libvirt's
// lifecycle events (through the kvm collector's callback), reads the
// domain's state after each and publishes it to the Hub.
package eventstream

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"caretaker/internal/agentapi"
	"caretaker/internal/httpjson"
)

// Defaults of Options' zero fields.
const (
	// DefaultRingSize events are kept for readers that resume: a
	// reconnect takes seconds, in which a host's few dozen guests make
	// far fewer; at about 200 bytes each, the ring stays small on every
	// host.
	DefaultRingSize = 1024
	// DefaultBuffer events may wait for one stream's writer; a stream
	// further behind is cut off, and its reader resumes from the ring.
	DefaultBuffer = 256
	// DefaultWriteTimeout bounds the write of one line to a stream.
	DefaultWriteTimeout = time.Minute
)

// Types are the values of an Event's Type the agent knows, for the
// caretaker_agent_events_total series that exist from the start.
var Types = []string{
	agentapi.EventDefined, agentapi.EventUndefined, agentapi.EventStarted,
	agentapi.EventSuspended, agentapi.EventResumed, agentapi.EventStopped,
	agentapi.EventShutdown, agentapi.EventPMSuspended, agentapi.EventCrashed,
	agentapi.EventGap,
}

// Options configures a Hub.
type Options struct {
	// RingSize, Buffer and WriteTimeout: see the defaults.
	RingSize     int
	Buffer       int
	WriteTimeout time.Duration
	// Heartbeat is how often an idle stream gets a Heartbeat line;
	// zero means agentapi.HeartbeatEvery.
	Heartbeat time.Duration
	Logger    *slog.Logger
}

// Hub numbers the events of one run of the agent (its boot), keeps the
// last RingSize of them and hands each to the open streams. It is safe for
// concurrent use; Publish never blocks on a stream.
type Hub struct {
	boot   string
	opts   Options
	logger *slog.Logger

	mu sync.Mutex
	// seq is the last sequence number given, 0 before the first event.
	seq uint64
	// ring holds the events seq-n+1 … seq, the one with sequence
	// number s at ring[(s-1) % len(ring)].
	ring    []agentapi.Event
	n       int
	subs    map[*subscriber]struct{}
	libvirt bool
	closed  bool
	done    chan struct{}

	subscribers prometheus.Gauge
	events      *prometheus.CounterVec
	dropped     prometheus.Counter
}

// subscriber is one open stream.
type subscriber struct {
	ch chan agentapi.Event
	// gone is closed when the hub cut the stream off: it fell Buffer
	// events behind.
	gone chan struct{}
}

// NewHub returns a Hub with a new random boot.
func NewHub(opts Options) *Hub {
	if opts.RingSize <= 0 {
		opts.RingSize = DefaultRingSize
	}
	if opts.Buffer <= 0 {
		opts.Buffer = DefaultBuffer
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = agentapi.HeartbeatEvery
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	h := &Hub{
		boot:   hex.EncodeToString(b),
		opts:   opts,
		logger: opts.Logger,
		ring:   make([]agentapi.Event, opts.RingSize),
		subs:   make(map[*subscriber]struct{}),
		done:   make(chan struct{}),
		subscribers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "caretaker_agent_event_subscribers",
			Help: "Open streams of libvirt lifecycle events (GET /api/v1/events).",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caretaker_agent_events_total",
			Help: "Events put on the event stream since the agent started, by type: libvirt's lifecycle event types, and gap when libvirt's events were lost.",
		}, []string{"type"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "caretaker_agent_event_subscribers_dropped_total",
			Help: "Event streams cut off because their reader fell behind; the reader resumes from the events the agent keeps.",
		}),
	}
	for _, t := range Types {
		h.events.WithLabelValues(t)
	}
	return h
}

// Boot returns the hub's boot, which names this run of the agent.
func (h *Hub) Boot() string { return h.boot }

// Collectors returns the hub's metrics, for the agent's registry.
func (h *Hub) Collectors() []prometheus.Collector {
	return []prometheus.Collector{h.subscribers, h.events, h.dropped}
}

// SetLibvirt records whether libvirt's event callbacks are registered
// now (Hello.Libvirt, Heartbeat.Libvirt).
func (h *Hub) SetLibvirt(ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.libvirt = ok
}

// Publish gives e the next sequence number, keeps it and hands it to
// every open stream; a stream with no room left is cut off. It returns
// the sequence number, 0 once the hub is closed.
func (h *Hub) Publish(e agentapi.Event) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0
	}
	h.seq++
	e.Seq = h.seq
	h.ring[(e.Seq-1)%uint64(len(h.ring))] = e
	h.n = min(h.n+1, len(h.ring))
	h.events.WithLabelValues(e.Type).Inc()
	for s := range h.subs {
		select {
		case s.ch <- e:
		default:
			delete(h.subs, s)
			close(s.gone)
			h.dropped.Inc()
			h.logger.Warn("event stream fell behind, cut off; its reader resumes from the kept events", "seq", e.Seq, "buffer", h.opts.Buffer)
		}
	}
	h.subscribers.Set(float64(len(h.subs)))
	return e.Seq
}

// Close ends every stream and refuses new ones; Publish does nothing
// after it. It is idempotent.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		close(h.done)
	}
}

// errClosed is subscribe's error once the hub is closed.
var errClosed = fmt.Errorf("the agent is shutting down")

// subscribe opens a stream from a reader's position: see ServeHTTP. The
// replay and the subscription are taken together, so that no event falls
// between them.
func (h *Hub) subscribe(boot string, after uint64, hasAfter bool) (agentapi.Hello, []agentapi.Event, *subscriber, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return agentapi.Hello{}, nil, nil, errClosed
	}
	hello := agentapi.Hello{Boot: h.boot, Seq: h.seq, Libvirt: h.libvirt}
	oldest := h.seq - uint64(h.n) + 1 // h.seq+1 when none is kept
	var replay []agentapi.Event
	switch {
	case boot == "" && !hasAfter:
		// From now on.
	case boot == h.boot && after <= h.seq:
		replay = h.sinceLocked(after)
		hello.Resumed = after+1 >= oldest
	case boot == "":
		// A sequence number without its boot: what follows it here,
		// but no promise that it is what the reader missed.
		if after <= h.seq {
			replay = h.sinceLocked(after)
		}
	default:
		// Another boot (or a position this boot never reached):
		// everything kept.
		replay = h.sinceLocked(0)
	}
	s := &subscriber{ch: make(chan agentapi.Event, h.opts.Buffer), gone: make(chan struct{})}
	h.subs[s] = struct{}{}
	h.subscribers.Set(float64(len(h.subs)))
	return hello, replay, s, nil
}

// sinceLocked returns the kept events after seq after, oldest first.
func (h *Hub) sinceLocked(after uint64) []agentapi.Event {
	from := max(after+1, h.seq-uint64(h.n)+1)
	if from > h.seq {
		return nil
	}
	out := make([]agentapi.Event, 0, h.seq-from+1)
	for s := from; s <= h.seq; s++ {
		out = append(out, h.ring[(s-1)%uint64(len(h.ring))])
	}
	return out
}

func (h *Hub) unsubscribe(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
	h.subscribers.Set(float64(len(h.subs)))
}

// status returns the last sequence number and whether libvirt's callbacks
// are registered, for a heartbeat.
func (h *Hub) status() (uint64, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seq, h.libvirt
}

// ServeHTTP answers GET /api/v1/events (agentapi.EventsPath): 200 with
// a Hello line, the kept events the reader asks for, then every event
// as it is published and a Heartbeat on an idle stream, until the reader
// leaves, falls behind, or the hub is closed.
//
// The reader's position is the query's boot and after. With this boot's
// boot and an after whose every later event is kept, those events follow
// and Hello.Resumed is true. Otherwise Resumed is false and what follows
// is: for this boot, the kept events after after; for another boot, every
// kept event; for an after without boot, the kept events after it; for
// neither, nothing but the events from now on. An after that is not a
// decimal number is a 400.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	boot := q.Get("boot")
	var after uint64
	hasAfter := q.Has("after")
	if hasAfter {
		var err error
		if after, err = strconv.ParseUint(q.Get("after"), 10, 64); err != nil {
			httpjson.Compact.Error(w, http.StatusBadRequest, fmt.Sprintf("after: %q is not a sequence number", q.Get("after")))
			return
		}
	}
	hello, replay, s, err := h.subscribe(boot, after, hasAfter)
	if err != nil {
		httpjson.Compact.Error(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	defer h.unsubscribe(s)

	// The server's read and write timeouts are for requests that end:
	// the stream lasts for as long as the reader stays. No read
	// deadline (its expiry would cancel the request), and a write
	// deadline per line, so that a reader that stopped reading cannot
	// hold the handler forever.
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(time.Time{}); err != nil {
		h.logger.Debug("clear the event stream's read deadline", "err", err)
	}
	w.Header().Set("Content-Type", agentapi.EventsContentType)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	write := func(l agentapi.StreamLine) bool {
		b, err := json.Marshal(l)
		if err != nil {
			h.logger.Error("encode event stream line", "err", err)
			return false
		}
		_ = rc.SetWriteDeadline(time.Now().Add(h.opts.WriteTimeout))
		if _, err := w.Write(append(b, '\n')); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write(agentapi.StreamLine{Hello: &hello}) {
		return
	}
	for i := range replay {
		if !write(agentapi.StreamLine{Event: &replay[i]}) {
			return
		}
	}
	beat := time.NewTimer(h.opts.Heartbeat)
	defer beat.Stop()
	for {
		select {
		case e := <-s.ch:
			if !write(agentapi.StreamLine{Event: &e}) {
				return
			}
		case <-s.gone:
			// Cut off for falling behind: what was handed over
			// still goes out, without holes; the reader resumes
			// after it.
			for {
				select {
				case e := <-s.ch:
					if !write(agentapi.StreamLine{Event: &e}) {
						return
					}
				default:
					return
				}
			}
		case <-beat.C:
			seq, lv := h.status()
			// Any event up to seq is in s.ch already: the stream is
			// not idle, and the heartbeat would run ahead of it.
			if len(s.ch) == 0 && !write(agentapi.StreamLine{Heartbeat: &agentapi.Heartbeat{Seq: seq, Libvirt: lv}}) {
				return
			}
		case <-r.Context().Done():
			return
		case <-h.done:
			return
		}
		beat.Reset(h.opts.Heartbeat)
	}
}
