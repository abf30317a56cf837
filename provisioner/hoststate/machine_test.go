package hoststate

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"caretaker/internal/kv"
	"caretaker/internal/who"
	"caretaker/provisioner/bmc"
	"caretaker/provisioner/pxe"
)

// fakeClock is the injected clock: tests move it, nothing sleeps.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fleet is a fake BMC per host and a guest mover, recording every call in
// one log so the order across them shows. The real BMC drivers are tested in
// provisioner/bmc against ipmi_sim (IPMI) and a Redfish server; here only the
// machine's use of them is under test.
type fleet struct {
	mu    sync.Mutex
	calls []string
	power map[string]bmc.PowerState
	fail  map[string]error // by "op host"
	noBMC map[string]bool
}

func newFleet() *fleet {
	return &fleet{power: map[string]bmc.PowerState{}, fail: map[string]error{}, noBMC: map[string]bool{}}
}

func (f *fleet) call(op, host string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, op+" "+host)
	return f.fail[op+" "+host]
}

func (f *fleet) setPower(host string, p bmc.PowerState) {
	f.mu.Lock()
	f.power[host] = p
	f.mu.Unlock()
}

func (f *fleet) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func (f *fleet) MoveGuests(_ context.Context, host string) error { return f.call("move-guests", host) }

func (f *fleet) bmcFor(host string) (BMC, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.noBMC[host] {
		return nil, errors.New("no bmc in the inventory")
	}
	return fakeBMC{f, host}, nil
}

type fakeBMC struct {
	f    *fleet
	host string
}

func (b fakeBMC) PowerStatus(context.Context) (bmc.PowerState, error) {
	b.f.mu.Lock()
	defer b.f.mu.Unlock()
	return b.f.power[b.host], nil
}
func (b fakeBMC) SetPXEBootOnce(context.Context) error { return b.f.call("set-pxe-boot-once", b.host) }
func (b fakeBMC) PowerCycle(context.Context) error     { return b.f.call("power-cycle", b.host) }

type rig struct {
	t     *testing.T
	path  string
	store kv.Store // nil: the file at path
	clock *fakeClock
	fleet *fleet
	reg   *prometheus.Registry
	m     *Machine
	cfg   Config
}

// rigMaker makes a rig: newRig on a bbolt file, or one on etcd
// (TestMachineOnEtcd).
type rigMaker func(t *testing.T, cfg Config) *rig

func newRig(t *testing.T, cfg Config) *rig { return newRigOn(t, cfg, nil) }

// newRigOn makes a rig whose Machine keeps the hosts in store, or in a
// file when store is nil.
func newRigOn(t *testing.T, cfg Config, store kv.Store) *rig {
	t.Helper()
	r := &rig{t: t, path: filepath.Join(t.TempDir(), "hosts.db"), store: store, clock: &fakeClock{t: t0}, fleet: newFleet(), cfg: cfg}
	if store != nil {
		r.path = ""
	}
	r.open()
	t.Cleanup(func() { r.m.Close() })
	return r
}

func (r *rig) open() {
	r.t.Helper()
	r.reg = prometheus.NewPedanticRegistry()
	m, err := Open(Options{Store: r.store, Path: r.path, Config: r.cfg, BMC: r.fleet.bmcFor, Guests: r.fleet,
		Registerer: r.reg, Now: r.clock.Now})
	if err != nil {
		r.t.Fatal(err)
	}
	r.m = m
}

func (r *rig) reopen() {
	r.t.Helper()
	if err := r.m.Close(); err != nil {
		r.t.Fatal(err)
	}
	r.open()
}

func (r *rig) must(err error) {
	r.t.Helper()
	if err != nil {
		r.t.Fatal(err)
	}
}

// bootOverPXE is what the PXE handler does for a host that boots: it is
// served its attempt's iPXE script, then takes its callback.
func (r *rig) bootOverPXE(mac string) {
	r.t.Helper()
	a, ok := r.m.Attempt(mac)
	if !ok {
		r.t.Fatalf("no attempt in flight for %s", mac)
	}
	r.must(r.m.ScriptServed(a))
	a.ScriptServed = true
	if got, _ := r.m.Attempt(mac); got != a {
		r.t.Fatalf("attempt after the script: %+v, want %+v", got, a)
	}
	r.must(r.m.Completed(a))
}

