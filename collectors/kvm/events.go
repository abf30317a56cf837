package kvm

import (
	"errors"
	"fmt"
	"sync"

	"libvirt.org/go/libvirt"
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
	case libvirt.DOMAIN_EVENT_DEFINED:
		return eventDefined, true
	case libvirt.DOMAIN_EVENT_UNDEFINED:
		return eventUndefined, true
	case libvirt.DOMAIN_EVENT_STARTED:
		return eventStarted, true
	case libvirt.DOMAIN_EVENT_SUSPENDED:
		return eventSuspended, true
	case libvirt.DOMAIN_EVENT_RESUMED:
		return eventResumed, true
	case libvirt.DOMAIN_EVENT_STOPPED:
		return eventStopped, true
	case libvirt.DOMAIN_EVENT_SHUTDOWN:
		return eventShutdown, true
	case libvirt.DOMAIN_EVENT_PMSUSPENDED:
		return eventPMSuspended, true
	case libvirt.DOMAIN_EVENT_CRASHED:
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
// events told it, and the identities it read. Event callbacks run on
// libvirt's event loop, scrapes on their own goroutine; both go through mu.
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
	// eventsOK says the callbacks are registered on the current
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
	id    uint
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
// dropped, and none is cached until the callbacks are registered. Counts
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
	case t == libvirt.DOMAIN_EVENT_CRASHED:
		d.crashes++
		d.crashPending = true
	case t == libvirt.DOMAIN_EVENT_STOPPED && processDied(detail):
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
	case libvirt.DOMAIN_EVENT_STOPPED_FAILED, libvirt.DOMAIN_EVENT_STOPPED_CRASHED:
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
func (m *memory) identity(uuid string, id uint) (*identity, bool, ticket) {
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
func (m *memory) storeIdentity(uuid string, id uint, ident identity, t ticket) {
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
// callbacks are not registered (the counts would be made up); it reports
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

// registerEvents is the libvirtconn OnConnect hook: it registers the
// collector's event callbacks on a new connection, and returns what
// deregisters them. Callbacks run on libvirt's event loop thread, where
// calling back into libvirt could deadlock: they only read the domain's
// client-side UUID and name.
func (c *Collector) registerEvents(conn *libvirt.Connect) func() {
	c.memory.connected()
	var (
		ids  []int
		errs []error
	)
	register := func(what string, id int, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
			return
		}
		ids = append(ids, id)
	}
	changed := func(d *libvirt.Domain) {
		if uuid, _, ok := c.eventDomain(d); ok {
			c.memory.changed(uuid)
		}
	}
	id, err := conn.DomainEventLifecycleRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain, ev *libvirt.DomainEventLifecycle) {
		if uuid, name, ok := c.eventDomain(d); ok {
			c.memory.lifecycle(uuid, ev.Event, ev.Detail)
			if c.listener != nil {
				c.listener.Lifecycle(uuid, name, ev.Event, ev.Detail)
			}
		}
	})
	register("lifecycle", id, err)
	lifecycleOK := err == nil
	id, err = conn.DomainEventRebootRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain) {
		if _, _, ok := c.eventDomain(d); ok {
			c.memory.rebooted()
		}
	})
	register("reboot", id, err)
	id, err = conn.DomainEventMetadataChangeRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain, _ *libvirt.DomainEventMetadataChange) {
		changed(d)
	})
	register("metadata change", id, err)
	id, err = conn.DomainEventDeviceAddedRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain, _ *libvirt.DomainEventDeviceAdded) {
		changed(d)
	})
	register("device added", id, err)
	id, err = conn.DomainEventDeviceRemovedRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain, _ *libvirt.DomainEventDeviceRemoved) {
		changed(d)
	})
	register("device removed", id, err)

	if err := errors.Join(errs...); err != nil {
		// Most likely libvirtconn.StartEventLoop was not called.
		c.logger.Warn("register libvirt domain event callbacks: lifecycle events are not counted, and every scrape reads every domain's XML", "err", err)
	} else {
		c.memory.setEventsOK(true)
		c.logger.Debug("libvirt domain event callbacks registered")
	}
	if c.listener != nil && lifecycleOK {
		c.listener.Registered(true)
	}
	return func() {
		c.memory.setEventsOK(false)
		if c.listener != nil && lifecycleOK {
			c.listener.Registered(false)
		}
		for _, id := range ids {
			// On a dead connection libvirt drops the callback
			// before the round trip that fails.
			if err := conn.DomainEventDeregister(id); err != nil {
				c.logger.Debug("deregister libvirt domain event callback", "err", err)
			}
		}
	}
}

// eventDomain returns the UUID and name of an event's domain, both read
// from the client-side object, and false for a domain the collector's
// filter leaves out. The name is "" when it cannot be read and no filter
// needs it.
func (c *Collector) eventDomain(d *libvirt.Domain) (uuid, name string, ok bool) {
	uuid, err := d.GetUUIDString()
	if err != nil {
		c.logger.Debug("read uuid of an event's domain", "err", err)
		return "", "", false
	}
	name, err = d.GetName()
	if c.filter != nil && (err != nil || !c.filter(name)) {
		return "", "", false
	}
	return uuid, name, true
}
