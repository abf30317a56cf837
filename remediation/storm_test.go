package remediation

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"caretaker/internal/needs"
	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// An alert storm: every guest of a large fleet reported crashed at once, as
// a storage or network outage would make them look.
const (
	stormAlerts = 100_000 // distinct alerts, one per guest
	stormHosts  = 1_000   // the guests are spread over these hosts
	stormFleet  = 100_000 // guests known, the breaker's 100%
	stormBatch  = 100     // alerts per Handle call, as a webhook sends them
)

// stormAlert is GuestCrashed about the i-th made-up guest. Each batch is
// built when it is sent, as a webhook decodes it, so the sender holds no
// copy of the storm.
func stormAlert(i int) Alert {
	return Alert{
		Name: "GuestCrashed",
		Labels: map[string]string{
			"alertname": "GuestCrashed",
			"host":      fmt.Sprintf("hv-%03d", i%stormHosts),
			"uuid":      fmt.Sprintf("00000000-0000-0000-0000-%012d", i),
			"domain":    fmt.Sprintf("guest-%d", i),
			"severity":  "critical",
		},
		Status:   StatusFiring,
		StartsAt: alertStart,
	}
}

// countingHosts stands in for the agents of made-up guests: every start
// succeeds and the guest then runs. It counts the starts and the actions in
// flight, from StartGuest to the check that finds the guest running, which
// lies within the engine's own span of the action.
type countingHosts struct {
	mu      sync.Mutex
	changed *sync.Cond // signalled when inFlight changes
	// gate, while open (not closed), holds every StartGuest.
	gate                  chan struct{}
	starts                int
	inFlight, maxInFlight int
	started               map[string]bool // host/uuid → not yet found running
	running               map[string]bool
}

func newCountingHosts() *countingHosts {
	h := &countingHosts{started: map[string]bool{}, running: map[string]bool{}}
	h.changed = sync.NewCond(&h.mu)
	return h
}

func (h *countingHosts) StartGuest(ctx context.Context, host, uuid string) error {
	h.mu.Lock()
	h.starts++
	h.inFlight++
	h.maxInFlight = max(h.maxInFlight, h.inFlight)
	h.started[host+"/"+uuid] = true
	gate := h.gate
	h.changed.Broadcast()
	h.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	h.mu.Lock()
	h.running[host+"/"+uuid] = true
	h.mu.Unlock()
	return nil
}

func (h *countingHosts) GuestRunning(_ context.Context, host, uuid string) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := host + "/" + uuid
	if h.started[k] && h.running[k] {
		delete(h.started, k)
		h.inFlight--
		h.changed.Broadcast()
	}
	return h.running[k], nil
}

func (h *countingHosts) RepairOverlay(context.Context, string, string) ([]string, error) {
	return nil, nil
}

// waitInFlight waits until n actions are held in StartGuest.
func (h *countingHosts) waitInFlight(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for h.inFlight < n {
		h.changed.Wait()
	}
}

func (h *countingHosts) counts() (starts, maxInFlight int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.starts, h.maxInFlight
}

// storm is an engine on a fresh journal, fed the storm.
type storm struct {
	engine  *Engine
	journal *journal.Journal
	path    string
	hosts   *countingHosts
	clock   *clock
}

