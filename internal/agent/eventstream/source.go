package eventstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"libvirt.org/go/libvirt"

	"caretaker/collectors/kvm"
	"caretaker/internal/agentapi"
	"caretaker/internal/libvirtconn"
)

// queueSize bounds the events waiting to be read and published. libvirt
// reports a handful per guest and action: it fills only if libvirt stops
// answering the worker's reads for long; what then does not fit is lost,
// and said so with a gap.
const queueSize = 4096

// How long the Source waits before it tries libvirt again after a failed
// connection (doubling from retryMin), and how often it looks at a
// connection whose loss libvirt might not report (no close callback).
const (
	retryMin = 250 * time.Millisecond
	retryMax = 5 * time.Second
	recheck  = 10 * time.Second
)

// Source hears libvirt's lifecycle events of the agent's domains, as a
// kvm.LifecycleListener of the kvm collector (libvirt takes one lifecycle
// callback per connection), reads each domain's state right after its
// event and publishes both to a Hub. It keeps the agent's libvirt
// connection open, so that events flow without a scrape or an action, and
// publishes a gap when libvirt's events were lost with the connection.
type Source struct {
	hub    *Hub
	conn   *libvirtconn.Conn
	logger *slog.Logger
	queue  chan queued

	mu sync.Mutex
	// up says the lifecycle callback is registered on a live
	// connection; lostAt is when it stopped being, zero when it never
	// was or has been registered again since (with its gap queued).
	up     bool
	lostAt time.Time
	// overflowAt is when the queue first overflowed, zero if not since
	// the last gap for it.
	overflowAt time.Time
	started    bool
}

// queued is one event waiting for the worker: a lifecycle event, or a gap.
type queued struct {
	at         time.Time
	uuid, name string
	event      libvirt.DomainEventType
	detail     int
	gap        bool
	since      time.Time
}

// NewSource returns a Source publishing to hub the events it hears
// through conn. Pass it to kvm.WithLifecycleListener, and Start it.
func NewSource(hub *Hub, conn *libvirtconn.Conn, logger *slog.Logger) *Source {
	return &Source{hub: hub, conn: conn, logger: logger, queue: make(chan queued, queueSize)}
}

var _ kvm.LifecycleListener = (*Source)(nil)

// Registered implements kvm.LifecycleListener. It runs with the Conn's
// lock held: it only records, and queues the gap of a reconnect.
func (s *Source) Registered(ok bool) {
	now := time.Now()
	if !ok {
		s.lost(now)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.up = true
	s.hub.SetLibvirt(true)
	if !s.lostAt.IsZero() {
		s.enqueueLocked(queued{at: now, gap: true, since: s.lostAt})
		s.lostAt = time.Time{}
	}
}

// lost records that the callbacks stopped at t.
func (s *Source) lost(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.up {
		s.up = false
		s.lostAt = t
		s.hub.SetLibvirt(false)
	}
}

// Lifecycle implements kvm.LifecycleListener. It runs on libvirt's
// event-loop thread: it only queues.
func (s *Source) Lifecycle(uuid, name string, event libvirt.DomainEventType, detail int) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enqueueLocked(queued{at: now, uuid: uuid, name: name, event: event, detail: detail})
}

func (s *Source) enqueueLocked(q queued) {
	select {
	case s.queue <- q:
	default:
		if s.overflowAt.IsZero() {
			s.overflowAt = q.at
		}
	}
}

// takeOverflow returns when the queue overflowed, if it did since the
// last call, and forgets it.
func (s *Source) takeOverflow() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.overflowAt
	s.overflowAt = time.Time{}
	return t
}

// Start runs the Source until ctx is done: a worker that reads and
// publishes the queued events one by one as they come, and a keeper of
// the libvirt connection. Later calls do nothing.
func (s *Source) Start(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return
	}
	s.started = true
	go s.work(ctx)
	go s.keep(ctx)
}

func (s *Source) work(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case q := <-s.queue:
			s.publish(ctx, q)
			if since := s.takeOverflow(); !since.IsZero() {
				s.logger.Warn("libvirt events came faster than they could be read: some were lost", "since", since)
				s.hub.Publish(agentapi.Event{Type: agentapi.EventGap, Time: time.Now(), Since: since})
			}
		}
	}
}

