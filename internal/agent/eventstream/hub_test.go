package eventstream

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"caretaker/internal/agentapi"
)

const testUUID = "0d000000-0000-4000-8000-000000000001"

// reader is one stream read through agentapi.Client.Events, its lines on
// a channel.
type reader struct {
	lines chan agentapi.StreamLine
	ended chan error
}

func open(t *testing.T, base string, pos agentapi.Position) *reader {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &reader{lines: make(chan agentapi.StreamLine, 100000), ended: make(chan error, 1)}
	c := agentapi.NewClient(base, "", nil)
	go func() {
		r.ended <- c.Events(ctx, pos, time.Minute, func(l agentapi.StreamLine) error {
			r.lines <- l
			return nil
		})
	}()
	t.Cleanup(cancel)
	return r
}

// next returns the next line, failing the test if none comes in a minute.
func (r *reader) next(t *testing.T) agentapi.StreamLine {
	t.Helper()
	select {
	case l := <-r.lines:
		return l
	case err := <-r.ended:
		t.Fatalf("stream ended: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("no line within a minute")
	}
	panic("unreachable")
}

func (r *reader) hello(t *testing.T) agentapi.Hello {
	t.Helper()
	l := r.next(t)
	if l.Hello == nil {
		t.Fatalf("first line %+v, want hello", l)
	}
	return *l.Hello
}

// events reads the next lines, which must be events, and returns their
// sequence numbers.
func (r *reader) events(t *testing.T, n int) []uint64 {
	t.Helper()
	var seqs []uint64
	for range n {
		l := r.next(t)
		if l.Event == nil {
			t.Fatalf("line %+v, want an event", l)
		}
		seqs = append(seqs, l.Event.Seq)
	}
	return seqs
}

func publish(h *Hub, n int) {
	for range n {
		h.Publish(agentapi.Event{Time: time.Now(), Type: agentapi.EventStarted, Detail: "booted", UUID: testUUID})
	}
}

func serve(t *testing.T, h *Hub) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(h.Close) // first: the streams end, so srv.Close need not wait
	return srv.URL
}

func seqRange(from, to uint64) string {
	var s []string
	for i := from; i <= to; i++ {
		s = append(s, fmt.Sprint(i))
	}
	return strings.Join(s, " ")
}

func fmtSeqs(seqs []uint64) string {
	var s []string
	for _, q := range seqs {
		s = append(s, fmt.Sprint(q))
	}
	return strings.Join(s, " ")
}

// TestFromNow: without a position, the stream starts with the next event,
// and the sequence numbers have no holes.
func TestFromNow(t *testing.T) {
	t.Parallel()
	h := NewHub(Options{Heartbeat: time.Hour})
	base := serve(t, h)
	publish(h, 3)
	r := open(t, base, agentapi.Position{})
	hello := r.hello(t)
	if hello.Boot != h.Boot() || len(hello.Boot) != 16 || hello.Seq != 3 || hello.Resumed {
		t.Fatalf("hello %+v, want boot %s, seq 3, not resumed", hello, h.Boot())
	}
	publish(h, 5)
	if got := fmtSeqs(r.events(t, 5)); got != seqRange(4, 8) {
		t.Fatalf("events %s, want %s", got, seqRange(4, 8))
	}
	if n := testutil.ToFloat64(h.subscribers); n != 1 {
		t.Errorf("caretaker_agent_event_subscribers %v, want 1", n)
	}
	if n := testutil.ToFloat64(h.events.WithLabelValues(agentapi.EventStarted)); n != 8 {
		t.Errorf("caretaker_agent_events_total{type=started} %v, want 8", n)
	}
}

