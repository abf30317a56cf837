package console

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"caretaker/internal/api"
	"caretaker/provisioner/clusters"
	"caretaker/provisioner/hoststate"
	"caretaker/remediation/journal"
)

// A page without a session sends the browser to sign in, with the page as
// next; signing in sets a session cookie with the right attributes and
// goes to next; the token appears in no page; signing out ends the
// session, and its cookie no longer works.
func TestSignInAndOut(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	if p := b.get("/console/"); p.code != http.StatusSeeOther || p.location() != "/console/signin" {
		t.Fatalf("GET /console/ signed out = %d to %q", p.code, p.location())
	}
	p := b.get("/console/remediation?result=failed")
	if want := "/console/signin?next=" + url.QueryEscape("/console/remediation?result=failed"); p.code != http.StatusSeeOther || p.location() != want {
		t.Fatalf("GET /console/remediation signed out = %d to %q, want %q", p.code, p.location(), want)
	}
	p = b.get("/console/signin?next=" + url.QueryEscape("/console/remediation?result=failed"))
	if p.code != http.StatusOK || !strings.Contains(p.body, `<form id="signin"`) || !strings.Contains(p.body, `id="token"`) ||
		!strings.Contains(p.body, `id="signin-submit"`) {
		t.Fatalf("sign-in page: %d\n%s", p.code, p.body)
	}
	sc := b.cookies[signinCookie]
	if sc == nil || !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode || hidden(p.body, "csrf") != sc.Value {
		t.Fatalf("sign-in cookie %+v, form's csrf %q: want a HttpOnly, SameSite=Strict cookie equal to the form's", sc, hidden(p.body, "csrf"))
	}
	p = b.post("/console/signin", url.Values{"csrf": {sc.Value}, "token": {secret("otto")}, "next": {hidden(p.body, "next")}})
	if p.code != http.StatusSeeOther || p.location() != "/console/remediation?result=failed" {
		t.Fatalf("sign in: %d to %q\n%s", p.code, p.location(), p.body)
	}
	ck := b.cookies[sessionCookie]
	if ck == nil {
		t.Fatal("no session cookie after sign-in")
	}
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/console/" || ck.Secure || ck.MaxAge != 3600 || len(ck.Value) != 43 {
		t.Errorf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/console/, not Secure over plain HTTP, Max-Age 3600, 32 random bytes", ck)
	}
	if b.cookies[signinCookie] != nil {
		t.Error("the sign-in form's cookie outlived the sign-in")
	}
	for _, path := range []string{"/console/", "/console/remediation", "/console/actions/1", "/console/clusters", "/console/hosts", "/console/hosts/hv-1"} {
		p := b.get(path)
		if p.code != http.StatusOK || !strings.Contains(p.body, "Signed in as <strong>otto</strong> (operator)") {
			t.Errorf("GET %s signed in: %d\n%s", path, p.code, p.body)
		}
		if strings.Contains(p.body, secret("otto")) {
			t.Errorf("GET %s: the page holds the token", path)
		}
	}
	// Signing in again (a sign-in form opened before, in another tab)
	// replaces the session: the old one ends.
	delete(b.cookies, sessionCookie)
	form := b.get("/console/signin")
	b.cookies[sessionCookie] = ck
	if p := b.post("/console/signin", url.Values{"csrf": {hidden(form.body, "csrf")}, "token": {secret("vera")}}); p.code != http.StatusSeeOther {
		t.Fatalf("sign in again: %d", p.code)
	}
	if n := f.c.sessions.count(); n != 1 {
		t.Errorf("%d sessions after signing in again, want 1", n)
	}
	vera := b.cookies[sessionCookie]
	b.cookies[sessionCookie] = ck
	if p := b.get("/console/"); p.code != http.StatusSeeOther {
		t.Errorf("the replaced session's cookie still opens a page: %d", p.code)
	}
	b.cookies[sessionCookie] = vera
	old := vera.Value
	p = b.post("/console/signout", url.Values{"csrf": {b.csrf()}})
	if p.code != http.StatusSeeOther || p.location() != "/console/signin?signedout=1" || b.cookies[sessionCookie] != nil {
		t.Fatalf("sign out: %d to %q, cookie %v", p.code, p.location(), b.cookies[sessionCookie])
	}
	if n := f.c.sessions.count(); n != 0 {
		t.Errorf("%d sessions after sign-out, want 0", n)
	}
	b.cookies[sessionCookie] = &http.Cookie{Name: sessionCookie, Value: old}
	if p := b.get("/console/"); p.code != http.StatusSeeOther {
		t.Errorf("the signed-out cookie still opens a page: %d", p.code)
	}
}

