package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"caretaker/internal/api"
	"caretaker/internal/golden"
)

type servers struct {
	ss  []api.ServerStatus
	err error
}

func (s servers) Servers(context.Context) ([]api.ServerStatus, error) { return s.ss, s.err }

func statusBackend() fixedBackend {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	return fixedBackend{status: api.Status{
		Time:  now,
		Hosts: []api.Host{{Name: "host-a", Agent: "127.0.0.1:9301", AgentUp: true, LibvirtUp: true, Guests: 1}},
		Guests: []api.Guest{{Host: "host-a", UUID: "u1", Domain: "lab-host-a-1", State: "shut off", Reason: "crashed",
			StateCode: 5, ReasonCode: 3, IntendedRunning: true}},
		Alerts: []api.Alert{{Name: "GuestCrashed", State: "firing", ActiveAt: now.Add(-3 * time.Second),
			Labels:      map[string]string{"host": "host-a", "domain": "lab-host-a-1"},
			Annotations: map[string]string{"summary": "Guest lab-host-a-1 on host-a crashed"}}},
	}}
}

var threeServers = []api.ServerStatus{
	{Name: "ct1", Address: "https://10.0.0.1:9300", Leader: true, Epoch: 57, Healthy: true},
	{Name: "ct2", Address: "https://10.0.0.2:9300", Epoch: 57, Healthy: true},
	{Name: "ct3", Address: "https://10.0.0.3:9300", Epoch: 56},
}

// status shows the servers and who leads, as a table and in -o json.
func TestStatusServers(t *testing.T) {
	srv := httptest.NewServer(api.NewHandler(api.Options{Backend: statusBackend(), Servers: servers{ss: threeServers},
		Auth: testAuth(t), Logger: slog.New(slog.DiscardHandler)}))
	defer srv.Close()
	for _, tc := range []struct{ golden, output string }{
		{"testdata/status-servers.txt", "table"},
		{"testdata/status-servers.json", "json"},
	} {
		out, err := run(t, srv.URL, "status", "-o", tc.output)
		if err != nil {
			t.Fatal(err)
		}
		golden.Compare(t, tc.golden, []byte(out), *update)
	}
}

// A server older than GET /api/v1/servers answers 404: status leaves the
// section out, silently.
func TestStatusOlderServer(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle("/api/v1/", api.NewHandler(api.Options{Backend: statusBackend(), Auth: testAuth(t), Logger: slog.New(slog.DiscardHandler)}))
	mux.HandleFunc("/api/v1/servers", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":"no such endpoint: GET /api/v1/servers"}`, http.StatusNotFound)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, tc := range []struct{ golden, output string }{
		{"testdata/status.txt", "table"},
		{"testdata/status.json", "json"},
	} {
		out, err := run(t, srv.URL, "status", "-o", tc.output)
		if err != nil {
			t.Fatal(err)
		}
		golden.Compare(t, tc.golden, []byte(out), *update)
		if strings.Contains(out, "servers") || strings.Contains(out, "LEADER") {
			t.Errorf("-o %s shows a servers section:\n%s", tc.output, out)
		}
	}
}

// A server that cannot tell its servers still shows the rest; runbook
// then fails with the reason.
func TestStatusServersUnavailable(t *testing.T) {
	srv := httptest.NewServer(api.NewHandler(api.Options{Backend: statusBackend(),
		Servers: servers{err: errors.New("etcd: context deadline exceeded")}, Auth: testAuth(t), Logger: slog.New(slog.DiscardHandler)}))
	defer srv.Close()
	out, err := run(t, srv.URL, "status")
	if err == nil || err.Error() != "list servers: server answered 503: servers: etcd: context deadline exceeded" {
		t.Errorf("err = %v, want the 503 named", err)
	}
	if !strings.Contains(out, "lab-host-a-1") || strings.Contains(out, "LEADER") {
		t.Errorf("output:\n%s\nwant the status without servers", out)
	}
}

// RUNBOOK_URL with several servers: a dead one is skipped, and the one
// that answered is asked first for the rest of the command.
func TestStatusFailover(t *testing.T) {
	srv := httptest.NewServer(api.NewHandler(api.Options{Backend: statusBackend(), Servers: servers{ss: threeServers},
		Auth: testAuth(t), Logger: slog.New(slog.DiscardHandler)}))
	defer srv.Close()
	l := httptest.NewServer(http.NotFoundHandler())
	dead := l.URL
	l.Close()
	out, err := run(t, dead+","+srv.URL, "status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "ct1") {
		t.Errorf("output:\n%s\nwant the servers", out)
	}
	_, err = run(t, dead+","+dead+"/", "status")
	if err == nil || err.Error() != "RUNBOOK_URL: "+dead+"/ is listed twice" {
		t.Errorf("err = %v, want the duplicate named", err)
	}
}
