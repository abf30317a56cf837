package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"caretaker/remediation"
	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// backend answers from a real journal and a fixed status, and counts calls
// so a test can assert that a refused request reached nothing.
type backend struct {
	j     *journal.Journal
	calls int
}

func (b *backend) Status(context.Context) (Status, error) {
	b.calls++
	return Status{Hosts: []Host{{Name: "host-a", AgentUp: true}}}, nil
}

func (b *backend) History(_ context.Context, f HistoryFilter) ([]journal.Record, error) {
	b.calls++
	all, err := b.j.List(0)
	var out []journal.Record
	for _, r := range all {
		if f.Match(r) && len(out) < f.Limit {
			out = append(out, r)
		}
	}
	return out, err
}

func (b *backend) Record(_ context.Context, id uint64) (journal.Record, error) {
	b.calls++
	return b.j.Get(id)
}

// pauser keeps pauses as the engine does.
type pauser struct {
	ps    []guards.Pause
	calls int
}

func (p *pauser) Pause(x guards.Pause) error {
	p.calls++
	if err := x.Validate(); err != nil {
		return err
	}
	p.ps = append(p.ps, x)
	return nil
}
func (p *pauser) Resume(string)          { p.calls++; p.ps = nil }
func (p *pauser) Pauses() []guards.Pause { p.calls++; return p.ps }

// actor runs, approves and denies on a real journal with the engine's
// error contract, until the engine has these methods.
type actor struct {
	j     *journal.Journal
	calls int
}

func (a *actor) Run(_ context.Context, req remediation.ManualRequest) (journal.Record, error) {
	a.calls++
	if req.Action == "bogus" {
		return journal.Record{}, fmt.Errorf("run: unknown action %q: %w", req.Action, remediation.ErrInvalid)
	}
	return a.j.Append(journal.Record{Created: time.Now(), Action: req.Action, Target: req.Target, Labels: req.Labels,
		DryRun: req.DryRun, Author: req.Author, AuthorRole: req.AuthorRole, OnBehalfOf: req.OnBehalfOf,
		Comment: req.Comment, State: journal.StatePending})
}

func (a *actor) Answer(id uint64, yes bool, by guards.Who, comment string) (journal.Record, error) {
	if yes {
		return a.decide(id, guards.Approved, journal.StateRunning, by, comment)
	}
	return a.decide(id, guards.Denied, journal.StateCancelled, by, comment)
}

func (a *actor) decide(id uint64, to guards.ApprovalState, state journal.State, by guards.Who, comment string) (journal.Record, error) {
	a.calls++
	rec, err := a.j.Get(id)
	if err != nil {
		return rec, err
	}
	if rec.State != journal.StateAwaitingApproval {
		return rec, fmt.Errorf("action %d is %s: %w", id, rec.State, remediation.ErrConflict)
	}
	return a.j.Update(id, func(r *journal.Record) {
		r.State = state
		r.Approval = &guards.Approval{State: to, Author: by.Name, AuthorRole: by.Role, OnBehalfOf: by.OnBehalfOf, Comment: comment}
	})
}

// reloader loads a real policy file and keeps the old policy when the new
// one does not load, as the server's holder does.
type reloader struct {
	mu    sync.Mutex
	path  string
	cur   PolicyStatus
	calls int
}

func (r *reloader) Policy() PolicyStatus { r.mu.Lock(); defer r.mu.Unlock(); return r.cur }

func (r *reloader) Reload() (PolicyStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	p, err := policy.Load(r.path)
	if err != nil {
		r.cur.LastError = &ReloadFailure{At: time.Now(), Errors: ErrorLines(err)}
		return r.cur, err
	}
	r.cur = SummarizePolicy(r.path, time.Now(), p)
	return r.cur, nil
}

const goodPolicy = "rules:\n  - name: crashed-guests\n    match: {alertname: GuestCrashed}\n    action: restart-vm\n"

type fixture struct {
	srv *httptest.Server
	b   *backend
	p   *pauser
	a   *actor
	r   *reloader
}

func (f *fixture) calls() int { return f.b.calls + f.p.calls + f.a.calls + f.r.calls }

// The tokens of the tests: one per role.
var testTokens = []Token{
	{Name: "admin", Role: RoleAdmin, Secret: "s3cret"},
	{Name: "olga", Role: RoleOperator, Secret: "op-tok"},
	{Name: "bob", Role: RoleViewer, Secret: "view-tok"},
}

