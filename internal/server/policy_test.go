package server

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"caretaker/internal/api"
	"caretaker/remediation/policy"
)

const (
	policyV1  = "rules:\n  - name: crashed-guests\n    match: {alertname: GuestCrashed}\n    action: restart-vm\n"
	policyV2  = policyV1 + "  - name: overlays\n    match: {alertname: OverlayDown}\n    action: repair-overlay\n"
	policyBad = "rules:\n  - name: crashed-guests\n    match: {alertname: GuestCrashed}\n    action: restrat-vm\n"
)

// The holder applies a policy that loads, and keeps (and reports) the old
// one when the file breaks.
func TestPolicyHolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(policyV1)
	p, err := policy.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var applied []*policy.Policy
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	h := newPolicyHolder(path, p, func(p *policy.Policy) { applied = append(applied, p) }, slog.New(slog.DiscardHandler),
		func() time.Time { return now })

	write(policyV2)
	s, err := h.Reload()
	if err != nil || len(s.Rules) != 2 || len(applied) != 1 || len(applied[0].Rules) != 2 {
		t.Fatalf("reload v2 = %+v, %v (applied %d)", s, err, len(applied))
	}
	write(policyBad)
	now = now.Add(time.Minute)
	s, err = h.Reload()
	if err == nil || !strings.Contains(err.Error(), path+`:4: rules[0].action: unknown action "restrat-vm"`) {
		t.Fatalf("bad reload: %v", err)
	}
	if len(applied) != 1 || len(s.Rules) != 2 || s.LastError == nil || !s.LastError.At.Equal(now) ||
		!strings.HasPrefix(s.LastError.Errors[0], path+":4: rules[0].action") {
		t.Fatalf("after a bad reload: status %+v, %d applied; want v2 still in force and the error", s, len(applied))
	}
	if got := h.Policy(); got.LastError == nil || len(got.Rules) != 2 {
		t.Errorf("Policy() = %+v", got)
	}

	// The embedded default reloads too (nothing to re-read, but it must not fail).
	d := newPolicyHolder("", policy.Default(), func(*policy.Policy) {}, slog.New(slog.DiscardHandler), time.Now)
	if s, err := d.Reload(); err != nil || s.File != "" || len(s.Rules) == 0 {
		t.Errorf("default reload = %+v, %v", s, err)
	}
}

// Through the real server: tokens with roles from the config, policy
// reload over the API and through ReloadPolicy, and the Prometheus API
// behind the viewer role.
func TestAPIRolesAndReload(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{"admin.token": testToken("adm") + "\n", "vera.token": testToken("view") + "\n", "olga.token": testToken("op") + "\n",
		"policy.yml": policyV1} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := startServer(t, dir, "data_dir: data\n"+
		"api:\n  token_file: admin.token\n  tokens:\n    - {name: vera, role: viewer, token_file: vera.token}\n"+
		"    - {name: olga, role: operator, token_file: olga.token}\n"+
		"remediation: {policy_file: policy.yml}\n", nil)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	call := func(token, method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+testToken(token))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		token, method, path string
		want                int
	}{
		{"", "GET", "/api/v1/query?query=up", 401},
		{"view", "GET", "/api/v1/query?query=up", 200},
		{"view", "GET", "/api/v1/pauses", 200},
		{"view", "DELETE", "/api/v1/pauses?target=*", 403},
		{"op", "DELETE", "/api/v1/pauses?target=*", 204},
		{"view", "GET", "/api/v1/policy", 200},
		{"view", "POST", "/api/v1/policy/reload", 403},
		{"op", "POST", "/api/v1/policy/reload", 403},
	} {
		if code, body := call(tc.token, tc.method, tc.path); code != tc.want {
			t.Errorf("%s %s as %q: %d %s, want %d", tc.method, tc.path, tc.token, code, body, tc.want)
		}
	}

	os.WriteFile(filepath.Join(dir, "policy.yml"), []byte(policyV2), 0o600)
	code, body := call("adm", "POST", "/api/v1/policy/reload")
	var ps api.PolicyStatus
	if json.Unmarshal([]byte(body), &ps); code != 200 || len(ps.Rules) != 2 {
		t.Fatalf("admin reload: %d %s", code, body)
	}
	os.WriteFile(filepath.Join(dir, "policy.yml"), []byte(policyBad), 0o600)
	if code, body := call("adm", "POST", "/api/v1/policy/reload"); code != 422 || !strings.Contains(body, "restrat-vm") {
		t.Fatalf("bad reload: %d %s, want 422 naming the problem", code, body)
	}
	if err := s.ReloadPolicy(); err == nil || !strings.Contains(err.Error(), "policy.yml:4: rules[0].action") {
		t.Fatalf("ReloadPolicy = %v, want the file's problem", err)
	}
	_, body = call("view", "GET", "/api/v1/policy")
	if json.Unmarshal([]byte(body), &ps); len(ps.Rules) != 2 || ps.LastError == nil {
		t.Fatalf("policy after failed reloads: %s; want v2 in force and the last error", body)
	}
	// The request without a token above is counted on the server's metrics.
	if _, body := call("", "GET", "/metrics"); !strings.Contains(body, `caretaker_api_auth_failures_total{reason="missing"} 1`) {
		t.Errorf("/metrics does not count the failed authentication:\n%s", body)
	}
}
