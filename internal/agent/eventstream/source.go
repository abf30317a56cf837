package eventstream

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"

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
// connection (doubling from retryMin), and how often it looks at the
// connection even though its loss has not been reported.
const (
	retryMin = 250 * time.Millisecond
	retryMax = 5 * time.Second
	recheck  = 10 * time.Second
)

// Source hears libvirt's lifecycle events of the agent's domains, as a
// kvm.LifecycleListener of the kvm collector (one subscription, so one
// order of the events), reads each domain's state right after its
// event and publishes both to a Hub. It keeps the agent's libvirt
// connection open, so that events flow without a scrape or an action, and
// publishes a gap when libvirt's events were lost with the connection.
type Source struct {
	hub    *Hub
	conn   *libvirtconn.Conn
	logger *slog.Logger
	queue  chan queued

	mu sync.Mutex
	// up says the lifecycle subscription is made on a live
	// connection; lostAt is when it stopped being, zero when it never
	// was or has been made again since (with its gap queued).
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

// lost records that the events stopped at t.
func (s *Source) lost(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.up {
		s.up = false
		s.lostAt = t
		s.hub.SetLibvirt(false)
	}
}

// Lifecycle implements kvm.LifecycleListener. It runs on the goroutine
// that reads the events: it only queues.
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
	err := s.conn.Call(ctx, "read domain "+q.uuid+" after its event", func(lv *libvirt.Libvirt) error {
		dom, err := libvirtconn.LookupDomain(lv, q.uuid)
		if err != nil {
			return err
		}
		state, reason, err := lv.DomainGetState(dom, 0)
		if err != nil {
			return err
		}
		res.state, res.reason = int(state), int(reason)
		if intended, err := kvm.DomainIntendedRunning(lv, dom); err != nil {
			s.logger.Debug("read whether an event's domain is meant to run", "uuid", q.uuid, "err", err)
		} else {
			res.intended = &intended
		}
		return nil
	})
	switch {
	case err == nil:
		e.StateKnown, e.State, e.Reason, e.IntendedRunning = true, res.state, res.reason, res.intended
	case libvirtconn.IsCode(err, libvirt.ErrNoDomain):
		// Gone by now (undefined, or a transient domain stopped).
	default:
		s.logger.Warn("read the state of an event's domain", "uuid", q.uuid, "domain", q.name, "event", e.Type, "err", err)
	}
	s.hub.Publish(e)
}

// keep opens the libvirt connection, and again whenever it is lost, so
// that the subscriptions are made without waiting for a scrape; a lost
// connection is recorded when libvirt reports it, for the gap's Since.
func (s *Source) keep(ctx context.Context) {
	wait := retryMin
	for ctx.Err() == nil {
		err := s.conn.Call(ctx, "connect to libvirt for its events", func(*libvirt.Libvirt) error { return nil })
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

// suspendedGuestShutdown is VIR_DOMAIN_EVENT_SUSPENDED_GUEST_SHUTDOWN
// (libvirt 10.x), newer than go-libvirt's constants.
const suspendedGuestShutdown = 9

// details are libvirt's detail words of each event type, by their code.
var details = map[libvirt.DomainEventType][]string{
	libvirt.DomainEventDefined: {
		libvirt.DomainEventDefinedAdded:        "added",
		libvirt.DomainEventDefinedUpdated:      "updated",
		libvirt.DomainEventDefinedRenamed:      "renamed",
		libvirt.DomainEventDefinedFromSnapshot: "from-snapshot",
	},
	libvirt.DomainEventUndefined: {
		libvirt.DomainEventUndefinedRemoved: "removed",
		libvirt.DomainEventUndefinedRenamed: "renamed",
	},
	libvirt.DomainEventStarted: {
		libvirt.DomainEventStartedBooted:       "booted",
		libvirt.DomainEventStartedMigrated:     "migrated",
		libvirt.DomainEventStartedRestored:     "restored",
		libvirt.DomainEventStartedFromSnapshot: "from-snapshot",
		libvirt.DomainEventStartedWakeup:       "wakeup",
		libvirt.DomainEventStartedRecreated:    "recreated",
	},
	libvirt.DomainEventSuspended: {
		libvirt.DomainEventSuspendedPaused:         "paused",
		libvirt.DomainEventSuspendedMigrated:       "migrated",
		libvirt.DomainEventSuspendedIoerror:        "ioerror",
		libvirt.DomainEventSuspendedWatchdog:       "watchdog",
		libvirt.DomainEventSuspendedRestored:       "restored",
		libvirt.DomainEventSuspendedFromSnapshot:   "from-snapshot",
		libvirt.DomainEventSuspendedAPIError:       "api-error",
		libvirt.DomainEventSuspendedPostcopy:       "postcopy",
		libvirt.DomainEventSuspendedPostcopyFailed: "postcopy-failed",
		suspendedGuestShutdown:                     "guest-shutdown",
	},
	libvirt.DomainEventResumed: {
		libvirt.DomainEventResumedUnpaused:       "unpaused",
		libvirt.DomainEventResumedMigrated:       "migrated",
		libvirt.DomainEventResumedFromSnapshot:   "from-snapshot",
		libvirt.DomainEventResumedPostcopy:       "postcopy",
		libvirt.DomainEventResumedPostcopyFailed: "postcopy-failed",
	},
	libvirt.DomainEventStopped: {
		libvirt.DomainEventStoppedShutdown:     "shutdown",
		libvirt.DomainEventStoppedDestroyed:    "destroyed",
		libvirt.DomainEventStoppedCrashed:      "crashed",
		libvirt.DomainEventStoppedMigrated:     "migrated",
		libvirt.DomainEventStoppedSaved:        "saved",
		libvirt.DomainEventStoppedFailed:       "failed",
		libvirt.DomainEventStoppedFromSnapshot: "from-snapshot",
		libvirt.DomainEventStoppedRecreated:    "recreated",
	},
	libvirt.DomainEventShutdown: {
		libvirt.DomainEventShutdownFinished: "finished",
		libvirt.DomainEventShutdownGuest:    "guest",
		libvirt.DomainEventShutdownHost:     "host",
	},
	libvirt.DomainEventPmsuspended: {
		libvirt.DomainEventPmsuspendedMemory: "memory",
		libvirt.DomainEventPmsuspendedDisk:   "disk",
	},
	libvirt.DomainEventCrashed: {
		libvirt.DomainEventCrashedPanicked:    "panicked",
		libvirt.DomainEventCrashedCrashloaded: "crashloaded",
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