func newTestServer(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	j, err := journal.Open(filepath.Join(dir, "journal.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	for _, st := range []journal.State{journal.StateSucceeded, journal.StateAwaitingApproval, journal.StatePending} {
		if _, err := j.Append(journal.Record{Created: time.Now(), Action: "restart-vm", Host: "host-a", State: st}); err != nil {
			t.Fatal(err)
		}
	}
	polPath := filepath.Join(dir, "policy.yml")
	if err := os.WriteFile(polPath, []byte(goodPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	auth, err := NewAuthenticator(testTokens)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{b: &backend{j: j}, p: &pauser{}, a: &actor{j: j}, r: &reloader{path: polPath}}
	if _, err := f.r.Reload(); err != nil {
		t.Fatal(err)
	}
	f.r.calls = 0
	f.srv = httptest.NewServer(NewHandler(Options{Backend: f.b, Pauser: f.p, Actor: f.a, Policy: f.r, Auth: auth}))
	t.Cleanup(f.srv.Close)
	return f
}

// call sends a request with the token (none if empty) and returns the
// status and body.
func (f *fixture) call(t *testing.T, token, method, path, body string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// routeTable is the server's whole route table as the tests expect it:
// every route, the one role that may call it, and a valid request to it.
// TestRouteTable fails when the table and this list differ, so a route
// added without a test here fails.
var routeTable = []struct {
	method, pattern string
	role            Role
	path, body      string
}{
	{"GET", "/api/v1/status", RoleViewer, "/api/v1/status", ""},
	{"GET", "/api/v1/whoami", RoleViewer, "/api/v1/whoami", ""},
	{"GET", "/api/v1/servers", RoleViewer, "/api/v1/servers", ""},
	{"GET", "/api/v1/history", RoleViewer, "/api/v1/history", ""},
	{"GET", "/api/v1/history/{id}", RoleViewer, "/api/v1/history/1", ""},
	{"GET", "/api/v1/actions", RoleViewer, "/api/v1/actions?state=pending", ""},
	{"GET", "/api/v1/actions/{id}", RoleViewer, "/api/v1/actions/1", ""},
	{"POST", "/api/v1/actions", RoleOperator, "/api/v1/actions", `{"action":"restart-vm","target":"host-a/u1","comment":"by hand"}`},
	{"POST", "/api/v1/actions/{id}/approve", RoleOperator, "/api/v1/actions/2/approve", `{"comment":"go"}`},
	{"POST", "/api/v1/actions/{id}/deny", RoleOperator, "/api/v1/actions/2/deny", `{"comment":"no"}`},
	{"GET", "/api/v1/pauses", RoleViewer, "/api/v1/pauses", ""},
	{"POST", "/api/v1/pauses", RoleOperator, "/api/v1/pauses", `{"target":"*","comment":"maintenance","duration":"1h"}`},
	{"DELETE", "/api/v1/pauses", RoleOperator, "/api/v1/pauses?target=*", ""},
	{"GET", "/api/v1/policy", RoleViewer, "/api/v1/policy", ""},
	{"POST", "/api/v1/policy/reload", RoleAdmin, "/api/v1/policy/reload", ""},
	{"POST", "/api/v1/alertmanager", RoleWebhook, "/api/v1/alertmanager", "{}"},
	{"GET", "/api/v1/clusters", RoleViewer, "/api/v1/clusters", ""},
	{"GET", "/api/v1/clusters/{name}", RoleViewer, "/api/v1/clusters/lab", ""},
	{"POST", "/api/v1/clusters", RoleOperator, "/api/v1/clusters", "{}"},
	{"POST", "/api/v1/clusters/plan", RoleOperator, "/api/v1/clusters/plan", "{}"},
	{"PATCH", "/api/v1/clusters/{name}/pools/{pool}", RoleOperator, "/api/v1/clusters/lab/pools/worker", `{"count":2}`},
	{"DELETE", "/api/v1/clusters/{name}", RoleAdmin, "/api/v1/clusters/lab", ""},
	{"GET", "/api/v1/hosts", RoleViewer, "/api/v1/hosts", ""},
	{"GET", "/api/v1/hosts/{name}", RoleViewer, "/api/v1/hosts/hv-a1", ""},
	{"POST", "/api/v1/hosts", RoleAdmin, "/api/v1/hosts", "{}"},
	{"DELETE", "/api/v1/hosts/{name}", RoleAdmin, "/api/v1/hosts/hv-a1", ""},
	{"GET", "/api/v1/provisioner/hosts", RoleViewer, "/api/v1/provisioner/hosts", ""},
	{"GET", "/api/v1/provisioner/hosts/{name}", RoleViewer, "/api/v1/provisioner/hosts/hv-a1", ""},
	{"POST", "/api/v1/provisioner/hosts/{name}/provision", RoleAdmin, "/api/v1/provisioner/hosts/hv-a1/provision", `{"comment":"x"}`},
	{"POST", "/api/v1/provisioner/hosts/{name}/reprovision", RoleAdmin, "/api/v1/provisioner/hosts/hv-a1/reprovision", `{"comment":"x"}`},
}

// routes are the routes the API's own handler serves, for the tests of
// authentication.
var routes = func() (rs []struct {
	method, path, body string
	role               Role
}) {
	for _, rt := range routeTable {
		if rt.role != RoleWebhook && !strings.HasPrefix(rt.pattern, "/api/v1/clusters") &&
			!strings.HasPrefix(rt.pattern, "/api/v1/hosts") && !strings.HasPrefix(rt.pattern, "/api/v1/provisioner/") {
			rs = append(rs, struct {
				method, path, body string
				role               Role
			}{rt.method, rt.path, rt.body, rt.role})
		}
	}
	return rs
}()

// The route table is exactly the expected one: no route more, none less,
// none with another role.
func TestRouteTable(t *testing.T) {
	type key struct{ method, pattern string }
	want := map[key]Role{}
	for _, rt := range routeTable {
		want[key{rt.method, rt.pattern}] = rt.role
	}
	got := map[key]Role{}
	for _, p := range permissions {
		k := key{p.Method, p.Pattern}
		if _, dup := got[k]; dup {
			t.Errorf("%s %s is in the table twice", p.Method, p.Pattern)
		}
		got[k] = p.Role
		if r, ok := want[k]; !ok {
			t.Errorf("%s %s (%s) is in the route table but not in this test", p.Method, p.Pattern, p.Role)
		} else if r != p.Role {
			t.Errorf("%s %s needs %s, want %s", p.Method, p.Pattern, p.Role, r)
		}
	}
	for k, r := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("%s %s (%s) is missing from the route table", k.method, k.pattern, r)
		}
	}
}

// allTokens are the test's tokens and Alertmanager's.
var allTokens = append(testTokens[:len(testTokens):len(testTokens)], Token{Name: "am", Role: RoleWebhook, Secret: "am-tok"})

// Every route of the table against every role, served as the server
// serves them: the API's handler, and the provisioner's routes and the
// webhook's behind Guard. A role the route's allows is served (2xx); any
// other gets 403 naming the token, its role and the role needed, and
// reaches nothing.
func TestRoles(t *testing.T) {
	for _, rt := range routeTable {
		what := permissionOf(rt.method, rt.pattern).What
		for _, tok := range allTokens {
			t.Run(rt.method+" "+rt.path+"/"+tok.Name, func(t *testing.T) {
				f := newTestServer(t) // fresh, so approve and deny find record 2 awaiting
				auth, err := NewAuthenticator(allTokens)
				if err != nil {
					t.Fatal(err)
				}
				reached := 0
				stub := auth.Guard(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					reached++
					w.WriteHeader(http.StatusNoContent)
				}))
				mux := http.NewServeMux()
				mux.Handle("/api/v1/", NewHandler(Options{Backend: f.b, Pauser: f.p, Actor: f.a, Policy: f.r, Auth: auth}))
				for _, p := range []string{"/api/v1/clusters", "/api/v1/clusters/", "/api/v1/hosts", "/api/v1/hosts/", "/api/v1/provisioner/", "/api/v1/alertmanager"} {
					mux.Handle(p, stub)
				}
				req := httptest.NewRequest(rt.method, rt.path, strings.NewReader(rt.body))
				req.Header.Set("Authorization", "Bearer "+tok.Secret)
				w := httptest.NewRecorder()
				before := f.calls()
				mux.ServeHTTP(w, req)
				code, body := w.Code, w.Body.String()
				if !tok.Role.Allows(rt.role) {
					want := fmt.Sprintf("token %q has role %s; %s needs %s", tok.Name, tok.Role, what, rt.role)
					var eb errorBody
					_ = json.Unmarshal([]byte(body), &eb)
					if code != http.StatusForbidden || eb.Error != want {
						t.Fatalf("%d %s, want 403 with %q", code, body, want)
					}
					if f.calls() != before || reached != 0 {
						t.Error("a forbidden request reached the backend")
					}
					return
				}
				if code/100 != 2 {
					t.Fatalf("%d %s, want a 2xx", code, body)
				}
			})
		}
	}
}