func (r *rig) tick() {
	r.t.Helper()
	r.must(r.m.Tick(context.Background()))
}

func (r *rig) host(name string) Host {
	r.t.Helper()
	h, ok := r.m.Host(name)
	if !ok {
		r.t.Fatalf("host %s unknown", name)
	}
	return h
}

func (r *rig) wantState(name string, s State, attempt int) {
	r.t.Helper()
	if h := r.host(name); h.State != s || h.Attempt != attempt {
		r.t.Fatalf("host %s is %s attempt %d, want %s attempt %d (last error %q)", name, h.State, h.Attempt, s, attempt, h.LastError)
	}
}

func (r *rig) wantCalls(want ...string) {
	r.t.Helper()
	if got := r.fleet.takeCalls(); !slices.Equal(got, want) {
		r.t.Fatalf("calls:\n got %q\nwant %q", got, want)
	}
}

// journal is a host's journal as "from→to" steps.
func (r *rig) journal(name string) []string {
	r.t.Helper()
	ts, err := r.m.History(name)
	r.must(err)
	var p []string
	for _, t := range ts {
		p = append(p, string(t.From)+"→"+string(t.To))
	}
	return p
}

func TestMachineProvisionToReady(t *testing.T) { testMachineProvisionToReady(t, newRig) }

func testMachineProvisionToReady(t *testing.T, newRig rigMaker) {
	r := newRig(t, Config{})
	r.must(r.m.Register("h1", "AA-BB-CC-DD-EE-01"))
	r.must(r.m.Register("h2", "aa:bb:cc:dd:ee:02"))
	r.must(r.m.Provision(context.Background(), "h1"))
	r.wantCalls("set-pxe-boot-once h1", "power-cycle h1")
	r.wantState("h1", PoweringOn, 1)

	r.tick() // the BMC still reports off
	r.wantState("h1", PoweringOn, 1)
	r.fleet.setPower("h1", bmc.PowerOn)
	r.clock.Advance(time.Minute)
	r.tick()
	r.wantState("h1", PXEBooting, 1)
	a, ok := r.m.Attempt("aa:bb:cc:dd:ee:01")
	if !ok || a.Host != "h1" || a.Number != 1 || len(a.Nonce) != 32 || a.ScriptServed {
		t.Fatalf("attempt in flight: %+v, %v", a, ok)
	}
	r.must(r.m.ScriptServed(a))
	r.wantState("h1", Installing, 1)
	if name, ok := r.m.HostForMAC("AA:BB:CC:DD:EE:01"); !ok || name != "h1" {
		t.Errorf("HostForMAC = %q, %v", name, ok)
	}
	r.must(r.m.Booted("h1")) // the agent answers
	r.wantState("h1", Ready, 1)
	if _, ok := r.m.Attempt("aa:bb:cc:dd:ee:01"); ok || r.host("h1").Nonce != "" {
		t.Errorf("the attempt outlives ready: %+v", r.host("h1"))
	}
	if !r.host("h1").Schedulable() {
		t.Error("ready host not schedulable")
	}
	r.wantCalls()

	want := []string{"→registered", "registered→powering-on", "powering-on→pxe-booting", "pxe-booting→installing", "installing→ready"}
	if got := r.journal("h1"); !slices.Equal(got, want) {
		t.Errorf("journal %q, want %q", got, want)
	}
	ts, _ := r.m.History("h1")
	if got := ts[1].Commands; !slices.Equal(got, []Command{SetPXEBootOnce, PowerCycle}) {
		t.Errorf("commands recorded with powering-on: %v", got)
	}
	if !ts[2].At.Equal(t0.Add(time.Minute)) {
		t.Errorf("pxe-booting at %s, want the clock's %s", ts[2].At, t0.Add(time.Minute))
	}

	err := testutil.GatherAndCompare(r.reg, strings.NewReader(`
# HELP caretaker_provisioner_hosts Hosts in each provisioning state.
# TYPE caretaker_provisioner_hosts gauge
caretaker_provisioner_hosts{state="failed"} 0
caretaker_provisioner_hosts{state="installing"} 0
caretaker_provisioner_hosts{state="powering-on"} 0
caretaker_provisioner_hosts{state="pxe-booting"} 0
caretaker_provisioner_hosts{state="ready"} 1
caretaker_provisioner_hosts{state="registered"} 1
# HELP caretaker_provisioner_pxe_refusals_total PXE requests about a known host that were refused: no attempt in flight, a script served already, a bad, stale or replayed token.
# TYPE caretaker_provisioner_pxe_refusals_total counter
caretaker_provisioner_pxe_refusals_total 0
# HELP caretaker_provisioner_transitions_total Host state transitions, by the state entered; a retry counts as one into powering-on.
# TYPE caretaker_provisioner_transitions_total counter
caretaker_provisioner_transitions_total{to="failed"} 0
caretaker_provisioner_transitions_total{to="installing"} 1
caretaker_provisioner_transitions_total{to="powering-on"} 1
caretaker_provisioner_transitions_total{to="pxe-booting"} 1
caretaker_provisioner_transitions_total{to="ready"} 1
caretaker_provisioner_transitions_total{to="registered"} 2
`))
	if err != nil {
		t.Error(err)
	}
}

