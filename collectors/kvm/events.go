package kvm

import (
	"errors"
	"fmt"
	"sync"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/libvirtconn"
)

// eventKind is a kind of domain event counted host-wide: libvirt's
// lifecycle event types, plus reboots, which libvirt reports as an event of
// their own.
type eventKind int

const (
	eventDefined eventKind = iota
	eventUndefined
	eventStarted
	eventSuspended
	eventResumed
	eventStopped
	eventShutdown
	eventPMSuspended
	eventCrashed
	eventRebooted
	numEventKinds
)

// String is the value of the event label.
func (k eventKind) String() string {
	switch k {
	case eventDefined:
		return "defined"
	case eventUndefined:
		return "undefined"
	case eventStarted:
		return "started"
	case eventSuspended:
		return "suspended"
	case eventResumed:
		return "resumed"
	case eventStopped:
		return "stopped"
	case eventShutdown:
		return "shutdown"
	case eventPMSuspended:
		return "pmsuspended"
	case eventCrashed:
		return "crashed"
	case eventRebooted:
		return "rebooted"
	default:
		return fmt.Sprintf("unknown(%d)", int(k))
	}
}

// lifecycleKind maps libvirt's lifecycle event type to its kind; types
// newer than this code are not counted.
func lifecycleKind(t libvirt.DomainEventType) (eventKind, bool) {
	switch t {
	case libvirt.DomainEventDefined:
		return eventDefined, true
	case libvirt.DomainEventUndefined:
		return eventUndefined, true
	case libvirt.DomainEventStarted:
		return eventStarted, true
	case libvirt.DomainEventSuspended:
		return eventSuspended, true
	case libvirt.DomainEventResumed:
		return eventResumed, true
	case libvirt.DomainEventStopped:
		return eventStopped, true
	case libvirt.DomainEventShutdown:
		return eventShutdown, true
	case libvirt.DomainEventPmsuspended:
		return eventPMSuspended, true
	case libvirt.DomainEventCrashed:
		return eventCrashed, true
	default:
		return 0, false
	}
}

// EventTypeName is the word for libvirt's lifecycle event type, as the
// event label and the agent's event stream say it; "unknown(N)" for a type
// newer than this code.
func EventTypeName(t libvirt.DomainEventType) string {
	if k, ok := lifecycleKind(t); ok {
		return k.String()
	}
	return fmt.Sprintf("unknown(%d)", int(t))
}

// memory is what the collector keeps between scrapes: what libvirt's
// events told it, and the identities it read. Events are heard on the
// goroutines of their subscriptions, scrapes on their own; both go
// through mu.
//
// Lifecycle events are counted in two ways, to keep the series few:
// caretaker_kvm_lifecycle_events_total{event} counts every kind host-wide,
// and caretaker_kvm_domain_crashes_total{uuid} counts, per domain, the one
// kind an alert must pin on a guest even when the guest was restarted before
// the next scrape looked at its state. A per-domain counter for each kind
// would add ten series per guest that are zero nearly all the time.
type memory struct {
	mu sync.Mutex
	// seq numbers the events seen, so that a domain's lastEvent tells
	// whether something happened to it since a given moment.
	seq uint64
	// epoch numbers the connections: an identity read on an earlier one
	// may have missed the events sent while there was none.
	epoch uint64
	// eventsOK says the subscriptions are made on the current
	// connection. Without them a domain's identity could change unseen,
	// so none is cached.
	eventsOK bool
	events   [numEventKinds]uint64
	domains  map[string]*domainMemory // by UUID
}

// domainMemory is what the collector keeps about one domain.
type domainMemory struct {
	// lastEvent is the seq of the domain's last event, 0 if none.
	lastEvent uint64
	crashes   uint64
	// crashPending says the last event was a guest panic: libvirt follows
	// it with "stopped (crashed)" when the domain's on_crash action
	// destroys it, which is the same crash and not counted again.
	crashPending bool
	// ident is the cached identity, nil when there is none.
	ident *cachedIdentity
}

