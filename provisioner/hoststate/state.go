// Package hoststate is the life of a bare-metal host as the provisioner
// drives it:
//
//	registered → powering-on → pxe-booting → installing → ready
//	                 ↑ retry, with backoff         │
//	                 └──── timeout or failed ──────┘ → failed after MaxAttempts
//
// Next decides, without side effects, what an event does to a host and which
// commands (move its guests, set PXE boot once, power-cycle) must follow. The
// Machine keeps the hosts in a kv.Store (a bbolt file or etcd), records
// every transition before it executes the commands, applies the phase
// timeouts on Tick and exports caretaker_provisioner_hosts{state}.
package hoststate

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	"caretaker/internal/who"
)

// State is where a host is in its provisioning.
type State string

const (
	// Registered is known to the inventory and never provisioned here.
	Registered State = "registered"
	// PoweringOn had its commands issued (or waits for NextTry to issue
	// them) and waits for its BMC to report power on.
	PoweringOn State = "powering-on"
	// PXEBooting is powered on and waits to fetch its iPXE script.
	PXEBooting State = "pxe-booting"
	// Installing was served its iPXE script and waits for its
	// boot-completion callback.
	Installing State = "installing"
	// Ready has booted its installed system.
	Ready State = "ready"
	// Failed has spent its attempts or failed in a way no retry fixes;
	// LastError says why. Provision or Reprovision starts it again.
	Failed State = "failed"
)

// States are every state, in the order of a provisioning.
func States() []State {
	return []State{Registered, PoweringOn, PXEBooting, Installing, Ready, Failed}
}

// Valid reports whether s is one of States.
func (s State) Valid() bool {
	switch s {
	case Registered, PoweringOn, PXEBooting, Installing, Ready, Failed:
		return true
	}
	return false
}

// Transient reports whether s is a phase with a timeout.
func (s State) Transient() bool {
	return s == PoweringOn || s == PXEBooting || s == Installing
}

// Host is one host's provisioning state.
type Host struct {
	Name string `json:"name"`
	// MAC is the address the host PXE-boots from (aa:bb:cc:dd:ee:ff).
	MAC   string `json:"mac,omitempty"`
	State State  `json:"state"`
	// Since is when the host entered State, or when its current attempt's
	// commands were issued; a phase's timeout runs from it, also across a
	// restart of the server.
	Since time.Time `json:"since"`
	// Attempt is the current (or last) provisioning attempt, from 1; 0
	// for a host never provisioned.
	Attempt int `json:"attempt,omitempty"`
	// NextTry, when set, is when the commands of the current attempt are
	// due: the backoff after a failed attempt.
	NextTry time.Time `json:"next_try,omitzero"`
	// Cordoned is set by a reprovision: no new guests go to the host, and
	// its guests are moved off before each power cycle. Ready lifts it.
	Cordoned  bool   `json:"cordoned,omitempty"`
	LastError string `json:"last_error,omitempty"`
	// Nonce is drawn at random when an attempt's commands are issued and
	// cleared when the attempt ends: the PXE tokens of the attempt are
	// bound to it, so none of an earlier attempt fits. It is stored with
	// the host (see store.go) but never shown through the API.
	Nonce string `json:"-"`
}

// InFlight reports whether h has a provisioning attempt whose commands
// were issued and which has not ended: it may PXE boot now.
func (h Host) InFlight() bool {
	switch h.State {
	case PoweringOn:
		return h.NextTry.IsZero() && h.Nonce != ""
	case PXEBooting, Installing:
		return h.Nonce != ""
	}
	return false
}

// Schedulable reports whether new guests may be placed on h.
func (h Host) Schedulable() bool { return h.State == Ready && !h.Cordoned }

// Command is what the Machine must do after storing a decision.
type Command string

