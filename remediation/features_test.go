package remediation

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// tick runs the engine's timed work at the fixture's time and waits for
// the actions it started.
func (f *fixture) tick() {
	f.engine.Tick(f.clock.Now())
	f.engine.inflight.Wait()
}

// only returns the journal's one record, or fails.
func (f *fixture) only(t *testing.T) journal.Record {
	t.Helper()
	recs := f.records(t)
	if len(recs) != 1 {
		t.Fatalf("journal holds %d records, want 1: %+v", len(recs), recs)
	}
	return recs[0]
}

func states(r journal.Record) []journal.State {
	var out []journal.State
	for _, tr := range r.Transitions {
		out = append(out, tr.State)
	}
	return out
}

func wantStates(t *testing.T, r journal.Record, want ...journal.State) {
	t.Helper()
	if got := states(r); !slices.Equal(got, want) {
		t.Errorf("record %d went through %v, want %v (reason %q, error %q)", r.ID, got, want, r.Reason, r.Error)
	}
}

const approvalPolicy = `
rules:
  - name: restart-crashed-guests
    match: {alertname: GuestCrashed}
    action: restart-vm
    approval: {required: true, ttl: 10m}
`

func TestApprovalApproved(t *testing.T) {
	f := newFixture(t, withPolicy(t, approvalPolicy))
	crash(t, f.hosts)
	f.handle(crashedAlert(), crashedAlert())
	r := f.only(t)
	if r.State != journal.StateAwaitingApproval || r.Approval == nil || r.Approval.State != guards.Pending ||
		!r.Approval.Expires.Equal(f.clock.Now().Add(10*time.Minute)) {
		t.Fatalf("record = %+v, want awaiting approval for 10m", r)
	}
	if f.hosts.startCalls() != 0 {
		t.Fatal("acted before the approval")
	}
	if got := testutil.ToFloat64(f.engine.metrics.awaiting); got != 1 {
		t.Errorf("awaiting approval gauge = %v, want 1", got)
	}

	if _, err := f.engine.Approve(r.ID, "alice", ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("Approve without a comment = %v, want ErrInvalid", err)
	}
	if _, err := f.engine.Approve(r.ID+100, "alice", "ok"); !errors.Is(err, journal.ErrNotFound) {
		t.Errorf("Approve of an unknown record = %v, want ErrNotFound", err)
	}
	f.clock.Advance(time.Minute)
	got, err := f.engine.Approve(r.ID, "alice", "looks safe")
	if err != nil {
		t.Fatal(err)
	}
	f.engine.inflight.Wait()
	if got.Approval.State != guards.Approved || got.Approval.Author != "alice" {
		t.Errorf("approval = %+v", got.Approval)
	}
	if !running(t, f.hosts) {
		t.Fatal("guest not started after the approval")
	}
	r = f.only(t)
	wantStates(t, r, journal.StateAwaitingApproval, journal.StateAwaitingApproval, journal.StateRunning, journal.StateVerifying, journal.StateSucceeded)
	if !strings.Contains(r.Transitions[1].Note, "approved by alice: looks safe") {
		t.Errorf("approval transition = %+v", r.Transitions[1])
	}
	if _, err := f.engine.Approve(r.ID, "bob", "again"); !errors.Is(err, ErrConflict) {
		t.Errorf("second Approve = %v, want ErrConflict", err)
	}
	if got := testutil.ToFloat64(f.engine.metrics.awaiting); got != 0 {
		t.Errorf("awaiting approval gauge = %v, want 0", got)
	}
}

func TestApprovalDeniedExpiredOrResolved(t *testing.T) {
	tests := []struct {
		name string
		do   func(*testing.T, *fixture, journal.Record)
		want journal.State
	}{
		{"denied", func(t *testing.T, f *fixture, r journal.Record) {
			if _, err := f.engine.Deny(r.ID, "bob", "not during the demo"); err != nil {
				t.Fatal(err)
			}
		}, journal.StateCancelled},
		{"expired", func(t *testing.T, f *fixture, r journal.Record) {
			f.clock.Advance(10*time.Minute - time.Second)
			f.tick()
			if got := f.only(t).State; got != journal.StateAwaitingApproval {
				t.Fatalf("state before the TTL = %s", got)
			}
			f.clock.Advance(time.Second)
			f.tick()
		}, journal.StateExpired},
		{"alert resolved", func(t *testing.T, f *fixture, r journal.Record) {
			f.handle(resolved(crashedAlert()))
		}, journal.StateCancelled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, withPolicy(t, approvalPolicy))
			crash(t, f.hosts)
			f.handle(crashedAlert())
			tt.do(t, f, f.only(t))
			f.handle(crashedAlert()) // re-sent: nothing more happens
			f.tick()
			r := f.only(t)
			wantStates(t, r, journal.StateAwaitingApproval, tt.want)
			if f.hosts.startCalls() != 0 || running(t, f.hosts) {
				t.Error("the guest was started")
			}
		})
	}
}

