package console

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"caretaker/internal/api"
	"caretaker/remediation/journal"
)

// bigStatus is a fleet of hosts × guests: every 100th guest crashed,
// each crash firing GuestCrashed, every 50th host's agent down.
func bigStatus(hosts, guests int, now time.Time) api.Status {
	st := api.Status{Time: now, Hosts: make([]api.Host, 0, hosts), Guests: make([]api.Guest, 0, hosts*guests)}
	for h := range hosts {
		name := fmt.Sprintf("hv-%04d", h)
		st.Hosts = append(st.Hosts, api.Host{Name: name, Agent: name + ":9301", AgentUp: h%50 != 0, LibvirtUp: h%50 != 0, Guests: guests})
		if h%50 == 0 {
			st.Alerts = append(st.Alerts, api.Alert{Name: "HostAgentDown", State: "firing", ActiveAt: now.Add(-time.Hour),
				Labels:      map[string]string{"alertname": "HostAgentDown", "host": name, "severity": "critical"},
				Annotations: map[string]string{"summary": "caretaker agent on " + name + " is unreachable"}})
		}
		for g := range guests {
			dom := fmt.Sprintf("c%03d-worker-%d", h, g)
			gu := api.Guest{Host: name, UUID: fmt.Sprintf("%08x-0000-4000-8000-%012x", h, g), Domain: dom, Cluster: fmt.Sprintf("c%03d", h),
				Role: "worker", State: "running", Reason: "booted", StateCode: 1, ReasonCode: 1, IntendedRunning: true}
			if (h*guests+g)%100 == 7 {
				gu.State, gu.Reason, gu.StateCode, gu.ReasonCode = "shut off", "crashed", 5, 3
				st.Alerts = append(st.Alerts, api.Alert{Name: "GuestCrashed", State: "firing", ActiveAt: now.Add(-time.Minute),
					Labels:      map[string]string{"alertname": "GuestCrashed", "host": name, "domain": dom, "uuid": gu.UUID, "severity": "critical"},
					Annotations: map[string]string{"summary": "Guest " + dom + " on " + name + " crashed"}})
			}
			st.Guests = append(st.Guests, gu)
		}
	}
	return st
}

// benchConsole is a console whose status is st, read directly as the
// server does, and the rest through a real API handler, with a viewer
// signed in; the status is read for every page (no cache) unless cached.
func benchConsole(b *testing.B, st api.Status, cached bool) (*Console, *fixture, *http.Request) {
	f := newFixture(b, fixtureOptions{})
	c := New(Options{API: f.api, Status: func(context.Context) (api.Status, error) { return st, nil }, Now: f.clock.Now,
		GrafanaURL: "https://grafana.example"})
	if !cached {
		c.statusTTL = 0
	}
	now := f.clock.Now()
	id, _ := c.sessions.create("vera", api.RoleViewer, secret("vera"), now, now.Add(time.Hour))
	req := httptest.NewRequest(http.MethodGet, "/console/", nil)
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: id})
	return c, f, req
}

func serve(b *testing.B, c *Console, req *http.Request) {
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		b.Fatalf("GET %s: %d\n%s", req.URL, rec.Code, rec.Body)
	}
}

// The fleet page at 1,000 hosts × 50 guests (500 guests crashed, 520
// alerts firing): the hosts' table, guests not as meant, the alerts, and
// one host's guests. "uncached" reads the status, pauses, provisioning
// states and Prometheus for every page; "cached" is a page within the
// snapshot's second.
func BenchmarkFleetPage(b *testing.B) {
	st := bigStatus(1000, 50, time.Now())
	for _, cached := range []bool{false, true} {
		name := "uncached"
		if cached {
			name = "cached"
		}
		b.Run(name, func(b *testing.B) {
			c, _, req := benchConsole(b, st, cached)
			req.URL.RawQuery = "host=hv-0421"
			serve(b, c, req)
			b.ReportAllocs()
			for b.Loop() {
				serve(b, c, req)
			}
		})
	}
}

// The remediation page over a journal of 2,000 records: 50 of them, the
// approvals and the pauses, all read through the API.
func BenchmarkRemediationPage(b *testing.B) {
	c, f, req := benchConsole(b, bigStatus(1, 1, time.Now()), false)
	now := f.clock.Now()
	err := f.b.j.Batch(func(jb *journal.Batch) error {
		for i := range 2000 {
			st := journal.StateSucceeded
			if i%97 == 0 {
				st = journal.StateAwaitingApproval
			}
			if _, err := jb.Append(journal.Record{Created: now.Add(time.Duration(i-2000) * time.Minute), Alert: "GuestCrashed", Action: "restart-vm",
				Host: "hv-0001", Domain: fmt.Sprintf("g-%d", i), Target: fmt.Sprintf("hv-0001/u-%d", i), State: st, Reason: "rule chose restart-vm",
				Transitions: []journal.Transition{{State: journal.StatePending, At: now}, {State: st, At: now}}}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	req.URL.Path = "/console/remediation"
	serve(b, c, req)
	b.ReportAllocs()
	for b.Loop() {
		serve(b, c, req)
	}
}

// One host's page at 1,000 hosts × 50 guests: its 50 guests among the
// fleet's 50,000, its inventory entry and provisioning state.
func BenchmarkHostPage(b *testing.B) {
	c, _, req := benchConsole(b, bigStatus(1000, 50, time.Now()), false)
	req.URL.Path = "/console/hosts/hv-0421"
	serve(b, c, req)
	b.ReportAllocs()
	for b.Loop() {
		serve(b, c, req)
	}
}
