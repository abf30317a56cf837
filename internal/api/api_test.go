package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"caretaker/remediation/journal"
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
	return b.j.List(f.Limit)
}

func (b *backend) Record(_ context.Context, id uint64) (journal.Record, error) {
	b.calls++
	return b.j.Get(id)
}

func newTestServer(t *testing.T) (*httptest.Server, *backend) {
	t.Helper()
	j, err := journal.Open(filepath.Join(t.TempDir(), "journal.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	for i := 0; i < 3; i++ {
		if _, err := j.Append(journal.Record{Created: time.Now(), Action: "restart-vm", Host: "host-a", State: journal.StateSucceeded}); err != nil {
			t.Fatal(err)
		}
	}
	b := &backend{j: j}
	srv := httptest.NewServer(NewHandler(b, "s3cret", slog.New(slog.DiscardHandler)))
	t.Cleanup(srv.Close)
	return srv, b
}

func TestAuthentication(t *testing.T) {
	srv, b := newTestServer(t)
	for _, tc := range []struct {
		name, header string
		want         int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"wrong token", "Bearer nope", http.StatusUnauthorized},
		{"basic auth", "Basic czNjcmV0Og==", http.StatusUnauthorized},
		{"token without scheme", "s3cret", http.StatusUnauthorized},
		{"right token", "Bearer s3cret", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := b.calls
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/status", nil)
			if tc.header != "" {
				req.Header.Set("Authorization", tc.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
			if tc.want == http.StatusUnauthorized {
				if b.calls != before {
					t.Error("a refused request reached the backend")
				}
				if resp.Header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
			}
		})
	}
}

func TestClient(t *testing.T) {
	srv, _ := newTestServer(t)
	c := NewClient(srv.URL, "s3cret", nil)
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

	_, err = NewClient(srv.URL, "wrong", nil).Status(context.Background())
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %v, want a 401 StatusError", err)
	}
}

func TestBadRequests(t *testing.T) {
	srv, _ := newTestServer(t)
	for _, tc := range []struct {
		method, path string
		want         int
		msg          string
	}{
		{"GET", "/api/v1/history?limit=abc", 400, "limit"},
		{"GET", "/api/v1/history?limit=0", 400, "limit"},
		{"GET", "/api/v1/history?limit=99999999", 400, "limit"},
		{"GET", "/api/v1/nope", 404, "no such endpoint"},
		{"GET", "/api/v1/history?since=yesterday", 400, "since"},
		{"GET", "/api/v1/history/abc", 400, "action id"},
		{"GET", "/api/v1/history/99", 404, "no action 99"},
		{"POST", "/api/v1/status", 405, ""},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			req.Header.Set("Authorization", "Bearer s3cret")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
			var body strings.Builder
			_, _ = io.Copy(&body, resp.Body)
			if !strings.Contains(body.String(), tc.msg) {
				t.Errorf("body %q does not mention %q", body.String(), tc.msg)
			}
		})
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
		{HistoryFilter{Since: now.Add(-2 * time.Hour)}, true},
		{HistoryFilter{Since: now.Add(-30 * time.Minute)}, false},
	} {
		if got := tc.f.Match(rec); got != tc.want {
			t.Errorf("%+v: Match = %v, want %v", tc.f, got, tc.want)
		}
	}
}