// A token the API refuses is answered 401 with the sign-in form and an
// error, and makes no session.
func TestSignInBadToken(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	csrf := hidden(b.get("/console/signin").body, "csrf")
	for _, tok := range []string{"not-a-token", "", secret("am")} {
		p := b.post("/console/signin", url.Values{"csrf": {csrf}, "token": {tok}})
		want := map[string]int{"": http.StatusBadRequest, secret("am"): http.StatusForbidden}[tok]
		if want == 0 {
			want = http.StatusUnauthorized
		}
		if p.code != want || !strings.Contains(p.body, `id="signin"`) || !strings.Contains(p.body, `class="error"`) {
			t.Errorf("sign in with %q: %d, want %d with the form and an error\n%s", tok, p.code, want, p.body)
		}
		if b.cookies[sessionCookie] != nil || f.c.sessions.count() != 0 {
			t.Errorf("sign in with %q made a session", tok)
		}
		if strings.Contains(p.body, tok) && tok != "" {
			t.Errorf("the refused token was written back into the page")
		}
	}
}

// Cookies are Secure when the console is told so, and under TLS.
func TestCookieSecure(t *testing.T) {
	for _, fo := range []fixtureOptions{{secure: true}, {tls: true}} {
		f := newFixture(t, fo)
		b := f.browser()
		if p := b.get("/console/signin"); p.code != http.StatusOK || !b.cookies[signinCookie].Secure {
			t.Errorf("%+v: sign-in cookie %+v, want Secure", fo, b.cookies[signinCookie])
		}
		b.signIn("vera")
		if ck := b.cookies[sessionCookie]; !ck.Secure {
			t.Errorf("%+v: session cookie %+v, want Secure", fo, ck)
		}
	}
}

// A session ends SessionTTL after sign-in, however busy.
func TestSessionExpires(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	b.signIn("vera")
	f.clock.Add(59 * time.Minute)
	if p := b.get("/console/"); p.code != http.StatusOK {
		t.Fatalf("a minute before the end: %d", p.code)
	}
	f.clock.Add(time.Minute)
	if p := b.get("/console/hosts"); p.code != http.StatusSeeOther || !strings.HasPrefix(p.location(), "/console/signin") {
		t.Errorf("at the end: %d to %q, want the sign-in page", p.code, p.location())
	}
	if p := b.get("/console/", partialHeader, "1"); p.code != http.StatusUnauthorized {
		t.Errorf("partial page at the end: %d, want 401 (the script reloads)", p.code)
	}
	if n := f.c.sessions.count(); n != 0 {
		t.Errorf("%d sessions after expiry", n)
	}
}

// Every form post without this session's CSRF token, or from another
// site, is refused with 403 and changes nothing; so is a sign-in without
// its double-submit cookie.
func TestCSRF(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	b.signIn("otto")
	csrf := b.csrf()
	other := f.browser()
	other.signIn("otto")
	otherCSRF := other.csrf()
	pause := url.Values{"target": {"*"}, "duration": {"1h"}, "comment": {"maintenance"}}
	with := func(v url.Values, k, val string) url.Values {
		out := url.Values{}
		for kk, vv := range v {
			out[kk] = vv
		}
		out.Set(k, val)
		return out
	}
	for _, tc := range []struct {
		name  string
		form  url.Values
		extra []string
	}{
		{"missing", pause, nil},
		{"wrong", with(pause, "csrf", strings.ToUpper(csrf)+"x"), nil},
		{"another session's", with(pause, "csrf", otherCSRF), nil},
		{"cross-site fetch", with(pause, "csrf", csrf), []string{"Sec-Fetch-Site", "cross-site"}},
		{"foreign origin", with(pause, "csrf", csrf), []string{"Origin", "https://evil.example"}},
		{"null origin", with(pause, "csrf", csrf), []string{"Origin", "null"}},
	} {
		p := b.post("/console/pauses", tc.form, tc.extra...)
		if p.code != http.StatusForbidden {
			t.Errorf("%s CSRF token: %d, want 403", tc.name, p.code)
		}
	}
	for _, path := range []string{"/console/actions/3/approve", "/console/clusters", "/console/hosts/hv-1/provision", "/console/signout"} {
		if p := b.post(path, url.Values{"comment": {"x"}, "name": {"web"}}); p.code != http.StatusForbidden {
			t.Errorf("POST %s without CSRF token: %d, want 403", path, p.code)
		}
	}
	if f.p.changes != 0 || f.a.answers != 0 {
		t.Errorf("refused posts changed something: %d pause changes, %d answers", f.p.changes, f.a.answers)
	}
	if cs, _ := f.store.List(); len(cs) != 0 {
		t.Errorf("refused posts created clusters: %v", cs)
	}
	if f.c.sessions.count() != 2 {
		t.Errorf("a refused sign-out ended the session")
	}
	// Same origin with the token: the pause is made.
	if p := b.post("/console/pauses", with(pause, "csrf", csrf), "Origin", f.srv.URL, "Sec-Fetch-Site", "same-origin"); p.code != http.StatusSeeOther {
		t.Fatalf("same-origin pause: %d\n%s", p.code, p.body)
	}
	if ps := f.p.Pauses(); len(ps) != 1 || ps[0].Author != "otto" || ps[0].Comment != "maintenance" {
		t.Errorf("pauses %+v, want one by otto", ps)
	}

	// The sign-in form: its token must match its cookie.
	other = f.browser()
	tok := hidden(other.get("/console/signin").body, "csrf")
	delete(other.cookies, signinCookie)
	if p := other.post("/console/signin", url.Values{"csrf": {tok}, "token": {secret("ada")}}); p.code != http.StatusForbidden || other.cookies[sessionCookie] != nil {
		t.Errorf("sign-in without its cookie: %d, session %v", p.code, other.cookies[sessionCookie])
	}
	tok = hidden(other.get("/console/signin").body, "csrf")
	if p := other.post("/console/signin", url.Values{"csrf": {tok + "x"}, "token": {secret("ada")}}); p.code != http.StatusForbidden {
		t.Errorf("sign-in with a wrong form token: %d", p.code)
	}
	if p := other.post("/console/signin", url.Values{"csrf": {tok}, "token": {secret("ada")}}, "Sec-Fetch-Site", "cross-site"); p.code != http.StatusForbidden {
		t.Errorf("cross-site sign-in: %d", p.code)
	}
}

