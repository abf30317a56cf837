package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang/snappy"
	"github.com/grafana/loki/pkg/push"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"caretaker/remediation/journal"
)

// received is one push as Loki would decode it.
type received struct {
	header http.Header
	req    push.PushRequest
}

// lokiServer decodes pushes the way Loki's distributor does for
// Content-Type application/x-protobuf: snappy block, then protobuf.
type lokiServer struct {
	*httptest.Server
	pushes   chan received
	requests atomic.Int64
}

// newLokiServer answers the nth request (from 1) with status(n); nil means
// always 204.
func newLokiServer(t *testing.T, status func(n int64) int) *lokiServer {
	t.Helper()
	s := &lokiServer{pushes: make(chan received, 100)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := s.requests.Add(1)
		if r.Method != http.MethodPost || r.URL.Path != "/loki/api/v1/push" {
			t.Errorf("request %s %s, want POST /loki/api/v1/push", r.Method, r.URL.Path)
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
			t.Errorf("Content-Type %q, want application/x-protobuf", ct)
		}
		compressed, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("read push body: %v", err)
			return
		}
		raw, err := snappy.Decode(nil, compressed)
		if err != nil {
			t.Errorf("snappy-decode push body: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var req push.PushRequest
		if err := req.Unmarshal(raw); err != nil {
			t.Errorf("unmarshal push request: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		code := http.StatusNoContent
		if status != nil {
			code = status(n)
		}
		s.pushes <- received{header: r.Header.Clone(), req: req}
		if code != http.StatusNoContent {
			http.Error(w, fmt.Sprintf("status %d for request %d", code, n), code)
			return
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *lokiServer) url() string { return s.URL + "/loki/api/v1/push" }

// next awaits the next push; the test's own deadline bounds the wait.
func (s *lokiServer) next(t *testing.T) received {
	t.Helper()
	select {
	case r := <-s.pushes:
		return r
	case <-t.Context().Done():
		t.Fatal("no push arrived")
		return received{}
	}
}

// fakeClock announces every timer the client starts, for the test to fire.
type fakeClock struct {
	now    time.Time
	timers chan *fakeTimer
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: t0, timers: make(chan *fakeTimer, 100)}
}

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) NewTimer(d time.Duration) timer {
	t := &fakeTimer{d: d, c: make(chan time.Time, 1)}
	c.timers <- t
	return t
}

type fakeTimer struct {
	d time.Duration
	c chan time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }
func (t *fakeTimer) Stop() bool          { return true }
func (t *fakeTimer) fire()               { t.c <- time.Time{} }

func newTestClient(t *testing.T, cfg Config, clk clock) *Client {
	t.Helper()
	c, err := newClient(cfg, nil, prometheus.NewRegistry(), clk)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(context.Background()); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return c
}

type counts struct{ sent, failed, dropped, batches float64 }

func countsOf(c *Client) counts {
	return counts{
		sent:    testutil.ToFloat64(c.m.sent),
		failed:  testutil.ToFloat64(c.m.failed),
		dropped: testutil.ToFloat64(c.m.dropped),
		batches: testutil.ToFloat64(c.m.batches),
	}
}

func record(id uint64, host, domain string, state journal.State, finished time.Time) journal.Record {
	return journal.Record{
		ID: id, Created: t0, Alert: "GuestCrashed", Fingerprint: "abc123", AlertStartsAt: t0.Add(-time.Minute),
		Rule: "restart-crashed", Action: "restart-vm", Host: host, Domain: domain, UUID: "uuid-" + domain,
		State: state, Started: t0.Add(time.Second), Finished: finished, Attempt: 1,
	}
}

func TestPushPayload(t *testing.T) {
	srv := newLokiServer(t, nil)
	recs := []journal.Record{
		record(1, "kvm-1", "web-1", journal.StateSucceeded, t0.Add(9*time.Second)),
		record(2, "kvm-2", "db-1", journal.StateFailed, t0.Add(4*time.Second)),
		record(3, "kvm-1", "web-1", journal.StateSucceeded, t0.Add(3*time.Second)),
		record(4, "kvm-1", "web-1", journal.StateRunning, time.Time{}),
	}
	recs[1].Error = "domain not found"
	c := newTestClient(t, Config{
		URL: srv.url(), TenantID: "ops", BearerToken: "s3cret", BatchSize: len(recs), BatchWait: time.Hour,
		ExternalLabels: map[string]string{"cluster": "dc1"},
	}, realClock{})
	for _, r := range recs {
		c.Log(r)
	}
	got := srv.next(t)

	if h := got.header.Get("X-Scope-OrgID"); h != "ops" {
		t.Errorf("X-Scope-OrgID %q, want ops", h)
	}
	if h := got.header.Get("Authorization"); h != "Bearer s3cret" {
		t.Errorf("Authorization %q, want Bearer s3cret", h)
	}
	want := []struct {
		labels string
		recs   []journal.Record
	}{
		{`{action="restart-vm", cluster="dc1", guest="db-1", host="kvm-2", job="caretaker-remediation", result="failed"}`, []journal.Record{recs[1]}},
		{`{action="restart-vm", cluster="dc1", guest="web-1", host="kvm-1", job="caretaker-remediation", result="running"}`, []journal.Record{recs[3]}},
		{`{action="restart-vm", cluster="dc1", guest="web-1", host="kvm-1", job="caretaker-remediation", result="succeeded"}`, []journal.Record{recs[2], recs[0]}},
	}
	if len(got.req.Streams) != len(want) {
		t.Fatalf("%d streams, want %d: %+v", len(got.req.Streams), len(want), got.req.Streams)
	}
	for i, w := range want {
		s := got.req.Streams[i]
		if s.Labels != w.labels {
			t.Errorf("stream %d labels\n%s, want\n%s", i, s.Labels, w.labels)
		}
		if len(s.Entries) != len(w.recs) {
			t.Fatalf("stream %d: %d entries, want %d", i, len(s.Entries), len(w.recs))
		}
		var last time.Time
		for j, e := range s.Entries {
			if e.Timestamp.Before(last) {
				t.Errorf("stream %d entry %d at %s goes back in time from %s", i, j, e.Timestamp, last)
			}
			last = e.Timestamp
			if wantTS := stateTime(w.recs[j]); !e.Timestamp.Equal(wantTS) {
				t.Errorf("stream %d entry %d at %s, want %s", i, j, e.Timestamp, wantTS)
			}
			wantLine, _ := json.Marshal(w.recs[j])
			if e.Line != string(wantLine) {
				t.Errorf("stream %d entry %d line\n%s, want\n%s", i, j, e.Line, wantLine)
			}
		}
	}
}

func TestBatchBySize(t *testing.T) {
	srv := newLokiServer(t, nil)
	c := newTestClient(t, Config{URL: srv.url(), BatchSize: 3, BatchWait: time.Hour}, realClock{})
	for i := range 6 {
		c.Log(record(uint64(i+1), "kvm-1", "web-1", journal.StateSucceeded, t0.Add(time.Duration(i)*time.Second)))
	}
	for b := range 2 {
		got := srv.next(t)
		if len(got.req.Streams) != 1 || len(got.req.Streams[0].Entries) != 3 {
			t.Fatalf("push %d: %+v, want one stream of 3 entries", b, got.req.Streams)
		}
		for j, e := range got.req.Streams[0].Entries {
			var rec journal.Record
			if err := json.Unmarshal([]byte(e.Line), &rec); err != nil {
				t.Fatal(err)
			}
			if want := uint64(3*b + j + 1); rec.ID != want {
				t.Errorf("push %d entry %d is record %d, want %d", b, j, rec.ID, want)
			}
		}
	}
}

func TestBatchByWait(t *testing.T) {
	srv := newLokiServer(t, nil)
	clk := newFakeClock()
	c := newTestClient(t, Config{URL: srv.url(), BatchSize: 100, BatchWait: 5 * time.Second}, clk)
	c.Log(record(1, "kvm-1", "web-1", journal.StateSucceeded, t0))

	wait := <-clk.timers // the batch has its first entry and waits for more
	if wait.d != 5*time.Second {
		t.Errorf("batch waits %s, want BatchWait 5s", wait.d)
	}
	if n := srv.requests.Load(); n != 0 {
		t.Fatalf("%d pushes before BatchWait passed, want none", n)
	}
	wait.fire()
	got := srv.next(t)
	if len(got.req.Streams) != 1 || len(got.req.Streams[0].Entries) != 1 {
		t.Fatalf("push %+v, want the one entry", got.req.Streams)
	}
}

func TestBatchByWaitRealClock(t *testing.T) {
	srv := newLokiServer(t, nil)
	c := newTestClient(t, Config{URL: srv.url(), BatchSize: 100, BatchWait: time.Millisecond}, realClock{})
	c.Log(record(1, "kvm-1", "web-1", journal.StateSucceeded, t0))
	got := srv.next(t) // arrives only through the wait: one entry never fills the batch
	if len(got.req.Streams) != 1 || len(got.req.Streams[0].Entries) != 1 {
		t.Fatalf("push %+v, want the one entry", got.req.Streams)
	}
}

func TestRetries(t *testing.T) {
	tests := []struct {
		name         string
		statuses     []int // answers in order; the last repeats
		maxRetries   int
		wantRequests int64
		wantBackoffs []time.Duration
		want         counts
	}{
		{"5xx then success", []int{500, 502, 204}, 5, 3, []time.Duration{time.Second, 2 * time.Second}, counts{sent: 1, batches: 1}},
		{"rate limited", []int{429, 204}, 5, 2, []time.Duration{time.Second}, counts{sent: 1, batches: 1}},
		{"bad request: given up", []int{400}, 5, 1, nil, counts{failed: 1}},
		{"too large: given up", []int{413}, 5, 1, nil, counts{failed: 1}},
		{"out of retries", []int{503}, 4, 5, []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second}, counts{failed: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newLokiServer(t, func(n int64) int {
				return tt.statuses[min(int(n), len(tt.statuses))-1]
			})
			clk := newFakeClock()
			var backoffs []time.Duration
			var wg sync.WaitGroup
			wg.Go(func() { // every timer is a backoff: BatchSize 1 never waits
				for tm := range clk.timers {
					backoffs = append(backoffs, tm.d)
					tm.fire()
				}
			})
			c, err := newClient(Config{
				URL: srv.url(), BatchSize: 1, MinBackoff: time.Second, MaxBackoff: 3 * time.Second, MaxRetries: tt.maxRetries,
			}, nil, nil, clk)
			if err != nil {
				t.Fatal(err)
			}
			c.Log(record(1, "kvm-1", "web-1", journal.StateSucceeded, t0))
			if err := c.Close(context.Background()); err != nil { // flushes, retries included
				t.Fatal(err)
			}
			close(clk.timers)
			wg.Wait()

			if n := srv.requests.Load(); n != tt.wantRequests {
				t.Errorf("%d requests, want %d", n, tt.wantRequests)
			}
			if fmt.Sprint(backoffs) != fmt.Sprint(tt.wantBackoffs) {
				t.Errorf("backoffs %v, want %v", backoffs, tt.wantBackoffs)
			}
			if got := countsOf(c); got != tt.want {
				t.Errorf("counts %+v, want %+v", got, tt.want)
			}
			// Every try carried the same batch.
			for range tt.wantRequests {
				if got := <-srv.pushes; len(got.req.Streams) != 1 || len(got.req.Streams[0].Entries) != 1 {
					t.Errorf("push %+v, want the one entry", got.req.Streams)
				}
			}
		})
	}
}

func TestRetryable(t *testing.T) {
	for code, want := range map[int]bool{
		400: false, 401: false, 403: false, 404: false, 413: false,
		429: true, 500: true, 502: true, 503: true, 504: true,
	} {
		if got := retryable(code); got != want {
			t.Errorf("retryable(%d) = %v, want %v", code, got, want)
		}
	}
}

func TestNetworkErrorRetried(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL + "/loki/api/v1/push"
	srv.Close() // nothing listens there now: every try is a connection error
	clk := newFakeClock()
	var tries atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for tm := range clk.timers {
			tries.Add(1)
			tm.fire()
		}
	})
	c, err := newClient(Config{URL: url, BatchSize: 1, MaxRetries: 2}, nil, nil, clk)
	if err != nil {
		t.Fatal(err)
	}
	c.Log(record(1, "kvm-1", "web-1", journal.StateSucceeded, t0))
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	close(clk.timers)
	wg.Wait()
	if n := tries.Load(); n != 2 {
		t.Errorf("%d backoffs, want 2 (MaxRetries)", n)
	}
	if got, want := countsOf(c), (counts{failed: 1}); got != want {
		t.Errorf("counts %+v, want %+v", got, want)
	}
}