const (
	// MoveGuests moves the host's guests to other hosts.
	MoveGuests Command = "move-guests"
	// SetPXEBootOnce makes the host's next boot, only that one, a PXE boot.
	SetPXEBootOnce Command = "set-pxe-boot-once"
	// PowerCycle powers the host off and on, or on if it is off.
	PowerCycle Command = "power-cycle"
)

// EventKind says what happened.
type EventKind string

const (
	// EventProvision starts a registered or failed host.
	EventProvision EventKind = "provision"
	// EventReprovision cordons a host, moves its guests and reinstalls it.
	EventReprovision EventKind = "reprovision"
	// EventPoweredOn is the BMC reporting power on.
	EventPoweredOn EventKind = "powered-on"
	// EventPXEFetched is the PXE handler serving the iPXE script of the
	// attempt whose nonce is Event.Nonce, once.
	EventPXEFetched EventKind = "pxe-fetched"
	// EventCallback is the authenticated boot-completion callback of the
	// attempt whose nonce is Event.Nonce: it runs its installed system.
	EventCallback EventKind = "callback"
	// EventBooted is the host's agent coming up: a registered host runs
	// already, an installing one runs its installed system.
	EventBooted EventKind = "booted"
	// EventTick applies timeouts and issues retries that are due.
	EventTick EventKind = "tick"
	// EventCommandFailed is a command of the current attempt failing
	// (Detail says how): a failed attempt, retried with backoff.
	EventCommandFailed EventKind = "command-failed"
	// EventFail is a failure no retry can fix (Detail says which): the host
	// fails at once.
	EventFail EventKind = "fail"
)

// Event is something that happened to a host.
type Event struct {
	Kind   EventKind
	Detail string
	// Nonce is the attempt a PXE event is for (pxe-fetched, callback);
	// it must be the host's current one.
	Nonce string
	// NewNonce is the nonce of an attempt this event starts (provision,
	// reprovision, a retry on tick): drawn at random by the Machine. An
	// attempt is not started without one.
	NewNonce string
	// By is who asked for a provision or reprovision through the API (nil
	// otherwise); it is recorded in the transition the event makes.
	By *who.By
}

// Timeouts bound each phase; zero takes the default.
type Timeouts struct {
	PoweringOn time.Duration // default 5m
	PXEBooting time.Duration // default 10m
	Installing time.Duration // default 30m
}

// Config is the decision's parameters; zero fields take the defaults.
type Config struct {
	Timeouts Timeouts
	// MaxAttempts is the attempts at one provisioning before the host
	// fails; default 3.
	MaxAttempts int
	// Backoff is the wait before the second attempt, doubled for each
	// further one up to MaxBackoff; defaults 30s and 10m.
	Backoff    time.Duration
	MaxBackoff time.Duration
}

// Defaults.
const (
	DefaultPoweringOnTimeout = 5 * time.Minute
	DefaultPXEBootingTimeout = 10 * time.Minute
	DefaultInstallingTimeout = 30 * time.Minute
	DefaultMaxAttempts       = 3
	DefaultBackoff           = 30 * time.Second
	DefaultMaxBackoff        = 10 * time.Minute
)

// Validate rejects negative values; zero means the default.
func (c Config) Validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"timeouts.powering_on", c.Timeouts.PoweringOn},
		{"timeouts.pxe_booting", c.Timeouts.PXEBooting},
		{"timeouts.installing", c.Timeouts.Installing},
		{"backoff", c.Backoff},
		{"max_backoff", c.MaxBackoff},
	} {
		if f.d < 0 {
			errs = append(errs, fmt.Errorf("%s: %s is negative", f.name, f.d))
		}
	}
	if c.MaxAttempts < 0 {
		errs = append(errs, fmt.Errorf("max_attempts: %d is negative", c.MaxAttempts))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Timeouts.PoweringOn, DefaultPoweringOnTimeout)
	def(&c.Timeouts.PXEBooting, DefaultPXEBootingTimeout)
	def(&c.Timeouts.Installing, DefaultInstallingTimeout)
	def(&c.Backoff, DefaultBackoff)
	def(&c.MaxBackoff, DefaultMaxBackoff)
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	return c
}