func TestMachineReprovision(t *testing.T) { testMachineReprovision(t, newRig) }

func testMachineReprovision(t *testing.T, newRig rigMaker) {
	r := newRig(t, Config{})
	r.must(r.m.Register("h1", "aa:bb:cc:dd:ee:01"))
	r.must(r.m.Booted("h1")) // a running host, adopted
	r.wantState("h1", Ready, 0)

	r.must(r.m.Reprovision(context.Background(), "h1"))
	// Guests leave before the power cycle would kill them.
	r.wantCalls("move-guests h1", "set-pxe-boot-once h1", "power-cycle h1")
	h := r.host("h1")
	if !h.Cordoned || h.Schedulable() || h.State != PoweringOn {
		t.Fatalf("after reprovision: %+v", h)
	}
	if err := r.m.Reprovision(context.Background(), "h1"); !errors.Is(err, ErrWrongState) {
		t.Errorf("second reprovision while powering on: %v, want ErrWrongState", err)
	}
	r.wantCalls()

	r.bootOverPXE("aa:bb:cc:dd:ee:01") // the power report was missed
	if h := r.host("h1"); h.State != Ready || h.Cordoned {
		t.Fatalf("after boot: %+v", h)
	}
}

func TestMachineTimeoutsAndRetries(t *testing.T) { testMachineTimeoutsAndRetries(t, newRig) }

func testMachineTimeoutsAndRetries(t *testing.T, newRig rigMaker) {
	r := newRig(t, Config{MaxAttempts: 2, Backoff: time.Minute})
	r.must(r.m.Register("h1", "aa:bb:cc:dd:ee:01"))
	r.must(r.m.Reprovision(context.Background(), "h1"))
	r.wantCalls("move-guests h1", "set-pxe-boot-once h1", "power-cycle h1")

	r.clock.Advance(DefaultPoweringOnTimeout - time.Second)
	r.tick()
	r.wantState("h1", PoweringOn, 1)
	r.clock.Advance(time.Second)
	r.tick()
	r.wantState("h1", PoweringOn, 2)
	if h := r.host("h1"); h.LastError != "powering-on timed out after 5m0s" {
		t.Errorf("last error %q", h.LastError)
	}
	r.wantCalls() // waiting out the backoff

	r.clock.Advance(time.Minute - time.Second)
	r.tick()
	r.wantCalls()
	r.clock.Advance(time.Second)
	r.tick()
	r.wantCalls("move-guests h1", "set-pxe-boot-once h1", "power-cycle h1")

	r.fleet.setPower("h1", bmc.PowerOn)
	r.tick()
	r.wantState("h1", PXEBooting, 2)
	r.clock.Advance(DefaultPXEBootingTimeout)
	r.tick()
	r.wantState("h1", Failed, 2)
	h := r.host("h1")
	if h.LastError != "pxe-booting timed out after 10m0s" || !h.Cordoned {
		t.Errorf("failed host: %+v", h)
	}
	r.clock.Advance(24 * time.Hour)
	r.tick()
	r.wantCalls()
	r.wantState("h1", Failed, 2)

	ts, err := r.m.History("h1")
	r.must(err)
	if last := ts[len(ts)-1]; last.Reason != "gave up after attempt 2 of 2: pxe-booting timed out after 10m0s" {
		t.Errorf("last journal reason %q", last.Reason)
	}
}

