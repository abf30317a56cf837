package kvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"caretaker/collectors"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/testdaemon"
)

// TestLibvirtdStopped freezes libvirtd (SIGSTOP) under the collector: each
// scrape must still return, with caretaker_kvm_up 0 and an error, and the
// scrapes must not pile up goroutines stuck in libvirt: the first leaves one
// call outstanding, the later ones fail at once. Once libvirtd runs again,
// the outstanding call returns and scrapes succeed.
func TestLibvirtdStopped(t *testing.T) {
	daemon := testdaemon.PrivateLibvirtd(t)
	node := writeNode(t, t.TempDir(), genNode(20))
	logger := testLogger(t)
	conn := libvirtconn.New(daemon.URI(node), logger)
	t.Cleanup(func() { conn.Close() })
	c := New(conn, logger, WithLibvirtTimeout(200*time.Millisecond))

	if up, err := updateUp(t, c); up != 1 || err != nil {
		t.Fatalf("scrape of the running libvirtd: up %v, %v", up, err)
	}
	if n := libvirtCalls(); n != 0 {
		t.Fatalf("%d goroutines in libvirt after a successful scrape, want none", n)
	}
	goroutines := runtime.NumGoroutine()

	resume := daemon.Freeze()
	defer resume()

	for i := range 5 {
		up, err := updateUp(t, c)
		if up != 0 || err == nil {
			t.Fatalf("scrape %d of the stopped libvirtd: up %v, %v; want up 0 and an error", i+1, up, err)
		}
		want := ErrBusy
		if i == 0 {
			want = context.DeadlineExceeded
		}
		if !errors.Is(err, want) {
			t.Errorf("scrape %d: error %v, want %v", i+1, err, want)
		}
	}
	// Through a Set, as the agent scrapes: the kvm part fails, the
	// scrape does not.
	set := collectors.NewSet(logger, time.Minute, map[string]collectors.Collector{"kvm": c})
	const want = `
# HELP caretaker_kvm_up Whether libvirt answered the last scrape (1) or not (0).
# TYPE caretaker_kvm_up gauge
caretaker_kvm_up 0
# HELP caretaker_scrape_collector_success Whether a collector succeeded (1) or failed or timed out (0) in this scrape.
# TYPE caretaker_scrape_collector_success gauge
caretaker_scrape_collector_success{collector="kvm"} 0
`
	if err := testutil.CollectAndCompare(set, strings.NewReader(want), "caretaker_kvm_up", "caretaker_scrape_collector_success"); err != nil {
		t.Errorf("scrape through a Set: %v", err)
	}
	if n := libvirtCalls(); n != 1 {
		t.Errorf("%d goroutines in libvirt after six scrapes of the stopped libvirtd, want the one outstanding call", n)
	}
	// The stack count above names the culprit; this one counts every
	// goroutine, those of the Set's plumbing and of context timers too.
	if n := runtime.NumGoroutine(); n > goroutines+1 {
		t.Errorf("goroutines: %d before, %d after six scrapes of the stopped libvirtd; want at most one more, the outstanding call", goroutines, n)
	}

	resume()
	// The outstanding call returns once libvirtd answers; wait for it
	// to hand back its token.
	awaitCall(t, c)
	if up, err := updateUp(t, c); up != 1 || err != nil {
		t.Fatalf("scrape after libvirtd continued: up %v, %v", up, err)
	}
}

