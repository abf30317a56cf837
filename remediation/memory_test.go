package remediation

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
)

// memory is what the engine knows from its journal, in a form that
// compares: instance state by alert instance, the open and busy records,
// the attempts on each target and the recent starts. What an instance
// knows from its alert (as last received, when, whether resolved) is left
// out: the journal does not hold it.
type memory struct {
	Instances map[string]instanceMemory
	ByRecord  map[uint64]string
	Busy      map[string]uint64
	Targets   map[string]guards.TargetHistory
	Starts    map[string][]time.Time
}

type instanceMemory struct {
	Step, Attempts   int
	State            journal.State
	Finished         time.Time
	Last, Open       uint64
	Manual           bool
	Reason           string
	Approval         *guards.Approval
	VerifyBy         time.Time
	Done, GaveUp     bool
	AlertStartsAtSec int64
}

func snapshot(e *Engine) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	name := func(k instanceKey) string { return fmt.Sprintf("%s@%d", k.fingerprint, k.startsAt) }
	m := memory{Instances: map[string]instanceMemory{}, ByRecord: map[uint64]string{}, Busy: maps.Clone(e.busy),
		Targets: map[string]guards.TargetHistory{}, Starts: map[string][]time.Time{}}
	for k, in := range e.instances {
		m.Instances[name(k)] = instanceMemory{Step: in.step, Attempts: in.attempts, State: in.state, Finished: in.finished,
			Last: in.last, Open: in.open, Manual: in.manual, Reason: in.reason, Approval: in.approval,
			VerifyBy: in.verifyBy, Done: in.done, GaveUp: in.gaveUp, AlertStartsAtSec: k.startsAt}
	}
	for id, k := range e.byRecord {
		m.ByRecord[id] = name(k)
	}
	for k, th := range e.targets {
		if len(th.Attempts) > 0 {
			m.Targets[k] = *th
		}
	}
	for a, s := range e.starts {
		if len(s) > 0 {
			m.Starts[a] = s
		}
	}
	b, err := json.MarshalIndent(m, "", " ") // times as text: equal instants compare equal
	if err != nil {
		panic(err)
	}
	return string(b)
}

// The engine's memory follows its journal: after a live sequence of
// successes, failures, retries, escalations, a give-up, holds, approvals
// (granted, denied, pending), cancellations and a run by hand, memory
// equals what an engine rebuilds from the same journal at start.
func TestMemoryEqualsJournal(t *testing.T) {
	f := newFixture(t, withPolicy(t, `
rules:
  - name: heal-guests
    match: {alertname: GuestCrashed}
    action: restart-vm
    escalate: [recreate-vm]
    verify_timeout: 10ms
  - name: notify-rack
    match: {alertname: RackDown}
    action: notify-only
    approval: {required: true, ttl: 10m}
guards:
  max_attempts: 2
  backoff_base: 1s
`), func(o *Options) { o.FleetSize = func() int { return 100 } })
	compare := func(when string) {
		t.Helper()
		f.engine.inflight.Wait()
		live := snapshot(f.engine)
		if !strings.Contains(live, `"Instances"`) {
			t.Fatalf("snapshot: %s", live)
		}
		f.engine.Close()
		rebuilt, err := New(Options{Policy: f.engine.policy, Journal: f.journal, Hosts: f.hosts,
			Logger: testLogger(t), Now: f.clock.Now, FleetSize: func() int { return 100 }})
		if err != nil {
			t.Fatal(err)
		}
		if got := snapshot(rebuilt); got != live {
			t.Errorf("%s: memory after the live sequence:\n%s\nrebuilt from the journal:\n%s", when, live, got)
		}
		// Carry on with the rebuilt engine, as a restarted server does.
		f.engine = rebuilt
	}
	rack := func(i int) Alert {
		return Alert{Name: "RackDown", Status: StatusFiring, StartsAt: alertStart.Add(time.Duration(i) * time.Second),
			Labels: map[string]string{"alertname": "RackDown", "host": fmt.Sprint("hv-r", i), "rack": fmt.Sprint("r", i)}}
	}

	// A guest that never comes up: two failed restarts, escalation to
	// recreate-vm (no provisioner: it fails twice), then a human.
	crash(t, f.hosts)
	f.hosts.noop = true
	for range 8 {
		f.handle(crashedAlert())
		f.clock.Advance(time.Minute)
	}
	compare("after a give-up")

	// A failed restart of another guest waits for its retry; a third is
	// held by a pause; a fourth is held, then resolved (cancelled).
	f.hosts.noop = false
	if err := f.engine.Pause(guards.Pause{Target: testHost + "/00000000-0000-0000-0000-000000000003",
		Until: f.clock.Now().Add(time.Hour), Author: "alice", Comment: "disk swap"}); err != nil {
		t.Fatal(err)
	}
	if err := f.engine.Pause(guards.Pause{Target: testHost + "/00000000-0000-0000-0000-000000000004",
		Until: f.clock.Now().Add(time.Hour), Author: "alice", Comment: "disk swap"}); err != nil {
		t.Fatal(err)
	}
	f.handle(guestAlert(2), guestAlert(3), guestAlert(4))
	f.clock.Advance(time.Second)
	f.handle(resolved(guestAlert(4)))

	// Approvals: one granted (notify-only succeeds), one denied, one
	// left waiting, one expired.
	f.handle(rack(1), rack(2), rack(3), rack(4))
	byAlert := map[string]uint64{}
	for _, r := range f.records(t) {
		if r.Alert == "RackDown" {
			byAlert[r.Labels["rack"]] = r.ID
		}
	}
	if _, err := f.engine.Approve(byAlert["r1"], "bob", "go"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.engine.Deny(byAlert["r2"], "bob", "not now"); err != nil {
		t.Fatal(err)
	}
	compare("with held, waiting and approved actions")

	f.clock.Advance(5 * time.Minute)
	f.handle(rack(3), rack(4))
	f.clock.Advance(6 * time.Minute)
	f.handle(rack(4)) // r3 is not re-sent
	f.tick()

	// A run by hand.
	if _, err := f.engine.Run(context.Background(), ManualRequest{Action: "notify-only", Target: testHost,
		Author: "carol", Comment: "checking"}); err != nil {
		t.Fatal(err)
	}
	compare("after expiries and a run by hand")

	var states []string
	for _, r := range f.records(t) {
		states = append(states, r.Alert+":"+r.Action+":"+string(r.State))
	}
	slices.Sort(states)
	for _, want := range []string{"GuestCrashed:recreate-vm:failed", "GuestCrashed:restart-vm:failed", "GuestCrashed:restart-vm:pending",
		"GuestCrashed:restart-vm:cancelled", "RackDown:notify-only:succeeded", "RackDown:notify-only:cancelled",
		"RackDown:notify-only:expired", "ManualAction:notify-only:succeeded"} {
		if !slices.Contains(states, want) {
			t.Errorf("the sequence left no %s record; records: %v", want, states)
		}
	}
}