// Running and approving an action also need the action's role: an
// operator may restart a guest but not reprovision a host, by POST
// /api/v1/actions or by approving it.
func TestActionRoles(t *testing.T) {
	f := newTestServer(t)
	rec, err := f.b.j.Append(journal.Record{Created: time.Now(), Action: "reprovision-host", Host: "host-a", State: journal.StateAwaitingApproval})
	if err != nil {
		t.Fatal(err)
	}
	approve := fmt.Sprintf("/api/v1/actions/%d/approve", rec.ID)
	for _, tc := range []struct {
		token, method, path, body string
		want                      int
		msg                       string
	}{
		{"op-tok", "POST", "/api/v1/actions", `{"action":"reprovision-host","target":"host-a","comment":"x"}`, 403,
			`token \"olga\" has role operator; running reprovision-host needs admin`},
		{"op-tok", "POST", "/api/v1/actions", `{"action":"recreate-vm","target":"host-a/u1","comment":"x"}`, 403, "running recreate-vm needs admin"},
		{"op-tok", "POST", approve, `{"comment":"go"}`, 403, "approving reprovision-host needs admin"},
		{"op-tok", "POST", "/api/v1/actions", `{"action":"repair-overlay","target":"host-a/prod","comment":"x"}`, 202, ""},
		{"s3cret", "POST", "/api/v1/actions", `{"action":"reprovision-host","target":"host-a","comment":"x"}`, 202, ""},
		{"s3cret", "POST", approve, `{"comment":"go"}`, 200, ""},
	} {
		code, body, _ := f.call(t, tc.token, tc.method, tc.path, tc.body)
		if code != tc.want || !strings.Contains(body, tc.msg) {
			t.Errorf("%s %s %s: %d %s, want %d with %q", tc.token, tc.path, tc.body, code, body, tc.want, tc.msg)
		}
	}
	recs, _ := f.b.j.List(0)
	if n := len(recs); n != 6 {
		t.Errorf("%d records, want 6: the refused requests must add none", n)
	}
}