// publish reads what q's event needs and publishes it.
func (s *Source) publish(ctx context.Context, q queued) {
	if q.gap {
		s.logger.Info("libvirt events lost while the connection was down", "since", q.since, "until", q.at)
		s.hub.Publish(agentapi.Event{Type: agentapi.EventGap, Time: q.at, Since: q.since})
		return
	}
	e := agentapi.Event{
		Time:   q.at,
		Type:   TypeName(q.event),
		Detail: DetailName(q.event, q.detail),
		UUID:   q.uuid,
		Domain: q.name,
	}
	// The closure's result is read only once Call has returned nil,
	// that is once the closure has: a call left to libvirt after the
	// timeout writes to a result no one reads.
	type result struct {
		state, reason int
		intended      *bool
	}
	res := &result{}
	err := s.conn.Call(ctx, "read domain "+q.uuid+" after its event", func(lv *libvirt.Connect) error {
		dom, err := lv.LookupDomainByUUIDString(q.uuid)
		if err != nil {
			return err
		}
		defer dom.Free()
		state, reason, err := dom.GetState()
		if err != nil {
			return err
		}
		res.state, res.reason = int(state), reason
		if intended, err := kvm.DomainIntendedRunning(dom); err != nil {
			s.logger.Debug("read whether an event's domain is meant to run", "uuid", q.uuid, "err", err)
		} else {
			res.intended = &intended
		}
		return nil
	})
	var lverr libvirt.Error
	switch {
	case err == nil:
		e.StateKnown, e.State, e.Reason, e.IntendedRunning = true, res.state, res.reason, res.intended
	case errors.As(err, &lverr) && lverr.Code == libvirt.ERR_NO_DOMAIN:
		// Gone by now (undefined, or a transient domain stopped).
	default:
		s.logger.Warn("read the state of an event's domain", "uuid", q.uuid, "domain", q.name, "event", e.Type, "err", err)
	}
	s.hub.Publish(e)
}

// keep opens the libvirt connection, and again whenever it is lost, so
// that the callbacks are registered without waiting for a scrape; a lost
// connection is recorded when libvirt reports it, for the gap's Since.
func (s *Source) keep(ctx context.Context) {
	wait := retryMin
	for ctx.Err() == nil {
		err := s.conn.Call(ctx, "connect to libvirt for its events", func(*libvirt.Connect) error { return nil })
		if err != nil {
			s.logger.Debug("connect to libvirt for its events, trying again", "in", wait, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, retryMax)
			continue
		}
		wait = retryMin
		select {
		case <-ctx.Done():
			return
		case <-s.conn.Lost():
			s.lost(time.Now())
		case <-time.After(recheck):
		}
	}
}

// TypeName is an Event's Type for libvirt's lifecycle event type: the
// kvm collector's word for it (its lifecycle_events_total label).
func TypeName(t libvirt.DomainEventType) string { return kvm.EventTypeName(t) }