// A viewer sees no action form anywhere; a forged post with the viewer's
// valid session and CSRF token reaches the API, which refuses it: 403,
// with what was refused, and nothing changed.
func TestViewerNoButtonsAndForgedPost(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	if _, err := f.store.CreateBy(smallSpec("web"), nil); err != nil {
		t.Fatal(err)
	}
	b := f.browser()
	b.signIn("vera")
	for _, path := range []string{"/console/", "/console/remediation", "/console/actions/3", "/console/clusters", "/console/clusters/web", "/console/hosts", "/console/hosts/hv-1"} {
		p := b.get(path)
		if p.code != http.StatusOK {
			t.Fatalf("viewer GET %s: %d\n%s", path, p.code, p.body)
		}
		if forms := postForms(p.body); len(forms) > 0 {
			t.Errorf("a viewer sees action forms on %s: %v", path, forms)
		}
	}
	csrf := b.csrf()
	for _, tc := range []struct{ path, want string }{
		{"/console/actions/3/approve", "approving an action needs operator"},
		{"/console/actions/3/deny", "denying an action needs operator"},
		{"/console/pauses", "pausing remediation needs operator"},
		{"/console/pauses/end", "resuming remediation needs operator"},
		{"/console/clusters", "creating a guest cluster needs operator"},
		{"/console/clusters/web/scale", "scaling a guest cluster needs operator"},
		{"/console/clusters/web/delete", "deleting a guest cluster needs admin"},
		{"/console/hosts/hv-1/provision", "provisioning a host needs admin"},
	} {
		form := url.Values{"csrf": {csrf}, "comment": {"forged"}, "target": {"*"}, "duration": {"1h"}, "pool": {"worker"}, "count": {"5"},
			"confirm": {"web"}, "name": {"evil"}, "masters": {"1"}, "workers": {"1"}, "vcpus": {"1"}, "memory_mib": {"64"}, "disk_gib": {"1"}}
		p := b.post(tc.path, form)
		if p.code != http.StatusForbidden || !strings.Contains(p.body, tc.want) || !strings.Contains(p.body, "Nothing was changed") {
			t.Errorf("viewer's forged POST %s: %d, want 403 saying %q\n%s", tc.path, p.code, tc.want, p.body)
		}
	}
	rec, _ := f.b.j.Get(3)
	if rec.State != journal.StateAwaitingApproval || f.a.answers != 0 || f.p.changes != 0 {
		t.Errorf("forged posts changed something: record 3 %s, %d answers, %d pause changes", rec.State, f.a.answers, f.p.changes)
	}
	if cs, _ := f.store.List(); len(cs) != 1 || cs[0].Pools[1].Count != 2 || cs[0].Phase == clusters.PhaseDeleting {
		t.Errorf("forged posts changed the clusters: %+v", cs)
	}
	if h, _ := f.machine.Host("hv-1"); h.State != hoststate.Registered {
		t.Errorf("forged provision moved hv-1 to %s", h.State)
	}
}

