package hoststate

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func TestNext(t *testing.T) {
	cfg := Config{MaxAttempts: 3, Backoff: 30 * time.Second, MaxBackoff: 10 * time.Minute}
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	// A host in a phase has its attempt's nonce, n1; the events that may
	// start an attempt bring n1 as the new one.
	host := func(s State, attempt int) Host {
		h := Host{Name: "h1", MAC: "aa:bb:cc:dd:ee:01", State: s, Since: t0, Attempt: attempt}
		if s.Transient() {
			h.Nonce = "n1"
		}
		return h
	}
	with := func(h Host, f func(*Host)) Host { f(&h); return h }
	noNonce := func(h *Host) { h.Nonce = "" }
	backingOff := with(host(PoweringOn, 2), func(h *Host) { h.NextTry = at(30 * time.Second); h.LastError = "boom"; h.Nonce = "" })
	cordonedBackingOff := with(backingOff, func(h *Host) { h.Cordoned = true })
	ev := func(k EventKind) Event { return Event{Kind: k, NewNonce: "n1"} }
	pxeEv := func(k EventKind, nonce string) Event { return Event{Kind: k, Nonce: nonce} }
	cycle := []Command{SetPXEBootOnce, PowerCycle}
	moveAndCycle := []Command{MoveGuests, SetPXEBootOnce, PowerCycle}

	tests := []struct {
		name string
		h    Host
		ev   Event
		now  time.Time
		// want is the host after; zero with ignored.
		want     Host
		commands []Command
		ignored  bool
		reason   string // the whole reason
	}{
		{name: "provision registered", h: host(Registered, 0), ev: ev(EventProvision), now: at(time.Minute),
			want:     with(host(PoweringOn, 1), func(h *Host) { h.Since = at(time.Minute) }),
			commands: cycle, reason: "provision of registered host: attempt 1 of 3"},
		{name: "provision failed keeps the cordon and moves guests again",
			h:  with(host(Failed, 3), func(h *Host) { h.Cordoned = true; h.LastError = "installing timed out after 30m0s" }),
			ev: ev(EventProvision), now: at(time.Hour),
			want:     with(host(PoweringOn, 1), func(h *Host) { h.Since = at(time.Hour); h.Cordoned = true }),
			commands: moveAndCycle, reason: "provision of failed host: attempt 1 of 3"},
		{name: "provision ready", h: host(Ready, 1), ev: ev(EventProvision), now: at(time.Minute),
			ignored: true, reason: "host h1 is ready; reprovision reinstalls it"},
		{name: "provision installing", h: host(Installing, 2), ev: ev(EventProvision), now: at(time.Minute),
			ignored: true, reason: "host h1 is already installing (attempt 2 of 3 since 2026-03-01T12:00:00Z)"},
		{name: "reprovision ready cordons and moves guests first", h: host(Ready, 1), ev: ev(EventReprovision), now: at(time.Minute),
			want:     with(host(PoweringOn, 1), func(h *Host) { h.Since = at(time.Minute); h.Cordoned = true }),
			commands: moveAndCycle, reason: "reprovision of ready host: attempt 1 of 3"},
		{name: "reprovision while pxe-booting", h: host(PXEBooting, 1), ev: ev(EventReprovision), now: at(time.Minute),
			ignored: true, reason: "host h1 is already pxe-booting (attempt 1 of 3 since 2026-03-01T12:00:00Z)"},
		{name: "powered on", h: host(PoweringOn, 1), ev: ev(EventPoweredOn), now: at(time.Minute),
			want: with(host(PXEBooting, 1), func(h *Host) { h.Since = at(time.Minute) }), reason: "the BMC reports power on"},
		{name: "powered on during the backoff", h: backingOff, ev: ev(EventPoweredOn), now: at(time.Second),
			ignored: true, reason: "host h1 is powering-on waiting to retry at 2026-03-01T12:00:30Z"},
		{name: "powered on when ready", h: host(Ready, 1), ev: ev(EventPoweredOn), now: at(time.Minute),
			ignored: true, reason: "host h1 is ready"},
		{name: "pxe fetched", h: host(PXEBooting, 1), ev: pxeEv(EventPXEFetched, "n1"), now: at(time.Minute),
			want: with(host(Installing, 1), func(h *Host) { h.Since = at(time.Minute) }), reason: "the host was served its iPXE script"},
		{name: "pxe fetched before the power report", h: host(PoweringOn, 1), ev: pxeEv(EventPXEFetched, "n1"), now: at(time.Minute),
			want: with(host(Installing, 1), func(h *Host) { h.Since = at(time.Minute) }), reason: "the host was served its iPXE script"},
		{name: "pxe fetched during the backoff", h: backingOff, ev: pxeEv(EventPXEFetched, ""), now: at(time.Second),
			ignored: true, reason: "iPXE script refused: host h1 is powering-on waiting to retry at 2026-03-01T12:00:30Z, not waiting for its iPXE script"},
		{name: "pxe fetched twice", h: host(Installing, 1), ev: pxeEv(EventPXEFetched, "n1"), now: at(time.Minute),
			ignored: true, reason: "iPXE script refused: host h1 is installing, not waiting for its iPXE script"},
		{name: "pxe fetched for another attempt", h: host(PXEBooting, 1), ev: pxeEv(EventPXEFetched, "n0"), now: at(time.Minute),
			ignored: true, reason: "iPXE script refused: not for host h1's attempt 1 in flight"},
		{name: "pxe fetched when ready", h: host(Ready, 1), ev: pxeEv(EventPXEFetched, ""), now: at(time.Minute),
			ignored: true, reason: "iPXE script refused: host h1 is ready, not waiting for its iPXE script"},
		{name: "callback lifts the cordon and ends the attempt", h: with(host(Installing, 2), func(h *Host) { h.Cordoned = true; h.LastError = "x" }),
			ev: pxeEv(EventCallback, "n1"), now: at(time.Minute),
			want:   with(host(Ready, 2), func(h *Host) { h.Since = at(time.Minute) }),
			reason: "the host reported its installed system booted (boot callback)"},
		{name: "callback of another attempt", h: host(Installing, 2), ev: pxeEv(EventCallback, "n0"), now: at(time.Minute),
			ignored: true, reason: "boot callback refused: not for host h1's attempt 2 in flight"},
		{name: "callback without a nonce", h: with(host(Installing, 2), noNonce), ev: pxeEv(EventCallback, ""), now: at(time.Minute),
			ignored: true, reason: "boot callback refused: host h1 is installing, not installing"},
		{name: "callback when ready", h: host(Ready, 1), ev: pxeEv(EventCallback, "n1"), now: at(time.Minute),
			ignored: true, reason: "boot callback refused: host h1 is ready, not installing"},
		{name: "callback of a cordoned host powering on", h: with(host(PoweringOn, 1), func(h *Host) { h.Cordoned = true }),
			ev: pxeEv(EventCallback, "n1"), now: at(time.Minute),
			ignored: true, reason: "boot callback refused: host h1 is powering-on, not installing"},
		{name: "callback while pxe-booting", h: host(PXEBooting, 1), ev: pxeEv(EventCallback, "n1"), now: at(time.Minute),
			ignored: true, reason: "boot callback refused: host h1 is pxe-booting, not installing"},
		{name: "agent answers when installing", h: with(host(Installing, 2), func(h *Host) { h.Cordoned = true; h.LastError = "x" }),
			ev: ev(EventBooted), now: at(time.Minute),
			want:   with(host(Ready, 2), func(h *Host) { h.Since = at(time.Minute) }),
			reason: "the host booted its installed system (from installing): its agent answers"},
		{name: "agent answers after failing", h: with(host(Failed, 3), func(h *Host) { h.LastError = "x" }), ev: ev(EventBooted), now: at(time.Minute),
			ignored: true, reason: "host h1 is failed: its agent answering is no boot of an installed system"},
		{name: "agent answers when registered: a running host adopted", h: host(Registered, 0), ev: ev(EventBooted), now: at(time.Minute),
			want: with(host(Ready, 0), func(h *Host) { h.Since = at(time.Minute) }), reason: "the host booted its installed system (from registered): its agent answers"},
		{name: "agent answers when powering on", h: with(host(PoweringOn, 1), func(h *Host) { h.Cordoned = true }), ev: ev(EventBooted), now: at(time.Minute),
			ignored: true, reason: "host h1 is powering-on: its agent answering is no boot of an installed system"},
		{name: "agent answers when ready", h: host(Ready, 1), ev: ev(EventBooted), now: at(time.Minute),
			ignored: true, reason: "host h1 is ready: its agent answering is no boot of an installed system"},
		{name: "provision without a nonce", h: host(Registered, 0), ev: Event{Kind: EventProvision}, now: at(time.Minute),
			ignored: true, reason: "provision of host h1: no nonce for the new attempt"},
		{name: "tick registered", h: host(Registered, 0), ev: ev(EventTick), now: at(24 * time.Hour), want: host(Registered, 0)},
		{name: "tick ready", h: host(Ready, 1), ev: ev(EventTick), now: at(24 * time.Hour), want: host(Ready, 1)},
		{name: "tick before the powering-on timeout", h: host(PoweringOn, 1), ev: ev(EventTick),
			now: at(5*time.Minute - time.Nanosecond), want: host(PoweringOn, 1)},
		{name: "powering-on timeout retries after the backoff", h: host(PoweringOn, 1), ev: ev(EventTick), now: at(5 * time.Minute),
			want: with(host(PoweringOn, 2), func(h *Host) {
				h.Since = at(5 * time.Minute)
				h.NextTry = at(5*time.Minute + 30*time.Second)
				h.LastError = "powering-on timed out after 5m0s"
				h.Nonce = "" // the attempt is over; the retry gets its own
			}),
			reason: "powering-on timed out after 5m0s; attempt 2 of 3 in 30s"},
		{name: "pxe-booting timeout doubles the backoff", h: host(PXEBooting, 2), ev: ev(EventTick), now: at(10 * time.Minute),
			want: with(host(PoweringOn, 3), func(h *Host) {
				h.Since = at(10 * time.Minute)
				h.NextTry = at(11 * time.Minute)
				h.LastError = "pxe-booting timed out after 10m0s"
				h.Nonce = ""
			}),
			reason: "pxe-booting timed out after 10m0s; attempt 3 of 3 in 1m0s"},
		{name: "installing timeout of the last attempt fails", h: host(Installing, 3), ev: ev(EventTick), now: at(30 * time.Minute),
			want: with(host(Failed, 3), func(h *Host) {
				h.Since = at(30 * time.Minute)
				h.LastError = "installing timed out after 30m0s"
			}),
			reason: "gave up after attempt 3 of 3: installing timed out after 30m0s"},
		{name: "no timeout during the backoff", h: backingOff, ev: ev(EventTick), now: at(30*time.Second - time.Nanosecond), want: backingOff},
		{name: "retry when due moves a cordoned host's guests first", h: cordonedBackingOff, ev: ev(EventTick), now: at(time.Minute),
			want:     with(cordonedBackingOff, func(h *Host) { h.Since = at(time.Minute); h.NextTry = time.Time{}; h.Nonce = "n1" }),
			commands: moveAndCycle, reason: "retry: attempt 2 of 3"},
		{name: "command failure is a failed attempt", h: host(PoweringOn, 1),
			ev: Event{Kind: EventCommandFailed, Detail: "power-cycle h1: BMC did not answer"}, now: at(time.Second),
			want: with(host(PoweringOn, 2), func(h *Host) {
				h.Since = at(time.Second)
				h.NextTry = at(31 * time.Second)
				h.LastError = "powering-on: power-cycle h1: BMC did not answer"
				h.Nonce = ""
			}),
			reason: "powering-on: power-cycle h1: BMC did not answer; attempt 2 of 3 in 30s"},
		{name: "command failure of the last attempt fails", h: host(PoweringOn, 3),
			ev: Event{Kind: EventCommandFailed, Detail: "move-guests h1: no room"}, now: at(time.Second),
			want: with(host(Failed, 3), func(h *Host) {
				h.Since = at(time.Second)
				h.LastError = "powering-on: move-guests h1: no room"
			}),
			reason: "gave up after attempt 3 of 3: powering-on: move-guests h1: no room"},
		{name: "stale command failure", h: host(Installing, 1), ev: Event{Kind: EventCommandFailed, Detail: "late"}, now: at(time.Second),
			ignored: true, reason: "host h1 is installing: late"},
		{name: "explicit failure", h: host(PXEBooting, 1), ev: Event{Kind: EventFail, Detail: "BMC of host h1: not in the inventory"}, now: at(time.Second),
			want: with(host(Failed, 1), func(h *Host) {
				h.Since = at(time.Second)
				h.LastError = "pxe-booting: BMC of host h1: not in the inventory"
			}),
			reason: "pxe-booting: BMC of host h1: not in the inventory"},
		{name: "explicit failure when ready", h: host(Ready, 1), ev: Event{Kind: EventFail, Detail: "x"}, now: at(time.Second),
			ignored: true, reason: "host h1 is ready: x"},
		{name: "unknown event", h: host(Ready, 1), ev: ev("explode"), now: at(time.Second),
			ignored: true, reason: `unknown event "explode" for host h1`},
		{name: "unknown state", h: host("limbo", 1), ev: ev(EventTick), now: at(time.Hour),
			ignored: true, reason: `host h1 is in unknown state "limbo"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Next(tt.h, tt.ev, tt.now, cfg)
			want := tt.want
			if tt.ignored {
				want = tt.h
			}
			if d.Host != want {
				t.Errorf("host:\n got %+v\nwant %+v", d.Host, want)
			}
			if !slices.Equal(d.Commands, tt.commands) {
				t.Errorf("commands = %v, want %v", d.Commands, tt.commands)
			}
			if d.Ignored != tt.ignored {
				t.Errorf("ignored = %v, want %v", d.Ignored, tt.ignored)
			}
			if changed := !tt.ignored && tt.want != tt.h; d.Changed != changed {
				t.Errorf("changed = %v, want %v", d.Changed, changed)
			}
			if d.Reason != tt.reason {
				t.Errorf("reason = %q, want %q", d.Reason, tt.reason)
			}
		})
	}
}

func TestNextDefaultsAndBackoffCap(t *testing.T) {
	h := Host{Name: "h1", State: PoweringOn, Since: t0, Attempt: 1}
	if d := Next(h, Event{Kind: EventTick}, t0.Add(DefaultPoweringOnTimeout-time.Second), Config{}); d.Changed {
		t.Errorf("zero config: changed before the default timeout: %s", d.Reason)
	}
	d := Next(h, Event{Kind: EventTick}, t0.Add(DefaultPoweringOnTimeout), Config{})
	if got, want := d.Host.NextTry.Sub(d.Host.Since), DefaultBackoff; got != want {
		t.Errorf("zero config: backoff %s, want %s", got, want)
	}

	cfg := Config{MaxAttempts: 10, Backoff: 30 * time.Second, MaxBackoff: 2 * time.Minute}
	for attempt, want := range map[int]time.Duration{1: 30 * time.Second, 2: time.Minute, 3: 2 * time.Minute, 8: 2 * time.Minute} {
		h := Host{Name: "h1", State: PoweringOn, Since: t0, Attempt: attempt}
		d := Next(h, Event{Kind: EventCommandFailed, Detail: "x"}, t0, cfg)
		if got := d.Host.NextTry.Sub(t0); got != want {
			t.Errorf("after attempt %d: backoff %s, want %s", attempt, got, want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("zero config: %v", err)
	}
	err := Config{MaxAttempts: -1, Backoff: -time.Second, Timeouts: Timeouts{Installing: -time.Minute}}.Validate()
	if err == nil {
		t.Fatal("negative values accepted")
	}
	for _, want := range []string{"timeouts.installing: -1m0s is negative", "backoff: -1s is negative", "max_attempts: -1 is negative"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// FuzzNext feeds random event sequences and random clock advances through
// Next and checks the invariants an operator relies on.
func FuzzNext(f *testing.F) {
	f.Add(byte(3), []byte{0, 0, 6, 10, 2, 0, 3, 0, 4, 0})
	f.Add(byte(2), []byte{1, 0, 5, 250, 5, 250, 5, 250, 5, 250, 5, 250})
	f.Add(byte(1), []byte{0, 0, 6, 0, 7, 0, 4, 0, 1, 0, 5, 40})
	kinds := []EventKind{EventProvision, EventReprovision, EventPoweredOn, EventPXEFetched,
		EventBooted, EventTick, EventCommandFailed, EventFail, EventCallback}
	f.Fuzz(func(t *testing.T, maxAttempts byte, seq []byte) {
		cfg := Config{MaxAttempts: int(maxAttempts%5) + 1, Backoff: time.Minute}
		h := Host{Name: "h1", State: Registered, Since: t0}
		now := t0
		for i := 0; i+1 < len(seq); i += 2 {
			ev := Event{Kind: kinds[int(seq[i])%len(kinds)], Detail: "x", NewNonce: fmt.Sprintf("n%d", i)}
			if seq[i]&0x80 != 0 {
				ev.Nonce = h.Nonce // the attempt's own token
			}
			now = now.Add(time.Duration(seq[i+1]) * time.Minute)
			d := Next(h, ev, now, cfg)
			n := d.Host
			step := func(format string, args ...any) {
				t.Helper()
				t.Fatalf("step %d (%s, %s → %s): %s", i/2, ev.Kind, h.State, n.State, fmt.Sprintf(format, args...))
			}
			if !n.State.Valid() {
				step("invalid state")
			}
			if n.Attempt > cfg.MaxAttempts {
				step("attempt %d exceeds %d", n.Attempt, cfg.MaxAttempts)
			}
			if n.State == Failed && h.State != Failed &&
				ev.Kind != EventFail && !(h.Attempt == cfg.MaxAttempts && (ev.Kind == EventTick || ev.Kind == EventCommandFailed)) {
				step("failed at attempt %d of %d without an explicit failure", h.Attempt, cfg.MaxAttempts)
			}
			if (d.Ignored || !d.Changed) && n != h {
				step("host changed but not marked changed")
			}
			if d.Changed && n == h {
				step("marked changed but unchanged")
			}
			if len(d.Commands) > 0 && (n.State != PoweringOn || !n.NextTry.IsZero() || n.Attempt < 1) {
				step("commands %v issued in %s (next try %s, attempt %d)", d.Commands, n.State, n.NextTry, n.Attempt)
			}
			if len(d.Commands) > 0 && n.Cordoned != (d.Commands[0] == MoveGuests) {
				step("cordoned %v but commands %v", n.Cordoned, d.Commands)
			}
			if n.Since.After(now) {
				step("since %s after now %s", n.Since, now)
			}
			if !n.NextTry.IsZero() && n.State != PoweringOn {
				step("a retry pending in %s", n.State)
			}
			if n.Schedulable() && n.State != Ready {
				step("schedulable in %s", n.State)
			}
			if n.Nonce != "" && !n.State.Transient() {
				step("nonce %q kept in %s", n.Nonce, n.State)
			}
			if (ev.Kind == EventPXEFetched || ev.Kind == EventCallback) && d.Changed && (ev.Nonce == "" || ev.Nonce != h.Nonce) {
				step("moved by a %s event without the attempt's nonce", ev.Kind)
			}
			if ev.Kind == EventCallback && d.Changed && h.State != Installing {
				step("callback accepted in %s", h.State)
			}
			if h.Nonce != "" && n.Nonce != "" && n.Nonce != h.Nonce && len(d.Commands) == 0 {
				step("nonce changed without a new attempt's commands")
			}
			h = n
		}
	})
}