func (c Config) timeout(s State) time.Duration {
	switch s {
	case PoweringOn:
		return c.Timeouts.PoweringOn
	case PXEBooting:
		return c.Timeouts.PXEBooting
	}
	return c.Timeouts.Installing
}

// backoff is the wait after failed attempt n (from 1).
func (c Config) backoff(n int) time.Duration {
	d := c.Backoff
	for i := 1; i < n && d < c.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, c.MaxBackoff)
}

// Decision is what an event does to a host.
type Decision struct {
	// Host is the host after the event.
	Host Host
	// Commands must be executed in order once Host is stored.
	Commands []Command
	// Changed says Host differs and must be stored, with Reason as the
	// transition's reason.
	Changed bool
	// Ignored says the event does not apply in the host's state; Reason
	// says why.
	Ignored bool
	Reason  string
}

// Next decides what ev, happening at now, does to h. It never panics, for any
// host and event: an event that does not apply is Ignored.
func Next(h Host, ev Event, now time.Time, cfg Config) Decision {
	cfg = cfg.withDefaults()
	ignore := func(format string, args ...any) Decision {
		return Decision{Host: h, Ignored: true, Reason: fmt.Sprintf(format, args...)}
	}
	if !h.State.Valid() {
		return ignore("host %s is in unknown state %q", h.Name, h.State)
	}
	switch ev.Kind {
	case EventProvision, EventReprovision:
		if h.State.Transient() {
			return ignore("host %s is already %s (attempt %d of %d since %s)",
				h.Name, h.State, h.Attempt, cfg.MaxAttempts, h.Since.UTC().Format(time.RFC3339))
		}
		if ev.Kind == EventProvision && h.State == Ready {
			return ignore("host %s is ready; reprovision reinstalls it", h.Name)
		}
		if ev.NewNonce == "" {
			return ignore("%s of host %s: no nonce for the new attempt", ev.Kind, h.Name)
		}
		from := h.State
		if ev.Kind == EventReprovision {
			h.Cordoned = true
		}
		h.Attempt = 1
		h.LastError = ""
		return start(h, ev.NewNonce, now, fmt.Sprintf("%s of %s host: attempt 1 of %d", ev.Kind, from, cfg.MaxAttempts))

	case EventPoweredOn:
		// During the backoff the host may still be on from before; that
		// is no progress.
		if h.State != PoweringOn || !h.NextTry.IsZero() {
			return ignore("host %s is %s%s", h.Name, h.State, waiting(h))
		}
		return move(h, PXEBooting, now, "the BMC reports power on")

	case EventPXEFetched:
		// In powering-on once the attempt's commands were issued (the
		// power report may be late), or pxe-booting; once per attempt.
		if !h.InFlight() || h.State == Installing {
			return ignore("iPXE script refused: host %s is %s%s, not waiting for its iPXE script", h.Name, h.State, waiting(h))
		}
		if !sameNonce(h, ev.Nonce) {
			return ignore("iPXE script refused: not for host %s's attempt %d in flight", h.Name, h.Attempt)
		}
		return move(h, Installing, now, "the host was served its iPXE script")

	case EventCallback:
		if h.State != Installing || !h.InFlight() {
			return ignore("boot callback refused: host %s is %s%s, not installing", h.Name, h.State, waiting(h))
		}
		if !sameNonce(h, ev.Nonce) {
			return ignore("boot callback refused: not for host %s's attempt %d in flight", h.Name, h.Attempt)
		}
		return ready(h, now, "the host reported its installed system booted (boot callback)")

	case EventBooted:
		// Not in powering-on or pxe-booting: the agent answering may be
		// the old system's; not when failed: it must stay failed.
		if h.State != Registered && h.State != Installing {
			return ignore("host %s is %s: its agent answering is no boot of an installed system", h.Name, h.State)
		}
		return ready(h, now, fmt.Sprintf("the host booted its installed system (from %s): its agent answers", h.State))

	case EventTick:
		if !h.State.Transient() {
			return Decision{Host: h}
		}
		if !h.NextTry.IsZero() {
			if now.Before(h.NextTry) {
				return Decision{Host: h}
			}
			if ev.NewNonce == "" {
				return Decision{Host: h}
			}
			return start(h, ev.NewNonce, now, fmt.Sprintf("retry: attempt %d of %d", h.Attempt, cfg.MaxAttempts))
		}
		limit := cfg.timeout(h.State)
		if now.Sub(h.Since) < limit {
			return Decision{Host: h}
		}
		return failAttempt(h, now, cfg, fmt.Sprintf("%s timed out after %s", h.State, limit))

	case EventCommandFailed:
		// Commands run only when an attempt starts, in powering-on.
		if h.State != PoweringOn || !h.NextTry.IsZero() {
			return ignore("host %s is %s%s: %s", h.Name, h.State, waiting(h), ev.Detail)
		}
		return failAttempt(h, now, cfg, fmt.Sprintf("%s: %s", h.State, ev.Detail))

	case EventFail:
		if !h.State.Transient() {
			return ignore("host %s is %s: %s", h.Name, h.State, ev.Detail)
		}
		h.NextTry = time.Time{}
		h.Nonce = ""
		h.LastError = fmt.Sprintf("%s: %s", h.State, ev.Detail)
		return move(h, Failed, now, h.LastError)
	}
	return ignore("unknown event %q for host %s", ev.Kind, h.Name)
}