// hangingServer takes each push and answers only once released.
func hangingServer(t *testing.T) (url string, arrived <-chan struct{}, release func()) {
	t.Helper()
	arrivedC := make(chan struct{}, 100)
	releaseC := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrivedC <- struct{}{}
		select {
		case <-releaseC:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	var once sync.Once
	release = func() { once.Do(func() { close(releaseC) }) }
	t.Cleanup(srv.Close)
	t.Cleanup(release) // runs first: the handlers return before the server closes
	return srv.URL + "/loki/api/v1/push", arrivedC, release
}

func TestFullBufferDrops(t *testing.T) {
	url, arrived, release := hangingServer(t)
	c := newTestClient(t, Config{URL: url, BatchSize: 1, MaxBuffer: 2}, realClock{})

	c.Log(record(1, "kvm-1", "web-1", journal.StateSucceeded, t0))
	<-arrived // the client is stuck pushing record 1

	// Two fit the buffer; the rest are dropped, and Log returns each time
	// although the server does not answer (else this test would hang).
	for i := range 12 {
		c.Log(record(uint64(i+2), "kvm-1", "web-1", journal.StateSucceeded, t0))
	}
	if got, want := countsOf(c), (counts{dropped: 10}); got != want {
		t.Errorf("counts %+v, want %+v", got, want)
	}

	release()
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := countsOf(c), (counts{sent: 3, batches: 3, dropped: 10}); got != want {
		t.Errorf("after close: counts %+v, want %+v", got, want)
	}
	c.Log(record(99, "kvm-1", "web-1", journal.StateSucceeded, t0)) // closed: dropped
	if got := countsOf(c).dropped; got != 11 {
		t.Errorf("dropped %v after Log on a closed client, want 11", got)
	}
}

func TestCloseFlushes(t *testing.T) {
	srv := newLokiServer(t, nil)
	c, err := newClient(Config{URL: srv.url(), BatchSize: 100, BatchWait: time.Hour}, nil, nil, realClock{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		c.Log(record(uint64(i+1), "kvm-1", "web-1", journal.StateSucceeded, t0))
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := srv.requests.Load(); n != 1 {
		t.Fatalf("%d pushes, want 1", n)
	}
	if got := <-srv.pushes; len(got.req.Streams) != 1 || len(got.req.Streams[0].Entries) != 5 {
		t.Errorf("push %+v, want one stream of 5 entries", got.req.Streams)
	}
	if got, want := countsOf(c), (counts{sent: 5, batches: 1}); got != want {
		t.Errorf("counts %+v, want %+v", got, want)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestCloseGivesUpAtDeadline(t *testing.T) {
	url, arrived, _ := hangingServer(t)
	c, err := newClient(Config{URL: url, BatchSize: 1}, nil, nil, realClock{})
	if err != nil {
		t.Fatal(err)
	}
	c.Log(record(1, "kvm-1", "web-1", journal.StateSucceeded, t0))
	<-arrived
	c.Log(record(2, "kvm-1", "web-1", journal.StateSucceeded, t0))
	c.Log(record(3, "kvm-1", "web-1", journal.StateSucceeded, t0))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = c.Close(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("close = %v, want context.Canceled", err)
	}
	if got, want := countsOf(c), (counts{failed: 3}); got != want {
		t.Errorf("counts %+v, want %+v", got, want)
	}
}

func TestMetricsRegistered(t *testing.T) {
	srv := newLokiServer(t, nil)
	reg := prometheus.NewRegistry()
	c, err := New(Config{URL: srv.url(), BatchSize: 1}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	c.Log(record(1, "kvm-1", "web-1", journal.StateSucceeded, t0))
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	names := []string{
		"caretaker_audit_entries_sent_total", "caretaker_audit_entries_failed_total",
		"caretaker_audit_entries_dropped_total", "caretaker_audit_batches_sent_total",
		"caretaker_audit_push_duration_seconds", "caretaker_audit_buffered_entries",
	}
	n, err := testutil.GatherAndCount(reg, names...)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(names) {
		t.Errorf("%d of the %d metrics gathered", n, len(names))
	}
	if _, err := New(Config{URL: srv.url()}, nil, reg); err == nil {
		t.Error("a second client on the same registry registered its metrics")
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
}

// BenchmarkLog measures what the engine pays per record: queued (the
// pusher is stuck, and the test empties the buffer off the clock), dropped
// (the buffer is full), and live (a pusher sending to a fast server).
func BenchmarkLog(b *testing.B) {
	rec := record(1, "kvm-1", "web-1", journal.StateSucceeded, t0.Add(time.Second))

	stuck := func(b *testing.B, maxBuffer int) *Client {
		b.Helper()
		arrived, release := make(chan struct{}, 1), make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case arrived <- struct{}{}:
			default: // after release, the flush's pushes
			}
			<-release
		}))
		c, err := New(Config{URL: srv.URL, BatchSize: 1, MaxBuffer: maxBuffer}, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // abandon what is queued rather than push it one by one
			_ = c.Close(ctx)
			close(release)
			srv.Close()
		})
		c.Log(rec)
		<-arrived // the pusher holds record 1 and takes no more
		return c
	}

	b.Run("queued", func(b *testing.B) {
		const size = 4096
		c := stuck(b, size)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if i%size == 0 && i > 0 {
				b.StopTimer()
				for range size {
					<-c.queue
				}
				b.StartTimer()
			}
			c.Log(rec)
		}
		b.StopTimer()
		if d := testutil.ToFloat64(c.m.dropped); d != 0 {
			b.Fatalf("%v dropped, want none", d)
		}
	})
	b.Run("dropped", func(b *testing.B) {
		c := stuck(b, 1)
		c.Log(rec) // fills the buffer
		b.ReportAllocs()
		for b.Loop() {
			c.Log(rec)
		}
	})
	b.Run("live", func(b *testing.B) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusNoContent)
		}))
		defer srv.Close()
		c, err := New(Config{URL: srv.URL}, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close(context.Background())
		b.ReportAllocs()
		for b.Loop() {
			c.Log(rec)
		}
	})
}
