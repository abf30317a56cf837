package remediation

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// streams is the event path as the engine sees it: whether a host's stream
// is unbroken since a time, and the started events a test sends.
type streams struct {
	mu sync.Mutex
	// brokenAt: the stream was broken (reconnected without resuming) at
	// this time; zero means unbroken since ever.
	brokenAt time.Time
	started  []chan struct{}
	// connected false: no stream, no started events to wait for.
	disconnected bool
	// ranAgain: the stream reported the guest running at this time.
	ranAgain time.Time
}

// streamLag is how old the rule's data may be in these tests.
const streamLag = 2 * time.Second

func (s *streams) SameOutage(host, uuid string, eventAt, alertAt time.Time) (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ranAgain.IsZero() && s.ranAgain.After(eventAt) && s.ranAgain.Before(alertAt.Add(-streamLag)) {
		return false, "ran again" // the rule's data is from after the guest ran again
	}
	return !s.disconnected && (s.brokenAt.IsZero() || s.brokenAt.Before(eventAt)), "broken"
}

func (s *streams) Started(host, uuid string) (<-chan struct{}, func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.disconnected {
		return nil, nil
	}
	ch := make(chan struct{})
	s.started = append(s.started, ch)
	return ch, func() {}
}

// reportStarted closes the channels of everyone waiting for a started event.
func (s *streams) reportStarted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.started)
	for _, ch := range s.started {
		close(ch)
	}
	s.started = nil
	return n
}

func (s *streams) waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.started)
}

func withEvents(s *streams) fixtureOption { return func(o *Options) { o.Events = s } }

func eventAlert(at time.Time) Alert {
	a := crashedAlert()
	a.StartsAt, a.FromEvent = at, true
	return a
}

func ruleAlert(at time.Time) Alert {
	a := crashedAlert()
	a.StartsAt = at
	return a
}

// The event path raises a crash's alert seconds before the rule does, each
// with its own start: the engine takes them for one instance only when
// nothing can have happened between them unseen.
func TestEventAndRuleAlertsOfOneCrash(t *testing.T) {
	crashAt := alertStart
	cases := []struct {
		name string
		// first, second are the alerts in the order they arrive; the
		// guest crashes before first and is healed by it.
		first, second Alert
		// broken: the stream reconnected without resuming between them.
		broken, disconnected bool
		// ranAgain: the stream reported the guest running this long
		// after the first alert's start.
		ranAgain time.Duration
		// crashAgain: the guest crashed again before second.
		crashAgain  bool
		wantRecords int
		wantStarts  int
		wantSame    float64
	}{
		{name: "rule after event, stream unbroken", first: eventAlert(crashAt), second: ruleAlert(crashAt.Add(3 * time.Second)),
			wantRecords: 1, wantStarts: 1, wantSame: 1},
		{name: "rule after event, stream broken since", first: eventAlert(crashAt), second: ruleAlert(crashAt.Add(3 * time.Second)),
			broken: true, wantRecords: 2, wantStarts: 1},
		{name: "rule of a later stop whose event raised nothing", first: eventAlert(crashAt), second: ruleAlert(crashAt.Add(time.Minute)),
			ranAgain: time.Second, crashAgain: true, wantRecords: 2, wantStarts: 2},
		{name: "rule after event, stream down now", first: eventAlert(crashAt), second: ruleAlert(crashAt.Add(3 * time.Second)),
			disconnected: true, wantRecords: 2, wantStarts: 1},
		{name: "event late after the rule", first: ruleAlert(crashAt.Add(3 * time.Second)), second: eventAlert(crashAt),
			wantRecords: 1, wantStarts: 1, wantSame: 1},
		{name: "event of a later crash after the rule", first: ruleAlert(crashAt), second: eventAlert(crashAt.Add(time.Minute)),
			crashAgain: true, wantRecords: 2, wantStarts: 2},
		{name: "rule started before the event's crash", first: eventAlert(crashAt.Add(time.Minute)), second: ruleAlert(crashAt),
			wantRecords: 2, wantStarts: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &streams{}
			f := newFixture(t, withEvents(s))
			crash(t, f.hosts)
			f.handle(c.first)
			if !running(t, f.hosts) {
				t.Fatal("the first alert did not heal the guest")
			}
			switch {
			case c.broken:
				s.brokenAt = c.first.StartsAt.Add(time.Second)
			case c.disconnected:
				s.disconnected = true
			}
			if c.ranAgain != 0 {
				s.ranAgain = c.first.StartsAt.Add(c.ranAgain)
			}
			if c.crashAgain {
				crash(t, f.hosts)
			}
			f.clock.Advance(time.Minute)
			f.handle(c.second)
			f.engine.Tick(f.clock.Now())
			f.engine.inflight.Wait()

			recs := f.records(t)
			if len(recs) != c.wantRecords {
				t.Errorf("%d records, want %d: %+v", len(recs), c.wantRecords, recs)
			}
			if n := f.hosts.startCalls(); n != c.wantStarts {
				t.Errorf("StartGuest called %d times, want %d", n, c.wantStarts)
			}
			if got := testutil.ToFloat64(f.engine.metrics.sameIncident); got != c.wantSame {
				t.Errorf("same-incident alerts = %v, want %v", got, c.wantSame)
			}
			for _, r := range recs {
				if r.State != journal.StateSucceeded && r.State != journal.StateSkipped {
					t.Errorf("record %d is %s: %s", r.ID, r.State, r.Reason)
				}
			}
		})
	}
}

