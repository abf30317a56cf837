package remediation

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// A test-driver node like libvirt's default one: one domain, running. Each
// fixture writes its own and connects to it through libvirtd, which keeps
// one copy of a node file per connection: no other test, of this package
// or another (test:///default is shared by every client of the daemon),
// sees its domain.
const (
	testNode = `<node>
  <domain type="test">
    <name>test</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
    <memory>65536</memory>
    <os><type>hvm</type></os>
  </domain>
</node>
`
	testDomain = "test"
	testUUID   = "6695eb01-f6a4-8304-79aa-97f2502e193f"
	testHost   = "hv-a1"
)

// libvirtHosts stands in for the agents: it runs guest actions directly on
// a libvirt connection per host name.
type libvirtHosts struct {
	conns map[string]*libvirt.Libvirt

	mu     sync.Mutex
	starts int
	// gate, when set, holds every StartGuest until it is closed, so a test
	// can look at the engine while an action is in flight.
	gate chan struct{}
	// noop makes StartGuest claim success without starting anything.
	noop bool
	// repairs are the answers of the next RepairOverlay calls.
	repairs [][]string
}

func (h *libvirtHosts) domain(host, uuid string) (*libvirt.Libvirt, libvirt.Domain, error) {
	conn, ok := h.conns[host]
	if !ok {
		return nil, libvirt.Domain{}, fmt.Errorf("unknown host %q", host)
	}
	dom, err := libvirtconn.LookupDomain(conn, uuid)
	if err != nil {
		return nil, libvirt.Domain{}, fmt.Errorf("look up guest %s: %w", uuid, err)
	}
	return conn, dom, nil
}

func (h *libvirtHosts) StartGuest(ctx context.Context, host, uuid string) error {
	h.mu.Lock()
	h.starts++
	gate, noop := h.gate, h.noop
	h.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	conn, dom, err := h.domain(host, uuid)
	if err != nil {
		return err
	}
	if noop {
		return nil
	}
	active, err := conn.DomainIsActive(dom)
	if err != nil {
		return fmt.Errorf("guest %s state: %w", uuid, err)
	}
	if active == 1 {
		return nil
	}
	if err := conn.DomainCreate(dom); err != nil {
		return fmt.Errorf("start guest %s: %w", uuid, err)
	}
	return nil
}

func (h *libvirtHosts) GuestRunning(ctx context.Context, host, uuid string) (bool, error) {
	conn, dom, err := h.domain(host, uuid)
	if err != nil {
		return false, err
	}
	state, _, err := conn.DomainGetState(dom, 0)
	if err != nil {
		return false, fmt.Errorf("guest %s state: %w", uuid, err)
	}
	return libvirt.DomainState(state) == libvirt.DomainRunning, nil
}

// RepairOverlay reports the changes a test queued in repairs, one call
// after another; no overlay is touched (internal/overlaynet has its own
// tests on real devices).
func (h *libvirtHosts) RepairOverlay(ctx context.Context, host, cluster string) ([]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.conns[host]; !ok {
		return nil, fmt.Errorf("unknown host %q", host)
	}
	if len(h.repairs) == 0 {
		return nil, nil
	}
	next := h.repairs[0]
	h.repairs = h.repairs[1:]
	return next, nil
}

func (h *libvirtHosts) startCalls() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.starts
}

// newHosts connects to a test-driver node of the test's own (testNode),
// through libvirtd, as host testHost.
func newHosts(t *testing.T) *libvirtHosts {
	t.Helper()
	needs.Libvirtd(t)
	node := filepath.Join(t.TempDir(), "node.xml")
	if err := os.WriteFile(node, []byte(testNode), 0o644); err != nil {
		t.Fatal(err)
	}
	conn, err := libvirtconn.Dial("test://" + node)
	if err != nil {
		t.Fatalf("connect to the test driver: %v", err)
	}
	t.Cleanup(func() { conn.Disconnect() })
	return &libvirtHosts{conns: map[string]*libvirt.Libvirt{testHost: conn}}
}

