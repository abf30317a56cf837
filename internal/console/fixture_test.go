package console

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"caretaker/internal/api"
	"caretaker/internal/kv"
	"caretaker/provisioner/bmc"
	"caretaker/provisioner/clusters"
	"caretaker/provisioner/fleet"
	"caretaker/provisioner/hoststate"
	"caretaker/provisioner/inventory"
	"caretaker/remediation"
	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
)

// The tokens of the tests, one per role; the secrets never appear in a
// page.
var testTokens = []api.Token{
	{Name: "ada", Role: api.RoleAdmin, Secret: "admin-secret-0123456789"},
	{Name: "otto", Role: api.RoleOperator, Secret: "operator-secret-0123456789"},
	{Name: "vera", Role: api.RoleViewer, Secret: "viewer-secret-0123456789"},
	{Name: "am", Role: api.RoleWebhook, Secret: "webhook-secret-0123456789"},
}

func secret(name string) string {
	for _, t := range testTokens {
		if t.Name == name {
			return t.Secret
		}
	}
	panic("no token " + name)
}

// clock is the console's time, which tests move.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// backend answers the API from a status the test sets and a real journal.
type backend struct {
	mu     sync.Mutex
	status api.Status
	j      *journal.Journal
}

func (b *backend) Status(context.Context) (api.Status, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.status, nil
}

// setStatus changes a copy of the status: pages read earlier keep theirs.
func (b *backend) setStatus(fn func(*api.Status)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.status
	s.Hosts, s.Guests, s.Alerts = slices.Clone(s.Hosts), slices.Clone(s.Guests), slices.Clone(s.Alerts)
	fn(&s)
	b.status = s
}

func (b *backend) History(_ context.Context, f api.HistoryFilter) ([]journal.Record, error) {
	all, err := b.j.List(0)
	var out []journal.Record
	for _, r := range all {
		if len(out) == f.Limit {
			break
		}
		if f.Match(r) {
			out = append(out, r)
		}
	}
	return out, err
}

func (b *backend) Record(_ context.Context, id uint64) (journal.Record, error) { return b.j.Get(id) }

// pauser keeps pauses as the engine does and counts the changes.
type pauser struct {
	mu      sync.Mutex
	ps      []guards.Pause
	changes int
}

func (p *pauser) Pause(x guards.Pause) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := x.Validate(); err != nil {
		return err
	}
	p.changes++
	p.ps = append(p.ps, x)
	return nil
}

func (p *pauser) Resume(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.changes++
	var keep []guards.Pause
	for _, x := range p.ps {
		if x.Target != target {
			keep = append(keep, x)
		}
	}
	p.ps = keep
}

func (p *pauser) Pauses() []guards.Pause {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]guards.Pause(nil), p.ps...)
}

// actor approves and denies on the journal with the engine's contract.
type actor struct {
	j       *journal.Journal
	mu      sync.Mutex
	answers int
}

func (a *actor) Run(context.Context, remediation.ManualRequest) (journal.Record, error) {
	return journal.Record{}, fmt.Errorf("not in these tests: %w", remediation.ErrInvalid)
}

func (a *actor) Answer(id uint64, yes bool, by guards.Who, comment string) (journal.Record, error) {
	a.mu.Lock()
	a.answers++
	a.mu.Unlock()
	rec, err := a.j.Get(id)
	if err != nil {
		return rec, err
	}
	if rec.State != journal.StateAwaitingApproval {
		return rec, fmt.Errorf("action %d is %s: %w", id, rec.State, remediation.ErrConflict)
	}
	st, to := journal.StateCancelled, guards.Denied
	if yes {
		st, to = journal.StateRunning, guards.Approved
	}
	return a.j.Update(id, func(r *journal.Record) {
		r.State = st
		r.Transitions = append(r.Transitions, journal.Transition{State: st, At: time.Now(), Note: string(to) + " by " + by.Name})
		r.Approval.State, r.Approval.Author, r.Approval.AuthorRole, r.Approval.Comment = to, by.Name, by.Role, comment
		r.Approval.Decided = time.Now()
	})
}