// Without a known token every route answers 401 and reaches nothing,
// before any other check (even for an unknown endpoint).
func TestAuthentication(t *testing.T) {
	f := newTestServer(t)
	all := append(routes[:len(routes):len(routes)], struct {
		method, path, body string
		role               Role
	}{"GET", "/api/v1/nope", "", RoleViewer})
	for _, rt := range all {
		for _, tc := range []struct{ name, header string }{
			{"no token", ""},
			{"wrong token", "Bearer nope"},
			{"token prefix", "Bearer s3cre"},
			{"basic auth", "Basic czNjcmV0Og=="},
			{"token without scheme", "s3cret"},
		} {
			t.Run(rt.method+" "+rt.path+"/"+tc.name, func(t *testing.T) {
				before := f.calls()
				req, _ := http.NewRequest(rt.method, f.srv.URL+rt.path, strings.NewReader(rt.body))
				if tc.header != "" {
					req.Header.Set("Authorization", tc.header)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("status %d, want 401", resp.StatusCode)
				}
				if f.calls() != before {
					t.Error("a refused request reached the backend")
				}
				if resp.Header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
			})
		}
	}
}

// The scheme is case-insensitive (RFC 9110 §11.1), as Alertmanager's
// webhook and the agent have it; blanks around the token do not count.
func TestBearerScheme(t *testing.T) {
	f := newTestServer(t)
	for _, header := range []string{"Bearer view-tok", "bearer view-tok", "BEARER view-tok", "Bearer  view-tok "} {
		req, _ := http.NewRequest("GET", f.srv.URL+"/api/v1/status", nil)
		req.Header.Set("Authorization", header)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("Authorization %q: status %d, want 200", header, resp.StatusCode)
		}
	}
}