// An operator approves with a comment, recorded under the token's name,
// and may not approve an admin's action; an empty comment is refused.
func TestApprove(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	b.signIn("otto")
	p := b.get("/console/remediation")
	for _, want := range []string{`<form id="approve-3"`, `<form id="deny-3"`, `<form id="deny-2"`, `<tr id="record-3" data-state="awaiting_approval">`} {
		if !strings.Contains(p.body, want) {
			t.Errorf("remediation page lacks %s", want)
		}
	}
	if strings.Contains(p.body, `id="approve-2"`) {
		t.Error("an operator is offered to approve recreate-vm, an admin's action")
	}
	csrf := hidden(p.body, "csrf")
	p = b.post("/console/actions/3/approve", url.Values{"csrf": {csrf}, "comment": {"  \n "}, "back": {"/console/remediation"}})
	if p.code != http.StatusBadRequest || !strings.Contains(p.body, "comment: required") || !strings.Contains(p.body, `<form id="approve-3"`) {
		t.Errorf("approve with an empty comment: %d, want 400 with the API's word on the form\n%s", p.code, p.body)
	}
	if rec, _ := f.b.j.Get(3); rec.State != journal.StateAwaitingApproval {
		t.Fatalf("an approval without comment changed record 3 to %s", rec.State)
	}
	p = b.post("/console/actions/2/approve", url.Values{"csrf": {csrf}, "comment": {"forged"}})
	if p.code != http.StatusForbidden || !strings.Contains(p.body, "approving recreate-vm needs admin") {
		t.Errorf("operator approving recreate-vm: %d\n%s", p.code, p.body)
	}
	p = b.post("/console/actions/3/approve", url.Values{"csrf": {csrf}, "comment": {"guest was\r\nchecked"}, "back": {"/console/remediation"}})
	if p.code != http.StatusSeeOther || p.location() != "/console/remediation" {
		t.Fatalf("approve: %d to %q\n%s", p.code, p.location(), p.body)
	}
	rec, _ := f.b.j.Get(3)
	if rec.State != journal.StateRunning || rec.Approval.Author != "otto" || rec.Approval.AuthorRole != "operator" || rec.Approval.Comment != "guest was checked" {
		t.Errorf("record 3 after approval: %s %+v", rec.State, rec.Approval)
	}
	p = b.get("/console/remediation")
	if !strings.Contains(p.body, `<div id="flash" role="status"><p class="flash">Approved action 3`) {
		t.Errorf("no flash after the approval:\n%s", p.body)
	}
	if p = b.get("/console/remediation"); strings.Contains(p.body, `class="flash"`) {
		t.Error("the flash is shown twice")
	}
	// Denying needs only the operator's route role, also for recreate-vm.
	p = b.post("/console/actions/2/deny", url.Values{"csrf": {csrf}, "comment": {"not now"}})
	if p.code != http.StatusSeeOther || p.location() != "/console/actions/2" {
		t.Fatalf("deny: %d to %q\n%s", p.code, p.location(), p.body)
	}
	if rec, _ := f.b.j.Get(2); rec.State != journal.StateCancelled || rec.Approval.Author != "otto" {
		t.Errorf("record 2 after the denial: %s %+v", rec.State, rec.Approval)
	}
	// Deciding again is the API's conflict, shown on the record's page.
	p = b.post("/console/actions/2/deny", url.Values{"csrf": {csrf}, "comment": {"again"}})
	if p.code != http.StatusConflict || !strings.Contains(p.body, "is cancelled") {
		t.Errorf("deny twice: %d\n%s", p.code, p.body)
	}
}

// next= takes only paths of the console.
func TestSignInNextStaysLocal(t *testing.T) {
	for _, tc := range []struct{ next, want string }{
		{"/console/remediation?result=failed", "/console/remediation?result=failed"},
		{"/console/clusters/web", "/console/clusters/web"},
		{"/console/", "/console/"},
		{"", "/console/"},
		{"https://evil.example/console/", "/console/"},
		{"//evil.example/console/", "/console/"},
		{"/\\evil.example", "/console/"},
		{"/console/\\evil", "/console/"},
		{"/console/../api/v1/status", "/console/"},
		{"/console/%2e%2e/api", "/console/"},
		{"/console//evil.example", "/console/"},
		{"/api/v1/status", "/console/"},
		{"javascript:alert(1)", "/console/"},
		{"/console/signin?next=//evil", "/console/"},
		{"/console/x\r\nLocation: //evil", "/console/"},
		{"/console/hosts#frag", "/console/"},
	} {
		if got := localNext(tc.next); got != tc.want {
			t.Errorf("localNext(%q) = %q, want %q", tc.next, got, tc.want)
		}
	}
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	csrf := hidden(b.get("/console/signin").body, "csrf")
	p := b.post("/console/signin", url.Values{"csrf": {csrf}, "token": {secret("vera")}, "next": {"//evil.example/"}})
	if p.code != http.StatusSeeOther || p.location() != "/console/" {
		t.Errorf("sign in with next=//evil.example/: %d to %q", p.code, p.location())
	}
}