// TestResume: a reader of this boot whose missed events are all kept gets
// exactly them (Resumed); one whose position the ring no longer covers, or
// of another boot, gets what is kept, not Resumed.
func TestResume(t *testing.T) {
	t.Parallel()
	h := NewHub(Options{RingSize: 8, Heartbeat: time.Hour})
	base := serve(t, h)
	publish(h, 5)

	for _, tc := range []struct {
		name    string
		pos     agentapi.Position
		resumed bool
		want    string
	}{
		{"within the ring", agentapi.Position{Boot: h.Boot(), Seq: 2}, true, seqRange(3, 5)},
		{"up to date", agentapi.Position{Boot: h.Boot(), Seq: 5}, true, ""},
		{"from the start", agentapi.Position{Boot: h.Boot(), Seq: 0}, true, seqRange(1, 5)},
		{"another boot", agentapi.Position{Boot: "feedfacefeedface", Seq: 2}, false, seqRange(1, 5)},
		{"ahead of this boot", agentapi.Position{Boot: h.Boot(), Seq: 9}, false, seqRange(1, 5)},
	} {
		r := open(t, base, tc.pos)
		hello := r.hello(t)
		if hello.Resumed != tc.resumed || hello.Seq != 5 {
			t.Errorf("%s: hello %+v, want seq 5, resumed %v", tc.name, hello, tc.resumed)
		}
		n := len(strings.Fields(tc.want))
		if got := fmtSeqs(r.events(t, n)); got != tc.want {
			t.Errorf("%s: replay %q, want %q", tc.name, got, tc.want)
		}
	}

	// The ring overflows: 20 events, 8 kept (13 … 20), then one more
	// each.
	publish(h, 15)
	for _, tc := range []struct {
		name string
		pos  agentapi.Position
	}{
		{"lost some", agentapi.Position{Boot: h.Boot(), Seq: 3}},
		{"another boot", agentapi.Position{Boot: "feedfacefeedface", Seq: 15}},
	} {
		r := open(t, base, tc.pos)
		seq := h.seq
		if hello := r.hello(t); hello.Resumed || hello.Seq != seq {
			t.Errorf("%s: hello %+v, want seq %d, not resumed", tc.name, hello, seq)
		}
		if got, want := fmtSeqs(r.events(t, 8)), seqRange(seq-7, seq); got != want {
			t.Errorf("%s: replay %q, want %q", tc.name, got, want)
		}
		publish(h, 1)
		if got := r.events(t, 1)[0]; got != h.seq {
			t.Errorf("%s: live event %d, want %d", tc.name, got, h.seq)
		}
	}
	// Just within the ring after the overflow.
	r := open(t, base, agentapi.Position{Boot: h.Boot(), Seq: h.seq - 8})
	if hello := r.hello(t); !hello.Resumed {
		t.Errorf("resume from seq-8 with a ring of 8: hello %+v, want resumed", hello)
	}
	if got, want := fmtSeqs(r.events(t, 8)), seqRange(h.seq-7, h.seq); got != want {
		t.Errorf("replay %q, want %q", got, want)
	}
}

// TestHeartbeat: an idle stream gets a heartbeat every interval, with the
// last sequence number and libvirt's state.
func TestHeartbeat(t *testing.T) {
	t.Parallel()
	h := NewHub(Options{Heartbeat: 20 * time.Millisecond})
	base := serve(t, h)
	r := open(t, base, agentapi.Position{})
	if hello := r.hello(t); hello.Libvirt {
		t.Fatalf("hello %+v: libvirt before SetLibvirt", hello)
	}
	if l := r.next(t); l.Heartbeat == nil || l.Heartbeat.Seq != 0 || l.Heartbeat.Libvirt {
		t.Fatalf("line %+v, want heartbeat seq 0, libvirt false", l)
	}
	h.SetLibvirt(true)
	publish(h, 1)
	for {
		l := r.next(t)
		if l.Event != nil {
			continue
		}
		if l.Heartbeat == nil {
			t.Fatalf("line %+v, want heartbeat", l)
		}
		if l.Heartbeat.Seq == 1 && l.Heartbeat.Libvirt {
			break
		}
		if l.Heartbeat.Seq != 0 {
			t.Fatalf("heartbeat %+v ahead of or behind the event", l.Heartbeat)
		}
	}
}

// TestBadAfter: an after that is not a sequence number is a 400 with the
// API's JSON error.
func TestBadAfter(t *testing.T) {
	t.Parallel()
	h := NewHub(Options{})
	base := serve(t, h)
	for _, q := range []string{"after=x", "boot=b&after=-1", "after="} {
		resp, err := http.Get(base + agentapi.EventsPath + "?" + q)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error string }
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || err != nil || !strings.Contains(body.Error, "after") {
			t.Errorf("?%s: %d %+v (%v), want 400 naming after", q, resp.StatusCode, body, err)
		}
	}
}