func TestBadRequests(t *testing.T) {
	f := newTestServer(t)
	big := `{"action":"restart-vm","target":"h/u","comment":"` + strings.Repeat("x", maxBody) + `"}`
	for _, tc := range []struct {
		method, path, body string
		want               int
		msg                string
	}{
		{"GET", "/api/v1/history?limit=abc", "", 400, "limit"},
		{"GET", "/api/v1/history?limit=0", "", 400, "limit"},
		{"GET", "/api/v1/history?limit=99999999", "", 400, "limit"},
		{"GET", "/api/v1/nope", "", 404, "no such endpoint"},
		{"GET", "/api/v1/history?since=yesterday", "", 400, "since"},
		{"GET", "/api/v1/actions?state=pending,bogus", "", 400, `state: unknown state \"bogus\"`},
		{"GET", "/api/v1/history/abc", "", 400, "action id"},
		{"GET", "/api/v1/history/99", "", 404, "action 99"},
		{"POST", "/api/v1/status", "", 405, "POST is not allowed"},
		{"PUT", "/api/v1/pauses", "", 405, "PUT is not allowed"},
		{"GET", "/api/v1/actions/1/approve", "", 405, "GET is not allowed"},
		{"POST", "/api/v1/actions", `{"action":"restart-vm","target":"h/u","comment":"x","force":true}`, 400, `unknown field \"force\"`},
		{"POST", "/api/v1/actions", `{"action":"restart-vm",`, 400, "request body"},
		{"POST", "/api/v1/actions", ``, 400, "request body: empty"},
		{"POST", "/api/v1/actions", `{"action":"restart-vm","target":"h/u","comment":"x"} {}`, 400, "unexpected data after"},
		{"POST", "/api/v1/actions", `{"action":"restart-vm","target":"h/u"}`, 400, "comment: required"},
		{"POST", "/api/v1/actions", `{"comment":"x"}`, 400, "action, target: required"},
		{"POST", "/api/v1/actions", `{"action":"bogus","target":"h/u","comment":"x"}`, 400, "invalid request"},
		{"POST", "/api/v1/actions", `{"action":["restart-vm"],"target":"h/u","comment":"x"}`, 400, "request body"},
		{"POST", "/api/v1/actions", big, 413, "larger than"},
		{"POST", "/api/v1/actions/2/approve", `{"comment":""}`, 400, "comment: required"},
		{"POST", "/api/v1/actions/2/approve", `{"comment":"ok","why":"x"}`, 400, `unknown field \"why\"`},
		{"POST", "/api/v1/actions/0/approve", `{"comment":"ok"}`, 400, "action id"},
		{"POST", "/api/v1/actions/99/approve", `{"comment":"ok"}`, 404, "approve action 99"},
		{"POST", "/api/v1/actions/1/approve", `{"comment":"ok"}`, 409, "action 1 is succeeded"},
		{"POST", "/api/v1/actions/3/deny", `{"comment":"no"}`, 409, "action 3 is pending"},
		{"POST", "/api/v1/pauses", `{"target":"*","comment":"x","duration":"soon"}`, 400, "duration"},
		{"POST", "/api/v1/pauses", `{"target":"*","duration":"1h"}`, 400, "comment: required"},
		{"POST", "/api/v1/pauses", `{"target":"*","comment":"x","duration":"1h","author":7}`, 400, "request body"},
		{"DELETE", "/api/v1/pauses", "", 400, "target: required"},
		{"POST", "/api/v1/pauses", `{"target":"*","comment":"x","duration":"2562047h"}`, 400, "duration: 2562047h0m0s is longer than the longest pause, 720h0m0s"},
		{"POST", "/api/v1/pauses", `{"target":"*","comment":"x","duration":"721h"}`, 400, "longer than the longest pause"},
		{"POST", "/api/v1/pauses", `{"target":"host-a\nhost-b","comment":"x","duration":"1h"}`, 400, "target: control character U+000A at byte 6"},
		{"POST", "/api/v1/pauses", `{"target":"*","comment":"x\u001b[2J","duration":"1h"}`, 400, "comment: control character U+001B"},
		{"POST", "/api/v1/pauses", `{"target":"*","comment":"x","author":"al\u202eice","duration":"1h"}`, 400, "author: control character U+202E"},
		{"POST", "/api/v1/actions", `{"action":"restart-vm","target":"h/u","comment":"x\ry"}`, 400, "comment: control character U+000D"},
		{"POST", "/api/v1/actions", `{"action":"restart-vm","target":"h/u","comment":"x","author":"a\u0085"}`, 400, "author: control character U+0085"},
		{"POST", "/api/v1/actions/2/approve", `{"comment":"ok\u2028"}`, 400, "comment: control character U+2028"},
	} {
		t.Run(tc.method+" "+tc.path+" "+tc.body[:min(len(tc.body), 40)], func(t *testing.T) {
			code, body, _ := f.call(t, "s3cret", tc.method, tc.path, tc.body)
			if code != tc.want {
				t.Fatalf("status %d (%s), want %d", code, body, tc.want)
			}
			if !strings.Contains(body, tc.msg) {
				t.Errorf("body %q does not mention %q", body, tc.msg)
			}
		})
	}
	// None of the refused requests changed the journal: records 1-3 as made.
	recs, _ := f.b.j.List(0)
	if len(recs) != 3 || recs[1].State != journal.StateAwaitingApproval {
		t.Errorf("journal changed by refused requests: %+v", recs)
	}
}

func TestRunApproveDeny(t *testing.T) {
	f := newTestServer(t)
	ctx := context.Background()
	olga := NewClient(f.srv.URL, "op-tok", nil)

	rec, err := olga.Run(ctx, RunRequest{Action: "restart-vm", Target: "host-a/u1", Labels: map[string]string{"k": "v"}, DryRun: true, Comment: "by hand"})
	if err != nil {
		t.Fatal(err)
	}
	if rec.ID != 4 || rec.Author != "olga" || !rec.DryRun || rec.Labels["k"] != "v" || rec.Comment != "by hand" {
		t.Errorf("run = %+v, want record 4 by olga (the token's name), a dry run with the label", rec)
	}
	rec, err = olga.Run(ctx, RunRequest{Action: "restart-vm", Target: "host-a/u1", Author: "olga@pager", Comment: "again"})
	if err != nil || rec.Author != "olga" || rec.AuthorRole != "operator" || rec.OnBehalfOf != "olga@pager" {
		t.Errorf("run with --author = %+v, %v; want olga (operator) on behalf of olga@pager", rec, err)
	}

	rec, err = olga.Approve(ctx, 2, DecisionRequest{Comment: "looks right", Author: "mallory"})
	if err != nil || rec.State != journal.StateRunning || rec.Approval.Author != "olga" || rec.Approval.AuthorRole != "operator" ||
		rec.Approval.OnBehalfOf != "mallory" || rec.Approval.Comment != "looks right" {
		t.Fatalf("approve 2 = %+v, %v; want olga (operator) on behalf of mallory", rec, err)
	}
	_, err = olga.Deny(ctx, 2, DecisionRequest{Comment: "changed my mind"})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusConflict || !strings.HasPrefix(err.Error(), "conflict (409): deny action 2") {
		t.Fatalf("deny after approve: %v, want a 409", err)
	}

	_, err = NewClient(f.srv.URL, "view-tok", nil).Approve(ctx, 2, DecisionRequest{Comment: "x"})
	if !errors.As(err, &se) || se.Code != http.StatusForbidden ||
		err.Error() != `not allowed (403): token "bob" has role viewer; approving an action needs operator` {
		t.Fatalf("viewer approves: %v", err)
	}
}