// The event stream sends "change" when what its page shows changes, and
// nothing while it does not.
func TestEventsOnChange(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	b.signIn("vera")

	fleet := b.events("/console/")
	if ev, _ := fleet.next(t); ev != "hello" {
		t.Fatalf("first event %q, want hello", ev)
	}
	f.tick()
	f.tick() // the second tick is taken only after the first one's digest
	select {
	case e := <-fleet.events:
		t.Fatalf("event %v while nothing changed", e)
	default:
	}
	f.b.setStatus(func(s *api.Status) { s.Guests[1].State, s.Guests[1].Reason = "running", "booted" })
	f.tick()
	if ev, _ := fleet.next(t); ev != "change" {
		t.Fatalf("after the guest healed: %q, want change", ev)
	}

	rem := b.events("/console/remediation")
	if ev, _ := rem.next(t); ev != "hello" {
		t.Fatalf("first event %q, want hello", ev)
	}
	if _, err := f.b.j.Update(4, func(r *journal.Record) { r.State = journal.StateSucceeded }); err != nil {
		t.Fatal(err)
	}
	f.tick() // both streams take it: one tick each
	f.tick()
	if ev, _ := rem.next(t); ev != "change" {
		t.Fatalf("after record 4 succeeded: %q, want change", ev)
	}

	// Signing out ends the stream.
	b.post("/console/signout", url.Values{"csrf": {b.csrf()}})
	f.tick()
	f.tick()
	for _, s := range []*sse{fleet, rem} {
		if ev, _ := s.next(t); ev != "signedout" {
			t.Errorf("after sign-out: %q, want signedout", ev)
		}
	}
}

// A partial page is its <main> only.
func TestPartialPage(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	b.signIn("vera")
	p := b.get("/console/remediation", partialHeader, "1")
	if p.code != http.StatusOK || !strings.HasPrefix(p.body, `<main id="main"`) || !strings.HasSuffix(p.body, "</main>") ||
		!strings.Contains(p.body, `id="journal"`) {
		t.Errorf("partial page: %d\n%s", p.code, p.body)
	}
	if v := p.header.Get("Vary"); v != partialHeader {
		t.Errorf("Vary %q", v)
	}
}

// The fleet page: hosts, guests not as meant, alerts with their runbook,
// and one host's guests on request.
func TestFleetPage(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	b.signIn("vera")
	p := b.get("/console/?host=hv-1")
	for _, want := range []string{
		`<tr data-host="hv-2">`,
		`<tr data-guest="web-worker-1" data-state="shut off">`,
		`<tr data-alert="GuestCrashed" data-state="firing">`,
		`<details id="runbook-GuestCrashed" class="runbook">`,
		`<tr data-guest="web-worker-0" data-state="running">`,
		`href="https://grafana.example/d/caretaker-fleet"`,
		`<time datetime=`,
	} {
		if !strings.Contains(p.body, want) {
			t.Errorf("fleet page lacks %s", want)
		}
	}
	if strings.Count(p.body, `data-guest="spare"`) != 0 {
		t.Error("a guest stopped on purpose is listed as not as meant, or the guests of an unchosen host are shown")
	}
	if !strings.Contains(p.body, `<meta http-equiv="refresh" content="15">`) {
		t.Error("the fleet page does not refresh without scripts")
	}
}

func smallSpec(name string) clusters.Spec {
	return clusters.Spec{Name: name, Pools: []clusters.Pool{
		{Name: masterPool, Role: clusters.RoleMaster, Count: 1, VCPUs: 1, MemoryBytes: 64 << 20, DiskBytes: 1 << 30},
		{Name: workerPool, Role: clusters.RoleWorker, Count: 2, VCPUs: 1, MemoryBytes: 64 << 20, DiskBytes: 1 << 30},
	}}
}

