package authlimit

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"caretaker/internal/httpjson"
)

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func TestBlockedPerClientWithinWindow(t *testing.T) {
	l := New(Options{MaxFailures: 3, Window: time.Minute})
	for i := range 3 {
		if _, b := l.Blocked("10.0.0.1", t0); b {
			t.Fatalf("blocked after %d failures", i)
		}
		l.Failed("10.0.0.1", t0.Add(time.Duration(i)*time.Second))
	}
	if wait, b := l.Blocked("10.0.0.1", t0.Add(10*time.Second)); !b || wait != 50*time.Second {
		t.Errorf("Blocked after 3 failures = %v, %v; want 50s, true", wait, b)
	}
	if _, b := l.Blocked("10.0.0.2", t0.Add(10*time.Second)); b {
		t.Error("another client is blocked")
	}
	if _, b := l.Blocked("10.0.0.1", t0.Add(time.Minute)); b {
		t.Error("still blocked after the window")
	}
	// A new window starts with the next failure.
	l.Failed("10.0.0.1", t0.Add(time.Minute))
	if _, b := l.Blocked("10.0.0.1", t0.Add(time.Minute)); b {
		t.Error("blocked after one failure in a new window")
	}
}

func TestRefuseAndFail(t *testing.T) {
	now := t0
	var logs bytes.Buffer
	c := NewCounter("caretaker_test_auth_failures_total", "test")
	l := New(Options{MaxFailures: 2, Counter: c, Now: func() time.Time { return now },
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	req := func(remote string) *http.Request {
		r := httptest.NewRequest("POST", "/api/v1/approve", nil)
		r.RemoteAddr = remote
		r.Header.Set("Authorization", "Bearer guess-123")
		return r
	}
	for range 2 {
		if w := httptest.NewRecorder(); l.Refuse(w, req("192.0.2.7:4000"), httpjson.Compact) {
			t.Fatal("refused before the limit")
		}
		l.Fail(req("192.0.2.7:4001"), ReasonInvalid)
	}
	w := httptest.NewRecorder()
	if !l.Refuse(w, req("192.0.2.7:4002"), httpjson.Compact) || w.Code != 429 || w.Header().Get("Retry-After") != "60" ||
		!strings.Contains(w.Body.String(), "too many failed authentications from 192.0.2.7") {
		t.Errorf("third request: %d Retry-After %q %s; want 429 with Retry-After 60", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	if l.Refuse(httptest.NewRecorder(), req("192.0.2.8:4000"), httpjson.Compact) {
		t.Error("another client refused")
	}
	now = now.Add(59*time.Second + time.Millisecond)
	if w := httptest.NewRecorder(); !l.Refuse(w, req("192.0.2.7:1"), httpjson.Compact) || w.Header().Get("Retry-After") != "1" {
		t.Errorf("near the end of the window: Retry-After %q, want 1", w.Header().Get("Retry-After"))
	}
	for reason, want := range map[string]float64{ReasonInvalid: 2, ReasonRateLimited: 2, ReasonMissing: 0} {
		if got := testutil.ToFloat64(c.WithLabelValues(reason)); got != want {
			t.Errorf("failures{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	out := logs.String()
	if !strings.Contains(out, "client=192.0.2.7") || !strings.Contains(out, `route="POST /api/v1/approve"`) ||
		!strings.Contains(out, "reason=invalid") || strings.Contains(out, "guess-123") {
		t.Errorf("log lacks client, route or reason, or shows the token:\n%s", out)
	}
}

func TestClientsBounded(t *testing.T) {
	l := New(Options{})
	for i := range maxClients + 5 {
		l.Failed(strings.Repeat("x", i%7)+string(rune('a'+i%26))+time.Duration(i).String(), t0)
	}
	if n := len(l.clients); n > maxClients {
		t.Errorf("%d clients kept, bound %d", n, maxClients)
	}
}