// fakeBMC powers nothing; fakeMover moves nothing.
type fakeBMC struct{}

func (fakeBMC) PowerStatus(context.Context) (bmc.PowerState, error) { return bmc.PowerOff, nil }
func (fakeBMC) SetPXEBootOnce(context.Context) error                { return nil }
func (fakeBMC) PowerCycle(context.Context) error                    { return nil }

type fakeMover struct{}

func (fakeMover) MoveGuests(context.Context, string) error { return nil }

// fixture is a console on a real API handler: the real authenticator
// with a token per role, a real journal, pauses, the real clusters and
// inventory handlers on a bbolt store, and a real host state machine
// behind a handler that answers as the provisioner's does.
type fixture struct {
	t        *testing.T
	clock    *clock
	b        *backend
	p        *pauser
	a        *actor
	store    *clusters.Store
	machine  *hoststate.Machine
	c        *Console
	api      http.Handler // the API the console calls, counting calls
	srv      *httptest.Server
	ticks    chan time.Time
	apiCalls int
	mu       sync.Mutex
}

type fixtureOptions struct {
	noProvisioner bool
	secure        bool
	tls           bool
	now           time.Time
}

// start is the fixtures' first time: a whole second, so pages show it
// exactly.
var start = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)

func newFixture(t testing.TB, fo fixtureOptions) *fixture {
	tt, _ := t.(*testing.T)
	dir := t.TempDir()
	db, err := kv.OpenBolt(filepath.Join(dir, "state.db"), "test state")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	j, err := journal.New(db)
	if err != nil {
		t.Fatal(err)
	}
	now := fo.now
	if now.IsZero() {
		now = time.Now().UTC().Truncate(time.Second)
	}
	f := &fixture{t: tt, clock: &clock{t: now}, b: &backend{j: j}, p: &pauser{}, a: &actor{j: j}, ticks: make(chan time.Time)}
	f.b.status = sampleStatus(now)
	for _, rec := range sampleRecords(now) {
		if _, err := j.Append(rec); err != nil {
			t.Fatal(err)
		}
	}
	auth, err := api.NewAuthenticator(testTokens)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/api/v1/", api.NewHandler(api.Options{Backend: f.b, Pauser: f.p, Actor: f.a, Auth: auth, Now: f.clock.Now}))
	if !fo.noProvisioner {
		f.mountProvisioner(t, mux, auth, db)
	}
	apiHandler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.apiCalls++
		f.mu.Unlock()
		mux.ServeHTTP(w, r)
	})
	f.api = apiHandler
	f.c = New(Options{API: apiHandler, GrafanaURL: "https://grafana.example/", SessionTTL: time.Hour, Secure: fo.secure, Now: f.clock.Now})
	f.c.statusTTL = 0
	f.c.ticks = func() (<-chan time.Time, func()) { return f.ticks, func() {} }
	if fo.tls {
		f.srv = httptest.NewTLSServer(f.c)
	} else {
		f.srv = httptest.NewServer(f.c)
	}
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) mountProvisioner(t testing.TB, mux *http.ServeMux, auth *api.Authenticator, db kv.Store) {
	store, err := clusters.NewStore(db, clusters.StoreOptions{Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	f.store = store
	plan := func(_ context.Context, spec clusters.Spec) (clusters.Plan, error) {
		if err := store.CheckNew(spec); err != nil {
			return clusters.Plan{}, err
		}
		p := clusters.Plan{Fits: true, Nodes: []clusters.PlannedNode{}}
		hosts := []string{"hv-1", "hv-2"}
		i := 0
		for _, pool := range spec.Pools {
			if pool.VCPUs > 8 {
				p.Fits, p.Reason = false, fmt.Sprintf("no host has %d free vCPUs for a node of pool %s", pool.VCPUs, pool.Name)
			}
			for n := range pool.Count {
				p.Nodes = append(p.Nodes, clusters.PlannedNode{Name: clusters.NodeName(spec.Name, pool.Name, n), Pool: pool.Name, Host: hosts[i%2]})
				i++
			}
		}
		if !p.Fits {
			for i := range p.Nodes {
				p.Nodes[i].Host = ""
			}
		}
		return p, nil
	}
	ch := auth.Guard(clusters.Handler(store, nil, api.WhoBy, plan))
	mux.Handle("/api/v1/clusters", ch)
	mux.Handle("/api/v1/clusters/", ch)

	file, err := inventory.Parse("inventory.yml", []byte(`hosts:
  - name: hv-1
    serial: S1
    macs: ["52:54:00:00:00:01"]
    role: worker
    labels: {rack: r1}
    bmc: {type: ipmi, address: 10.0.0.1, username: admin, password_file: hv-1.pass}
  - name: hv-2
    macs: ["52:54:00:00:00:02"]
    role: worker
    cpus: 32
    memory_bytes: 137438953472
    bmc: {type: redfish, address: https://10.0.0.2, username: admin, password_file: hv-2.pass}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := file.Validate(); err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.NewStore(db, func() *inventory.Inventory { return file })
	if err != nil {
		t.Fatal(err)
	}
	bmcView := func(r *http.Request) inventory.BMCView {
		id, _ := api.IdentityFrom(r.Context())
		switch {
		case id.Role.Allows(api.RoleAdmin):
			return inventory.BMCAll
		case id.Role.Allows(api.RoleOperator):
			return inventory.BMCAddress
		}
		return inventory.BMCNone
	}
	ih := auth.Guard(inventory.Handler(inv, inventory.HandlerOptions{BMCView: bmcView, Who: api.WhoBy}))
	mux.Handle("/api/v1/hosts", ih)
	mux.Handle("/api/v1/hosts/", ih)

	m, err := hoststate.Open(hoststate.Options{Store: db, BMC: func(string) (hoststate.BMC, error) { return fakeBMC{}, nil },
		Guests: fakeMover{}, Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	f.machine = m
	for i, h := range file.Hosts {
		if err := m.Register(h.Name, h.MACs[0]); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			if err := m.Booted(h.Name); err != nil { // hv-2 runs already: ready
				t.Fatal(err)
			}
		}
	}
	sh := auth.Guard(fleet.StateHandler(m, slog.New(slog.DiscardHandler)))
	mux.Handle("/api/v1/provisioner/hosts", sh)
	mux.Handle("/api/v1/provisioner/hosts/", sh)
}

// sampleStatus is a small fleet at now: two hosts, a crashed guest meant
// to run, one stopped on purpose, two alerts.
func sampleStatus(now time.Time) api.Status {
	return api.Status{
		Time: now,
		Hosts: []api.Host{
			{Name: "hv-1", Agent: "hv-1:9301", AgentUp: true, LibvirtUp: true, Guests: 2},
			{Name: "hv-2", Agent: "hv-2:9301", AgentUp: false, LibvirtUp: false, Guests: 1},
		},
		Guests: []api.Guest{
			{Host: "hv-1", UUID: "11111111-1111-1111-1111-111111111111", Domain: "web-worker-0", Cluster: "web", Role: "worker", State: "running", Reason: "booted", StateCode: 1, ReasonCode: 1, IntendedRunning: true},
			{Host: "hv-1", UUID: "22222222-2222-2222-2222-222222222222", Domain: "web-worker-1", Cluster: "web", Role: "worker", State: "shut off", Reason: "crashed", StateCode: 5, ReasonCode: 3, IntendedRunning: true},
			{Host: "hv-2", UUID: "33333333-3333-3333-3333-333333333333", Domain: "spare", State: "shut off", Reason: "shutdown", StateCode: 5, ReasonCode: 1},
		},
		Alerts: []api.Alert{
			{Name: "GuestCrashed", State: "firing", Labels: map[string]string{"alertname": "GuestCrashed", "host": "hv-1", "domain": "web-worker-1", "severity": "critical"},
				Annotations: map[string]string{"summary": "Guest web-worker-1 on hv-1 crashed"}, ActiveAt: now.Add(-3 * time.Minute)},
			{Name: "HostAgentDown", State: "pending", Labels: map[string]string{"alertname": "HostAgentDown", "host": "hv-2", "severity": "critical"},
				Annotations: map[string]string{"summary": "caretaker agent on hv-2 is unreachable"}, ActiveAt: now.Add(-40 * time.Second)},
		},
	}
}

// sampleRecords are a journal: 1 succeeded, 2 awaits an admin's approval
// (recreate-vm), 3 awaits an operator's (restart-vm), 4 is held by a
// guard.
func sampleRecords(now time.Time) []journal.Record {
	appr := func(action string) *guards.Approval {
		return &guards.Approval{Target: "hv-1/22222222-2222-2222-2222-222222222222", Action: action, State: guards.Pending,
			Requested: now.Add(-time.Minute), Expires: now.Add(time.Hour)}
	}
	base := journal.Record{Alert: "GuestCrashed", Fingerprint: "f00d", AlertStartsAt: now.Add(-3 * time.Minute), Rule: "crashed-guests",
		Target: "hv-1/22222222-2222-2222-2222-222222222222", Host: "hv-1", UUID: "22222222-2222-2222-2222-222222222222",
		Domain: "web-worker-1", Cluster: "web", Labels: map[string]string{"alertname": "GuestCrashed", "host": "hv-1"}}
	r1 := base
	r1.Created, r1.Action, r1.State, r1.Reason = now.Add(-2*time.Hour), "restart-vm", journal.StateSucceeded, "rule crashed-guests chose restart-vm; every guard allowed it"
	r1.Decisions = []guards.Decision{{Guard: guards.GuardPause, Verdict: guards.Allow, Reason: "allowed: not paused"},
		{Guard: guards.GuardBreaker, Verdict: guards.Allow, Reason: "allowed: 1 of 3 targets unhealthy (threshold 50%)"}}
	r1.Transitions = []journal.Transition{{State: journal.StatePending, At: now.Add(-2 * time.Hour)},
		{State: journal.StateRunning, At: now.Add(-2 * time.Hour).Add(time.Second)},
		{State: journal.StateSucceeded, At: now.Add(-2 * time.Hour).Add(9 * time.Second), Note: "the guest runs"}}
	r1.Output, r1.HealSeconds, r1.Attempt = "Domain 'web-worker-1' started <ok>\n", 12.5, 1
	r1.Started, r1.Finished = now.Add(-2*time.Hour), now.Add(-2*time.Hour).Add(9*time.Second)
	r2 := base
	r2.Created, r2.Action, r2.State, r2.Reason, r2.Step = now.Add(-time.Minute), "recreate-vm", journal.StateAwaitingApproval, "restart-vm failed twice; escalated to recreate-vm, which needs approval", 1
	r2.Approval = appr("recreate-vm")
	r3 := base
	r3.Created, r3.Action, r3.State, r3.Reason = now.Add(-time.Minute), "restart-vm", journal.StateAwaitingApproval, "rule crashed-guests asks first"
	r3.Approval = appr("restart-vm")
	r4 := base
	r4.Created, r4.Action, r4.State, r4.Reason = now.Add(-30*time.Second), "restart-vm", journal.StatePending, "waiting: outside the maintenance window"
	r4.Decisions = []guards.Decision{{Guard: guards.GuardWindow, Verdict: guards.Wait, Reason: "waiting: outside the window", RetryAt: now.Add(time.Hour)}}
	return []journal.Record{r1, r2, r3, r4}
}

// browser is one user agent: it keeps cookies by name and follows no
// redirects, so tests see every answer.
type browser struct {
	f       *fixture
	cookies map[string]*http.Cookie
	header  http.Header // added to every request
}

func (f *fixture) browser() *browser {
	return &browser{f: f, cookies: map[string]*http.Cookie{}, header: http.Header{}}
}

// page is one answer.
type page struct {
	code    int
	body    string
	header  http.Header
	cookies []*http.Cookie
}

func (p page) location() string { return p.header.Get("Location") }

func (b *browser) do(method, path string, form url.Values, extra ...string) page {
	b.f.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.f.srv.URL+path, body)
	if err != nil {
		b.f.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range b.header {
		req.Header[k] = v
	}
	for i := 0; i+1 < len(extra); i += 2 {
		req.Header.Set(extra[i], extra[i+1])
	}
	for _, c := range b.cookies {
		req.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	}
	client := b.f.srv.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := client.Do(req)
	if err != nil {
		b.f.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	p := page{code: resp.StatusCode, body: string(data), header: resp.Header, cookies: resp.Cookies()}
	for _, c := range p.cookies {
		if c.MaxAge < 0 || c.Value == "" {
			delete(b.cookies, c.Name)
		} else {
			b.cookies[c.Name] = c
		}
	}
	return p
}

func (b *browser) get(path string, extra ...string) page {
	return b.do(http.MethodGet, path, nil, extra...)
}

// post sends a form; a csrf of "" sends none.
func (b *browser) post(path string, form url.Values, extra ...string) page {
	return b.do(http.MethodPost, path, form, extra...)
}

// signIn signs in with name's token and fails the test unless it worked.
func (b *browser) signIn(name string) {
	b.f.t.Helper()
	p := b.get("/console/signin")
	csrf := hidden(p.body, "csrf")
	p = b.post("/console/signin", url.Values{"csrf": {csrf}, "token": {secret(name)}})
	if p.code != http.StatusSeeOther || b.cookies[sessionCookie] == nil {
		b.f.t.Fatalf("sign in as %s: %d, cookies %v\n%s", name, p.code, p.cookies, p.body)
	}
}

// csrf is the session's CSRF token, read from a page as a browser would.
func (b *browser) csrf() string {
	b.f.t.Helper()
	p := b.get("/console/")
	v := hidden(p.body, "csrf")
	if v == "" {
		b.f.t.Fatalf("no csrf field on the fleet page (%d)", p.code)
	}
	return v
}

var hiddenRE = regexp.MustCompile(`<input type="hidden" name="([a-z]+)" value="([^"]*)">`)

// hidden is the value of the first hidden input named name.
func hidden(body, name string) string {
	for _, m := range hiddenRE.FindAllStringSubmatch(body, -1) {
		if m[1] == name {
			return m[2]
		}
	}
	return ""
}

// postForms lists the ids of a page's POST forms other than sign-out.
func postForms(body string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`<form(?: id="([^"]*)")? method="post"`).FindAllStringSubmatch(body, -1) {
		if m[1] != "signout" {
			out = append(out, m[1])
		}
	}
	return out
}

// sse reads server-sent events from a stream.
type sse struct {
	events chan [2]string
	cancel context.CancelFunc
}

func (b *browser) events(page string) *sse {
	b.f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, b.f.srv.URL+"/console/events?page="+url.QueryEscape(page), nil)
	for _, c := range b.cookies {
		req.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	}
	resp, err := b.f.srv.Client().Do(req)
	if err != nil {
		cancel()
		b.f.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		b.f.t.Fatalf("events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &sse{events: make(chan [2]string, 16), cancel: cancel}
	go func() {
		defer resp.Body.Close()
		defer close(s.events)
		rd := bufio.NewReader(resp.Body)
		var ev, data string
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case strings.HasPrefix(line, "event: "):
				ev = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				data = strings.TrimPrefix(line, "data: ")
			case line == "" && ev != "":
				s.events <- [2]string{ev, data}
				ev, data = "", ""
			}
		}
	}()
	b.f.t.Cleanup(cancel)
	return s
}

// next waits up to a deadline for the stream's next event.
func (s *sse) next(t *testing.T) (string, string) {
	t.Helper()
	select {
	case e, ok := <-s.events:
		if !ok {
			return "", ""
		}
		return e[0], e[1]
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10 s")
	}
	return "", ""
}

// tick makes the event stream compute its digest once more: the send
// returns once the stream has taken the tick.
func (f *fixture) tick() {
	select {
	case f.ticks <- time.Now():
	case <-time.After(10 * time.Second):
		f.t.Fatal("the event stream took no tick within 10 s")
	}
}