// crash stops the test domain, as a crash would, so the engine has
// something to heal.
func crash(t *testing.T, h *libvirtHosts) {
	t.Helper()
	conn := h.conns[testHost]
	dom, err := conn.DomainLookupByName(testDomain)
	if err != nil {
		t.Fatal(err)
	}
	if active, _ := conn.DomainIsActive(dom); active == 1 {
		if err := conn.DomainDestroy(dom); err != nil {
			t.Fatalf("destroy %s: %v", testDomain, err)
		}
	}
	if running(t, h) {
		t.Fatal("domain still runs after destroy")
	}
}

func running(t *testing.T, h *libvirtHosts) bool {
	t.Helper()
	ok, err := h.GuestRunning(context.Background(), testHost, testUUID)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// clock is a settable Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var alertStart = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func crashedAlert() Alert {
	return Alert{
		Name: "GuestCrashed",
		Labels: map[string]string{
			"alertname": "GuestCrashed",
			"host":      testHost,
			"uuid":      testUUID,
			"domain":    testDomain,
			"severity":  "critical",
		},
		Status:   StatusFiring,
		StartsAt: alertStart,
	}
}

type fixture struct {
	engine  *Engine
	journal *journal.Journal
	path    string
	hosts   *libvirtHosts
	clock   *clock
	reg     *prometheus.Registry
}

type fixtureOption func(*Options)

func dryRun(o *Options) { o.DryRun = true }

func newFixture(t *testing.T, opts ...fixtureOption) *fixture {
	t.Helper()
	f := &fixture{
		path:  filepath.Join(t.TempDir(), "journal.db"),
		hosts: newHosts(t),
		clock: &clock{t: alertStart.Add(30 * time.Second)},
	}
	f.start(t, opts...)
	t.Cleanup(f.stop)
	return f
}

