package agent

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"caretaker/internal/authlimit"
)

// Failed authentications of the action API are counted on /metrics by
// reason; a client that keeps failing gets 429 with Retry-After, even with
// the right token, while another client is served.
func TestAuthFailuresCountedAndLimited(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{Token: token})
	call := func(remote, auth string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("GET", "/api/v1/domains/"+downUUID, nil)
		req.RemoteAddr = remote
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, req)
		return rec
	}
	if rec := call("203.0.113.5:1", ""); rec.Code != 401 {
		t.Fatalf("no token: %d", rec.Code)
	}
	for i := 1; i < authlimit.DefaultMaxFailures; i++ {
		if rec := call("203.0.113.5:1", "Bearer nope"); rec.Code != 401 {
			t.Fatalf("failure %d: %d, want 401", i+1, rec.Code)
		}
	}
	if rec := call("203.0.113.5:2", "Bearer "+token); rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Errorf("right token after %d failures: %d (Retry-After %q), want 429", authlimit.DefaultMaxFailures, rec.Code, rec.Header().Get("Retry-After"))
	}
	if rec := call("203.0.113.6:1", "Bearer "+token); rec.Code != http.StatusOK {
		t.Errorf("another client: %d %s, want 200", rec.Code, rec.Body)
	}
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`caretaker_agent_auth_failures_total{reason="missing"} 1`,
		fmt.Sprintf(`caretaker_agent_auth_failures_total{reason="invalid"} %d`, authlimit.DefaultMaxFailures-1),
		`caretaker_agent_auth_failures_total{reason="rate_limited"} 1`,
		`caretaker_agent_auth_failures_total{reason="disabled"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