func TestMachineCommandFailures(t *testing.T) { testMachineCommandFailures(t, newRig) }

func testMachineCommandFailures(t *testing.T, newRig rigMaker) {
	ctx := context.Background()
	t.Run("unreachable BMC is a failed attempt", func(t *testing.T) {
		r := newRig(t, Config{MaxAttempts: 2})
		r.must(r.m.Register("h1", "aa:bb:cc:dd:ee:01"))
		r.fleet.fail["power-cycle h1"] = bmc.ErrNoAnswer
		r.must(r.m.Provision(ctx, "h1")) // the machine retries; nothing for the caller
		r.wantCalls("set-pxe-boot-once h1", "power-cycle h1")
		r.wantState("h1", PoweringOn, 2)
		if h := r.host("h1"); h.LastError != "powering-on: power-cycle h1: BMC did not answer" {
			t.Errorf("last error %q", h.LastError)
		}
		r.clock.Advance(DefaultBackoff)
		r.tick()
		r.wantCalls("set-pxe-boot-once h1", "power-cycle h1")
		r.wantState("h1", Failed, 2)
	})
	t.Run("guests not moved: no power cycle", func(t *testing.T) {
		r := newRig(t, Config{MaxAttempts: 1})
		r.must(r.m.Register("h1", "aa:bb:cc:dd:ee:01"))
		r.fleet.fail["move-guests h1"] = errors.New("no host has room")
		err := r.m.Reprovision(ctx, "h1")
		if err == nil || !strings.Contains(err.Error(), "move-guests h1: no host has room") {
			t.Errorf("reprovision: %v", err)
		}
		r.wantCalls("move-guests h1")
		r.wantState("h1", Failed, 1)
	})
	t.Run("no BMC fails at once and moves nothing", func(t *testing.T) {
		r := newRig(t, Config{MaxAttempts: 3})
		r.must(r.m.Register("h1", "aa:bb:cc:dd:ee:01"))
		r.fleet.noBMC["h1"] = true
		err := r.m.Reprovision(ctx, "h1")
		if err == nil || !strings.Contains(err.Error(), "BMC of host h1: no bmc in the inventory") {
			t.Errorf("reprovision: %v", err)
		}
		r.wantCalls()
		r.wantState("h1", Failed, 1)
	})
}

func TestMachineRefusals(t *testing.T) { testMachineRefusals(t, newRig) }

