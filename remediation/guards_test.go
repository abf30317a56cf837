package remediation

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// guestAlert is GuestCrashed about the i-th made-up guest on testHost; the
// test driver does not know these guests, so acting on them would fail.
func guestAlert(i int) Alert {
	a := crashedAlert()
	a.Labels["uuid"] = fmt.Sprintf("00000000-0000-0000-0000-%012d", i)
	a.Labels["domain"] = fmt.Sprintf("guest-%d", i)
	return a
}

func resolved(a Alert) Alert {
	a.Status = StatusResolved
	return a
}

func withPolicy(t *testing.T, yml string) fixtureOption {
	t.Helper()
	p, err := policy.Parse("p.yml", []byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	return func(o *Options) { o.Policy = p }
}

const guardsPolicy = `
rules:
  - name: restart-crashed-guests
    match: {alertname: GuestCrashed}
    action: restart-vm
    verify_timeout: 10ms # a guest that does not run fails at once
guards:
`

func (f *fixture) gauge(t *testing.T) map[string]float64 {
	t.Helper()
	m := f.engine.metrics
	return map[string]float64{
		"breaker_open": testutil.ToFloat64(m.breakerOpen),
		"unhealthy":    testutil.ToFloat64(m.unhealthy),
		"paused":       testutil.ToFloat64(m.paused),
		"pause_age":    testutil.ToFloat64(m.pauseAge),
	}
}

func checkGauges(t *testing.T, f *fixture, want map[string]float64) {
	t.Helper()
	got := f.gauge(t)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("metric %s = %v, want %v", k, got[k], v)
		}
	}
}

// heldReasons are the reasons of the records a guard held as pending
// first, whatever became of them.
func heldReasons(recs []journal.Record) []string {
	var out []string
	for _, r := range recs {
		if len(r.Transitions) > 0 && r.Transitions[0].State == journal.StatePending {
			out = append(out, r.Transitions[0].Note)
		}
	}
	return out
}

// Too many guests failing at once opens the breaker: every action is
// skipped with the breaker's sentence, once per alert instance, and the
// breaker closes only after the fleet has been back under the threshold
// for breaker_close_after.
func TestCircuitBreaker(t *testing.T) {
	tests := []struct {
		name       string
		guards     string
		fleet      func() int
		alerts     int // made-up guests failing besides the test guest
		wantReason string
	}{
		{
			name: "percentage of the fleet", guards: "", fleet: func() int { return 10 }, alerts: 4,
			wantReason: "skipped: circuit breaker open, 5 of 10 targets unhealthy (threshold 40%)",
		},
		{
			name: "absolute count", guards: `  max_unhealthy: "3"`, fleet: func() int { return 100 }, alerts: 3,
			wantReason: "skipped: circuit breaker open, 4 of 100 targets unhealthy (threshold 3)",
		},
		{
			name: "fleet size unknown: the largest count seen", guards: "", fleet: func() int { return 0 }, alerts: 1,
			wantReason: "skipped: circuit breaker open, 2 of 2 targets unhealthy (threshold 40%)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, withPolicy(t, guardsPolicy+tt.guards+"\n"), func(o *Options) { o.FleetSize = tt.fleet })
			crash(t, f.hosts)
			batch := []Alert{crashedAlert()}
			for i := 1; i <= tt.alerts; i++ {
				batch = append(batch, guestAlert(i))
			}
			for range 3 { // re-sent every evaluation
				f.handle(batch...)
				f.clock.Advance(time.Second)
			}
			recs := f.records(t)
			if len(recs) != len(batch) {
				t.Fatalf("journal holds %d records, want %d (one per alert): %+v", len(recs), len(batch), recs)
			}
			for _, reason := range heldReasons(recs) {
				if reason != tt.wantReason {
					t.Errorf("reason = %q, want %q", reason, tt.wantReason)
				}
			}
			if n := f.hosts.startCalls(); n != 0 {
				t.Errorf("StartGuest called %d times while the breaker is open", n)
			}
			checkGauges(t, f, map[string]float64{"breaker_open": 1, "unhealthy": float64(len(batch))})

			// The made-up guests recover; the test guest still fails.
			var back []Alert
			for _, a := range batch[1:] {
				back = append(back, resolved(a))
			}
			f.handle(append(back, crashedAlert())...)
			checkGauges(t, f, map[string]float64{"breaker_open": 1, "unhealthy": 1})
			f.clock.Advance(5*time.Minute - time.Second)
			f.handle(crashedAlert())
			if n := f.hosts.startCalls(); n != 0 || len(f.records(t)) != len(batch) {
				t.Fatalf("acted or recorded before breaker_close_after: %d starts, %+v", n, f.records(t))
			}
			f.clock.Advance(time.Second)
			f.handle(crashedAlert())
			checkGauges(t, f, map[string]float64{"breaker_open": 0, "unhealthy": 1})
			if !running(t, f.hosts) {
				t.Error("guest not started after the breaker closed")
			}
			recs = f.records(t)
			healed := 0
			for _, r := range recs {
				if r.UUID == testUUID && r.State == journal.StateSucceeded {
					healed++
				} else if r.State != journal.StateCancelled {
					t.Errorf("record %+v: want cancelled, its alert resolved while held", r)
				}
			}
			if len(recs) != len(batch) || healed != 1 {
				t.Errorf("journal = %+v, want the test guest healed and the others cancelled", recs)
			}
		})
	}
}

