package server

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"caretaker/internal/config"
)

// A server with a broken policy, rule file or token refuses to start and
// says which file, line and field.
func TestNewRefusesBrokenInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("api.token", testToken("tok")+"\n")
	write("empty.token", "")
	write("weak.token", "tok\n")
	os.Chmod(write("open.token", testToken("open")), 0o644)
	badPolicy := write("policy.yml", "rules:\n  - name: r\n    match: {alertname: GuestCrashed}\n    action: restrat-vm\n")
	rulesDir := filepath.Join(dir, "rules")
	os.Mkdir(rulesDir, 0o755)
	os.WriteFile(filepath.Join(rulesDir, "x.rules.yml"), []byte("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up ==\n"), 0o600)

	for _, tc := range []struct {
		name     string
		config   string
		rulesDir string
		want     string
	}{
		{"bad policy", "api: {token_file: api.token}\nremediation: {policy_file: policy.yml}\n", "",
			badPolicy + ":4: rules[0].action: unknown action \"restrat-vm\""},
		{"empty token", "api: {token_file: empty.token}\n", "", "empty.token: file is empty"},
		{"missing token", "api: {token_file: nope.token}\n", "", "nope.token"},
		{"weak token", "api: {token_file: weak.token}\n", "", "weak.token: the token has 3 characters, a token needs at least 32"},
		{"world-readable token", "api: {token_file: open.token}\n", "", "open.token: mode 0644: a secret file must not be readable by group or others"},
		{"bad rules", "api: {token_file: api.token}\n", rulesDir, "x.rules.yml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfgPath := write("server.yml", "data_dir: data\n"+tc.config)
			cfg, err := config.Load(cfgPath)
			if err != nil {
				t.Fatal(err)
			}
			s, err := New(context.Background(), Options{Config: cfg, RulesDir: tc.rulesDir, Logger: slog.New(slog.DiscardHandler)})
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

// The Alertmanager webhook is served beside the API: 401 without the token
// or with the admin's and nothing recorded, 200 with a webhook token, and
// one alert delivered three times leads to one decision in the journal (a
// failed one: the host is not configured). The webhook's token reads
// nothing of the API.
func TestWebhook(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "api.token"), []byte(testToken("tok")+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "am.token"), []byte(testToken("am")+"\n"), 0o600)
	// A Loki stand-in that counts pushes in Loki's wire format.
	pushes := make(chan string, 16)
	loki := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pushes <- r.Header.Get("Content-Type")
		w.WriteHeader(http.StatusNoContent)
	}))
	defer loki.Close()
	os.WriteFile(filepath.Join(dir, "server.yml"), []byte("data_dir: data\napi: {token_file: api.token, tokens: [{name: am, role: webhook, token_file: am.token}]}\n"+
		"remediation: {loki: {url: "+loki.URL+"/loki/api/v1/push, batch_wait: 10ms}}\n"), 0o600)
	cfg, err := config.Load(filepath.Join(dir, "server.yml"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(context.Background(), Options{Config: cfg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	body := `{"version":"4","status":"firing","receiver":"caretaker","groupKey":"{}:{}","alerts":[{"status":"firing",
		"labels":{"alertname":"GuestCrashed","host":"host-x","uuid":"6f1c1c2e-0c1d-4b7a-9f55-2d1f0c7a0001","domain":"g1"},
		"annotations":{},"startsAt":"2026-11-25T12:00:00Z","endsAt":"0001-01-01T00:00:00Z"}]}`
	post := func(token string) int {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/v1/alertmanager", strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(""); code != http.StatusUnauthorized {
		t.Fatalf("without token: %d, want 401", code)
	}
	if code := post(testToken("tok")); code != http.StatusUnauthorized {
		t.Fatalf("with the admin token: %d, want 401", code)
	}
	if recs, _ := s.journal.List(0); len(recs) != 0 {
		t.Fatalf("a refused delivery reached the engine: %+v", recs)
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+testToken("am"))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("the webhook's token reads the status: %v %v, want 403", resp, err)
	} else {
		resp.Body.Close()
	}
	for i := 0; i < 3; i++ {
		if code := post(testToken("am")); code != http.StatusOK {
			t.Fatalf("with token: %d, want 200", code)
		}
	}
	s.engine.Close() // wait for the engine to finish with the alert
	recs, err := s.journal.List(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Alert != "GuestCrashed" || recs[0].Host != "host-x" {
		t.Fatalf("journal after 3 deliveries of one alert: %+v, want one record", recs)
	}
	t.Logf("record: %s %s", recs[0].State, recs[0].Error)

	// Closing the server flushes the audit stream: the decision reached Loki.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case ct := <-pushes:
		if ct != "application/x-protobuf" {
			t.Errorf("Loki push Content-Type %q", ct)
		}
	default:
		t.Error("no push reached Loki")
	}
}

// testToken pads name to the 32 characters a token file must hold.
func testToken(name string) string {
	return name + strings.Repeat("-", max(0, 32-len(name)))
}

// startServer loads dir's server.yml as `caretaker server` would, writing
// yml there first unless it is empty, and starts a server on it (logger
// nil discards its logs), closed when the test ends.
func startServer(t *testing.T, dir, yml string, logger *slog.Logger) *Server {
	t.Helper()
	path := filepath.Join(dir, "server.yml")
	if yml != "" {
		if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s, err := New(context.Background(), Options{Config: cfg, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