// start opens the journal and an engine on it, as a server start does.
func (f *fixture) start(t *testing.T, opts ...fixtureOption) {
	t.Helper()
	j, err := journal.Open(f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.journal = j
	f.reg = prometheus.NewRegistry()
	o := Options{
		Policy:     policy.Default(),
		Journal:    j,
		Hosts:      f.hosts,
		Logger:     testLogger(t),
		Registerer: f.reg,
		Now:        f.clock.Now,
		// Ten guests: one crashed guest is well under the breaker's 40%.
		FleetSize: func() int { return 10 },
	}
	for _, opt := range opts {
		opt(&o)
	}
	f.engine, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
}

// stop closes the engine, waiting for its actions, and the journal.
func (f *fixture) stop() {
	if f.engine != nil {
		f.engine.Close()
		f.engine = nil
	}
	if f.journal != nil {
		f.journal.Close()
		f.journal = nil
	}
}

// handle feeds alerts and waits until every action they started is done.
func (f *fixture) handle(alerts ...Alert) {
	f.engine.Handle(context.Background(), alerts)
	f.engine.inflight.Wait()
}

func (f *fixture) records(t *testing.T) []journal.Record {
	t.Helper()
	recs, err := f.journal.List(0)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func (f *fixture) count(action, result string) float64 {
	return testutil.ToFloat64(f.engine.metrics.actions.WithLabelValues(action, result))
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// The walking skeleton end to end: a crashed guest is started again through
// libvirt, and the journal says so.
func TestRestartCrashedGuest(t *testing.T) {
	f := newFixture(t)
	crash(t, f.hosts)

	f.handle(crashedAlert())

	if !running(t, f.hosts) {
		t.Fatal("domain is not running after the engine handled GuestCrashed")
	}
	recs := f.records(t)
	if len(recs) != 1 {
		t.Fatalf("journal holds %d records, want 1: %+v", len(recs), recs)
	}
	r := recs[0]
	want := journal.Record{
		ID: 1, Created: f.clock.Now(), Alert: "GuestCrashed", Fingerprint: fingerprint(crashedAlert().Labels),
		AlertStartsAt: alertStart, Rule: "restart-crashed-guests", Action: policy.ActionRestartVM,
		Host: testHost, UUID: testUUID, Domain: testDomain, State: journal.StateSucceeded,
		Reason: "first action for this alert instance", Started: f.clock.Now(), Finished: f.clock.Now(),
		Attempt: 1, HealSeconds: 30,
	}
	if !equalRecords(r, want) {
		t.Errorf("record:\n%+v\nwant:\n%+v", r, want)
	}
	if got := f.count(policy.ActionRestartVM, resultSucceeded); got != 1 {
		t.Errorf("succeeded counter = %v, want 1", got)
	}
	if got := testutil.ToFloat64(f.engine.metrics.inflight); got != 0 {
		t.Errorf("in-flight gauge = %v, want 0", got)
	}
	if n := testutil.CollectAndCount(f.engine.metrics.heal); n != len(policy.KnownActions()) {
		t.Errorf("time-to-heal histogram series = %d, want one per action", n)
	}
	var m dto.Metric
	if err := f.engine.metrics.heal.WithLabelValues(policy.ActionRestartVM).(prometheus.Histogram).Write(&m); err != nil {
		t.Fatal(err)
	}
	if h := m.GetHistogram(); h.GetSampleCount() != 1 || h.GetSampleSum() != 30 {
		t.Errorf("time to heal: %d samples summing %vs, want one of 30s (alert start to verified)", h.GetSampleCount(), h.GetSampleSum())
	}
}

func equalRecords(a, b journal.Record) bool {
	return a.ID == b.ID && a.Created.Equal(b.Created) && a.Alert == b.Alert && a.Fingerprint == b.Fingerprint &&
		a.AlertStartsAt.Equal(b.AlertStartsAt) && a.Rule == b.Rule && a.Action == b.Action &&
		a.Host == b.Host && a.UUID == b.UUID && a.Domain == b.Domain && a.State == b.State &&
		a.Reason == b.Reason && a.Error == b.Error && a.Started.Equal(b.Started) &&
		a.Finished.Equal(b.Finished) && a.Attempt == b.Attempt && a.HealSeconds == b.HealSeconds
}

// Alerts are re-sent on every evaluation: while the action runs, after it
// succeeded, and long after.
func TestSameAlertActsOnce(t *testing.T) {
	f := newFixture(t)
	crash(t, f.hosts)
	gate := make(chan struct{})
	f.hosts.gate = gate

	for range 5 {
		f.engine.Handle(context.Background(), []Alert{crashedAlert()})
	}
	if got := testutil.ToFloat64(f.engine.metrics.inflight); got != 1 {
		t.Errorf("in-flight gauge while starting = %v, want 1", got)
	}
	close(gate)
	f.engine.inflight.Wait()
	for range 5 {
		f.clock.Advance(time.Hour)
		f.handle(crashedAlert())
	}

	if n := f.hosts.startCalls(); n != 1 {
		t.Errorf("StartGuest called %d times, want 1", n)
	}
	if recs := f.records(t); len(recs) != 1 || recs[0].State != journal.StateSucceeded {
		t.Errorf("journal = %+v, want one succeeded record", recs)
	}
}

// A new instance of the same alert — it resolved and fired again — is a new
// incident and is acted on.
func TestNewAlertInstanceActsAgain(t *testing.T) {
	f := newFixture(t)
	crash(t, f.hosts)
	f.handle(crashedAlert())
	crash(t, f.hosts)
	again := crashedAlert()
	again.StartsAt = alertStart.Add(10 * time.Minute)
	f.handle(again)

	if !running(t, f.hosts) {
		t.Error("domain not running after the second incident")
	}
	if n := f.hosts.startCalls(); n != 2 {
		t.Errorf("StartGuest called %d times, want 2", n)
	}
}

// The dedupe lives in the journal, so a server restart does not act again
// on the alert instance it already healed.
func TestRestartDoesNotRepeat(t *testing.T) {
	f := newFixture(t)
	crash(t, f.hosts)
	f.handle(crashedAlert())
	f.stop()

	// The guest is down again, but the alert instance is the one already
	// handled (the alert would be new if it had resolved in between).
	crash(t, f.hosts)
	f.start(t)
	f.handle(crashedAlert())

	if n := f.hosts.startCalls(); n != 1 {
		t.Errorf("StartGuest called %d times across the restart, want 1", n)
	}
	if recs := f.records(t); len(recs) != 1 {
		t.Errorf("journal holds %d records, want 1: %+v", len(recs), recs)
	}
}

// An action a crash (or a lost leader) left running is reconciled with the
// target's real state, never repeated blindly: a guest that runs was
// healed; one that does not is started at once, a start being harmless
// to repeat (the record's one attempt); an action that is not harmless to
// repeat is only verified; one that cannot be checked is reported.
func TestReconcileAfterRestart(t *testing.T) {
	tests := []struct {
		name       string
		action     string
		guestUp    bool
		wantStarts int
		wantState  journal.State
		wantErr    string
	}{
		{"guest runs", policy.ActionRestartVM, true, 0, journal.StateSucceeded, ""},
		{"guest down", policy.ActionRestartVM, false, 1, journal.StateSucceeded, ""},
		{"recreate, guest down", policy.ActionRecreateVM, false, 0, journal.StateFailed,
			"verify guest test (" + testUUID + ") on hv-a1: not healthy after the action"},
		{"cannot be checked", policy.ActionReprovisionHost, true, 0, journal.StateInterrupted, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, withPolicy(t, guardsPolicy)) // verify_timeout: 10ms
			crash(t, f.hosts)
			if tt.guestUp {
				if err := f.hosts.StartGuest(context.Background(), testHost, testUUID); err != nil {
					t.Fatal(err)
				}
			}
			f.stop()

			// What a server that died mid-action leaves behind.
			j, err := journal.Open(f.path)
			if err != nil {
				t.Fatal(err)
			}
			a := normalize(crashedAlert())
			_, err = j.Append(journal.Record{
				Created: alertStart, Alert: a.Name, Fingerprint: a.Fingerprint, AlertStartsAt: a.StartsAt,
				Labels: a.Labels, Rule: "restart-crashed-guests", Action: tt.action, Host: testHost, UUID: testUUID,
				Target: testHost + "/" + testUUID, State: journal.StateRunning, Started: alertStart, Attempt: 1,
			})
			if err != nil {
				t.Fatal(err)
			}
			j.Close()
			before := f.hosts.startCalls()

			f.start(t, withPolicy(t, guardsPolicy))
			f.engine.inflight.Wait() // the verification of what was running
			f.handle(crashedAlert())

			if n := f.hosts.startCalls() - before; n != tt.wantStarts {
				t.Errorf("StartGuest called %d times after the restart, want %d", n, tt.wantStarts)
			}
			recs := f.records(t)
			if len(recs) != 1 || recs[0].State != tt.wantState || recs[0].Error != tt.wantErr {
				t.Errorf("journal = %+v, want the one record %s with error %q", recs, tt.wantState, tt.wantErr)
			}
		})
	}
}

func TestMissingTargetLabels(t *testing.T) {
	tests := []struct {
		name    string
		drop    []string
		reason  string
		wantDom string
	}{
		{
			name:    "no uuid",
			drop:    []string{"uuid"},
			reason:  `the alert has no "uuid" label, which restart-vm needs to find the guest`,
			wantDom: testDomain,
		},
		{
			name:    "no host",
			drop:    []string{"host"},
			reason:  `the alert has no "host" label, which restart-vm needs to find the guest`,
			wantDom: testDomain,
		},
		{
			name:   "no host, uuid or domain",
			drop:   []string{"host", "uuid", "domain"},
			reason: `the alert has no "host" or "uuid" labels, which restart-vm needs to find the guest`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			a := crashedAlert()
			for _, l := range tt.drop {
				delete(a.Labels, l)
			}
			f.handle(a, a) // and re-sent: still one record
			f.handle(a)

			recs := f.records(t)
			if len(recs) != 1 {
				t.Fatalf("journal holds %d records, want 1: %+v", len(recs), recs)
			}
			r := recs[0]
			if r.State != journal.StateSkipped || r.Reason != tt.reason || r.Domain != tt.wantDom || r.Action != policy.ActionRestartVM {
				t.Errorf("record = %+v\nwant skipped with reason %q", r, tt.reason)
			}
			if n := f.hosts.startCalls(); n != 0 {
				t.Errorf("StartGuest called %d times, want 0", n)
			}
			if got := f.count(policy.ActionRestartVM, resultSkipped); got != 1 {
				t.Errorf("skipped counter = %v, want 1", got)
			}
		})
	}
}