func newStorm(tb testing.TB, p *policy.Policy, log *slog.Logger) *storm {
	tb.Helper()
	s := &storm{
		path:  filepath.Join(tb.TempDir(), "journal.db"),
		hosts: newCountingHosts(),
		clock: &clock{t: alertStart.Add(30 * time.Second)},
	}
	var err error
	if s.journal, err = journal.Open(s.path); err != nil {
		tb.Fatal(err)
	}
	s.engine, err = New(Options{
		Policy: p, Journal: s.journal, Hosts: s.hosts, Logger: log, Now: s.clock.Now,
		FleetSize: func() int { return stormFleet },
	})
	if err != nil {
		s.journal.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(s.close)
	return s
}

func (s *storm) close() {
	if s.engine != nil {
		s.engine.Close()
		s.engine = nil
	}
	if s.journal != nil {
		s.journal.Close()
		s.journal = nil
	}
}

// send delivers alerts [from, to) in webhook batches, one second of the
// clock apart, so a record's times tell which batch decided it; after runs
// after each batch with its number, from 1.
func (s *storm) send(from, to int, after func(batch int)) {
	batch := make([]Alert, 0, stormBatch)
	for i := from; i < to; i += stormBatch {
		batch = batch[:0]
		for j := i; j < min(i+stormBatch, to); j++ {
			batch = append(batch, stormAlert(j))
		}
		s.clock.Advance(time.Second)
		s.engine.Handle(context.Background(), batch)
		if after != nil {
			after(i/stormBatch + 1)
		}
	}
}

// breaker returns the breaker's state.
func (s *storm) breaker() (open bool, since time.Time) {
	s.engine.mu.Lock()
	defer s.engine.mu.Unlock()
	return s.engine.breaker.State.Open, s.engine.breaker.State.Since
}

func (s *storm) busy() int {
	s.engine.mu.Lock()
	defer s.engine.mu.Unlock()
	return len(s.engine.busy)
}

func warnLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// An alert storm of 100,000 distinct alerts, sent in webhook batches and
// re-sent as every rule evaluation does, starts no more actions than the
// guards allow: at most max_concurrent at once while the breaker is closed,
// none once it opened; and the journal holds one record per alert instance,
// however often the alerts are re-sent.
func TestAlertStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("the alert storm takes seconds; skipped with -short")
	}
	const gated = 5 // batches sent while every start is held
	tests := []struct {
		name   string
		guards string // policy guards section; "" is the defaults
		openAt int    // the batch whose alerts tip the breaker over
	}{
		// 40,100 of 100,000 guests is over 40%.
		{name: "default guards, 40% of the fleet", guards: "", openAt: 401},
		// 1,100 guests is over 1,000.
		{name: "absolute max_unhealthy", guards: "guards:\n  max_unhealthy: \"1000\"\n", openAt: 11},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := policy.Parse("storm.yml", []byte(`
rules:
  - name: restart-crashed-guests
    match: {alertname: GuestCrashed}
    action: restart-vm
`+tt.guards))
			if err != nil {
				t.Fatal(err)
			}
			limit := p.GuardSettings().MaxConcurrent
			s := newStorm(t, p, warnLogger(t))

			// While the first starts hang, the limit holds every
			// further action back, quietly.
			s.hosts.gate = make(chan struct{})
			s.send(0, gated*stormBatch, nil)
			if n := s.busy(); n != limit {
				t.Fatalf("%d actions in flight with every start held, want max_concurrent %d", n, limit)
			}
			s.hosts.waitInFlight(limit)
			close(s.hosts.gate)
			s.engine.inflight.Wait()
			if starts, most := s.hosts.counts(); starts != limit || most != limit {
				t.Fatalf("while held: %d starts, at most %d at once; want %d and %d", starts, most, limit, limit)
			}

			// Now actions finish while the storm goes on, until the
			// breaker opens.
			startsAtOpen, openedAt := -1, 0
			s.send(gated*stormBatch, stormAlerts, func(batch int) {
				open, _ := s.breaker()
				if !open || openedAt != 0 {
					return
				}
				openedAt = batch
				s.engine.inflight.Wait()
				startsAtOpen, _ = s.hosts.counts()
			})
			if openedAt != tt.openAt {
				t.Fatalf("breaker opened at batch %d, want %d", openedAt, tt.openAt)
			}
			_, since := s.breaker()

			// Re-sent twice: the first gives a record to the alerts
			// the concurrency limit held quietly; the second changes
			// nothing.
			s.send(0, stormAlerts, nil)
			first, err := s.journal.Len() // counted, not decoded: the second re-send's records are read
			if err != nil {
				t.Fatal(err)
			}
			s.send(0, stormAlerts, nil)
			s.engine.inflight.Wait()
			recs := stormRecords(t, s.journal)

			starts, most := s.hosts.counts()
			if most > limit {
				t.Errorf("%d actions in flight at once, want at most max_concurrent %d", most, limit)
			}
			if starts != startsAtOpen {
				t.Errorf("%d starts after the breaker opened (%d before, %d in all), want none", starts-startsAtOpen, startsAtOpen, starts)
			}
			if first != stormAlerts || len(recs) != stormAlerts {
				t.Errorf("journal holds %d records after one re-send, %d after two; want %d, one per alert instance",
					first, len(recs), stormAlerts)
			}
			seen := map[instanceKey]bool{}
			var started, held int
			for _, r := range recs {
				k := keyOf(r.Fingerprint, r.AlertStartsAt)
				if seen[k] {
					t.Errorf("alert instance %s has more than one record", r.UUID)
				}
				seen[k] = true
				switch {
				case !r.Started.IsZero():
					started++
					if !r.Started.Before(since) || r.State != journal.StateSucceeded {
						t.Errorf("record %d: %s started at %s, the breaker opened at %s; want succeeded before",
							r.ID, r.State, r.Started, since)
					}
				case r.State == journal.StatePending && strings.HasPrefix(r.Reason, "skipped: circuit breaker open"):
					held++
				default:
					t.Errorf("record %d is %s (%s), want succeeded, or held by the breaker", r.ID, r.State, r.Reason)
				}
			}
			if started != starts || started+held != stormAlerts {
				t.Errorf("%d records started, %d held by the breaker; StartGuest called %d times", started, held, starts)
			}
			t.Logf("%d actions, the breaker opened at batch %d, %d held", starts, openedAt, held)
		})
	}
}

