package agent

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/agentapi"
	"caretaker/internal/testdaemon"
)

// eventsNode writes a test-driver node: guest-run (running, meant to run
// by its caretaker metadata), guest-auto (running, no metadata) and
// other-1 (running, outside the test's domain filter).
func eventsNode(t *testing.T) string {
	t.Helper()
	dom := func(name string, i int, meta string) string {
		return fmt.Sprintf(`  <domain type="test" xmlns:test="http://libvirt.org/schemas/domain/test/1.0">
    <name>%s</name>
    <uuid>0e000000-0000-4000-8000-%012x</uuid>
    <memory unit="MiB">512</memory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
    %s
    <test:runstate>1</test:runstate>
  </domain>
`, name, i, meta)
	}
	node := "<node>\n" +
		dom("guest-run", 1, `<metadata><guest xmlns="https://caretaker.dev/xmlns/guest/1"><intent>running</intent></guest></metadata>`) +
		dom("guest-auto", 2, "") +
		dom("other-1", 3, "") +
		"</node>\n"
	path := filepath.Join(t.TempDir(), "events-node.xml")
	if err := os.WriteFile(path, []byte(node), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// eventReader reads an agent's event stream through agentapi.Client.Events.
type eventReader struct {
	lines chan agentapi.StreamLine
	ended chan error
}

func readEvents(t *testing.T, base string) *eventReader {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r := &eventReader{lines: make(chan agentapi.StreamLine, 1024), ended: make(chan error, 1)}
	c := agentapi.NewClient(base, token, nil)
	go func() {
		r.ended <- c.Events(ctx, agentapi.Position{}, 30*time.Second, func(l agentapi.StreamLine) error {
			r.lines <- l
			return nil
		})
	}()
	return r
}

// next returns the next line that is not a heartbeat.
func (r *eventReader) next(t *testing.T) agentapi.StreamLine {
	t.Helper()
	deadline := time.After(time.Minute)
	for {
		select {
		case l := <-r.lines:
			if l.Heartbeat == nil {
				return l
			}
		case err := <-r.ended:
			t.Fatalf("event stream ended: %v", err)
		case <-deadline:
			t.Fatal("no event within a minute")
		}
	}
}

func (r *eventReader) event(t *testing.T) agentapi.Event {
	t.Helper()
	l := r.next(t)
	if l.Event == nil {
		t.Fatalf("line %+v, want an event", l)
	}
	return *l.Event
}

// TestEventStream runs the agent on a private libvirtd (test driver) and
// reads its event stream: a domain meant to run that is destroyed, then
// started, a domain outside the filter (nothing), a domain meant to run by
// its autostart flag, and a restart of libvirtd (a gap, then events flow
// again). The test driver emits lifecycle events for what is done through
// the connection it serves only (each test+unix connection has its own
// copy of the node), so the test acts through the agent's connection.
func TestEventStream(t *testing.T) {
	daemon := testdaemon.PrivateLibvirtd(t)
	a, err := New(Config{
		LibvirtURI:   daemon.URI(eventsNode(t)),
		Token:        token,
		DomainFilter: regexp.MustCompile(`^guest-`),
		RootFS:       t.TempDir(),
		Logger:       testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	base := serveAgent(t, a)

	// Without the token: 401.
	resp, err := http.Get(base + agentapi.EventsPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET %s without a token: %d, want 401", agentapi.EventsPath, resp.StatusCode)
	}

	r := readEvents(t, base)
	if l := r.next(t); l.Hello == nil {
		t.Fatalf("first line %+v, want hello", l)
	}
	// act does f to the named domain on the agent's connection. The
	// hooks run before Get returns: the subscriptions are made.
	act := func(name string, f func(lv *libvirt.Libvirt, dom libvirt.Domain) error) {
		t.Helper()
		lv, err := a.conn.Get()
		if err != nil {
			t.Fatal(err)
		}
		dom, err := lv.DomainLookupByName(name)
		if err != nil {
			t.Fatalf("look up %s: %v", name, err)
		}
		if err := f(lv, dom); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	destroy := func(lv *libvirt.Libvirt, dom libvirt.Domain) error { return lv.DomainDestroy(dom) }
	create := func(lv *libvirt.Libvirt, dom libvirt.Domain) error { return lv.DomainCreate(dom) }
	autostart := func(on int32) func(lv *libvirt.Libvirt, dom libvirt.Domain) error {
		return func(lv *libvirt.Libvirt, dom libvirt.Domain) error { return lv.DomainSetAutostart(dom, on) }
	}
	want := func(e agentapi.Event, name, typ, detail string, state libvirt.DomainState, intended bool) {
		t.Helper()
		if e.Domain != name || e.Type != typ || e.Detail != detail || !e.StateKnown || e.State != int(state) ||
			e.IntendedRunning == nil || *e.IntendedRunning != intended || !agentapi.ValidUUID(e.UUID) {
			t.Errorf("event %+v (intended %v), want %s %s %s, state %d, intended running %v", e, deref(e.IntendedRunning), name, typ, detail, state, intended)
		}
	}

	// Outside the filter: nothing. Its event would come before the next.
	act("other-1", destroy)
	act("guest-run", destroy)
	destroyed := time.Now()
	e := r.event(t)
	t.Logf("event latency: destroy returned → event read in %s (libvirt's event → read: %s)", time.Since(destroyed), time.Since(e.Time))
	want(e, "guest-run", agentapi.EventStopped, "destroyed", libvirt.DomainShutoff, true)
	if e.Seq != 1 {
		t.Errorf("first event has seq %d, want 1", e.Seq)
	}
	act("guest-run", create)
	want(r.event(t), "guest-run", agentapi.EventStarted, "booted", libvirt.DomainRunning, true)

	// No metadata: the autostart flag says.
	act("guest-auto", autostart(1))
	act("guest-auto", destroy)
	want(r.event(t), "guest-auto", agentapi.EventStopped, "destroyed", libvirt.DomainShutoff, true)
	act("guest-auto", autostart(0))
	act("guest-auto", create)
	want(r.event(t), "guest-auto", agentapi.EventStarted, "booted", libvirt.DomainRunning, false)

	// libvirtd restarts: the agent reconnects on its own and says
	// events may have been lost meanwhile.
	stopped := time.Now()
	daemon.Stop()
	daemon.Start()
	gap := r.event(t)
	if gap.Type != agentapi.EventGap || gap.Since.IsZero() || gap.Since.Before(stopped) || gap.Time.Before(gap.Since) || gap.UUID != "" {
		t.Fatalf("event %+v after libvirtd restarted, want a gap from after %s", gap, stopped.Format(time.RFC3339Nano))
	}
	t.Logf("gap of %s; reported %s after libvirtd was stopped", gap.Time.Sub(gap.Since), time.Since(stopped))
	// The restarted daemon's test driver reads the node afresh.
	act("guest-run", destroy)
	destroyed = time.Now()
	e = r.event(t)
	t.Logf("event latency after the restart: %s", time.Since(destroyed))
	want(e, "guest-run", agentapi.EventStopped, "destroyed", libvirt.DomainShutoff, true)
	if e.Seq != gap.Seq+1 {
		t.Errorf("event after the gap has seq %d, want %d", e.Seq, gap.Seq+1)
	}
}

func deref(b *bool) any {
	if b == nil {
		return nil
	}
	return *b
}