// Alerts the engine does not act on leave no trace in the journal: it would
// otherwise gain a record per alert per second.
func TestAlertsNotActedOn(t *testing.T) {
	tests := []struct {
		name  string
		alert func() Alert
	}{
		{"no matching rule", func() Alert {
			a := crashedAlert()
			a.Name, a.Labels["alertname"] = "HostDown", "HostDown"
			return a
		}},
		{"resolved", func() Alert {
			a := crashedAlert()
			a.Status, a.EndsAt = StatusResolved, alertStart.Add(time.Minute)
			return a
		}},
		{"unknown status", func() Alert {
			a := crashedAlert()
			a.Status = "pending"
			return a
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.handle(tt.alert(), tt.alert())
			if recs := f.records(t); len(recs) != 0 {
				t.Errorf("journal = %+v, want empty", recs)
			}
			if n := f.hosts.startCalls(); n != 0 {
				t.Errorf("StartGuest called %d times, want 0", n)
			}
		})
	}
}

// A failing start is recorded, counted, and retried for the same alert
// instance only after a backoff, at most policy.DefaultGuards().MaxAttempts times.
func TestFailedStartRetriesWithBackoff(t *testing.T) {
	f := newFixture(t)
	a := crashedAlert()
	const unknown = "00000000-0000-0000-0000-000000000001"
	a.Labels["uuid"] = unknown

	f.handle(a)
	recs := f.records(t)
	if len(recs) != 1 {
		t.Fatalf("journal holds %d records, want 1", len(recs))
	}
	r := recs[0]
	if r.State != journal.StateFailed || r.UUID != unknown || r.Attempt != 1 ||
		!strings.Contains(r.Error, "Domain not found") || !strings.HasPrefix(r.Error, "start guest test ("+unknown+") on hv-a1: ") {
		t.Errorf("record = %+v, want failed attempt 1 with libvirt's error", r)
	}
	if r.HealSeconds != 0 {
		t.Errorf("HealSeconds = %v on a failure", r.HealSeconds)
	}
	if got := f.count(policy.ActionRestartVM, resultFailed); got != 1 {
		t.Errorf("failed counter = %v, want 1", got)
	}

	steps := []struct {
		advance  time.Duration
		attempts int // StartGuest calls so far
	}{
		{advance: 0, attempts: 1},
		{advance: 9 * time.Second, attempts: 1},  // backoff 10s not over
		{advance: time.Second, attempts: 2},      // 10s after the first failure
		{advance: 19 * time.Second, attempts: 2}, // backoff now 20s
		{advance: time.Second, attempts: 3},
		{advance: time.Hour, attempts: 3}, // gave up
		{advance: 24 * time.Hour, attempts: 3},
	}
	for i, s := range steps {
		f.clock.Advance(s.advance)
		f.handle(a)
		if n := f.hosts.startCalls(); n != s.attempts {
			t.Fatalf("step %d: StartGuest called %d times, want %d", i, n, s.attempts)
		}
	}
	recs = f.records(t)
	for i, r := range recs {
		if want := len(recs) - i; r.Attempt != want || r.State != journal.StateFailed {
			t.Errorf("record %d: attempt %d state %s, want failed attempt %d", r.ID, r.Attempt, r.State, want)
		}
	}
	if got := f.count(policy.ActionRestartVM, resultFailed); got != float64(policy.DefaultGuards().MaxAttempts) {
		t.Errorf("failed counter = %v, want %d", got, policy.DefaultGuards().MaxAttempts)
	}

	// The attempts survive a restart: no fresh set of three.
	f.stop()
	f.start(t)
	f.clock.Advance(24 * time.Hour)
	f.handle(a)
	if n := f.hosts.startCalls(); n != policy.DefaultGuards().MaxAttempts {
		t.Errorf("StartGuest called %d times after a restart, want %d", n, policy.DefaultGuards().MaxAttempts)
	}
}