// TestScrapesShareTheCallUnderWay: a scrape that comes while a call to
// libvirt is under way waits for that call rather than start a second one or
// fail, so that two Prometheus servers scraping one agent at once both get
// the domains; once a scrape has given up on the call, the next fail at once.
// libvirtd is stopped to keep the call under way while the test looks.
func TestScrapesShareTheCallUnderWay(t *testing.T) {
	daemon := testdaemon.PrivateLibvirtd(t)
	node := writeNode(t, t.TempDir(), genNode(3))
	logger := testLogger(t)
	conn := libvirtconn.New(daemon.URI(node), logger)
	t.Cleanup(func() { conn.Close() })
	c := New(conn, logger)
	if up, err := updateUp(t, c); up != 1 || err != nil {
		t.Fatalf("scrape of the running libvirtd: up %v, %v", up, err)
	}

	defer daemon.Freeze()()
	first, err := c.join(t.Context())
	if err != nil {
		t.Fatalf("start a call: %v", err)
	}
	second, err := c.join(t.Context())
	if err != nil || second != first {
		t.Fatalf("join while a call is under way: %p, %v; want the call under way %p", second, err, first)
	}
	c.mu.Lock()
	first.abandoned = true
	c.mu.Unlock()
	if _, err := c.join(t.Context()); !errors.Is(err, ErrBusy) {
		t.Fatalf("join a call a scrape gave up on: %v, want ErrBusy", err)
	}

	if err := daemon.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("continue libvirtd: %v", err)
	}
	awaitCall(t, c)
	if first.err != nil || len(first.doms) != 3 {
		t.Errorf("the shared call returned %d domains, %v; want 3", len(first.doms), first.err)
	}
	if up, err := updateUp(t, c); up != 1 || err != nil {
		t.Fatalf("scrape after libvirtd continued: up %v, %v", up, err)
	}
	if n := c.calls.Load(); n != 3 {
		t.Errorf("%d calls to libvirt, want 3: one per scrape, one shared", n)
	}
}

// awaitCall waits for the call to libvirt under way, if any, to return.
func awaitCall(t *testing.T, c *Collector) {
	t.Helper()
	c.mu.Lock()
	cl := c.inflight
	c.mu.Unlock()
	if cl == nil {
		return
	}
	select {
	case <-cl.done:
	case <-time.After(time.Minute):
		t.Fatalf("the call to libvirt did not return within a minute")
	}
}

// updateUp runs one Update and returns the caretaker_kvm_up it sent.
func updateUp(t *testing.T, c *Collector) (float64, error) {
	t.Helper()
	ch := make(chan prometheus.Metric, 4096)
	err := c.Update(t.Context(), ch)
	close(ch)
	up := -1.0
	for m := range ch {
		if strings.Contains(m.Desc().String(), `"caretaker_kvm_up"`) {
			var pb dto.Metric
			if err := m.Write(&pb); err != nil {
				t.Fatal(err)
			}
			up = pb.GetGauge().GetValue()
		}
	}
	return up, err
}

// libvirtCalls counts the goroutines that call libvirt for a scrape.
func libvirtCalls() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	return bytes.Count(buf, []byte("caretaker/collectors/kvm.(*Collector).read("))
}

// TestReconnect restarts libvirtd under the collector: the collector must
// reconnect, read every domain's identity again (events were lost while
// there was no connection) and subscribe to its events again on the new
// connection, keeping its counts.
func TestReconnect(t *testing.T) {
	daemon := testdaemon.PrivateLibvirtd(t)
	doms := genNode(4)
	node := writeNode(t, t.TempDir(), doms)
	logger := testLogger(t)
	conn := libvirtconn.New(daemon.URI(node), logger)
	t.Cleanup(func() { conn.Close() })
	c := New(conn, logger)
	stopped := doms[2]
	if stopped.runstate != 1 {
		t.Fatalf("genNode changed: domain 2 should run")
	}
	w := watchEvents(t, conn, c)
	scrape(t, c)

	daemon.Stop()
	daemon.Start()
	// The first scrape after the restart may still try the old
	// connection, if its reader has not yet seen the socket close; it
	// fails, and the next one reconnects.
	up, err := updateUp(t, c)
	if up != 1 {
		t.Logf("first scrape after the restart: up %v, %v", up, err)
		if up, err = updateUp(t, c); up != 1 {
			t.Fatalf("second scrape after the restart: up %v, %v", up, err)
		}
	}
	if n := c.xmlReads.Load(); n != 2*uint64(len(doms)) {
		t.Errorf("%d domain XMLs read, want every domain's twice (%d): once per connection", n, 2*len(doms))
	}

	lv, err := conn.Get()
	if err != nil {
		t.Fatal(err)
	}
	dom, err := lv.DomainLookupByName(stopped.name)
	if err != nil {
		t.Fatal(err)
	}
	if err := lv.DomainDestroy(dom); err != nil {
		t.Fatalf("destroy %s: %v", stopped.name, err)
	}
	w.await(t, stopped.name+" stopped", counted(eventStopped, 1))
	samples := scrape(t, c)
	wantSample(t, samples, `caretaker_kvm_lifecycle_events_total{event="stopped"}`, 1)
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_state{uuid=%q}`, stopped.uuid), 5)
}