// Create Cluster: the placement's answer before creating, errors on the
// form with the input kept, the cluster page, scaling, and deleting only
// with the name typed.
func TestClusters(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	b.signIn("otto")
	p := b.get("/console/clusters")
	for _, want := range []string{`<form id="create-cluster"`, `id="plan"`, `id="create-submit"`, `name="memory_mib"`, `name="disk_gib"`} {
		if !strings.Contains(p.body, want) {
			t.Errorf("clusters page lacks %s", want)
		}
	}
	if strings.Contains(p.body, `id="plan-result"`) {
		t.Error("a placement answer before any was asked")
	}
	csrf := hidden(p.body, "csrf")
	form := url.Values{"csrf": {csrf}, "name": {"web"}, "masters": {"1"}, "workers": {"3"}, "vcpus": {"2"}, "memory_mib": {"128"}, "disk_gib": {"2"}}
	plan := url.Values{"plan": {"1"}}
	for k, v := range form {
		plan[k] = v
	}
	p = b.post("/console/clusters", plan)
	if p.code != http.StatusOK || !strings.Contains(p.body, `<div id="plan-result" role="status">`) || !strings.Contains(p.body, "fits</span>: every node has a host") ||
		!strings.Contains(p.body, "<th scope=\"row\">web-worker-2</th><td>worker</td><td>hv-2</td>") {
		t.Errorf("plan: %d\n%s", p.code, p.body)
	}
	if !strings.Contains(p.body, `name="workers" type="number" min="0" max="1000" value="3"`) {
		t.Error("the form lost its input after the plan")
	}
	plan.Set("vcpus", "64")
	if p = b.post("/console/clusters", plan); !strings.Contains(p.body, "does not fit</span>: no host has 64 free vCPUs") {
		t.Errorf("plan too big:\n%s", p.body)
	}
	if cs, _ := f.store.List(); len(cs) != 0 {
		t.Fatal("planning created a cluster")
	}
	bad := url.Values{}
	for k, v := range form {
		bad[k] = v
	}
	bad.Set("name", "Web_1")
	p = b.post("/console/clusters", bad)
	if p.code != http.StatusBadRequest || !strings.Contains(p.body, `name &#34;Web_1&#34;: must be lowercase`) || !strings.Contains(p.body, `value="Web_1"`) {
		t.Errorf("bad name: %d\n%s", p.code, p.body)
	}
	bad.Set("name", "web")
	bad.Set("memory_mib", "lots")
	if p = b.post("/console/clusters", bad); p.code != http.StatusBadRequest || !strings.Contains(p.body, "memory_mib: want a whole number") {
		t.Errorf("bad memory: %d\n%s", p.code, p.body)
	}
	p = b.post("/console/clusters", form)
	if p.code != http.StatusSeeOther || p.location() != "/console/clusters/web" {
		t.Fatalf("create: %d to %q\n%s", p.code, p.location(), p.body)
	}
	cl, err := f.store.Get("web")
	if err != nil || cl.CreatedBy == nil || cl.CreatedBy.Name != "otto" || len(cl.Nodes) != 4 || cl.Pools[0].MemoryBytes != 128<<20 || cl.Pools[1].DiskBytes != 2<<30 {
		t.Fatalf("created cluster %+v (%v)", cl, err)
	}
	p = b.get("/console/clusters/web")
	for _, want := range []string{`<table id="nodes">`, `<tr data-node="web-worker-2" data-state="pending">`, `Creating cluster web: 4 nodes`,
		`<form id="scale-worker"`, `<progress id="progress" max="4" value="0"`} {
		if !strings.Contains(p.body, want) {
			t.Errorf("cluster page lacks %s", want)
		}
	}
	if strings.Contains(p.body, `id="delete-cluster"`) {
		t.Error("an operator is offered to delete a cluster, an admin's deed")
	}
	p = b.post("/console/clusters/web/scale", url.Values{"csrf": {csrf}, "pool": {"worker"}, "count": {"1"}})
	if p.code != http.StatusSeeOther {
		t.Fatalf("scale: %d\n%s", p.code, p.body)
	}
	if cl, _ := f.store.Get("web"); cl.Pools[1].Count != 1 || cl.ChangedBy == nil || cl.ChangedBy.Name != "otto" {
		t.Errorf("after scaling: %+v", cl.Pools)
	}
	p = b.post("/console/clusters/web/scale", url.Values{"csrf": {csrf}, "pool": {"nope"}, "count": {"1"}})
	if p.code != http.StatusNotFound || !strings.Contains(p.body, "Could not scale") {
		t.Errorf("scale an unknown pool: %d\n%s", p.code, p.body)
	}

	admin := f.browser()
	admin.signIn("ada")
	acsrf := admin.csrf()
	p = admin.post("/console/clusters/web/delete", url.Values{"csrf": {acsrf}, "confirm": {"wbe"}})
	if p.code != http.StatusBadRequest || !strings.Contains(p.body, "type its name, web, exactly") || !strings.Contains(p.body, `value="wbe"`) {
		t.Errorf("delete with the wrong name: %d\n%s", p.code, p.body)
	}
	if cl, _ := f.store.Get("web"); cl.Phase == clusters.PhaseDeleting {
		t.Fatal("deleted with the wrong name typed")
	}
	p = admin.post("/console/clusters/web/delete", url.Values{"csrf": {acsrf}, "confirm": {"web"}, "comment": {"done with it"}})
	if p.code != http.StatusSeeOther {
		t.Fatalf("delete: %d\n%s", p.code, p.body)
	}
	if cl, _ := f.store.Get("web"); cl.Phase != clusters.PhaseDeleting || cl.ChangedBy.Name != "ada" || cl.ChangedBy.Comment != "done with it" {
		t.Errorf("after delete: %s %+v", cl.Phase, cl.ChangedBy)
	}
}