func TestActionsByState(t *testing.T) {
	f := newTestServer(t)
	c := NewClient(f.srv.URL, "view-tok", nil)
	for _, tc := range []struct {
		query string
		want  []uint64
	}{
		{"", []uint64{3, 2, 1}},
		{"?state=pending,awaiting_approval", []uint64{3, 2}},
		{"?state=pending&state=succeeded", []uint64{3, 1}},
		{"?state=awaiting_approval&limit=1", []uint64{2}},
		{"?state=failed", nil},
	} {
		code, body, _ := f.call(t, "view-tok", "GET", "/api/v1/actions"+tc.query, "")
		var h History
		if err := json.Unmarshal([]byte(body), &h); err != nil || code != 200 {
			t.Fatalf("%s: %d %s", tc.query, code, body)
		}
		var got []uint64
		for _, r := range h.Records {
			got = append(got, r.ID)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: records %v, want %v", tc.query, got, tc.want)
		}
	}
	h, err := c.Actions(context.Background(), HistoryFilter{Limit: 10, States: []journal.State{journal.StatePending, journal.StateAwaitingApproval}})
	if err != nil || len(h.Records) != 2 {
		t.Fatalf("client Actions = %+v, %v", h, err)
	}
}

// A reload that fails answers 422 with the file's problems and leaves the
// old policy in force; GET /policy tells both.
func TestPolicyReload(t *testing.T) {
	f := newTestServer(t)
	ctx := context.Background()
	admin := NewClient(f.srv.URL, "s3cret", nil)

	s, err := admin.ReloadPolicy(ctx)
	if err != nil || len(s.Rules) != 1 || s.Rules[0].Name != "crashed-guests" || s.File != f.r.path {
		t.Fatalf("reload = %+v, %v", s, err)
	}
	bad := "rules:\n  - name: crashed-guests\n    match: {alertname: GuestCrashed}\n    action: restrat-vm\n    verify_timeout: -1s\n"
	if err := os.WriteFile(f.r.path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	code, body, _ := f.call(t, "s3cret", "POST", "/api/v1/policy/reload", "")
	if code != http.StatusUnprocessableEntity {
		t.Fatalf("bad reload: %d %s, want 422", code, body)
	}
	var eb errorBody
	if err := json.Unmarshal([]byte(body), &eb); err != nil {
		t.Fatal(err)
	}
	wantErrs := []string{
		f.r.path + `:4: rules[0].action: unknown action "restrat-vm"`,
		f.r.path + `:5: rules[0].verify_timeout: -1s is negative`,
	}
	if len(eb.Errors) != 2 || !strings.HasPrefix(eb.Errors[0], wantErrs[0]) || eb.Errors[1] != wantErrs[1] {
		t.Errorf("errors = %q, want %q", eb.Errors, wantErrs)
	}
	if eb.Policy == nil || eb.Policy.Rules[0].Action != "restart-vm" {
		t.Errorf("422 body does not show the policy still in force: %s", body)
	}

	got, err := NewClient(f.srv.URL, "view-tok", nil).Policy(ctx)
	if err != nil || got.Rules[0].Action != "restart-vm" || got.LastError == nil || len(got.LastError.Errors) != 2 {
		t.Fatalf("policy after a failed reload = %+v, %v; want the old rules and the error", got, err)
	}

	_, err = admin.ReloadPolicy(ctx)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 422 || len(se.Details) != 2 || !strings.Contains(err.Error(), "\n  "+wantErrs[1]) {
		t.Fatalf("client reload error = %v, want a 422 with the lines", err)
	}
}

func TestPauses(t *testing.T) {
	f := newTestServer(t)
	c := NewClient(f.srv.URL, "op-tok", nil)
	p, err := c.Pause(context.Background(), PauseRequest{Target: guards.Everything, Comment: "maintenance", Duration: "2h"})
	if err != nil || p.Author != "olga" || p.AuthorRole != "operator" || p.OnBehalfOf != "" || p.Until.Sub(p.Since) != 2*time.Hour {
		t.Fatalf("pause = %+v, %v; want olga's 2h pause", p, err)
	}
	// A named author cannot take the token's place; it is kept beside it.
	p, err = c.Pause(context.Background(), PauseRequest{Target: "host-a", Author: "admin", Comment: "for alice", Duration: "1h"})
	if err != nil || p.Author != "olga" || p.AuthorRole != "operator" || p.OnBehalfOf != "admin" {
		t.Fatalf("pause with author = %+v, %v; want olga (operator) on behalf of admin", p, err)
	}
	ps, err := c.Pauses(context.Background())
	if err != nil || len(ps) != 2 {
		t.Fatalf("pauses = %+v, %v", ps, err)
	}
	if err := c.Resume(context.Background(), guards.Everything); err != nil || len(f.p.ps) != 0 {
		t.Fatalf("resume: %v, %d pauses left", err, len(f.p.ps))
	}
}

func TestClient(t *testing.T) {
	f := newTestServer(t)
	c := NewClient(f.srv.URL, "s3cret", nil)
	s, err := c.Status(context.Background())
	if err != nil || len(s.Hosts) != 1 || s.Hosts[0].Name != "host-a" {
		t.Fatalf("Status = %+v, %v", s, err)
	}
	h, err := c.History(context.Background(), HistoryFilter{Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Records) != 2 || h.Records[0].ID != 3 {
		t.Fatalf("History(2) = %+v, want records 3 and 2", h.Records)
	}
	if _, err := c.Record(context.Background(), 9); err == nil || !strings.HasPrefix(err.Error(), "not found (404)") {
		t.Errorf("Record(9) = %v, want a 404", err)
	}

	_, err = NewClient(f.srv.URL, "wrong", nil).Status(context.Background())
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %v, want a 401 StatusError", err)
	}
}

func TestNewAuthenticator(t *testing.T) {
	for _, tc := range []struct {
		tokens []Token
		want   string
	}{
		{nil, "none given"},
		{[]Token{{Name: "", Role: RoleViewer, Secret: "a"}}, "has no name"},
		{[]Token{{Name: "a", Role: RoleViewer, Secret: "x"}, {Name: "a", Role: RoleAdmin, Secret: "y"}}, `"a": name used twice`},
		{[]Token{{Name: "a", Role: RoleViewer, Secret: "x"}, {Name: "b", Role: RoleAdmin, Secret: "x"}}, `"b": same secret as token "a"`},
		{[]Token{{Name: "a", Role: RoleViewer}}, `"a": empty secret`},
		{[]Token{{Name: "a", Secret: "x"}}, `"a": invalid role`},
	} {
		_, err := NewAuthenticator(tc.tokens)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.tokens, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "x") && strings.Contains(tc.want, "secret") && strings.Contains(err.Error(), `"x"`) {
			t.Errorf("error reveals a secret: %v", err)
		}
	}
	for _, s := range []string{"viewer", "operator", "admin"} {
		if r, err := ParseRole(s); err != nil || r.String() != s {
			t.Errorf("ParseRole(%q) = %v, %v", s, r, err)
		}
	}
	if _, err := ParseRole("root"); err == nil {
		t.Error("ParseRole(root) succeeded")
	}
}