// restart-vm fails (the guest never runs), then recreate-vm, which has no
// provisioner here, then a human is paged.
func TestEscalationChain(t *testing.T) {
	f := newFixture(t, withPolicy(t, `
rules:
  - name: heal-guests
    match: {alertname: GuestCrashed}
    action: restart-vm
    escalate: [recreate-vm]
    verify_timeout: 10ms
guards:
  max_attempts: 2
  backoff_base: 1s
`))
	crash(t, f.hosts)
	f.hosts.noop = true
	for range 8 {
		f.handle(crashedAlert())
		f.clock.Advance(time.Minute)
	}
	recs := f.records(t)
	var got []string
	for i := len(recs) - 1; i >= 0; i-- {
		got = append(got, recs[i].Action+":"+string(recs[i].State))
	}
	want := []string{"restart-vm:failed", "restart-vm:failed", "recreate-vm:failed", "recreate-vm:failed"}
	if !slices.Equal(got, want) {
		t.Fatalf("journal = %v, want %v", got, want)
	}
	if r := recs[0]; !r.GaveUp || !strings.Contains(r.Error, "recreate-vm is not available") ||
		!strings.Contains(r.Transitions[len(r.Transitions)-1].Note, "escalated to a human") {
		t.Errorf("last record = %+v, want the give-up", r)
	}
	if r := recs[1]; !strings.HasPrefix(r.Reason, "escalated from restart-vm, which gave up after 2 attempts") || r.Step != 1 {
		t.Errorf("first recreate-vm record: step %d, reason %q", r.Step, r.Reason)
	}
	if got := testutil.ToFloat64(f.engine.metrics.givenUp); got != 1 {
		t.Errorf("given-up gauge = %v, want 1", got)
	}
	if got := testutil.ToFloat64(f.engine.metrics.escalations.WithLabelValues(escalateHuman)); got != 1 {
		t.Errorf("escalations to a human = %v, want 1", got)
	}
	// Known across a restart: no new attempt.
	f.stop()
	f.start(t)
	f.handle(crashedAlert())
	if n := len(f.records(t)); n != 4 {
		t.Errorf("journal holds %d records after a restart, want 4", n)
	}
}

// Windows, the host's health and the rate limit hold an action as pending,
// recorded once; the action runs once the guard lets it, without the alert
// being re-sent (Tick re-drives it).
func TestGuardsHoldThenRun(t *testing.T) {
	start := alertStart.Add(30 * time.Second)
	tests := []struct {
		name    string
		guards  string
		before  func(*fixture)
		release func(*fixture)
		reason  string
	}{
		{
			name: "maintenance window on the host's rack",
			guards: `  windows:
    - {name: rack-work, kind: maintenance, schedule: "0 12 * * *", duration: 1h, selector: "rack=r1"}`,
			release: func(f *fixture) {
				f.clock.Advance(time.Hour)
				f.handle(rackAlert()) // re-sent by every evaluation
			},
			reason: `waiting: maintenance "rack-work" (0 12 * * * for 1h) over hosts with rack=r1 until 2025-03-01T13:00:00Z`,
		},
		{
			name:   "the guest's host is down",
			before: func(f *fixture) { f.handle(hostDown()) },
			release: func(f *fixture) {
				f.handle(resolved(hostDown()))
			},
			reason: "skipped: host hv-a1 is unhealthy (HostAgentDown firing): the host is handled first",
		},
		{
			name: "pause of the host",
			before: func(f *fixture) {
				_ = f.engine.Pause(guards.Pause{Target: testHost, Author: "a", Comment: "c", Until: start.Add(time.Hour)})
			},
			release: func(f *fixture) {
				f.engine.Resume(testHost)
			},
			reason: "waiting: " + testHost + "/" + testUUID + " paused by a until 2025-03-01T13:00:30Z: c",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, withPolicy(t, guardsPolicy+tt.guards+"\n"))
			crash(t, f.hosts)
			if tt.before != nil {
				tt.before(f)
			}
			for range 3 {
				f.handle(rackAlert())
				f.tick()
			}
			r := f.only(t)
			if r.State != journal.StatePending || r.Reason != tt.reason || f.hosts.startCalls() != 0 {
				t.Fatalf("record %s %q with %d starts, want pending %q", r.State, r.Reason, f.hosts.startCalls(), tt.reason)
			}
			if len(r.Decisions) != len(guards.Order()) {
				t.Errorf("record has %d guard decisions, want all %d", len(r.Decisions), len(guards.Order()))
			}
			tt.release(f)
			f.tick()
			if !running(t, f.hosts) {
				t.Fatal("guest not started once the guard let it")
			}
			wantStates(t, f.only(t), journal.StatePending, journal.StateRunning, journal.StateVerifying, journal.StateSucceeded)
		})
	}
}

