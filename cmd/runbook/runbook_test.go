package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"caretaker/internal/api"
	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yml")
	if err := writeFileConfig(cfg, fileConfig{URL: "http://file:9300", Token: "file-token"}); err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(dir, "tok")
	const flagToken = "flag-token-0123456789abcdef012345" // 32 characters, the least a token file may hold
	os.WriteFile(tokFile, []byte(flagToken+"\n"), 0o600)
	openTok := filepath.Join(dir, "open-tok")
	os.WriteFile(openTok, []byte(flagToken+"\n"), 0o600)
	os.Chmod(openTok, 0o644)
	weakTok := filepath.Join(dir, "weak-tok")
	os.WriteFile(weakTok, []byte("flag-token\n"), 0o600)
	for _, tc := range []struct {
		name              string
		env               map[string]string
		flagURL, flagTok  string
		wantURL, wantTok  string
		wantErrContaining string
	}{
		{name: "config file", env: map[string]string{"RUNBOOK_CONFIG": cfg},
			wantURL: "http://file:9300", wantTok: "file-token"},
		{name: "env overrides file", env: map[string]string{"RUNBOOK_CONFIG": cfg, "RUNBOOK_URL": "http://env:1", "RUNBOOK_TOKEN": "env-token"},
			wantURL: "http://env:1", wantTok: "env-token"},
		{name: "flags override env", env: map[string]string{"RUNBOOK_CONFIG": cfg, "RUNBOOK_URL": "http://env:1", "RUNBOOK_TOKEN": "env-token"},
			flagURL: "http://flag:2", flagTok: tokFile, wantURL: "http://flag:2", wantTok: flagToken},
		{name: "XDG_CONFIG_HOME", env: map[string]string{"XDG_CONFIG_HOME": dir, "RUNBOOK_TOKEN": "t"},
			wantURL: defaultURL, wantTok: "t"},
		{name: "no token anywhere", env: map[string]string{"HOME": dir},
			wantErrContaining: "no API token"},
		{name: "world-readable token file", env: map[string]string{"HOME": dir}, flagTok: openTok,
			wantErrContaining: "--token-file: read secret: " + openTok + ": mode 0644: a secret file must not be readable by group or others (chmod 600 " + openTok + ")"},
		{name: "weak token file", env: map[string]string{"HOME": dir}, flagTok: weakTok,
			wantErrContaining: "the token has 10 characters, a token needs at least 32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := resolve(env(tc.env), tc.flagURL, tc.flagTok)
			if tc.wantErrContaining != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrContaining) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErrContaining)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(c.URLs, ",") != tc.wantURL || c.Token != tc.wantTok {
				t.Errorf("got %+v, want url %s token %s", c, tc.wantURL, tc.wantTok)
			}
		})
	}
}

func TestResolveBadConfig(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yml")
	os.WriteFile(cfg, []byte("url: http://x\ntokn: abc\n"), 0o600)
	_, err := resolve(env(map[string]string{"RUNBOOK_CONFIG": cfg}), "", "")
	if err == nil || !strings.Contains(err.Error(), cfg+":2: tokn: unknown field") {
		t.Fatalf("err = %v, want file, line and field", err)
	}
}

type fixedBackend struct {
	status api.Status
	recs   []journal.Record
}

func (b fixedBackend) Status(context.Context) (api.Status, error) { return b.status, nil }
func (b fixedBackend) History(_ context.Context, f api.HistoryFilter) ([]journal.Record, error) {
	var out []journal.Record
	for _, r := range b.recs {
		if f.Match(r) && len(out) < f.Limit {
			out = append(out, r)
		}
	}
	return out, nil
}

func (b fixedBackend) Record(_ context.Context, id uint64) (journal.Record, error) {
	for _, r := range b.recs {
		if r.ID == id {
			return r, nil
		}
	}
	return journal.Record{}, journal.ErrNotFound
}

func run(t *testing.T, url string, args ...string) (string, error) {
	t.Helper()
	return runAs(t, url, "tok", args...)
}