// The agent's word is not enough: a guest that is not running after the
// start is a failure.
func TestVerificationFails(t *testing.T) {
	f := newFixture(t, withPolicy(t, `
rules:
  - name: restart-crashed-guests
    match: {alertname: GuestCrashed}
    action: restart-vm
    verify_timeout: 10ms
`))
	crash(t, f.hosts)
	f.hosts.noop = true
	f.handle(crashedAlert())

	recs := f.records(t)
	if len(recs) != 1 || recs[0].State != journal.StateFailed ||
		recs[0].Error != "verify guest test ("+testUUID+") on hv-a1: not healthy after the action" {
		t.Errorf("journal = %+v, want one failed record", recs)
	}
}

func TestDryRun(t *testing.T) {
	f := newFixture(t, dryRun)
	crash(t, f.hosts)
	f.handle(crashedAlert(), crashedAlert())

	if running(t, f.hosts) {
		t.Error("dry run started the domain")
	}
	if n := f.hosts.startCalls(); n != 0 {
		t.Errorf("StartGuest called %d times, want 0", n)
	}
	recs := f.records(t)
	if len(recs) != 1 {
		t.Fatalf("journal holds %d records, want 1: %+v", len(recs), recs)
	}
	if r := recs[0]; r.State != journal.StateSkipped || !strings.HasPrefix(r.Reason, ReasonDryRun+": would run restart-vm on guest test") ||
		r.Host != testHost || r.UUID != testUUID || r.Rule != "restart-crashed-guests" {
		t.Errorf("record = %+v, want a skipped dry-run record naming the target", r)
	}
	if got := f.count(policy.ActionRestartVM, resultSkipped); got != 1 {
		t.Errorf("skipped counter = %v, want 1", got)
	}
}