func rackAlert() Alert {
	a := crashedAlert()
	a.Labels["rack"] = "r1"
	return a
}

func hostDown() Alert {
	return Alert{Name: "HostAgentDown", Status: StatusFiring, StartsAt: alertStart,
		Labels: map[string]string{"alertname": "HostAgentDown", "host": testHost}}
}

// Two guests crash; the rate limit lets one restart a minute.
func TestRateLimit(t *testing.T) {
	f := newFixture(t, withPolicy(t, guardsPolicy+"  rate_limits: {restart-vm: {max: 1, per: 1m}}\n"))
	crash(t, f.hosts)
	other := guestAlert(1) // unknown to the test driver: its start fails
	f.handle(crashedAlert(), other)
	if n := f.hosts.startCalls(); n != 1 {
		t.Fatalf("%d starts, want 1 within the minute", n)
	}
	f.clock.Advance(59 * time.Second)
	f.tick()
	if n := f.hosts.startCalls(); n != 1 {
		t.Fatalf("%d starts after 59s, want 1", n)
	}
	f.clock.Advance(time.Second)
	f.tick()
	if n := f.hosts.startCalls(); n != 2 {
		t.Fatalf("%d starts after a minute, want 2", n)
	}
}

func TestRepairOverlay(t *testing.T) {
	f := newFixture(t, withPolicy(t, `
rules:
  - name: repair-overlays
    match: {alertname: OverlayPeerFDBMissing}
    action: repair-overlay
`))
	f.hosts.repairs = [][]string{{"added fdb entry to 10.0.0.2"}, nil} // the repair, then the check
	a := Alert{Name: "OverlayPeerFDBMissing", Status: StatusFiring, StartsAt: alertStart,
		Labels: map[string]string{"alertname": "OverlayPeerFDBMissing", "host": testHost, "cluster": "c1", "peer": "10.0.0.2"}}
	f.handle(a, a)
	r := f.only(t)
	wantStates(t, r, journal.StateRunning, journal.StateVerifying, journal.StateSucceeded)
	if r.Target != testHost+"/overlay/c1" || r.Output != "added fdb entry to 10.0.0.2" || r.Cluster != "c1" {
		t.Errorf("record = %+v", r)
	}
}

func TestRunCommandVerifiedByResolution(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	pol := `
rules:
  - name: note-it
    match: {alertname: HostMemoryPressure}
    action: run-command
    verify_timeout: 1m
    command:
      program: /bin/sh
      args: ["-c", 'printf "%s %s" "$0" "$1" > ` + out + `; echo done', "{{ .Labels.host }}", "{{ .Alert }}"]
`
	a := Alert{Name: "HostMemoryPressure", Status: StatusFiring, StartsAt: alertStart,
		Labels: map[string]string{"alertname": "HostMemoryPressure", "host": "hv-a1; rm -rf /"}}
	for _, resolves := range []bool{true, false} {
		f := newFixture(t, withPolicy(t, pol))
		f.handle(a)
		data, err := os.ReadFile(out)
		if err != nil || string(data) != "hv-a1; rm -rf / HostMemoryPressure" {
			t.Fatalf("command wrote %q, %v", data, err)
		}
		if r := f.only(t); r.State != journal.StateVerifying || r.Output != "done\n" {
			t.Fatalf("record %s with output %q, want verifying with the output", r.State, r.Output)
		}
		if resolves {
			f.clock.Advance(20 * time.Second)
			f.handle(resolved(a))
			if r := f.only(t); r.State != journal.StateSucceeded || r.HealSeconds != 50 {
				t.Errorf("record %s healed in %vs, want succeeded in 50s", r.State, r.HealSeconds)
			}
		} else {
			f.clock.Advance(time.Minute)
			f.tick()
			if r := f.only(t); r.State != journal.StateFailed || r.Error != "the alert did not resolve within the verification timeout" {
				t.Errorf("record %s %q, want failed by the timeout", r.State, r.Error)
			}
		}
		f.stop()
	}
}