func testMachineRefusals(t *testing.T, newRig rigMaker) {
	ctx := context.Background()
	r := newRig(t, Config{})
	r.must(r.m.Register("h1", "aa:bb:cc:dd:ee:01"))
	r.must(r.m.Register("h1", "aa:bb:cc:dd:ee:01")) // again, as at every start
	for name, err := range map[string]error{
		"provision unknown":   r.m.Provision(ctx, "nope"),
		"reprovision unknown": r.m.Reprovision(ctx, "nope"),
		"booted unknown":      r.m.Booted("nope"),
		"pxe unknown host":    r.m.ScriptServed(pxe.Attempt{Host: "nope", MAC: "aa:bb:cc:dd:ee:99", Nonce: "n"}),
	} {
		if !errors.Is(err, ErrUnknownHost) {
			t.Errorf("%s: %v, want ErrUnknownHost", name, err)
		}
	}
	if _, err := r.m.History("nope"); !errors.Is(err, ErrUnknownHost) {
		t.Errorf("history of unknown host: %v", err)
	}
	for _, tt := range []struct{ name, mac, want string }{
		{"h2", "aa:bb:cc:dd:ee:01", "register host h2: mac aa:bb:cc:dd:ee:01 is host h1's"},
		{"h2", "not-a-mac", `register host h2: mac "not-a-mac"`},
		{" ", "aa:bb:cc:dd:ee:02", "register host: empty name"},
	} {
		if err := r.m.Register(tt.name, tt.mac); err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("Register(%q, %q) = %v, want %q…", tt.name, tt.mac, err, tt.want)
		}
	}
	r.must(r.m.Booted("h1"))
	err := r.m.Provision(ctx, "h1")
	if !errors.Is(err, ErrWrongState) || !strings.Contains(err.Error(), "reprovision reinstalls it") {
		t.Errorf("provision of ready host: %v", err)
	}
	// A ready host has no attempt in flight; PXE events for it are refused.
	if a, ok := r.m.Attempt("aa:bb:cc:dd:ee:01"); ok {
		t.Errorf("ready host has an attempt in flight: %+v", a)
	}
	stale := pxe.Attempt{Host: "h1", MAC: "aa:bb:cc:dd:ee:01", Number: 1, Nonce: "n"}
	for name, err := range map[string]error{"script": r.m.ScriptServed(stale), "callback": r.m.Completed(stale)} {
		if !errors.Is(err, ErrWrongState) {
			t.Errorf("%s of a ready host: %v, want ErrWrongState", name, err)
		}
	}
	// The agent answering again is logged, not an error.
	r.must(r.m.Booted("h1"))
	r.wantState("h1", Ready, 0)

	// A replaced NIC: the new MAC finds the host, the old one nothing.
	r.must(r.m.Register("h1", "aa:bb:cc:dd:ee:0f"))
	if name, ok := r.m.HostForMAC("aa:bb:cc:dd:ee:0f"); !ok || name != "h1" {
		t.Errorf("new MAC: %q %v", name, ok)
	}
	if _, ok := r.m.HostForMAC("aa:bb:cc:dd:ee:01"); ok {
		t.Error("old MAC still maps")
	}
	r.wantCalls()
}

// TestMachineReopen: a host's phase and its timeout survive a restart, and a
// command recorded but lost in a crash is retried by that timeout.
func TestMachineReopen(t *testing.T) { testMachineReopen(t, newRig) }

func testMachineReopen(t *testing.T, newRig rigMaker) {
	r := newRig(t, Config{})
	r.must(r.m.Register("h1", "aa:bb:cc:dd:ee:01"))
	r.must(r.m.Register("h2", "aa:bb:cc:dd:ee:02"))
	r.must(r.m.Reprovision(context.Background(), "h1"))
	r.wantCalls("move-guests h1", "set-pxe-boot-once h1", "power-cycle h1")
	before := r.host("h1")
	if before.Nonce == "" {
		t.Fatal("attempt started without a nonce")
	}

	r.reopen()
	r.clock.Advance(DefaultPoweringOnTimeout)
	if got := r.host("h1"); got != before {
		t.Fatalf("after reopen:\n got %+v\nwant %+v", got, before)
	}
	if got, want := r.m.Hosts(), []string{"h1", "h2"}; len(got) != 2 || got[0].Name != want[0] || got[1].Name != want[1] {
		t.Errorf("hosts %+v", got)
	}
	if name, ok := r.m.HostForMAC("aa:bb:cc:dd:ee:02"); !ok || name != "h2" {
		t.Errorf("MAC index not reloaded: %q %v", name, ok)
	}
	err := testutil.GatherAndCompare(r.reg, strings.NewReader(`
# HELP caretaker_provisioner_hosts Hosts in each provisioning state.
# TYPE caretaker_provisioner_hosts gauge
caretaker_provisioner_hosts{state="failed"} 0
caretaker_provisioner_hosts{state="installing"} 0
caretaker_provisioner_hosts{state="powering-on"} 1
caretaker_provisioner_hosts{state="pxe-booting"} 0
caretaker_provisioner_hosts{state="ready"} 0
caretaker_provisioner_hosts{state="registered"} 1
`), "caretaker_provisioner_hosts")
	if err != nil {
		t.Errorf("hosts gauge after reopen: %v", err)
	}
	r.tick()
	r.wantState("h1", PoweringOn, 2)
	r.clock.Advance(DefaultBackoff)
	r.tick()
	r.wantCalls("move-guests h1", "set-pxe-boot-once h1", "power-cycle h1")

	want := []string{"→registered", "registered→powering-on", "powering-on→powering-on", "powering-on→powering-on"}
	if got := r.journal("h1"); !slices.Equal(got, want) {
		t.Errorf("journal after reopen %q, want %q", got, want)
	}
}