// A flapping fleet does not close the breaker: the calm must last
// breaker_close_after without a break.
func TestCircuitBreakerFlapping(t *testing.T) {
	f := newFixture(t, withPolicy(t, guardsPolicy+"  breaker_close_after: 1m\n"))
	crash(t, f.hosts)
	burst := []Alert{crashedAlert(), guestAlert(1), guestAlert(2), guestAlert(3), guestAlert(4)}
	f.handle(burst...)
	f.handle(resolved(guestAlert(1)), resolved(guestAlert(2)), resolved(guestAlert(3)), resolved(guestAlert(4)))
	f.clock.Advance(50 * time.Second)
	f.handle(guestAlert(1), guestAlert(2), guestAlert(3), guestAlert(4)) // over again
	f.handle(resolved(guestAlert(1)), resolved(guestAlert(2)), resolved(guestAlert(3)), resolved(guestAlert(4)))
	f.clock.Advance(50 * time.Second)
	f.handle(crashedAlert())
	if n := f.hosts.startCalls(); n != 0 {
		t.Fatalf("acted %d times, 50s after the fleet was over the threshold again", n)
	}
	f.clock.Advance(10 * time.Second)
	f.handle(crashedAlert())
	if n := f.hosts.startCalls(); n != 1 {
		t.Errorf("StartGuest called %d times after a full minute of calm, want 1", n)
	}
}

// A single failing guest never trips a percentage: in a small fleet it
// would be over any threshold, yet it is no sign of a shared cause.
func TestCircuitBreakerIgnoresOneGuest(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.FleetSize = func() int { return 1 } })
	crash(t, f.hosts)
	f.handle(crashedAlert())
	if !running(t, f.hosts) {
		t.Error("the only guest of a one-guest fleet was not healed")
	}
	checkGauges(t, f, map[string]float64{"breaker_open": 0, "unhealthy": 1})
}

// A pause skips, recorded once however often the alert is re-sent; after
// Resume the next re-sent alert is acted on.
func TestPauseAndResume(t *testing.T) {
	until := alertStart.Add(30*time.Second + time.Hour)
	tests := []struct {
		name   string
		target string
		reason string
	}{
		{"everything", guards.Everything,
			"waiting: all remediation paused by alice until 2025-03-01T13:00:30Z: storage maintenance"},
		{"one guest", testHost + "/" + testUUID,
			"waiting: " + testHost + "/" + testUUID + " paused by alice until 2025-03-01T13:00:30Z: storage maintenance"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			crash(t, f.hosts)
			p := guards.Pause{Target: tt.target, Author: "alice", Comment: "storage maintenance", Until: until}
			if err := f.engine.Pause(p); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				f.handle(crashedAlert())
				f.clock.Advance(5 * time.Minute)
			}
			if n := f.hosts.startCalls(); n != 0 {
				t.Fatalf("StartGuest called %d times during a pause", n)
			}
			if got := heldReasons(f.records(t)); len(got) != 1 || got[0] != tt.reason {
				t.Fatalf("skipped records = %q, want one: %q", got, tt.reason)
			}
			checkGauges(t, f, map[string]float64{"paused": 1, "pause_age": 900, "breaker_open": 0})
			if ps := f.engine.Pauses(); len(ps) != 1 || ps[0].Target != tt.target || !ps[0].Since.Equal(alertStart.Add(30*time.Second)) {
				t.Errorf("Pauses = %+v", ps)
			}

			f.engine.Resume(tt.target)
			if ps := f.engine.Pauses(); len(ps) != 0 {
				t.Errorf("Pauses after Resume = %+v", ps)
			}
			checkGauges(t, f, map[string]float64{"paused": 0, "pause_age": 0})
			f.handle(crashedAlert())
			if !running(t, f.hosts) {
				t.Fatal("guest not started after Resume")
			}
			if recs := f.records(t); len(recs) != 1 || recs[0].State != journal.StateSucceeded {
				t.Errorf("journal = %+v, want the held record, then healed", recs)
			}
		})
	}
}

