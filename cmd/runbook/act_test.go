package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"caretaker/internal/api"
	"caretaker/remediation"
	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// testAuth accepts "tok" (admin), "op-tok" (olga, operator) and "view-tok"
// (vera, viewer).
func testAuth(t *testing.T) *api.Authenticator {
	t.Helper()
	a, err := api.NewAuthenticator([]api.Token{
		{Name: "admin", Role: api.RoleAdmin, Secret: "tok"},
		{Name: "olga", Role: api.RoleOperator, Secret: "op-tok"},
		{Name: "vera", Role: api.RoleViewer, Secret: "view-tok"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// journalBackend answers from a real journal.
type journalBackend struct{ j *journal.Journal }

func (b journalBackend) Status(context.Context) (api.Status, error) { return api.Status{}, nil }
func (b journalBackend) History(_ context.Context, f api.HistoryFilter) ([]journal.Record, error) {
	all, err := b.j.List(0)
	var out []journal.Record
	for _, r := range all {
		if f.Match(r) && len(out) < f.Limit {
			out = append(out, r)
		}
	}
	return out, err
}
func (b journalBackend) Record(_ context.Context, id uint64) (journal.Record, error) {
	return b.j.Get(id)
}

// journalActor runs, approves and denies on the journal with the engine's
// error contract, until the engine has these methods.
type journalActor struct{ j *journal.Journal }

func (a journalActor) Run(_ context.Context, req remediation.ManualRequest) (journal.Record, error) {
	return a.j.Append(journal.Record{Created: time.Now(), Action: req.Action, Target: req.Target, Labels: req.Labels,
		DryRun: req.DryRun, Author: req.Author, AuthorRole: req.AuthorRole, OnBehalfOf: req.OnBehalfOf,
		Comment: req.Comment, State: journal.StatePending})
}
func (a journalActor) Answer(id uint64, yes bool, by guards.Who, comment string) (journal.Record, error) {
	return a.decide(id, by.Name, comment, yes)
}
func (a journalActor) decide(id uint64, author, comment string, yes bool) (journal.Record, error) {
	rec, err := a.j.Get(id)
	if err != nil {
		return rec, fmt.Errorf("action %d: %w", id, err)
	}
	if rec.State != journal.StateAwaitingApproval {
		return rec, fmt.Errorf("action %d is %s, not awaiting approval: %w", id, rec.State, remediation.ErrConflict)
	}
	return a.j.Update(id, func(r *journal.Record) {
		now := time.Now()
		if yes {
			r.Approval.Approve(author, comment, now)
			r.State = journal.StateRunning
		} else {
			r.Approval.Deny(author, comment, now)
			r.State = journal.StateCancelled
		}
		r.Transitions = append(r.Transitions, journal.Transition{State: r.State, At: now, Note: "by " + author})
	})
}

// fileReloader loads a real policy file, keeping the old one on failure.
type fileReloader struct {
	path string
	cur  api.PolicyStatus
}

func (r *fileReloader) Policy() api.PolicyStatus { return r.cur }
func (r *fileReloader) Reload() (api.PolicyStatus, error) {
	p, err := policy.Load(r.path)
	if err != nil {
		r.cur.LastError = &api.ReloadFailure{At: time.Now(), Errors: api.ErrorLines(err)}
		return r.cur, err
	}
	r.cur = api.SummarizePolicy(r.path, time.Now(), p)
	return r.cur, nil
}

const testPolicy = "rules:\n  - name: crashed-guests\n    match: {alertname: GuestCrashed}\n    action: restart-vm\n    approval: {required: true}\n"
const badPolicy = "rules:\n  - name: crashed-guests\n    match: {alertname: GuestCrashed}\n    action: restrat-vm\n"

// actServer serves the whole API over a real journal holding one succeeded
// action (1), one awaiting approval (2) and one pending (3).
func actServer(t *testing.T) (*httptest.Server, string) {
	t.Helper()
	dir := t.TempDir()
	j, err := journal.Open(filepath.Join(dir, "journal.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	now := time.Now()
	appr, _ := guards.NewApproval("host-a/u2", "restart-vm", time.Hour, now)
	for _, r := range []journal.Record{
		{Created: now, Alert: "GuestCrashed", Action: "restart-vm", Host: "host-a", Domain: "g1", State: journal.StateSucceeded},
		{Created: now, Alert: "GuestCrashed", Action: "restart-vm", Target: "host-a/u2", Host: "host-a", UUID: "u2", Domain: "g2",
			State: journal.StateAwaitingApproval, Approval: &appr, Labels: map[string]string{"alertname": "GuestCrashed", "host": "host-a"},
			Decisions: []guards.Decision{
				{Guard: guards.GuardPause, Verdict: guards.Allow, Reason: "allowed: no pause"},
				{Guard: guards.GuardApproval, Verdict: guards.Wait, Reason: "waiting for a human's approval", RetryAt: appr.Expires},
			},
			Transitions: []journal.Transition{
				{State: journal.StatePending, At: now.Add(-2 * time.Second)},
				{State: journal.StateAwaitingApproval, At: now.Add(-time.Second), Note: "rule crashed-guests wants approval"},
			}},
		{Created: now, Alert: "OverlayDown", Action: "repair-overlay", Target: "host-b/prod", State: journal.StatePending,
			Reason: "held: maintenance window"},
	} {
		if _, err := j.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	polPath := filepath.Join(dir, "policy.yml")
	if err := os.WriteFile(polPath, []byte(testPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	rl := &fileReloader{path: polPath}
	if _, err := rl.Reload(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.NewHandler(api.Options{Backend: journalBackend{j}, Actor: journalActor{j}, Policy: rl,
		Pauser: &pausesOnly{}, Auth: testAuth(t)}))
	t.Cleanup(srv.Close)
	return srv, polPath
}

func TestPendingApproveDeny(t *testing.T) {
	srv, _ := actServer(t)
	out, err := runAs(t, srv.URL, "view-tok", "pending")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ID", "AGE", "EXPIRES", "awaiting_approval", "host-a/u2", "(in 1h0m0s)", "repair-overlay", "host-b/prod", "OverlayDown"} {
		if !strings.Contains(out, want) {
			t.Errorf("pending lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "host-a/g1") {
		t.Errorf("pending shows the succeeded action:\n%s", out)
	}

	for _, tc := range []struct {
		name  string
		token string
		args  []string
		want  string // in the output, or in the error when wantErr
		isErr bool
	}{
		{"no comment", "op-tok", []string{"approve", "2"}, "--comment (-m): required", true},
		{"bad id", "op-tok", []string{"approve", "x", "-m", "ok"}, "action id: want a positive integer", true},
		{"viewer", "view-tok", []string{"approve", "2", "-m", "ok"},
			`not allowed (403): token "vera" has role viewer; approving an action needs operator`, true},
		{"bad token", "nope", []string{"approve", "2", "-m", "ok"}, "the server refused the token (401)", true},
		{"unknown", "op-tok", []string{"approve", "99", "-m", "ok"}, "not found (404): approve action 99", true},
		{"not awaiting", "op-tok", []string{"deny", "3", "-m", "no"}, "conflict (409): deny action 3: action 3 is pending", true},
		{"approve", "op-tok", []string{"approve", "2", "-m", "checked the host"}, "approved action 2 (restart-vm on host-a/u2): now running", false},
		{"again", "op-tok", []string{"deny", "2", "-m", "too late"}, "conflict (409)", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runAs(t, srv.URL, tc.token, tc.args...)
			if tc.isErr {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want %q", err, tc.want)
				}
				return
			}
			if err != nil || !strings.Contains(out, tc.want) {
				t.Fatalf("%q, %v; want %q", out, err, tc.want)
			}
		})
	}

	// show prints every guard decision, the approval with its author, and
	// the transitions with their timestamps.
	out, err = runAs(t, srv.URL, "view-tok", "show", "2")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"GUARD", "pause", "allowed: no pause", "approval", "waiting for a human's approval",
		"APPROVAL", "approved", "olga", "checked the host", "AT", "rule crashed-guests wants approval", "running", "by olga",
		`alertname="GuestCrashed"`, time.Now().Local().Format("2006-01-02 ")} {
		if !strings.Contains(out, want) {
			t.Errorf("show 2 lacks %q:\n%s", want, out)
		}
	}
}

func TestRunCommand(t *testing.T) {
	srv, _ := actServer(t)
	out, err := runAs(t, srv.URL, "op-tok", "run", "restart-vm", "host-a/u1", "--dry-run", "--label", "a=b", "--label", "c=d=e", "-m", "by hand", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var rec journal.Record
	if err := json.Unmarshal([]byte(out), &rec); err != nil {
		t.Fatalf("run -o json = %s: %v", out, err)
	}
	if rec.ID != 4 || !rec.DryRun || rec.Author != "olga" || rec.Labels["c"] != "d=e" || rec.Target != "host-a/u1" {
		t.Errorf("run = %+v, want a dry run by olga with the labels", rec)
	}
	out, err = runAs(t, srv.URL, "op-tok", "run", "restart-vm", "host-a/u1", "--author", "olga@pager", "-m", "again")
	if err != nil || !strings.Contains(out, "recorded action 5: restart-vm on host-a/u1, now pending (follow it: runbook show 5)") {
		t.Fatalf("run: %q, %v", out, err)
	}
	// --author adds whom olga acts for; the token's name stays the author.
	if out, _ := runAs(t, srv.URL, "view-tok", "show", "5", "-o", "json"); !strings.Contains(out, `"author": "olga"`) ||
		!strings.Contains(out, `"author_role": "operator"`) || !strings.Contains(out, `"on_behalf_of": "olga@pager"`) {
		t.Errorf("--author not recorded as on behalf of:\n%s", out)
	}
	for _, args := range [][]string{{"show", "5"}, {"history"}} {
		if out, _ := runAs(t, srv.URL, "view-tok", args...); !strings.Contains(out, "olga (operator) on behalf of olga@pager") {
			t.Errorf("runbook %s does not say who:\n%s", strings.Join(args, " "), out)
		}
	}
	for _, tc := range []struct {
		token string
		args  []string
		want  string
	}{
		{"op-tok", []string{"run", "restart-vm", "host-a/u1"}, "--comment (-m): required"},
		{"op-tok", []string{"run", "restart-vm", "host-a/u1", "--label", "novalue", "-m", "x"}, `--label "novalue": want key=value`},
		{"op-tok", []string{"run", "restart-vm", "-m", "x"}, "accepts 2 arg(s)"},
		{"view-tok", []string{"run", "restart-vm", "host-a/u1", "-m", "x"}, `token "vera" has role viewer; running an action needs operator`},
	} {
		if _, err := runAs(t, srv.URL, tc.token, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestPolicyCommands(t *testing.T) {
	srv, polPath := actServer(t)
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.yml"), filepath.Join(dir, "bad.yml")
	os.WriteFile(good, []byte(testPolicy), 0o600)
	os.WriteFile(bad, []byte(badPolicy), 0o600)

	// check needs no server.
	out, err := runAs(t, "http://127.0.0.1:1", "", "policy", "check", good)
	if err != nil || out != "ok: 1 rules\n" {
		t.Fatalf("check good: %q, %v", out, err)
	}
	out, err = runAs(t, "http://127.0.0.1:1", "", "policy", "check", bad)
	if !errors.Is(err, errReported) || !strings.HasPrefix(out, bad+`:4: rules[0].action: unknown action "restrat-vm"`) {
		t.Fatalf("check bad: %q, %v", out, err)
	}

	if _, err := runAs(t, srv.URL, "op-tok", "policy", "reload"); err == nil ||
		!strings.Contains(err.Error(), `token "olga" has role operator; reloading the policy needs admin`) {
		t.Errorf("operator reloads: %v", err)
	}
	out, err = runAs(t, srv.URL, "tok", "policy", "reload")
	if err != nil || out != "reloaded "+polPath+": 1 rules\n" {
		t.Fatalf("reload: %q, %v", out, err)
	}
	os.WriteFile(polPath, []byte(badPolicy), 0o600)
	_, err = runAs(t, srv.URL, "tok", "policy", "reload")
	if err == nil || !strings.Contains(err.Error(), "server answered 422: the policy did not load; the old one stays in force\n  "+polPath+":4: rules[0].action") {
		t.Fatalf("bad reload: %v", err)
	}
	out, err = runAs(t, srv.URL, "view-tok", "policy", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{polPath, "FAILED", polPath + `:4: rules[0].action: unknown action "restrat-vm"`, "crashed-guests", "restart-vm", "required"} {
		if !strings.Contains(out, want) {
			t.Errorf("policy show lacks %q:\n%s", want, out)
		}
	}
}

// Every command has help with examples.
func TestHelpHasExamples(t *testing.T) {
	root := newRootCmd(nil, nil, env(nil))
	for _, c := range root.Commands() {
		cmds := append(c.Commands(), c)
		for _, sub := range cmds {
			if sub.Name() == "help" || sub.Name() == "completion" || !sub.Runnable() {
				continue
			}
			if sub.Example == "" {
				t.Errorf("runbook %s has no examples in --help", sub.CommandPath())
			}
		}
	}
}