// Two alerts about one guest (it crashed, and so it is shut off) lead to one
// action at a time.
func TestOneActionPerTarget(t *testing.T) {
	f := newFixture(t)
	crash(t, f.hosts)
	gate := make(chan struct{})
	f.hosts.gate = gate

	shutOff := crashedAlert()
	shutOff.Name, shutOff.Labels["alertname"] = "GuestShutOffUnexpectedly", "GuestShutOffUnexpectedly"
	f.engine.Handle(context.Background(), []Alert{crashedAlert(), shutOff})
	recs := f.records(t)
	if len(recs) != 1 || recs[0].Alert != "GuestCrashed" || recs[0].State != journal.StateRunning {
		t.Errorf("journal while the first action runs = %+v, want one running GuestCrashed record", recs)
	}
	close(gate)
	f.engine.inflight.Wait()
	if n := f.hosts.startCalls(); n != 1 {
		t.Errorf("StartGuest called %d times, want 1", n)
	}
}

func TestSetPolicy(t *testing.T) {
	f := newFixture(t)
	f.engine.SetPolicy(nil)
	f.handle(crashedAlert())
	if recs := f.records(t); len(recs) != 0 {
		t.Fatalf("nil policy acted: %+v", recs)
	}
	p, err := policy.Parse("p.yml", []byte("rules:\n- name: lab\n  match_re: {domain: 'te.*'}\n  action: restart-vm\n"))
	if err != nil {
		t.Fatal(err)
	}
	crash(t, f.hosts)
	f.engine.SetPolicy(p)
	f.handle(crashedAlert())
	if recs := f.records(t); len(recs) != 1 || recs[0].Rule != "lab" || recs[0].State != journal.StateSucceeded {
		t.Errorf("journal = %+v, want one succeeded record of rule lab", recs)
	}
}

func TestHandleAfterClose(t *testing.T) {
	f := newFixture(t)
	f.engine.Close()
	f.handle(crashedAlert())
	if recs := f.records(t); len(recs) != 0 {
		t.Errorf("closed engine acted: %+v", recs)
	}
}