// The refusal is remembered across a restart through the journal: the
// restarted engine does not record the same pause again.
func TestPauseRefusalRecordedOnceAcrossRestart(t *testing.T) {
	f := newFixture(t)
	crash(t, f.hosts)
	pause := guards.Pause{Target: guards.Everything, Author: "alice", Comment: "c", Until: alertStart.Add(time.Hour)}
	if err := f.engine.Pause(pause); err != nil {
		t.Fatal(err)
	}
	f.handle(crashedAlert())
	f.stop()
	f.start(t)
	if ps := f.engine.Pauses(); len(ps) != 1 || ps[0].Target != pause.Target || ps[0].Author != pause.Author || !ps[0].Until.Equal(pause.Until) {
		t.Errorf("Pauses after a restart = %+v, want %+v", ps, pause)
	}
	f.handle(crashedAlert())
	if recs := f.records(t); len(recs) != 1 {
		t.Errorf("journal = %+v, want one skipped record", recs)
	}
	f.engine.Resume(guards.Everything)
	f.handle(crashedAlert())
	if !running(t, f.hosts) {
		t.Error("guest not started after Resume")
	}
}

func TestPauseExpires(t *testing.T) {
	f := newFixture(t)
	crash(t, f.hosts)
	if err := f.engine.Pause(guards.Pause{Target: guards.Everything, Author: "a", Comment: "c", Until: f.clock.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	f.handle(crashedAlert())
	f.clock.Advance(time.Minute) // ends at Until exactly
	checkGauges(t, f, map[string]float64{"paused": 0, "pause_age": 0})
	f.handle(crashedAlert())
	if !running(t, f.hosts) {
		t.Error("guest not started after the pause expired")
	}
}

func TestPauseInvalid(t *testing.T) {
	f := newFixture(t)
	now := f.clock.Now()
	tests := []struct {
		name  string
		pause guards.Pause
		want  string
	}{
		{"no author", guards.Pause{Target: "*", Comment: "c", Until: now.Add(time.Hour)}, "no author"},
		{"no expiry", guards.Pause{Target: "*", Author: "a", Comment: "c"}, "no expiry"},
		{"in the past", guards.Pause{Target: "*", Author: "a", Comment: "c", Until: now}, "is not in the future"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := f.engine.Pause(tt.pause)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "pause remediation") {
				t.Errorf("Pause = %v, want an error containing %q", err, tt.want)
			}
			if ps := f.engine.Pauses(); len(ps) != 0 {
				t.Errorf("Pauses = %+v", ps)
			}
		})
	}
}

// Cooldown and backoff make the engine wait: nothing is recorded, and the
// alert re-sent after RetryAt is acted on.
func TestTargetGuardWaitRecordsNothing(t *testing.T) {
	tests := []struct {
		name   string
		guards string
		first  func(*fixture) Alert // acted on first
		wait   time.Duration        // the guard's wait after the first action
	}{
		{
			name:   "cooldown after a success",
			guards: "  cooldown: 1m",
			first:  func(*fixture) Alert { return crashedAlert() },
			wait:   time.Minute,
		},
		{
			name:   "backoff after a failure, across alert instances",
			guards: "  backoff_base: 30s",
			first: func(f *fixture) Alert {
				f.hosts.noop = true // started but not running: a failure
				return crashedAlert()
			},
			wait: 30 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, withPolicy(t, guardsPolicy+tt.guards+"\n"))
			crash(t, f.hosts)
			f.handle(tt.first(f))
			f.hosts.noop = false
			crash(t, f.hosts)
			again := crashedAlert()
			again.StartsAt = f.clock.Now() // a new instance of the alert
			for _, step := range []time.Duration{0, tt.wait / 2, tt.wait/2 - time.Second} {
				f.clock.Advance(step)
				f.handle(again)
			}
			if n, recs := f.hosts.startCalls(), f.records(t); n != 1 || len(recs) != 1 {
				t.Fatalf("during the wait: %d starts, journal %+v; want the first action only", n, recs)
			}
			f.clock.Advance(time.Second)
			f.handle(again)
			if n := f.hosts.startCalls(); n != 2 {
				t.Errorf("StartGuest called %d times after the wait, want 2", n)
			}
			if !running(t, f.hosts) {
				t.Error("guest not running after the retry")
			}
		})
	}
}

