package hoststate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"caretaker/internal/kv"
	"caretaker/internal/who"
	"caretaker/provisioner/bmc"
	"caretaker/provisioner/pxe"
)

// BMC is what the Machine needs of a host's BMC; bmc.Controller has it.
// A power cycle powers on a host that is off, so no PowerOn is needed.
type BMC interface {
	PowerStatus(ctx context.Context) (bmc.PowerState, error)
	SetPXEBootOnce(ctx context.Context) error
	PowerCycle(ctx context.Context) error
}

// GuestMover moves every guest of a host to other hosts; with none left it
// does nothing, since a retry calls it again.
type GuestMover interface {
	MoveGuests(ctx context.Context, host string) error
}

// Options configure a Machine.
type Options struct {
	// Store keeps the host states and their journals (buckets "hosts"
	// and "history"); it stays the caller's to close. When nil, the
	// Machine opens the bbolt file at Path, and Close closes it.
	Store kv.Store
	// Path is the bbolt file of the host states and their journals, when
	// Store is nil.
	Path   string
	Config Config
	// BMC returns a host's BMC. An error fails the host at once: a retry
	// cannot make a missing BMC appear.
	BMC    func(host string) (BMC, error)
	Guests GuestMover
	// CallTimeout bounds each BMC call, its own retries included;
	// default 2m.
	CallTimeout time.Duration
	// MoveTimeout bounds moving a host's guests; default 30m.
	MoveTimeout time.Duration
	Logger      *slog.Logger
	Registerer  prometheus.Registerer // nil registers nothing
	Now         func() time.Time      // nil is time.Now
}

const (
	defaultCallTimeout = 2 * time.Minute
	defaultMoveTimeout = 30 * time.Minute
)

var (
	// ErrUnknownHost is returned for a name or MAC never registered.
	ErrUnknownHost = errors.New("unknown host")
	// ErrWrongState is returned for a provision or reprovision the host's
	// state does not allow, such as one already under way.
	ErrWrongState = errors.New("not possible in the host's state")
)

// Machine drives every host through its states. It is safe for concurrent
// use; events for one host are applied one at a time, and an event may wait
// for that host's BMC call in flight (at most CallTimeout).
type Machine struct {
	opts    Options
	cfg     Config
	st      *store
	log     *slog.Logger
	metrics *metrics

	// Lock order: an entry's mu before mu, never the other way round.
	mu      sync.Mutex
	entries map[string]*entry
	current map[string]Host   // a copy of each entry's host, for readers
	macs    map[string]string // MAC → name
}

type entry struct {
	mu   sync.Mutex
	host Host
	// lastRefusal is when a refused request was last journaled: at most
	// one a minute is, so a flood of them cannot push the transitions out
	// of the capped journal. Every one is logged and counted.
	lastRefusal time.Time
}

// refusalJournalEvery spaces the refusals kept in a host's journal.
const refusalJournalEvery = time.Minute