// TestSlowReaderDropped: a reader that stops reading is cut off once its
// buffer is full, without holding up Publish or the other readers; it
// gets the events handed to it before, without holes.
func TestSlowReaderDropped(t *testing.T) {
	t.Parallel()
	h := NewHub(Options{Buffer: 4, Heartbeat: time.Hour})
	base := serve(t, h)
	fast := open(t, base, agentapi.Position{})
	fast.hello(t)

	// The slow reader reads the answer's head and hello, then nothing.
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", agentapi.EventsPath)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("slow reader: %v %v", resp, err)
	}
	// The slow reader's subscription is taken before its answer's head
	// is written: it is there once the head is read.
	if n := testutil.ToFloat64(h.subscribers); n != 2 {
		t.Fatalf("caretaker_agent_event_subscribers %v with the slow reader, want 2", n)
	}

	// Big events fill the socket buffers fast; publish until the slow
	// reader is cut off, each Publish at once. The fast reader gets
	// every event, in order, before the next is published: it never
	// falls behind, whatever the machine's load.
	big := strings.Repeat("x", 32<<10)
	published := 0
	for testutil.ToFloat64(h.dropped) == 0 {
		if published == 20000 {
			t.Fatal("slow reader not cut off after 20000 events of 32 KiB")
		}
		start := time.Now()
		h.Publish(agentapi.Event{Time: time.Now(), Type: agentapi.EventStopped, UUID: testUUID, Domain: big})
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Publish took %s", d)
		}
		published++
		if seq := fast.events(t, 1)[0]; seq != uint64(published) {
			t.Fatalf("fast reader: event %d has seq %d", published, seq)
		}
	}
	t.Logf("slow reader cut off after %d events", published)
	if n := testutil.ToFloat64(h.subscribers); n != 1 {
		t.Errorf("caretaker_agent_event_subscribers %v, want 1", n)
	}
	// The slow reader's stream ends after what it was handed, without
	// holes (read with the client's reader).
	var last uint64
	err = agentapi.ReadEvents(resp.Body, func(l agentapi.StreamLine) error {
		if l.Event != nil {
			if l.Event.Seq != last+1 {
				return fmt.Errorf("seq %d after %d", l.Event.Seq, last)
			}
			last = l.Event.Seq
		}
		return nil
	})
	if !errors.Is(err, io.EOF) || last == 0 || last >= uint64(published) {
		t.Errorf("slow reader's stream: ended with %v after seq %d of %d; want a clean end before the last", err, last, published)
	}
}

// TestCloseEndsStreams: Close ends the open streams at once.
func TestCloseEndsStreams(t *testing.T) {
	t.Parallel()
	h := NewHub(Options{Heartbeat: time.Hour})
	base := serve(t, h)
	r := open(t, base, agentapi.Position{})
	r.hello(t)
	h.Close()
	select {
	case err := <-r.ended:
		t.Logf("stream ended: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("stream still open a minute after Close")
	}
	if seq := h.Publish(agentapi.Event{Type: agentapi.EventStarted, UUID: testUUID}); seq != 0 {
		t.Errorf("Publish after Close gave seq %d", seq)
	}
}

func TestNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		t      libvirt.DomainEventType
		detail int
		want   string
	}{
		{libvirt.DomainEventStopped, int(libvirt.DomainEventStoppedDestroyed), "stopped destroyed"},
		{libvirt.DomainEventStopped, int(libvirt.DomainEventStoppedFailed), "stopped failed"},
		{libvirt.DomainEventStopped, int(libvirt.DomainEventStoppedCrashed), "stopped crashed"},
		{libvirt.DomainEventStarted, int(libvirt.DomainEventStartedBooted), "started booted"},
		{libvirt.DomainEventSuspended, int(libvirt.DomainEventSuspendedIoerror), "suspended ioerror"},
		{libvirt.DomainEventDefined, int(libvirt.DomainEventDefinedFromSnapshot), "defined from-snapshot"},
		{libvirt.DomainEventCrashed, int(libvirt.DomainEventCrashedPanicked), "crashed panicked"},
		{libvirt.DomainEventShutdown, 99, "shutdown unknown(99)"},
		{libvirt.DomainEventType(42), 0, "unknown(42) unknown(0)"},
	} {
		if got := TypeName(tc.t) + " " + DetailName(tc.t, tc.detail); got != tc.want {
			t.Errorf("%d/%d: %q, want %q", tc.t, tc.detail, got, tc.want)
		}
	}
}