// Without a provisioner the clusters and hosts pages say so; the host
// page still shows the host's agent and guests.
func TestNoProvisioner(t *testing.T) {
	f := newFixture(t, fixtureOptions{noProvisioner: true})
	b := f.browser()
	b.signIn("ada")
	for _, path := range []string{"/console/clusters", "/console/hosts", "/console/", "/console/hosts/hv-1"} {
		p := b.get(path)
		if p.code != http.StatusOK || !strings.Contains(p.body, "The provisioner does not run on this server") {
			t.Errorf("GET %s: %d\n%s", path, p.code, p.body)
		}
		if forms := postForms(p.body); len(forms) > 0 {
			t.Errorf("GET %s offers %v without a provisioner", path, forms)
		}
	}
	if p := b.get("/console/hosts/hv-1"); !strings.Contains(p.body, `data-guest="web-worker-1"`) {
		t.Error("the host page without a provisioner lacks the host's guests")
	}
	if p := b.get("/console/hosts/nope"); p.code != http.StatusNotFound {
		t.Errorf("an unknown host: %d", p.code)
	}
}

// Hosts: the inventory with BMC types and provisioning states; provision
// needs an admin and a comment, and is recorded under the token's name.
func TestHosts(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	b.signIn("otto")
	p := b.get("/console/hosts")
	for _, want := range []string{`<tr data-host="hv-1" data-state="registered">`, `<tr data-host="hv-2" data-state="ready">`, "redfish at https://10.0.0.2"} {
		if !strings.Contains(p.body, want) {
			t.Errorf("hosts page lacks %s\n%s", want, p.body)
		}
	}
	if p := b.get("/console/hosts/hv-1"); strings.Contains(p.body, `id="provision-form"`) {
		t.Error("an operator is offered to provision a host, an admin's deed")
	}
	admin := f.browser()
	admin.signIn("ada")
	p = admin.get("/console/hosts/hv-1")
	for _, want := range []string{`<form id="provision-form"`, `<button id="provision"`, `hv-1.pass`, `aria-current="step" class="current">registered (now)`} {
		if !strings.Contains(p.body, want) {
			t.Errorf("admin's host page lacks %s", want)
		}
	}
	csrf := hidden(p.body, "csrf")
	p = admin.post("/console/hosts/hv-1/provision", url.Values{"csrf": {csrf}, "comment": {""}})
	if p.code != http.StatusBadRequest || !strings.Contains(p.body, "comment: required") {
		t.Errorf("provision without comment: %d\n%s", p.code, p.body)
	}
	p = admin.post("/console/hosts/hv-1/provision", url.Values{"csrf": {csrf}, "comment": {"new disks"}})
	if p.code != http.StatusSeeOther || p.location() != "/console/hosts/hv-1" {
		t.Fatalf("provision: %d to %q\n%s", p.code, p.location(), p.body)
	}
	h, _ := f.machine.Host("hv-1")
	hist, _ := f.machine.History("hv-1")
	if h.State != hoststate.PoweringOn || len(hist) == 0 || hist[len(hist)-1].By == nil || hist[len(hist)-1].By.Name != "ada" {
		t.Errorf("after provision: %s, history %+v", h.State, hist)
	}
	p = admin.get("/console/hosts/hv-1")
	if !strings.Contains(p.body, "Asked to provision hv-1; it is now powering-on.") || !strings.Contains(p.body, "new disks") {
		t.Errorf("host page after provision:\n%s", p.body)
	}
	// A provision the state does not allow is the API's conflict.
	p = admin.post("/console/hosts/hv-1/reprovision", url.Values{"csrf": {csrf}, "comment": {"again"}})
	if p.code != http.StatusConflict || !strings.Contains(p.body, "Could not reprovision hv-1") {
		t.Errorf("reprovision while powering on: %d\n%s", p.code, p.body)
	}
}