// details are libvirt's detail words of each event type, by their code.
var details = map[libvirt.DomainEventType][]string{
	libvirt.DOMAIN_EVENT_DEFINED: {
		libvirt.DOMAIN_EVENT_DEFINED_ADDED:         "added",
		libvirt.DOMAIN_EVENT_DEFINED_UPDATED:       "updated",
		libvirt.DOMAIN_EVENT_DEFINED_RENAMED:       "renamed",
		libvirt.DOMAIN_EVENT_DEFINED_FROM_SNAPSHOT: "from-snapshot",
	},
	libvirt.DOMAIN_EVENT_UNDEFINED: {
		libvirt.DOMAIN_EVENT_UNDEFINED_REMOVED: "removed",
		libvirt.DOMAIN_EVENT_UNDEFINED_RENAMED: "renamed",
	},
	libvirt.DOMAIN_EVENT_STARTED: {
		libvirt.DOMAIN_EVENT_STARTED_BOOTED:        "booted",
		libvirt.DOMAIN_EVENT_STARTED_MIGRATED:      "migrated",
		libvirt.DOMAIN_EVENT_STARTED_RESTORED:      "restored",
		libvirt.DOMAIN_EVENT_STARTED_FROM_SNAPSHOT: "from-snapshot",
		libvirt.DOMAIN_EVENT_STARTED_WAKEUP:        "wakeup",
		libvirt.DOMAIN_EVENT_STARTED_RECREATED:     "recreated",
	},
	libvirt.DOMAIN_EVENT_SUSPENDED: {
		libvirt.DOMAIN_EVENT_SUSPENDED_PAUSED:          "paused",
		libvirt.DOMAIN_EVENT_SUSPENDED_MIGRATED:        "migrated",
		libvirt.DOMAIN_EVENT_SUSPENDED_IOERROR:         "ioerror",
		libvirt.DOMAIN_EVENT_SUSPENDED_WATCHDOG:        "watchdog",
		libvirt.DOMAIN_EVENT_SUSPENDED_RESTORED:        "restored",
		libvirt.DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT:   "from-snapshot",
		libvirt.DOMAIN_EVENT_SUSPENDED_API_ERROR:       "api-error",
		libvirt.DOMAIN_EVENT_SUSPENDED_POSTCOPY:        "postcopy",
		libvirt.DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED: "postcopy-failed",
		libvirt.DOMAIN_EVENT_SUSPENDED_GUEST_SHUTDOWN:  "guest-shutdown",
	},
	libvirt.DOMAIN_EVENT_RESUMED: {
		libvirt.DOMAIN_EVENT_RESUMED_UNPAUSED:        "unpaused",
		libvirt.DOMAIN_EVENT_RESUMED_MIGRATED:        "migrated",
		libvirt.DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT:   "from-snapshot",
		libvirt.DOMAIN_EVENT_RESUMED_POSTCOPY:        "postcopy",
		libvirt.DOMAIN_EVENT_RESUMED_POSTCOPY_FAILED: "postcopy-failed",
	},
	libvirt.DOMAIN_EVENT_STOPPED: {
		libvirt.DOMAIN_EVENT_STOPPED_SHUTDOWN:      "shutdown",
		libvirt.DOMAIN_EVENT_STOPPED_DESTROYED:     "destroyed",
		libvirt.DOMAIN_EVENT_STOPPED_CRASHED:       "crashed",
		libvirt.DOMAIN_EVENT_STOPPED_MIGRATED:      "migrated",
		libvirt.DOMAIN_EVENT_STOPPED_SAVED:         "saved",
		libvirt.DOMAIN_EVENT_STOPPED_FAILED:        "failed",
		libvirt.DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "from-snapshot",
		libvirt.DOMAIN_EVENT_STOPPED_RECREATED:     "recreated",
	},
	libvirt.DOMAIN_EVENT_SHUTDOWN: {
		libvirt.DOMAIN_EVENT_SHUTDOWN_FINISHED: "finished",
		libvirt.DOMAIN_EVENT_SHUTDOWN_GUEST:    "guest",
		libvirt.DOMAIN_EVENT_SHUTDOWN_HOST:     "host",
	},
	libvirt.DOMAIN_EVENT_PMSUSPENDED: {
		libvirt.DOMAIN_EVENT_PMSUSPENDED_MEMORY: "memory",
		libvirt.DOMAIN_EVENT_PMSUSPENDED_DISK:   "disk",
	},
	libvirt.DOMAIN_EVENT_CRASHED: {
		libvirt.DOMAIN_EVENT_CRASHED_PANICKED:    "panicked",
		libvirt.DOMAIN_EVENT_CRASHED_CRASHLOADED: "crashloaded",
	},
}

// DetailName is an Event's Detail for libvirt's detail code of an event
// of type t: libvirt's word in lower case, "unknown(N)" for a code (or
// type) this version does not know.
func DetailName(t libvirt.DomainEventType, detail int) string {
	if words := details[t]; detail >= 0 && detail < len(words) && words[detail] != "" {
		return words[detail]
	}
	return fmt.Sprintf("unknown(%d)", detail)
}
