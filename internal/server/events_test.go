package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/agent"
	"caretaker/internal/api"
	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
	"caretaker/remediation/journal"
)

const (
	eventHost = "hv-a1"
	qemuURI   = "qemu:///system"
)

// eventLab is a server and one real agent on the machine's libvirtd, with
// one real QEMU guest of the test's own, meant to run. Events travel from
// libvirtd to the agent's connection whoever acts on the guest (the test's
// driver connections would each have a private copy of their node).
type eventLab struct {
	s    *Server
	api  *api.Client
	conn *libvirt.Libvirt
	dom  libvirt.Domain
	uuid string
	seen int // records seen before the current step
}

var eventGuests atomic.Int32

func newEventLab(t *testing.T, events bool) *eventLab {
	t.Helper()
	needs.Libvirtd(t)
	needs.Program(t, "qemu-system-x86_64")
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	conn, err := libvirtconn.Dial(qemuURI)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Disconnect() })
	name := fmt.Sprintf("ctk-ev-%d-%d", os.Getpid(), eventGuests.Add(1))
	meta, err := guestmeta.Metadata{Intent: "running", Cluster: "ev", Role: "worker"}.XML()
	if err != nil {
		t.Fatal(err)
	}
	xml, err := (&libvirtxml.Domain{
		Type: "qemu", Name: name,
		Memory:   &libvirtxml.DomainMemory{Value: 64, Unit: "MiB"},
		VCPU:     &libvirtxml.DomainVCPU{Value: 1},
		OS:       &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Machine: "pc", Type: "hvm"}},
		Metadata: &libvirtxml.DomainMetadata{XML: meta},
		OnCrash:  "destroy", OnPoweroff: "destroy",
	}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	dom, err := conn.DomainDefineXML(xml)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.DomainDestroy(dom)
		conn.DomainUndefine(dom)
	})
	if err := conn.DomainCreate(dom); err != nil {
		t.Fatal(err)
	}
	uuid := libvirtconn.UUIDString(dom.UUID)

	dir := t.TempDir()
	for _, f := range []string{"api.token", "agent.token"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(testToken(f)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a, err := agent.New(agent.Config{LibvirtURI: qemuURI, Token: testToken("agent.token"), GuestDomainType: "qemu",
		DomainFilter: regexp.MustCompile("^" + name + "$"), Logger: logger.With("part", "agent")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	actx, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	a.Start(actx)
	as := httptest.NewServer(a.Handler())
	t.Cleanup(as.Close)

	cfg := fmt.Sprintf(`data_dir: data
api: {token_file: api.token}
agents: {token_file: agent.token, events: %t}
hosts: [{name: %s, agent: %q}]
prometheus: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
`, events, eventHost, strings.TrimPrefix(as.URL, "http://"))
	s := startServer(t, dir, cfg, logger.With("part", "server"))
	ss := httptest.NewServer(s.Handler())
	t.Cleanup(ss.Close)
	l := &eventLab{s: s, api: api.NewClient(ss.URL, testToken("api.token"), nil), conn: conn, dom: dom, uuid: uuid}

	// The guest's series are in the TSDB (the event path takes its
	// labels from them), and with events, the stream is up.
	await(t, "the guest's series scraped", func() bool {
		v, err := s.monitor.Query(context.Background(), `caretaker_kvm_domain_intended_running{uuid="`+uuid+`"} == 1`, time.Now())
		return err == nil && len(v) == 1
	})
	if events {
		await(t, "the agent's event stream open", func() bool { same, _ := s.events.SameOutage(eventHost, "", time.Now(), time.Now()); return same })
	}
	return l
}

func await(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// destroy stops the guest behind caretaker's back, as `virsh destroy`.
func (l *eventLab) destroy(t *testing.T) {
	t.Helper()
	recs, _ := l.s.journal.List(0)
	l.seen = len(recs)
	if err := l.conn.DomainDestroy(l.dom); err != nil {
		t.Fatal(err)
	}
}

// record waits for the step's one new record to reach state, and fails
// if there is more than one.
func (l *eventLab) record(t *testing.T, state journal.State) journal.Record {
	t.Helper()
	var rec journal.Record
	await(t, "a record "+string(state), func() bool {
		recs, err := l.s.journal.List(0)
		if err != nil || len(recs) <= l.seen {
			return false
		}
		rec = recs[0]
		return rec.State == state
	})
	if recs, _ := l.s.journal.List(0); len(recs) != l.seen+1 {
		t.Fatalf("%d new records, want 1: %+v", len(recs)-l.seen, recs[:len(recs)-l.seen])
	}
	return rec
}

func (l *eventLab) running(t *testing.T) bool {
	t.Helper()
	state, _, err := l.conn.DomainGetState(l.dom, 0)
	if err != nil {
		t.Fatal(err)
	}
	return libvirt.DomainState(state) == libvirt.DomainRunning
}

// The event path, then the rules as its backstop, on a real agent and the
// server's real rules, through the test driver.
func TestEventPath(t *testing.T) {
	// A guest destroyed behind caretaker's back is started again from
	// the agent's event: the record says so.
	t.Run("event heals", func(t *testing.T) {
		l := newEventLab(t, true)
		l.destroy(t)
		rec := l.record(t, journal.StateSucceeded)
		if !rec.FromEvent || rec.Alert != alertGuestShutOff || rec.Action != "restart-vm" {
			t.Errorf("record %+v: want restart-vm of GuestShutOffUnexpectedly from an event", rec)
		}
		if !l.running(t) {
			t.Error("the guest does not run")
		}
	})

	// While a pause holds the action, the rule fires for the same stop:
	// its alert has the event's fingerprint (the same label set), and it
	// is taken as the event's instance — one record, one start.
	t.Run("the rule's alert is the event's instance", func(t *testing.T) {
		l := newEventLab(t, true)
		ctx := context.Background()
		if _, err := l.api.Pause(ctx, api.PauseRequest{Target: eventHost, Author: "test", Comment: "hold the restart", Duration: "1h"}); err != nil {
			t.Fatal(err)
		}
		l.destroy(t)
		rec := l.record(t, journal.StatePending)
		if !rec.FromEvent {
			t.Fatalf("record %+v: want one from the event", rec)
		}
		await(t, "the rule firing for the same label set", func() bool {
			for _, a := range l.s.monitor.Alerts() {
				if a.Name == alertGuestShutOff && a.State == "firing" {
					if a.Fingerprint != rec.Fingerprint {
						t.Fatalf("the rule's alert %v has fingerprint %s, the event's %s (labels %v)", a.Labels, a.Fingerprint, rec.Fingerprint, rec.Labels)
					}
					return true
				}
			}
			return false
		})
		await(t, "the rule's alert taken as the event's instance", func() bool {
			return counter(t, l.s, "caretaker_remediation_same_incident_alerts_total") >= 1
		})
		if err := l.api.Resume(ctx, eventHost); err != nil {
			t.Fatal(err)
		}
		rec = l.record(t, journal.StateSucceeded)
		if !rec.FromEvent || !l.running(t) {
			t.Errorf("record %+v, running %v: want the event's record succeeded and the guest running", rec, l.running(t))
		}
	})

	// Without the event path the rules heal, at their intervals.
	t.Run("rules are the backstop", func(t *testing.T) {
		l := newEventLab(t, false)
		l.destroy(t)
		rec := l.record(t, journal.StateSucceeded)
		if rec.FromEvent || rec.Alert != alertGuestShutOff {
			t.Errorf("record %+v: want GuestShutOffUnexpectedly from the rules", rec)
		}
		if l.s.events != nil {
			t.Error("the server follows event streams with agents.events false")
		}
	})
}

// counter is the value of the server's counter name (summed over labels).
func counter(t *testing.T, s *Server, name string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue()
			}
		}
	}
	return v
}