// A record's page shows the decision, every guard, the transitions and
// the output.
func TestRecordPage(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	b.signIn("vera")
	p := b.get("/console/actions/1")
	for _, want := range []string{"rule crashed-guests chose restart-vm", `<tr data-guard="circuit-breaker" data-verdict="allow">`,
		`<li data-state="succeeded">`, "Domain &#39;web-worker-1&#39; started &lt;ok&gt;", "12.5 s after the alert started"} {
		if !strings.Contains(p.body, want) {
			t.Errorf("record page lacks %s", want)
		}
	}
	if p := b.get("/console/actions/99"); p.code != http.StatusNotFound {
		t.Errorf("record 99: %d", p.code)
	}
	if p := b.get("/console/actions/x"); p.code != http.StatusNotFound {
		t.Errorf("record x: %d", p.code)
	}
}

// Pauses: made and ended by an operator, an invalid one refused on the
// form with the input kept.
func TestPauses(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	b.signIn("otto")
	csrf := b.csrf()
	p := b.post("/console/pauses", url.Values{"csrf": {csrf}, "target": {"hv-1"}, "duration": {"forever"}, "comment": {"disk swap"}})
	if p.code != http.StatusBadRequest || !strings.Contains(p.body, "Could not pause: duration: want a positive duration") ||
		!strings.Contains(p.body, `value="forever"`) || !strings.Contains(p.body, ">disk swap</textarea>") {
		t.Errorf("bad pause: %d\n%s", p.code, p.body)
	}
	if p = b.post("/console/pauses", url.Values{"csrf": {csrf}, "target": {"hv-1"}, "duration": {"2h"}, "comment": {"disk swap"}}); p.code != http.StatusSeeOther {
		t.Fatalf("pause: %d\n%s", p.code, p.body)
	}
	p = b.get("/console/remediation")
	if !strings.Contains(p.body, "Paused remediation of hv-1 until") || !strings.Contains(p.body, `<form id="end-pause-0"`) {
		t.Errorf("remediation page after the pause:\n%s", p.body)
	}
	if p = b.post("/console/pauses/end", url.Values{"csrf": {csrf}, "target": {"hv-1"}}); p.code != http.StatusSeeOther || len(f.p.Pauses()) != 0 {
		t.Errorf("end the pause: %d, pauses %v", p.code, f.p.Pauses())
	}
}

// The journal's filters reach the API; a bad one is said on the page.
func TestJournalFilters(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	b := f.browser()
	b.signIn("vera")
	p := b.get("/console/remediation?result=awaiting_approval&action=restart-vm")
	if !strings.Contains(p.body, `id="record-3"`) || strings.Contains(p.body, `id="record-2"`) || strings.Contains(p.body, `id="record-1"`) {
		t.Errorf("filtered journal:\n%s", p.body)
	}
	if p = b.get("/console/remediation?since=90m"); !strings.Contains(p.body, `id="record-4"`) || strings.Contains(p.body, `id="record-1"`) {
		t.Error("since=90m shows the record of 2 h ago, or not the new one")
	}
	if p = b.get("/console/remediation?since=yesterday"); !strings.Contains(p.body, "since: want a duration") {
		t.Error("a bad since is not said")
	}
	if p = b.get("/console/remediation?result=bogus"); !strings.Contains(p.body, "The journal could not be read: result") && !strings.Contains(p.body, "No record matches") {
		t.Errorf("a bad result:\n%s", p.body)
	}
}

// Every control of every page has a label, and every id is unique.
func TestLabelsAndIDs(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	if _, err := f.store.CreateBy(smallSpec("web"), nil); err != nil {
		t.Fatal(err)
	}
	b := f.browser()
	signin := b.get("/console/signin").body
	b.signIn("ada")
	control := regexp.MustCompile(`<(input|select|textarea)\b([^>]*)>`)
	idRE := regexp.MustCompile(`\bid="([^"]*)"`)
	pages := map[string]string{"/console/signin": signin}
	for _, path := range []string{"/console/?host=hv-1", "/console/remediation", "/console/actions/3", "/console/clusters",
		"/console/clusters/web", "/console/hosts", "/console/hosts/hv-1", "/console/runbooks/GuestCrashed"} {
		p := b.get(path)
		if p.code != http.StatusOK {
			t.Fatalf("GET %s: %d", path, p.code)
		}
		pages[path] = p.body
	}
	for path, body := range pages {
		for _, m := range control.FindAllStringSubmatch(body, -1) {
			if strings.Contains(m[2], `type="hidden"`) {
				continue
			}
			id := idRE.FindStringSubmatch(m[2])
			if id == nil || !strings.Contains(body, `<label for="`+id[1]+`"`) {
				t.Errorf("%s: a %s without a label: %s", path, m[1], m[0])
			}
		}
		seen := map[string]bool{}
		for _, m := range idRE.FindAllStringSubmatch(body, -1) {
			if seen[m[1]] {
				t.Errorf("%s: id %q used twice", path, m[1])
			}
			seen[m[1]] = true
		}
	}
}