func TestGuardMetricsRegistered(t *testing.T) {
	f := newFixture(t)
	const want = `
# HELP caretaker_remediation_circuit_breaker_open 1 while the circuit breaker is open and remediation acts on nothing, else 0.
# TYPE caretaker_remediation_circuit_breaker_open gauge
caretaker_remediation_circuit_breaker_open 0
# HELP caretaker_remediation_pause_age_seconds Age of the oldest remediation pause in force; 0 when none.
# TYPE caretaker_remediation_pause_age_seconds gauge
caretaker_remediation_pause_age_seconds 0
# HELP caretaker_remediation_paused Remediation pauses in force.
# TYPE caretaker_remediation_paused gauge
caretaker_remediation_paused 0
# HELP caretaker_remediation_unhealthy_targets Distinct targets with a firing alert that a remediation rule matches.
# TYPE caretaker_remediation_unhealthy_targets gauge
caretaker_remediation_unhealthy_targets 0
`
	err := testutil.GatherAndCompare(f.reg, strings.NewReader(want),
		"caretaker_remediation_circuit_breaker_open", "caretaker_remediation_pause_age_seconds",
		"caretaker_remediation_paused", "caretaker_remediation_unhealthy_targets")
	if err != nil {
		t.Error(err)
	}
}

// The guests of a host that was down fail together when it is back (a
// power loss, a reprovisioning): for hostAftermath they count for the
// breaker as their host's one failure, so it lets their restarts through;
// the same guests failing on a host that had no host alert are many
// failures and open it.
func TestCircuitBreakerHostAftermath(t *testing.T) {
	for _, tt := range []struct {
		name      string
		hostAlert bool
		after     time.Duration // from the host alert's end to the guests' failures
		wantOpen  bool
	}{
		{name: "the host was just down", hostAlert: true, after: time.Minute, wantOpen: false},
		{name: "the host was down long ago", hostAlert: true, after: hostAftermath + time.Minute, wantOpen: true},
		{name: "no host alert", hostAlert: false, after: time.Minute, wantOpen: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, withPolicy(t, guardsPolicy+`  max_unhealthy: "1"`+"\n"), func(o *Options) { o.FleetSize = func() int { return 10 } })
			if tt.hostAlert {
				f.handle(hostDown())
				f.clock.Advance(time.Minute)
				f.handle(resolved(hostDown()))
			}
			f.clock.Advance(tt.after)
			batch := []Alert{guestAlert(1), guestAlert(2), guestAlert(3)}
			f.handle(batch...)
			checkGauges(t, f, map[string]float64{"breaker_open": map[bool]float64{true: 1, false: 0}[tt.wantOpen], "unhealthy": 3})
		})
	}
}

// A host's broken overlays share its underlay: for the breaker they are
// one failure, and one more on another host makes two.
func TestCircuitBreakerOverlaysOfOneHost(t *testing.T) {
	pol := `
rules:
  - name: repair-overlays
    match: {alertname: OverlayMTUMismatch}
    action: repair-overlay
guards:
  max_unhealthy: "1"
`
	mtu := func(host, cluster string) Alert {
		return Alert{Name: "OverlayMTUMismatch", Status: StatusFiring, StartsAt: alertStart,
			Labels: map[string]string{"alertname": "OverlayMTUMismatch", "host": host, "cluster": cluster}}
	}
	f := newFixture(t, withPolicy(t, pol), func(o *Options) { o.FleetSize = func() int { return 10 } })
	f.hosts.repairs = [][]string{{"set mtu"}, nil, {"set mtu"}, nil}
	f.handle(mtu(testHost, "c1"), mtu(testHost, "c2"))
	checkGauges(t, f, map[string]float64{"breaker_open": 0, "unhealthy": 2})
	f.handle(mtu("hv-other", "c1"))
	checkGauges(t, f, map[string]float64{"breaker_open": 1, "unhealthy": 3})
}