// A rule's alert that resolves ends what waits for the event's instance it
// was taken for (here an approval that nobody gave) only when the stream
// cannot vouch for the outage: while it has delivered every event since
// the crash and not reported the guest running, the rule stopped firing
// for want of data (a failed scrape), the instance stays open and its
// target unhealthy, and the rule firing again joins it. A game day's storm
// found the old way: held restarts cancelled by a flap, guests left down.
func TestRuleResolutionOfEventInstance(t *testing.T) {
	p, err := policy.Parse("policy.yml", []byte(`
rules:
  - name: restart-crashed-guests
    match: {alertname: GuestCrashed}
    action: restart-vm
    approval: {required: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		broken bool // the stream reconnected without resuming after the crash
		// away: the stream was down when the rule resolved, back (resumed,
		// unbroken) when it fired again.
		away bool
		// wantAfter: the record's state after the rule resolved;
		// wantRecords: after the rule fired again.
		wantAfter   journal.State
		wantRecords int
	}{
		{name: "stream unbroken: the resolution is doubted", wantAfter: journal.StateAwaitingApproval, wantRecords: 1},
		{name: "stream broken: the resolution ends the instance", broken: true, wantAfter: journal.StateCancelled, wantRecords: 2},
		// The instance a rule resolved is not the outage of the rule's
		// next alert, even when the stream vouches for it again.
		{name: "stream away at the resolution", away: true, wantAfter: journal.StateCancelled, wantRecords: 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &streams{}
			f := newFixture(t, withEvents(s), func(o *Options) { o.Policy = p })
			crash(t, f.hosts)
			f.handle(eventAlert(alertStart))
			rule := ruleAlert(alertStart.Add(4 * time.Second))
			f.handle(rule)
			if recs := f.records(t); len(recs) != 1 || recs[0].State != journal.StateAwaitingApproval {
				t.Fatalf("records = %+v, want one awaiting approval", recs)
			}
			if c.broken {
				s.brokenAt = alertStart.Add(10 * time.Second)
			}
			s.disconnected = c.away
			rule.Status = StatusResolved
			f.handle(rule)
			s.disconnected = false
			recs := f.records(t)
			if len(recs) != 1 || recs[0].State != c.wantAfter {
				t.Errorf("after the rule resolved: records = %+v, want one %s", recs, c.wantAfter)
			}
			if unhealthy := f.engine.guardState().unhealthy; (unhealthy == 1) != (c.wantAfter == journal.StateAwaitingApproval) {
				t.Errorf("after the rule resolved: %d unhealthy targets", unhealthy)
			}
			f.clock.Advance(time.Minute)
			again := ruleAlert(alertStart.Add(time.Minute))
			f.handle(again)
			recs = f.records(t)
			if len(recs) != c.wantRecords || recs[0].State != journal.StateAwaitingApproval {
				t.Errorf("after the rule fired again: records = %+v, want %d, the newest awaiting approval", recs, c.wantRecords)
			}
			if n := f.hosts.startCalls(); n != 0 {
				t.Errorf("StartGuest called %d times, want 0", n)
			}
		})
	}
}

// With the host's stream connected, verification waits for the guest's
// started event rather than polling every second: here the agent claims a
// start it did not make, the guest is started behind its back, and only the
// event (the poll is 5 s apart, the verification allows 2 s) can tell the
// engine in time.
func TestVerificationListensForStartedEvent(t *testing.T) {
	p, err := policy.Parse("policy.yml", []byte(`
rules:
  - name: restart-crashed-guests
    match: {alertname: GuestCrashed}
    action: restart-vm
    verify_timeout: 2s
`))
	if err != nil {
		t.Fatal(err)
	}
	s := &streams{}
	f := newFixture(t, withEvents(s), func(o *Options) { o.Policy = p })
	crash(t, f.hosts)
	f.hosts.noop = true
	f.engine.Handle(context.Background(), []Alert{eventAlert(alertStart)})
	for s.waiting() == 0 { // the first check failed; it waits for the event
		time.Sleep(time.Millisecond)
	}
	conn, dom, err := f.hosts.domain(testHost, testUUID)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.DomainCreate(dom); err != nil {
		t.Fatal(err)
	}
	s.reportStarted()
	f.engine.inflight.Wait()
	recs := f.records(t)
	if len(recs) != 1 || recs[0].State != journal.StateSucceeded {
		t.Errorf("records = %+v, want one succeeded", recs)
	}
}

// The rule's report of a stop lags the event path's: a rule's firing
// alert taken as an event's instance that the guest's started event
// already resolved does not count the guest unhealthy (a second stop
// elsewhere would otherwise find the breaker's threshold passed).
func TestLaggingRuleAlertIsNotUnhealthy(t *testing.T) {
	s := &streams{}
	f := newFixture(t, withEvents(s))
	crash(t, f.hosts)
	ev := eventAlert(alertStart)
	f.handle(ev)
	ev.Status = StatusResolved
	f.handle(ev)
	f.handle(ruleAlert(alertStart.Add(2 * time.Second)))
	checkGauges(t, f, map[string]float64{"unhealthy": 0})
	if n := f.hosts.startCalls(); n != 1 {
		t.Errorf("StartGuest called %d times, want 1", n)
	}
}