func TestHistoryFilter(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	rec := journal.Record{Created: now.Add(-time.Hour), Action: "restart-vm", Host: "host-a", UUID: "u1", Domain: "g1", State: journal.StateSucceeded}
	for _, tc := range []struct {
		f    HistoryFilter
		want bool
	}{
		{HistoryFilter{}, true},
		{HistoryFilter{Target: "host-a"}, true},
		{HistoryFilter{Target: "g1"}, true},
		{HistoryFilter{Target: "host-a/u1"}, true},
		{HistoryFilter{Target: "host-b"}, false},
		{HistoryFilter{Action: "restart-vm", Result: "succeeded"}, true},
		{HistoryFilter{Result: "failed"}, false},
		{HistoryFilter{States: []journal.State{journal.StateFailed, journal.StateSucceeded}}, true},
		{HistoryFilter{States: []journal.State{journal.StatePending}}, false},
		{HistoryFilter{Since: now.Add(-2 * time.Hour)}, true},
		{HistoryFilter{Since: now.Add(-30 * time.Minute)}, false},
	} {
		if got := tc.f.Match(rec); got != tc.want {
			t.Errorf("%+v: Match = %v, want %v", tc.f, got, tc.want)
		}
	}
}

// Whatever body arrives, POST /api/v1/actions answers 202, 400 or 413,
// never 5xx, and reaches the actor only with action, target and comment.
func FuzzRunBody(f *testing.F) {
	f.Add([]byte(`{"action":"restart-vm","target":"h/u","comment":"x"}`))
	f.Add([]byte(`{"action":"restart-vm","target":"h/u","comment":"x","labels":{"a":"b"},"dry_run":true,"author":"z"}`))
	f.Add([]byte(`{"action":`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"x":1}`))
	auth, _ := NewAuthenticator(testTokens)
	got := &recordingActor{}
	h := NewHandler(Options{Backend: &backend{}, Actor: got, Auth: auth})
	f.Fuzz(func(t *testing.T, body []byte) {
		got.req = nil
		req := httptest.NewRequest("POST", "/api/v1/actions", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer op-tok")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		switch w.Code {
		case 202:
			if got.req == nil || got.req.Action == "" || got.req.Target == "" || got.req.Comment == "" || got.req.Author == "" {
				t.Fatalf("202 for %q with request %+v", body, got.req)
			}
		case 403:
			var req RunRequest
			if json.Unmarshal(body, &req) != nil || RoleOperator.Allows(ActionRole(req.Action)) || got.req != nil {
				t.Fatalf("403 for %q (%s)", body, w.Body)
			}
		case 400, 413:
			if got.req != nil {
				t.Fatalf("%d for %q, yet the actor ran %+v", w.Code, body, got.req)
			}
		default:
			t.Fatalf("status %d for %q: %s", w.Code, body, w.Body)
		}
	})
}

type recordingActor struct{ req *remediation.ManualRequest }

func (a *recordingActor) Run(_ context.Context, r remediation.ManualRequest) (journal.Record, error) {
	a.req = &r
	return journal.Record{ID: 1}, nil
}
func (a *recordingActor) Answer(uint64, bool, guards.Who, string) (journal.Record, error) {
	return journal.Record{}, nil
}

// Any query string either parses or gives an error naming its parameter.
func FuzzParseHistoryFilter(f *testing.F) {
	for _, s := range []string{"limit=5&state=pending,awaiting_approval", "since=2h", "since=2026-11-25T12:00:00Z&target=h", "state=x", "limit=-1"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := urlParseQuery(raw)
		if err != nil {
			return
		}
		flt, err := parseHistoryFilter(q, now)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "limit:") && !strings.HasPrefix(err.Error(), "since:") && !strings.HasPrefix(err.Error(), "state:") {
				t.Fatalf("error %q names no parameter", err)
			}
			return
		}
		if flt.Limit < 1 || flt.Limit > maxHistoryLimit {
			t.Fatalf("limit %d out of range", flt.Limit)
		}
		// What the client sends back parses to the same states.
		again, err := urlParseQuery(flt.query())
		if err != nil {
			t.Fatal(err)
		}
		back, err := parseHistoryFilter(again, now)
		if err != nil || fmt.Sprint(back.States) != fmt.Sprint(flt.States) {
			t.Fatalf("round trip of %q: %+v, %v", raw, back, err)
		}
	})
}

// BenchmarkAuthenticate measures one request through the authenticator
// with ten tokens, the last of which matches.
func BenchmarkAuthenticate(b *testing.B) {
	var toks []Token
	for i := range 10 {
		toks = append(toks, Token{Name: fmt.Sprint("t", i), Role: RoleViewer, Secret: fmt.Sprintf("%032d", i)})
	}
	a, _ := NewAuthenticator(toks)
	header := "Bearer " + toks[9].Secret
	for b.Loop() {
		if _, ok, _ := a.identify(header); !ok {
			b.Fatal("not identified")
		}
	}
}

func urlParseQuery(s string) (map[string][]string, error) { return url.ParseQuery(s) }

// Every token learns its own name and role, and nothing about the others'.
func TestWhoAmI(t *testing.T) {
	f := newTestServer(t)
	for _, tok := range testTokens {
		me, err := NewClient(f.srv.URL, tok.Secret, nil).WhoAmI(context.Background())
		if err != nil || me != (WhoAmI{Name: tok.Name, Role: tok.Role.String()}) {
			t.Errorf("WhoAmI as %s = %+v, %v", tok.Name, me, err)
		}
	}
	if _, err := NewClient(f.srv.URL, "wrong", nil).WhoAmI(context.Background()); err == nil {
		t.Error("WhoAmI with an unknown token: no error, want 401")
	}
	if r, ok := RoleFor("POST", "/api/v1/actions/{id}/approve"); !ok || r != RoleOperator {
		t.Errorf(`RoleFor(POST approve) = %v, %v; want operator`, r, ok)
	}
	if _, ok := RoleFor("POST", "/api/v1/nothing"); ok {
		t.Error("RoleFor of a route the table lacks: found")
	}
}