type cachedIdentity struct {
	identity
	// id is the domain's ID when ident was read: a restart gives a new
	// one, and the live definition read for the old one is stale.
	id    int32
	epoch uint64
}

// ticket is taken before reading a domain's identity. The reading is
// cached only if no event for the domain and no reconnect came between.
type ticket struct {
	lastEvent, epoch uint64
}

func newMemory() *memory {
	return &memory{domains: make(map[string]*domainMemory)}
}

func (m *memory) domainLocked(uuid string) *domainMemory {
	d := m.domains[uuid]
	if d == nil {
		d = &domainMemory{}
		m.domains[uuid] = d
	}
	return d
}

// connected starts a new connection's epoch: the cached identities are
// dropped, and none is cached until the subscriptions are made. Counts
// are kept: events lost while disconnected are lost either way.
func (m *memory) connected() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.epoch++
	m.eventsOK = false
	for _, d := range m.domains {
		d.ident = nil
	}
}

func (m *memory) setEventsOK(ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.eventsOK = ok
}

// lifecycle records a lifecycle event of the domain.
func (m *memory) lifecycle(uuid string, t libvirt.DomainEventType, detail int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.changedLocked(uuid)
	if k, ok := lifecycleKind(t); ok {
		m.events[k]++
	}
	switch {
	case t == libvirt.DomainEventCrashed:
		d.crashes++
		d.crashPending = true
	case t == libvirt.DomainEventStopped && processDied(detail):
		if !d.crashPending {
			d.crashes++
		}
		d.crashPending = false
	default:
		d.crashPending = false
	}
}

// processDied tells the details of a stopped event that mean the domain
// died rather than being stopped: QEMU's process went away (libvirt says
// "failed", and the domain's state becomes "shut off (crashed)"), or
// libvirt destroyed a panicked guest ("crashed").
func processDied(detail int) bool {
	switch libvirt.DomainEventStoppedDetailType(detail) {
	case libvirt.DomainEventStoppedFailed, libvirt.DomainEventStoppedCrashed:
		return true
	default:
		return false
	}
}

// rebooted records a reboot of the domain, which changes nothing the
// collector caches.
func (m *memory) rebooted() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.events[eventRebooted]++
}

// changed records that the domain's definition may have changed (metadata
// set, device added or removed).
func (m *memory) changed(uuid string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.changedLocked(uuid)
}

func (m *memory) changedLocked(uuid string) *domainMemory {
	m.seq++
	d := m.domainLocked(uuid)
	d.lastEvent = m.seq
	d.ident = nil
	return d
}

// now returns the current event seq, for prune.
func (m *memory) now() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.seq
}

// identity returns the cached identity of the domain with the given ID,
// or false and the ticket to cache a fresh reading with.
func (m *memory) identity(uuid string, id int32) (*identity, bool, ticket) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.domains[uuid]
	if d == nil {
		return nil, false, ticket{epoch: m.epoch}
	}
	if m.eventsOK && d.ident != nil && d.ident.epoch == m.epoch && d.ident.id == id {
		return &d.ident.identity, true, ticket{}
	}
	return nil, false, ticket{lastEvent: d.lastEvent, epoch: m.epoch}
}

// storeIdentity caches ident, read for the domain with the given ID after
// taking t, unless it may be stale already.
func (m *memory) storeIdentity(uuid string, id int32, ident identity, t ticket) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.eventsOK || t.epoch != m.epoch {
		return
	}
	d := m.domainLocked(uuid)
	if d.lastEvent != t.lastEvent {
		return
	}
	d.ident = &cachedIdentity{identity: ident, id: id, epoch: t.epoch}
}

// prune forgets the domains that are not in seen, libvirt's list of every
// domain, unless an event came for them since since, when the list was
// taken (a domain defined just after).
func (m *memory) prune(seen map[string]struct{}, since uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for uuid, d := range m.domains {
		if _, ok := seen[uuid]; !ok && d.lastEvent <= since {
			delete(m.domains, uuid)
		}
	}
}

