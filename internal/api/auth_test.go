package api

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"caretaker/internal/authlimit"
	"caretaker/internal/who"
)

// Failed authentications are logged (client, route, reason, never the
// token) and counted by reason; a client that keeps failing gets 429 with
// Retry-After, even with a good token, while other clients are served.
func TestAuthFailuresLoggedCountedLimited(t *testing.T) {
	a, err := NewAuthenticator(testTokens)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	reg := prometheus.NewPedanticRegistry()
	if err := a.LimitFailures(slog.New(slog.NewTextHandler(&logs, nil)), reg); err != nil {
		t.Fatal(err)
	}
	h := a.Authenticate(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	call := func(remote, header string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", "/api/v1/status", nil)
		r.RemoteAddr = remote
		if header != "" {
			r.Header.Set("Authorization", header)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	if w := call("198.51.100.9:1000", ""); w.Code != 401 {
		t.Fatalf("no token: %d", w.Code)
	}
	for i := 1; i < authlimit.DefaultMaxFailures; i++ {
		if w := call("198.51.100.9:1000", "Bearer guess-"+strings.Repeat("x", i)); w.Code != 401 {
			t.Fatalf("failure %d: %d, want 401", i+1, w.Code)
		}
	}
	w := call("198.51.100.9:1001", "Bearer view-tok")
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
		t.Errorf("good token after %d failures: %d (Retry-After %q), want 429", authlimit.DefaultMaxFailures, w.Code, w.Header().Get("Retry-After"))
	}
	if w := call("198.51.100.10:1000", "Bearer view-tok"); w.Code != http.StatusNoContent {
		t.Errorf("another client: %d, want it served", w.Code)
	}
	for reason, want := range map[string]float64{"missing": 1, "invalid": float64(authlimit.DefaultMaxFailures - 1), "rate_limited": 1} {
		if got := testutil.ToFloat64(failuresCounter(t, reg, reason)); got != want {
			t.Errorf("%s{reason=%q} = %v, want %v", FailuresMetric, reason, got, want)
		}
	}
	out := logs.String()
	if !strings.Contains(out, "client=198.51.100.9") || !strings.Contains(out, `route="GET /api/v1/status"`) ||
		!strings.Contains(out, "reason=invalid") || strings.Contains(out, "guess-") || strings.Contains(out, "view-tok") {
		t.Errorf("log lacks client, route or reason, or shows a token:\n%s", out)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) != 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
}

func failuresCounter(t *testing.T, reg *prometheus.Registry, reason string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != FailuresMetric {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == reason {
				return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x", Help: "x"},
					func() float64 { return m.GetCounter().GetValue() })
			}
		}
	}
	t.Fatalf("no %s{reason=%q}", FailuresMetric, reason)
	return nil
}

// WhoBy records the token's identity; a client's author is only ever on
// behalf of.
func TestWhoByIsTheToken(t *testing.T) {
	a, err := NewAuthenticator([]Token{{Name: "ada", Role: RoleAdmin, Secret: "ada-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	var got who.By
	h := a.Authenticate(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = WhoBy(r, " mallory ", "disk replaced")
	}))
	r := httptest.NewRequest("POST", "/api/v1/provisioner/hosts/h1/reprovision", nil)
	r.Header.Set("Authorization", "Bearer ada-secret")
	h.ServeHTTP(httptest.NewRecorder(), r)
	if got.Name != "ada" || got.Role != "admin" || got.OnBehalfOf != "mallory" || got.Comment != "disk replaced" || got.At.IsZero() {
		t.Fatalf("WhoBy: %+v", got)
	}
}