func stormRecords(t *testing.T, j *journal.Journal) []journal.Record {
	t.Helper()
	recs, err := j.List(0)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// BenchmarkAlertStorm sends the storm in webhook batches, then re-sends it
// once, with the default policy, and reports the resident memory (peak and
// after), the intake rate through Handle, and the journal's size on disk.
func BenchmarkAlertStorm(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		s := newStorm(b, policy.Default(), nil)
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		b.StartTimer()

		start := time.Now()
		s.send(0, stormAlerts, nil)
		s.send(0, stormAlerts, nil)
		intake := time.Since(start)

		b.StopTimer()
		s.engine.inflight.Wait()
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		rss, hwm := procStatus(b, "VmRSS"), procStatus(b, "VmHWM")
		// The journal's pages, mapped by bbolt, count in RSS as file
		// pages; the engine's memory is the anonymous part.
		b.ReportMetric(float64(procStatus(b, "RssAnon"))/(1<<20), "MiB-RSS-anon")
		b.ReportMetric(float64(procStatus(b, "RssFile"))/(1<<20), "MiB-RSS-file")
		fi, err := os.Stat(s.path)
		if err != nil {
			b.Fatal(err)
		}
		starts, _ := s.hosts.counts()
		b.ReportMetric(float64(hwm)/(1<<20), "MiB-peak-RSS")
		b.ReportMetric(float64(rss)/(1<<20), "MiB-RSS-after")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/stormAlerts, "heap-B/alert")
		b.ReportMetric(2*stormAlerts/intake.Seconds(), "alerts/s")
		b.ReportMetric(float64(intake.Microseconds())/(2*stormAlerts/stormBatch)/1000, "ms/batch")
		b.ReportMetric(float64(fi.Size())/(1<<20), "MiB-journal")
		b.ReportMetric(float64(starts), "actions")
		s.close()
		b.StartTimer()
	}
}

// procStatus reads a size field (VmRSS, VmHWM) of /proc/self/status, in
// bytes.
func procStatus(tb testing.TB, field string) int64 {
	tb.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		needs.Missing(tb, "resident memory needs /proc: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), field+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			tb.Fatalf("/proc/self/status: %s: %v", field, err)
		}
		return kb << 10
	}
	if err := sc.Err(); err != nil {
		tb.Fatalf("read /proc/self/status: %v", err)
	}
	tb.Fatalf("/proc/self/status has no %s", field)
	return 0
}