// runAs runs runbook with token against the server at url.
func runAs(t *testing.T, url, token string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCmd(&out, &errOut, env(map[string]string{"RUNBOOK_URL": url, "RUNBOOK_TOKEN": token, "HOME": t.TempDir()}))
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestCommands(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	b := fixedBackend{
		status: api.Status{
			Time:  now,
			Hosts: []api.Host{{Name: "host-a", Agent: "127.0.0.1:9301", AgentUp: true, LibvirtUp: true, Guests: 1}},
			Guests: []api.Guest{{Host: "host-a", UUID: "u1", Domain: "lab-host-a-1", State: "shut off", Reason: "crashed",
				StateCode: 5, ReasonCode: 3, IntendedRunning: true}},
			Alerts: []api.Alert{{Name: "GuestCrashed", State: "firing", ActiveAt: now.Add(-3 * time.Second),
				Labels:      map[string]string{"host": "host-a", "domain": "lab-host-a-1"},
				Annotations: map[string]string{"summary": "Guest lab-host-a-1 on host-a crashed"}}},
		},
		recs: []journal.Record{{ID: 2, Created: now, Alert: "GuestCrashed", Action: "restart-vm", Host: "host-a",
			Domain: "lab-host-a-1", State: journal.StateSucceeded, HealSeconds: 2.25}},
	}
	srv := httptest.NewServer(api.NewHandler(api.Options{Backend: b, Auth: testAuth(t), Logger: slog.New(slog.DiscardHandler)}))
	defer srv.Close()

	out, err := run(t, srv.URL, "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"host-a", "lab-host-a-1", "shut off", "crashed", "GuestCrashed", "3s", "Guest lab-host-a-1 on host-a crashed"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}

	out, err = run(t, srv.URL, "history", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var h api.History
	if err := json.Unmarshal([]byte(out), &h); err != nil || len(h.Records) != 1 || h.Records[0].HealSeconds != 2.25 {
		t.Fatalf("history -o json = %s (%v)", out, err)
	}

	out, err = run(t, srv.URL, "history")
	if err != nil || !strings.Contains(out, "2.2s") || !strings.Contains(out, "succeeded") {
		t.Fatalf("history table:\n%s\n%v", out, err)
	}

	out, err = run(t, srv.URL, "history", "--result", "failed")
	if err != nil || strings.Contains(out, "lab-host-a-1") {
		t.Errorf("history --result failed shows the succeeded action:\n%s\n%v", out, err)
	}
	out, err = run(t, srv.URL, "show", "2")
	if err != nil || !strings.Contains(out, "restart-vm") || !strings.Contains(out, "succeeded") {
		t.Errorf("show 2:\n%s\n%v", out, err)
	}
	if _, err := run(t, srv.URL, "show", "7"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("show 7: %v, want a 404", err)
	}

	if _, err := run(t, srv.URL, "status", "-o", "yaml"); err == nil || !strings.Contains(err.Error(), "--output") {
		t.Errorf("-o yaml: %v, want an --output error", err)
	}
	if _, err := run(t, "http://127.0.0.1:1", "status"); err == nil || !strings.Contains(err.Error(), "cannot reach") {
		t.Errorf("unreachable server: %v", err)
	}
}

// pausesOnly keeps pauses as the engine does, for the pause commands.
type pausesOnly struct{ ps []guards.Pause }

func (p *pausesOnly) Pause(x guards.Pause) error {
	if err := x.Validate(); err != nil {
		return err
	}
	p.ps = append(p.ps, x)
	return nil
}
func (p *pausesOnly) Resume(target string) {
	var kept []guards.Pause
	for _, x := range p.ps {
		if x.Target != target {
			kept = append(kept, x)
		}
	}
	p.ps = kept
}
func (p *pausesOnly) Pauses() []guards.Pause { return p.ps }

func TestPauseCommands(t *testing.T) {
	p := &pausesOnly{}
	srv := httptest.NewServer(api.NewHandler(api.Options{Backend: fixedBackend{}, Pauser: p, Auth: testAuth(t)}))
	defer srv.Close()

	if _, err := run(t, srv.URL, "pause", "--for", "2h", "--author", "bob"); err == nil || !strings.Contains(err.Error(), "--comment") {
		t.Errorf("pause without a comment: %v", err)
	}
	if _, err := runAs(t, srv.URL, "view-tok", "pause", "--for", "2h", "-m", "x"); err == nil ||
		!strings.Contains(err.Error(), `not allowed (403): token "vera" has role viewer; pausing remediation needs operator`) {
		t.Errorf("viewer pauses: %v", err)
	}
	out, err := run(t, srv.URL, "pause", "--for", "2h", "--author", "bob", "-m", "storage maintenance")
	if err != nil || !strings.Contains(out, "paused all remediation until") {
		t.Fatalf("pause: %q, %v", out, err)
	}
	// Without --author the server records the token's name.
	if _, err := runAs(t, srv.URL, "op-tok", "pause", "--target", "host-a/u1", "--for", "1h", "-m", "debugging"); err != nil {
		t.Fatal(err)
	}
	if len(p.ps) != 2 || p.ps[1].Author != "olga" {
		t.Fatalf("pauses = %+v, want olga's second", p.ps)
	}
	out, err = run(t, srv.URL, "pauses")
	if err != nil || !strings.Contains(out, "bob") || !strings.Contains(out, "storage maintenance") {
		t.Fatalf("pauses: %q, %v", out, err)
	}
	if _, err := run(t, srv.URL, "resume"); err != nil {
		t.Fatal(err)
	}
	if out, _ := run(t, srv.URL, "pauses"); strings.Contains(out, "storage maintenance") || !strings.Contains(out, "host-a/u1") {
		t.Errorf("pauses after resume of all remediation, want only the guest's pause left:\n%s", out)
	}
	if _, err := run(t, srv.URL, "resume", "--target", "host-a/u1"); err != nil {
		t.Fatal(err)
	}
	if out, _ := run(t, srv.URL, "pauses"); !strings.Contains(out, "no pauses") {
		t.Errorf("pauses after both resumes:\n%s", out)
	}
}

func TestWhoAmI(t *testing.T) {
	srv := httptest.NewServer(api.NewHandler(api.Options{Backend: &fixedBackend{}, Auth: testAuth(t), Logger: slog.New(slog.DiscardHandler)}))
	defer srv.Close()
	for _, tc := range []struct{ token, args, want string }{
		{"op-tok", "whoami", "olga (operator)\n"},
		{"view-tok", "whoami -o json", "{\n  \"name\": \"vera\",\n  \"role\": \"viewer\"\n}\n"},
	} {
		out, err := runAs(t, srv.URL, tc.token, strings.Fields(tc.args)...)
		if err != nil || out != tc.want {
			t.Errorf("runbook %s as %s = %q, %v; want %q", tc.args, tc.token, out, err, tc.want)
		}
	}
}