// crashes sets the number of crashes of each domain of doms, unless the
// subscriptions are not made (the counts would be made up); it reports
// whether they are.
func (m *memory) crashes(doms []domain) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.eventsOK {
		return false
	}
	for i := range doms {
		var n uint64
		if d := m.domains[doms[i].uuid]; d != nil {
			n = d.crashes
		}
		doms[i].crashes = &n
	}
	return true
}

// eventCounts returns the host-wide event counts.
func (m *memory) eventCounts() [numEventKinds]uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.events
}

// registerEvents is the libvirtconn OnConnect hook: it subscribes to the
// domain events the collector hears on a new connection, and returns what
// ends the subscriptions. Events are heard on the subscriptions' own
// goroutines, in the order libvirtd sent each kind; the handlers only read
// the domain's UUID and name, which come with the event.
func (c *Collector) registerEvents(conn *libvirt.Libvirt) func() {
	c.memory.connected()
	var (
		stops []func()
		errs  []error
	)
	subscribe := func(what string, id libvirt.DomainEventID, handle func(ev any)) bool {
		stop, err := libvirtconn.Subscribe(conn, id, handle)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
			return false
		}
		stops = append(stops, stop)
		return true
	}
	changed := func(d libvirt.Domain) {
		if uuid, _, ok := c.eventDomain(d); ok {
			c.memory.changed(uuid)
		}
	}
	lifecycleOK := subscribe("lifecycle", libvirt.DomainEventIDLifecycle, func(ev any) {
		m, ok := ev.(*libvirt.DomainEventCallbackLifecycleMsg)
		if !ok {
			return
		}
		if uuid, name, ok := c.eventDomain(m.Msg.Dom); ok {
			t := libvirt.DomainEventType(m.Msg.Event)
			c.memory.lifecycle(uuid, t, int(m.Msg.Detail))
			if c.listener != nil {
				c.listener.Lifecycle(uuid, name, t, int(m.Msg.Detail))
			}
		}
	})
	subscribe("reboot", libvirt.DomainEventIDReboot, func(ev any) {
		if m, ok := ev.(*libvirt.DomainEventCallbackRebootMsg); ok {
			if _, _, ok := c.eventDomain(m.Msg.Dom); ok {
				c.memory.rebooted()
			}
		}
	})
	subscribe("metadata change", libvirt.DomainEventIDMetadataChange, func(ev any) {
		if m, ok := ev.(*libvirt.DomainEventCallbackMetadataChangeMsg); ok {
			changed(m.Dom)
		}
	})
	subscribe("device added", libvirt.DomainEventIDDeviceAdded, func(ev any) {
		if m, ok := ev.(*libvirt.DomainEventCallbackDeviceAddedMsg); ok {
			changed(m.Dom)
		}
	})
	subscribe("device removed", libvirt.DomainEventIDDeviceRemoved, func(ev any) {
		if m, ok := ev.(*libvirt.DomainEventCallbackDeviceRemovedMsg); ok {
			changed(m.Msg.Dom)
		}
	})

	if err := errors.Join(errs...); err != nil {
		c.logger.Warn("subscribe to libvirt domain events: lifecycle events are not counted, and every scrape reads every domain's XML", "err", err)
	} else {
		c.memory.setEventsOK(true)
		c.logger.Debug("subscribed to libvirt domain events")
	}
	if c.listener != nil && lifecycleOK {
		c.listener.Registered(true)
	}
	return func() {
		c.memory.setEventsOK(false)
		for _, stop := range stops {
			stop()
		}
		if c.listener != nil && lifecycleOK {
			c.listener.Registered(false)
		}
	}
}

// eventDomain returns the UUID and name of an event's domain, and false
// for a domain the collector's filter leaves out.
func (c *Collector) eventDomain(d libvirt.Domain) (uuid, name string, ok bool) {
	if c.filter != nil && !c.filter(d.Name) {
		return "", "", false
	}
	return libvirtconn.UUIDString(d.UUID), d.Name, true
}