func TestOpenRejects(t *testing.T) {
	f := newFleet()
	dir := t.TempDir()
	for _, tt := range []struct {
		opts Options
		want string
	}{
		{Options{BMC: f.bmcFor, Guests: f}, "host state machine: no store and no file path"},
		{Options{Path: filepath.Join(dir, "a.db"), Guests: f}, "host state machine: both a BMC lookup and a guest mover are needed"},
		{Options{Path: filepath.Join(dir, "b.db"), BMC: f.bmcFor, Guests: f, Config: Config{MaxAttempts: -2}}, "host state config: max_attempts: -2 is negative"},
		{Options{Path: filepath.Join(dir, "missing", "c.db"), BMC: f.bmcFor, Guests: f}, "open host states " + filepath.Join(dir, "missing", "c.db")},
	} {
		m, err := Open(tt.opts)
		if err == nil {
			m.Close()
			t.Errorf("Open(%+v) succeeded, want %q", tt.opts, tt.want)
			continue
		}
		if !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("Open: %v, want %q…", err, tt.want)
		}
	}
}

func BenchmarkNext(b *testing.B) {
	h := Host{Name: "h1", State: Installing, Since: t0, Attempt: 1}
	now := t0.Add(time.Minute)
	for b.Loop() {
		Next(h, Event{Kind: EventTick}, now, Config{})
	}
}

// BenchmarkReprovisionCycle is one reprovision and one boot: two transitions
// written to disk, and the fake BMC's calls.
func BenchmarkReprovisionCycle(b *testing.B) {
	f := newFleet()
	m, err := Open(Options{Path: filepath.Join(b.TempDir(), "hosts.db"), BMC: f.bmcFor, Guests: f})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if err := m.Register("h1", "aa:bb:cc:dd:ee:01"); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for b.Loop() {
		if err := m.Reprovision(ctx, "h1"); err != nil {
			b.Fatal(err)
		}
		a, _ := m.Attempt("aa:bb:cc:dd:ee:01")
		if err := m.ScriptServed(a); err != nil {
			b.Fatal(err)
		}
		a.ScriptServed = true
		if err := m.Completed(a); err != nil {
			b.Fatal(err)
		}
		f.takeCalls()
	}
}

// A reprovision asked for through the API names, in the host's journal,
// who asked: the token's name and role, the client's author only as on
// behalf of, and the comment.
func TestMachineReprovisionBy(t *testing.T) { testMachineReprovisionBy(t, newRig) }

func testMachineReprovisionBy(t *testing.T, newRig rigMaker) {
	r := newRig(t, Config{})
	r.must(r.m.Register("h1", "aa:bb:cc:dd:ee:01"))
	r.must(r.m.Booted("h1"))
	by := &who.By{Name: "ada", Role: "admin", OnBehalfOf: "mallory", Comment: "disk replaced"}
	r.must(r.m.ReprovisionBy(context.Background(), "h1", by))
	hist, err := r.m.History("h1")
	if err != nil {
		t.Fatal(err)
	}
	var got []*who.By
	for _, tr := range hist {
		if tr.By != nil {
			got = append(got, tr.By)
		}
	}
	if len(got) != 1 || *got[0] != *by {
		t.Fatalf("journal's by: %+v, want one entry %+v", got, by)
	}
	r.reopen()
	hist, err = r.m.History("h1")
	if err != nil {
		t.Fatal(err)
	}
	last := hist[len(hist)-1]
	if last.By == nil || last.By.Name != "ada" || last.By.Role != "admin" || last.To != PoweringOn {
		t.Fatalf("stored reprovision entry: %+v", last)
	}
}