// run-command's templates see the alert's annotations, and a label that
// would arrive as an option fails the action, naming the argument.
func TestRunCommandAnnotationsAndDash(t *testing.T) {
	pol := `
rules:
  - name: note-it
    match: {alertname: HostMemoryPressure}
    action: run-command
    command:
      program: /bin/sh
      args: ["-c", 'printf "%s|%s" "$0" "$1"', "{{ .Annotations.summary }}", "{{ .Labels.host }}"]
`
	alert := func(host string) Alert {
		return Alert{Name: "HostMemoryPressure", Status: StatusFiring, StartsAt: alertStart,
			Labels:      map[string]string{"alertname": "HostMemoryPressure", "host": host},
			Annotations: map[string]string{"summary": "memory is short"}}
	}

	f := newFixture(t, withPolicy(t, pol))
	f.handle(alert("hv-a1"))
	if r := f.only(t); r.State != journal.StateVerifying || r.Output != "memory is short|hv-a1" {
		t.Errorf("record %s with output %q error %q, want verifying with the summary and the host", r.State, r.Output, r.Error)
	}
	f.stop()

	f = newFixture(t, withPolicy(t, pol))
	f.handle(alert("--help"))
	want := `args[3]: value "--help" begins with "-" and would be read as an option`
	if r := f.only(t); r.State != journal.StateFailed || !strings.Contains(r.Error, want) {
		t.Errorf("record %s error %q, want failed with %q", r.State, r.Error, want)
	}
	f.stop()
}

func TestNotifyOnly(t *testing.T) {
	f := newFixture(t, withPolicy(t, `
rules:
  - name: tell
    match: {alertname: GuestHighSteal}
    action: notify-only
`))
	a := crashedAlert()
	a.Name, a.Labels["alertname"] = "GuestHighSteal", "GuestHighSteal"
	f.handle(a, a)
	r := f.only(t)
	wantStates(t, r, journal.StateRunning, journal.StateSucceeded)
	if r.HealSeconds != 0 || f.hosts.startCalls() != 0 {
		t.Errorf("notify-only healed in %vs with %d starts", r.HealSeconds, f.hosts.startCalls())
	}
}

func TestManualRun(t *testing.T) {
	f := newFixture(t)
	crash(t, f.hosts)
	// Even the breaker does not hold a human's explicit request, but the
	// record says what it would have done.
	if err := f.engine.Pause(guards.Pause{Target: guards.Everything, Author: "a", Comment: "c", Until: f.clock.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	dry, err := f.engine.Run(context.Background(), ManualRequest{Action: policy.ActionRestartVM,
		Target: testHost + "/" + testUUID, DryRun: true, Author: "alice", Comment: "try"})
	if err != nil {
		t.Fatal(err)
	}
	if dry.State != journal.StateSkipped || !strings.Contains(dry.Reason, "the automatic guards say: waiting: all remediation paused") || !dry.DryRun {
		t.Errorf("dry run record = %s %q", dry.State, dry.Reason)
	}
	rec, err := f.engine.Run(context.Background(), ManualRequest{Action: policy.ActionRestartVM,
		Target: testHost + "/" + testUUID, Author: "alice", Comment: "bring it back"})
	if err != nil {
		t.Fatal(err)
	}
	f.engine.inflight.Wait()
	rec, _ = f.journal.Get(rec.ID)
	if rec.State != journal.StateSucceeded || rec.Author != "alice" || rec.Alert != ManualAlert || !running(t, f.hosts) {
		t.Errorf("manual record = %+v", rec)
	}

	bad := []struct {
		req  ManualRequest
		want error
	}{
		{ManualRequest{Action: "reboot", Target: testHost, Author: "a", Comment: "c"}, ErrInvalid},
		{ManualRequest{Action: policy.ActionRestartVM, Target: testHost, Author: "a", Comment: "c"}, ErrInvalid},
		{ManualRequest{Action: policy.ActionRestartVM, Target: "a/b/c", Author: "a", Comment: "c"}, ErrInvalid},
		{ManualRequest{Action: policy.ActionRunCommand, Target: testHost, Author: "a", Comment: "c"}, ErrInvalid},
		{ManualRequest{Action: policy.ActionRestartVM, Target: testHost + "/" + testUUID, Author: "a"}, ErrInvalid},
	}
	for _, b := range bad {
		if _, err := f.engine.Run(context.Background(), b.req); !errors.Is(err, b.want) {
			t.Errorf("Run(%+v) = %v, want %v", b.req, err, b.want)
		}
	}
}

func TestManualRunBusyTarget(t *testing.T) {
	f := newFixture(t)
	crash(t, f.hosts)
	gate := make(chan struct{})
	f.hosts.gate = gate
	f.engine.Handle(context.Background(), []Alert{crashedAlert()})
	_, err := f.engine.Run(context.Background(), ManualRequest{Action: policy.ActionRestartVM,
		Target: testHost + "/" + testUUID, Author: "a", Comment: "c"})
	close(gate)
	f.engine.inflight.Wait()
	if !errors.Is(err, ErrConflict) {
		t.Errorf("Run on a busy target = %v, want ErrConflict", err)
	}
}

func TestRetentionPrunes(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Retention = 24 * time.Hour })
	crash(t, f.hosts)
	f.handle(crashedAlert())
	f.clock.Advance(24*time.Hour + time.Second)
	f.tick()
	if recs := f.records(t); len(recs) != 0 {
		t.Errorf("journal = %+v after its retention, want empty", recs)
	}
}