func TestNewRequiresItsParts(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no policy", Options{Journal: f.journal, Hosts: f.hosts}, "no policy"},
		{"no journal", Options{Policy: policy.Default(), Hosts: f.hosts}, "no journal"},
		{"no hosts", Options{Policy: policy.Default(), Journal: f.journal}, "no hosts"},
		{"metrics already registered", Options{Policy: policy.Default(), Journal: f.journal, Hosts: f.hosts, Registerer: f.reg}, "register remediation metrics"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestMetricsRegistered(t *testing.T) {
	f := newFixture(t)
	// Every series exists from the start: each action with each result.
	for _, name := range []string{"caretaker_remediation_actions_total", "caretaker_remediation_action_duration_seconds",
		"caretaker_remediation_time_to_heal_seconds", "caretaker_remediation_escalations_total"} {
		n, err := testutil.GatherAndCount(f.reg, name)
		want := len(policy.KnownActions())
		switch name {
		case "caretaker_remediation_actions_total":
			want *= 3
		case "caretaker_remediation_escalations_total":
			want++ // "human"
		}
		if err != nil || n != want {
			t.Errorf("%s: %d series, %v; want %d", name, n, err, want)
		}
	}
	const want = `
# HELP caretaker_remediation_inflight_actions Remediation actions started and not yet finished.
# TYPE caretaker_remediation_inflight_actions gauge
caretaker_remediation_inflight_actions 0
# HELP caretaker_remediation_awaiting_approval Remediation actions waiting for a human's approval.
# TYPE caretaker_remediation_awaiting_approval gauge
caretaker_remediation_awaiting_approval 0
# HELP caretaker_remediation_given_up Alerts still firing whose every remediation action failed: a human must act.
# TYPE caretaker_remediation_given_up gauge
caretaker_remediation_given_up 0
`
	err := testutil.GatherAndCompare(f.reg, strings.NewReader(want), "caretaker_remediation_inflight_actions",
		"caretaker_remediation_awaiting_approval", "caretaker_remediation_given_up")
	if err != nil {
		t.Error(err)
	}
}

func TestEveryKnownActionIsImplemented(t *testing.T) {
	impl := actions()
	for _, a := range policy.KnownActions() {
		if _, ok := impl[a]; !ok {
			t.Errorf("policy knows action %q, the engine does not implement it", a)
		}
	}
}

func TestDecide(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	failedAt := func(attempts int, ago time.Duration) instance {
		return instance{state: journal.StateFailed, attempts: attempts, finished: now.Add(-ago)}
	}
	tests := []struct {
		name string
		in   instance
		want verdict
	}{
		{"never seen", instance{}, verdictAct},
		{"held by a guard", instance{state: journal.StatePending}, verdictAct},
		{"awaiting approval", instance{state: journal.StateAwaitingApproval}, verdictAct},
		{"running", instance{state: journal.StateRunning, attempts: 1}, verdictWait},
		{"verifying", instance{state: journal.StateVerifying, attempts: 1}, verdictWait},
		{"succeeded", instance{state: journal.StateSucceeded, attempts: 1, done: true}, verdictDone},
		{"failed once, just now", failedAt(1, 0), verdictWait},
		{"failed once, 9.999s ago", failedAt(1, 10*time.Second-time.Millisecond), verdictWait},
		{"failed once, 10s ago", failedAt(1, 10*time.Second), verdictAct},
		{"failed twice, 19s ago", failedAt(2, 19*time.Second), verdictWait},
		{"failed twice, 20s ago", failedAt(2, 20*time.Second), verdictAct},
		{"failed three times", failedAt(3, 24*time.Hour), verdictEscalate},
		{"state from a newer engine", instance{state: "paused"}, verdictDone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := decide(policy.DefaultGuards(), tt.in, now)
			if got != tt.want {
				t.Errorf("decide = %s (%s), want %s", got, why, tt.want)
			}
			if why == "" {
				t.Error("decide gave no reason")
			}
		})
	}
}

func TestNormalize(t *testing.T) {
	tests := []struct {
		name     string
		in       Alert
		wantName string
		wantFP   string
	}{
		{
			name:     "name from labels, fingerprint computed",
			in:       Alert{Labels: map[string]string{"alertname": "GuestCrashed", "uuid": "u"}},
			wantName: "GuestCrashed",
			wantFP:   fingerprint(map[string]string{"uuid": "u", "alertname": "GuestCrashed"}),
		},
		{
			name:     "alertname label added from the name",
			in:       Alert{Name: "GuestCrashed", Labels: map[string]string{"uuid": "u"}},
			wantName: "GuestCrashed",
			wantFP:   fingerprint(map[string]string{"uuid": "u", "alertname": "GuestCrashed"}),
		},
		{
			name:     "a sender's fingerprint is kept",
			in:       Alert{Name: "GuestCrashed", Labels: map[string]string{"alertname": "GuestCrashed"}, Fingerprint: "abc"},
			wantName: "GuestCrashed",
			wantFP:   "abc",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := normalize(tt.in)
			if got.Name != tt.wantName || got.Labels["alertname"] != tt.wantName || got.Fingerprint != tt.wantFP {
				t.Errorf("normalize = %+v, want name %q fingerprint %q", got, tt.wantName, tt.wantFP)
			}
		})
	}
	// Alertmanager's fingerprint of {alertname="GuestCrashed"}; the value
	// pins the algorithm so journal records match what Alertmanager shows.
	if got, want := fingerprint(map[string]string{"alertname": "GuestCrashed"}), "d60f1bc59ac03d1e"; got != want {
		t.Errorf("fingerprint = %s, want %s", got, want)
	}
}