// Open loads the hosts from opts.Store, or from the file opts.Path,
// creating it if needed. The Machine keeps them in memory from then on:
// it must be the only writer of the store's hosts. A host
// found in a phase keeps its Since, so its timeout still runs: a command
// recorded before a crash and never executed is retried by the timeout.
func Open(opts Options) (*Machine, error) {
	if err := opts.Config.Validate(); err != nil {
		return nil, fmt.Errorf("host state config: %w", err)
	}
	if opts.Store == nil && opts.Path == "" {
		return nil, errors.New("host state machine: no store and no file path")
	}
	if opts.BMC == nil || opts.Guests == nil {
		return nil, errors.New("host state machine: both a BMC lookup and a guest mover are needed")
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = defaultCallTimeout
	}
	if opts.MoveTimeout <= 0 {
		opts.MoveTimeout = defaultMoveTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	st, hosts, err := openStore(opts.Store, opts.Path)
	if err != nil {
		return nil, err
	}
	m := &Machine{
		opts: opts, cfg: opts.Config, st: st, log: opts.Logger,
		entries: map[string]*entry{}, current: map[string]Host{}, macs: map[string]string{},
	}
	for _, h := range hosts {
		m.entries[h.Name] = &entry{host: h}
		m.current[h.Name] = h
		if h.MAC != "" {
			m.macs[h.MAC] = h.Name
		}
	}
	if m.metrics, err = newMetrics(opts.Registerer, m.counts); err != nil {
		st.close()
		return nil, err
	}
	return m, nil
}

// Close closes the file the Machine opened; a Store of Options stays
// open.
func (m *Machine) Close() error { return m.st.close() }

// Register adds a host in state registered, or updates the MAC of a known
// one; registering it again as it is changes nothing, so the inventory can be
// registered at every start.
func (m *Machine) Register(name, mac string) error {
	if strings.TrimSpace(name) == "" {
		return errors.New("register host: empty name")
	}
	norm, err := pxe.NormalizeMAC(mac)
	if err != nil {
		return fmt.Errorf("register host %s: mac %q: %w", name, mac, err)
	}
	m.mu.Lock()
	if other, ok := m.macs[norm]; ok && other != name {
		m.mu.Unlock()
		return fmt.Errorf("register host %s: mac %s is host %s's", name, norm, other)
	}
	e, ok := m.entries[name]
	if !ok {
		defer m.mu.Unlock()
		h := Host{Name: name, MAC: norm, State: Registered, Since: m.opts.Now()}
		t := Transition{To: Registered, At: h.Since, Reason: "registered"}
		if err := m.st.put(h, &t); err != nil {
			return fmt.Errorf("register: %w", err)
		}
		m.entries[name] = &entry{host: h}
		m.current[name] = h
		m.macs[norm] = name
		m.metrics.transitions.WithLabelValues(string(Registered)).Inc()
		m.log.Info("host registered", "host", name, "mac", norm)
		return nil
	}
	m.mu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.host.MAC == norm {
		return nil
	}
	h := e.host
	old := h.MAC
	h.MAC = norm
	if err := m.st.put(h, nil); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	e.host = h
	m.mu.Lock()
	delete(m.macs, old)
	m.macs[norm] = name
	m.current[name] = h
	m.mu.Unlock()
	m.log.Info("host MAC changed", "host", name, "old", old, "mac", norm)
	return nil
}

// Provision starts a registered or failed host: PXE boot once and a power
// cycle. It returns once the commands were executed; the host then moves on
// through Tick and the PXE handler (ScriptServed, Completed), or Booted
// when its agent answers.
func (m *Machine) Provision(ctx context.Context, name string) error {
	return m.begin(ctx, name, Event{Kind: EventProvision})
}

// ProvisionBy is Provision recording by (may be nil) in the host's
// journal as who asked for it.
func (m *Machine) ProvisionBy(ctx context.Context, name string, by *who.By) error {
	return m.begin(ctx, name, Event{Kind: EventProvision, By: by})
}

// Reprovision reinstalls a host, for the remediation engine's
// reprovision-host: it cordons the host, moves its guests off, sets PXE boot
// once and power-cycles it, and returns once that first attempt was recorded
// and executed. It does not wait for ready: installing takes far longer than
// an action's timeout, and the engine verifies the action by the host's alert
// resolving. A command that fails is a failed attempt, retried with backoff
// on Tick, so Reprovision returns an error only when the host could not be
// started (unknown, already being provisioned, not stored) or failed at once.
func (m *Machine) Reprovision(ctx context.Context, name string) error {
	return m.begin(ctx, name, Event{Kind: EventReprovision})
}

// ReprovisionBy is Reprovision recording by (may be nil) in the host's
// journal as who asked for it.
func (m *Machine) ReprovisionBy(ctx context.Context, name string, by *who.By) error {
	return m.begin(ctx, name, Event{Kind: EventReprovision, By: by})
}

func (m *Machine) begin(ctx context.Context, name string, ev Event) error {
	kind := ev.Kind
	e, err := m.entry(name)
	if err != nil {
		return fmt.Errorf("%s: %w", kind, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	d, err := m.apply(ctx, e, ev)
	if err != nil {
		return fmt.Errorf("%s %s: %w", kind, name, err)
	}
	if d.Ignored {
		return fmt.Errorf("%s %s: %w: %s", kind, name, ErrWrongState, d.Reason)
	}
	if e.host.State == Failed {
		return fmt.Errorf("%s %s: host failed: %s", kind, name, e.host.LastError)
	}
	return nil
}

// Attempt returns the provisioning attempt in flight of the host whose
// PXE MAC is mac, for the PXE handler (pxe.Attempts).
func (m *Machine) Attempt(mac string) (pxe.Attempt, bool) {
	name, ok := m.HostForMAC(mac)
	if !ok {
		return pxe.Attempt{}, false
	}
	h, ok := m.Host(name)
	if !ok || !h.InFlight() {
		return pxe.Attempt{}, false
	}
	return pxe.Attempt{Host: h.Name, MAC: h.MAC, Number: h.Attempt, Nonce: h.Nonce, ScriptServed: h.State == Installing}, true
}

// ScriptServed moves the host of attempt a to installing as its iPXE script
// is served, once per attempt (pxe.Attempts); a refusal is journaled.
func (m *Machine) ScriptServed(a pxe.Attempt) error {
	return m.pxeEvent(a, Event{Kind: EventPXEFetched, Nonce: a.Nonce})
}

// Completed takes the boot-completion callback of attempt a, once
// (pxe.Attempts); a refusal is journaled.
func (m *Machine) Completed(a pxe.Attempt) error {
	return m.pxeEvent(a, Event{Kind: EventCallback, Nonce: a.Nonce})
}

func (m *Machine) pxeEvent(a pxe.Attempt, ev Event) error {
	e, err := m.entry(a.Host)
	if err != nil {
		return fmt.Errorf("%s: %w", ev.Kind, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.host.MAC != a.MAC {
		m.refuse(e, fmt.Sprintf("%s for mac %s, but the host's is %s", ev.Kind, a.MAC, e.host.MAC))
		return fmt.Errorf("%s %s: %w: mac %s is no longer the host's", ev.Kind, a.Host, ErrWrongState, a.MAC)
	}
	d, err := m.apply(context.Background(), e, ev)
	if err != nil {
		return fmt.Errorf("%s %s: %w", ev.Kind, a.Host, err)
	}
	if d.Ignored {
		m.refuse(e, d.Reason)
		return fmt.Errorf("%s %s: %w: %s", ev.Kind, a.Host, ErrWrongState, d.Reason)
	}
	return nil
}

// Refused journals a refused PXE request about the host with mac
// (pxe.Attempts); its state does not change. A MAC no host has is only
// logged, by the caller.
func (m *Machine) Refused(mac, why string) {
	name, ok := m.HostForMAC(mac)
	if !ok {
		return
	}
	e, err := m.entry(name)
	if err != nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	m.refuse(e, why)
}

// refuse logs, counts and (at most once a refusalJournalEvery) journals a
// refused request; e.mu is held.
func (m *Machine) refuse(e *entry, why string) {
	m.metrics.refusals.Inc()
	h := e.host
	m.log.Warn("host request refused", "host", h.Name, "state", h.State, "attempt", h.Attempt, "why", why)
	now := m.opts.Now()
	if !e.lastRefusal.IsZero() && now.Sub(e.lastRefusal) < refusalJournalEvery {
		return
	}
	t := Transition{From: h.State, To: h.State, At: now, Reason: "refused: " + why, Attempt: h.Attempt, Refused: true}
	if err := m.st.put(h, &t); err != nil {
		m.log.Error("journal a refused request", "host", h.Name, "err", err)
		return
	}
	e.lastRefusal = now
}

// Booted is called when the host's agent comes up while the host is
// registered (it runs already) or installing (its installed system runs);
// in any other state it is ignored. Not on every scrape: a host that failed
// while its old system kept running must stay failed. The PXE callback is
// Completed.
func (m *Machine) Booted(name string) error {
	return m.event(name, Event{Kind: EventBooted})
}

func (m *Machine) event(name string, ev Event) error {
	e, err := m.entry(name)
	if err != nil {
		return fmt.Errorf("%s: %w", ev.Kind, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	// These events issue no commands, so no context is needed.
	if _, err := m.apply(context.Background(), e, ev); err != nil {
		return fmt.Errorf("%s %s: %w", ev.Kind, name, err)
	}
	return nil
}

// Tick polls the power of hosts powering on, applies the phase timeouts and
// starts the retries that are due, for all hosts at once. It returns the
// errors of storing; failed commands are failed attempts, in the hosts.
func (m *Machine) Tick(ctx context.Context) error {
	m.mu.Lock()
	es := make([]*entry, 0, len(m.entries))
	for _, e := range m.entries {
		es = append(es, e)
	}
	m.mu.Unlock()
	var (
		wg   sync.WaitGroup
		emu  sync.Mutex
		errs []error
	)
	for _, e := range es {
		wg.Go(func() {
			if err := m.tick(ctx, e); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (m *Machine) tick(ctx context.Context, e *entry) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	h := e.host
	if h.State == PoweringOn && h.NextTry.IsZero() && m.poweredOn(ctx, h.Name) {
		// Right after a cycle the BMC may still report the power of
		// before; the pxe-booting timeout covers a cycle that then
		// never happens.
		if _, err := m.apply(ctx, e, Event{Kind: EventPoweredOn}); err != nil {
			return fmt.Errorf("tick %s: %w", h.Name, err)
		}
	}
	if _, err := m.apply(ctx, e, Event{Kind: EventTick}); err != nil {
		return fmt.Errorf("tick %s: %w", h.Name, err)
	}
	return nil
}

// poweredOn asks the host's BMC; an unanswered question is no answer, and the
// phase's timeout decides.
func (m *Machine) poweredOn(ctx context.Context, name string) bool {
	b, err := m.opts.BMC(name)
	if err != nil {
		m.log.Warn("host power status: no BMC", "host", name, "err", err)
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, m.opts.CallTimeout)
	defer cancel()
	ps, err := b.PowerStatus(cctx)
	if err != nil {
		m.log.Warn("host power status", "host", name, "err", err)
		return false
	}
	return ps == bmc.PowerOn
}

// apply decides ev for e's host, stores the decision and then executes its
// commands; a failed command is applied as the next event. e.mu is held.
func (m *Machine) apply(ctx context.Context, e *entry, ev Event) (Decision, error) {
	switch ev.Kind {
	case EventProvision, EventReprovision, EventTick:
		if ev.NewNonce == "" {
			n, err := newNonce()
			if err != nil {
				return Decision{}, err
			}
			ev.NewNonce = n
		}
	}
	d := Next(e.host, ev, m.opts.Now(), m.cfg)
	if d.Ignored {
		m.log.Info("host event ignored", "host", e.host.Name, "event", ev.Kind, "reason", d.Reason)
	}
	if !d.Changed {
		return d, nil
	}
	t := Transition{From: e.host.State, To: d.Host.State, At: d.Host.Since, Reason: d.Reason,
		Attempt: d.Host.Attempt, Commands: d.Commands, By: ev.By}
	if err := m.st.put(d.Host, &t); err != nil {
		return d, err
	}
	e.host = d.Host
	m.mu.Lock()
	m.current[d.Host.Name] = d.Host
	m.mu.Unlock()
	m.metrics.transitions.WithLabelValues(string(t.To)).Inc()
	level := slog.LevelInfo
	if t.To == Failed || ev.Kind == EventCommandFailed {
		level = slog.LevelWarn
	}
	m.log.Log(ctx, level, "host transition", "host", d.Host.Name, "from", t.From, "to", t.To,
		"attempt", t.Attempt, "reason", t.Reason, "commands", d.Commands)

	if len(d.Commands) == 0 {
		return d, nil
	}
	permanent, err := m.execute(ctx, d.Host.Name, d.Commands)
	if err == nil {
		return d, nil
	}
	kind := EventCommandFailed
	if permanent {
		kind = EventFail
	}
	// Failure events issue no commands, so this recurses once.
	return m.apply(ctx, e, Event{Kind: kind, Detail: err.Error()})
}

// execute runs cmds in order and stops at the first failure; permanent says
// no retry can fix it.
func (m *Machine) execute(ctx context.Context, name string, cmds []Command) (permanent bool, err error) {
	// The BMC first: without one, moving the guests off would be for
	// nothing.
	b, err := m.opts.BMC(name)
	if err != nil {
		return true, fmt.Errorf("BMC of host %s: %w", name, err)
	}
	for _, c := range cmds {
		var err error
		switch c {
		case MoveGuests:
			cctx, cancel := context.WithTimeout(ctx, m.opts.MoveTimeout)
			err = m.opts.Guests.MoveGuests(cctx, name)
			cancel()
		case SetPXEBootOnce:
			cctx, cancel := context.WithTimeout(ctx, m.opts.CallTimeout)
			err = b.SetPXEBootOnce(cctx)
			cancel()
		case PowerCycle:
			cctx, cancel := context.WithTimeout(ctx, m.opts.CallTimeout)
			err = b.PowerCycle(cctx)
			cancel()
		default:
			return true, fmt.Errorf("unknown command %q", c)
		}
		if err != nil {
			return false, fmt.Errorf("%s %s: %w", c, name, err)
		}
	}
	return false, nil
}

// newNonce returns 128 random bits in hex.
func newNonce() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("draw an attempt nonce: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func (m *Machine) entry(name string) (*entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.entries[name]
	if !ok {
		return nil, fmt.Errorf("host %q: %w", name, ErrUnknownHost)
	}
	return e, nil
}

// HostForMAC returns the name of the host with mac.
func (m *Machine) HostForMAC(mac string) (string, bool) {
	norm, err := pxe.NormalizeMAC(mac)
	if err != nil {
		return "", false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	name, ok := m.macs[norm]
	return name, ok
}

// Host returns the host called name.
func (m *Machine) Host(name string) (Host, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h, ok := m.current[name]
	return h, ok
}

// Hosts returns every host, by name.
func (m *Machine) Hosts() []Host {
	m.mu.Lock()
	hs := make([]Host, 0, len(m.current))
	for _, h := range m.current {
		hs = append(hs, h)
	}
	m.mu.Unlock()
	slices.SortFunc(hs, func(a, b Host) int { return strings.Compare(a.Name, b.Name) })
	return hs
}

// History returns the host's journal, oldest first.
func (m *Machine) History(name string) ([]Transition, error) {
	if _, ok := m.Host(name); !ok {
		return nil, fmt.Errorf("history: host %q: %w", name, ErrUnknownHost)
	}
	return m.st.history(name)
}

func (m *Machine) counts() map[State]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := map[State]int{}
	for _, h := range m.current {
		n[h.State]++
	}
	return n
}