// An alert about a guest that already runs — evaluated on data from before
// a restart, or a late copy from an Alertmanager — starts nothing.
func TestAlreadyHealthy(t *testing.T) {
	f := newFixture(t)
	if !running(t, f.hosts) {
		if err := f.hosts.StartGuest(context.Background(), testHost, testUUID); err != nil {
			t.Fatal(err)
		}
	}
	before := f.hosts.startCalls()
	f.handle(crashedAlert())
	r := f.only(t)
	wantStates(t, r, journal.StateRunning, journal.StateSkipped)
	if n := f.hosts.startCalls() - before; n != 0 || r.Reason != testHost+"/"+testUUID+" was already healthy: nothing done" {
		t.Errorf("%d starts, reason %q", n, r.Reason)
	}
	// The engine is free for the guest's next failure.
	crash(t, f.hosts)
	next := crashedAlert()
	next.StartsAt = alertStart.Add(time.Minute)
	f.handle(next)
	if !running(t, f.hosts) {
		t.Error("the next failure was not healed")
	}
}

// A held action survives a restart of the server: it is neither cancelled
// as stale at the first tick nor run twice; it runs once the guard lets it.
func TestHeldActionAcrossRestart(t *testing.T) {
	f := newFixture(t)
	crash(t, f.hosts)
	if err := f.engine.Pause(guards.Pause{Target: guards.Everything, Author: "a", Comment: "c", Until: f.clock.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	f.handle(crashedAlert())
	f.stop()
	f.clock.Advance(2 * time.Minute) // the pause is over; the alert is not re-sent yet
	f.start(t)
	f.tick()
	if !running(t, f.hosts) {
		t.Fatal("the held action did not run after the restart")
	}
	wantStates(t, f.only(t), journal.StatePending, journal.StateRunning, journal.StateVerifying, journal.StateSucceeded)
}

// An alert that resolves while its action runs is not retried when the
// action fails: the target is healthy again.
func TestResolvedWhileRunningIsNotRetried(t *testing.T) {
	f := newFixture(t, withPolicy(t, guardsPolicy))
	crash(t, f.hosts)
	gate := make(chan struct{})
	f.hosts.gate, f.hosts.noop = gate, true // the start "succeeds" but the guest never runs: a failure
	f.engine.Handle(context.Background(), []Alert{crashedAlert()})
	f.engine.Handle(context.Background(), []Alert{resolved(crashedAlert())})
	close(gate)
	f.engine.inflight.Wait()
	f.hosts.gate = nil
	for range 3 {
		f.clock.Advance(time.Minute)
		f.tick()
	}
	if n := f.hosts.startCalls(); n != 1 {
		t.Errorf("StartGuest called %d times, want 1: the alert resolved", n)
	}
	if r := f.only(t); r.State != journal.StateFailed {
		t.Errorf("record %s, want failed", r.State)
	}
}

// With attempts counted per target within a window, each action of the
// chain gets its own budget: recreate-vm is tried, not skipped because
// restart-vm spent the target's attempts.
func TestEscalationWithWindow(t *testing.T) {
	f := newFixture(t, withPolicy(t, `
rules:
  - name: heal-guests
    match: {alertname: GuestCrashed}
    action: restart-vm
    escalate: [notify-only]
    verify_timeout: 10ms
guards:
  max_attempts: 2
  window: 1h
  backoff_base: 1s
`))
	crash(t, f.hosts)
	f.hosts.noop = true
	for range 6 {
		f.handle(crashedAlert())
		f.clock.Advance(time.Minute)
	}
	recs := f.records(t)
	if len(recs) != 3 || recs[0].Action != policy.ActionNotifyOnly || recs[0].State != journal.StateSucceeded {
		var got []string
		for _, r := range recs {
			got = append(got, r.Action+":"+string(r.State)+":"+r.Reason)
		}
		t.Errorf("journal = %q, want two failed restarts, then notify-only", got)
	}
}