func waiting(h Host) string {
	if h.NextTry.IsZero() {
		return ""
	}
	return " waiting to retry at " + h.NextTry.UTC().Format(time.RFC3339)
}

// sameNonce compares in constant time; an empty nonce matches nothing.
func sameNonce(h Host, nonce string) bool {
	return h.Nonce != "" && subtle.ConstantTimeCompare([]byte(h.Nonce), []byte(nonce)) == 1
}

// ready ends h's attempt, if any: its nonce goes, so no token of it is
// taken again.
func ready(h Host, now time.Time, reason string) Decision {
	h.NextTry = time.Time{}
	h.LastError = ""
	h.Cordoned = false
	h.Nonce = ""
	return move(h, Ready, now, reason)
}

func move(h Host, to State, now time.Time, reason string) Decision {
	h.State = to
	h.Since = now
	return Decision{Host: h, Changed: true, Reason: reason}
}

// start issues the commands of h's current attempt, which gets nonce.
func start(h Host, nonce string, now time.Time, reason string) Decision {
	h.NextTry = time.Time{}
	h.Nonce = nonce
	d := move(h, PoweringOn, now, reason)
	// A cordoned host's guests go first: the power cycle would kill them.
	// Moving them again on a retry is a no-op once they are gone.
	if h.Cordoned {
		d.Commands = append(d.Commands, MoveGuests)
	}
	d.Commands = append(d.Commands, SetPXEBootOnce, PowerCycle)
	return d
}

// failAttempt ends h's current attempt: a retry after the backoff, or
// failed once the attempts are spent.
func failAttempt(h Host, now time.Time, cfg Config, why string) Decision {
	h.LastError = why
	h.Nonce = ""
	n := max(h.Attempt, 1)
	if n >= cfg.MaxAttempts {
		h.NextTry = time.Time{}
		return move(h, Failed, now, fmt.Sprintf("gave up after attempt %d of %d: %s", n, cfg.MaxAttempts, why))
	}
	wait := cfg.backoff(n)
	h.Attempt = n + 1
	h.NextTry = now.Add(wait)
	return move(h, PoweringOn, now, fmt.Sprintf("%s; attempt %d of %d in %s", why, h.Attempt, cfg.MaxAttempts, wait))
}
