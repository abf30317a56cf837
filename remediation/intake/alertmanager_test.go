package intake

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"caretaker/internal/needs"
	"caretaker/internal/testdaemon"
)

// These tests run the webhook against the real Alertmanager; they skip
// when it is not installed (CI installs it).

// waitLimit bounds every wait on Alertmanager, which offers no signal.
const waitLimit = 60 * time.Second

// startAlertmanager runs Alertmanager with config and waits until it is
// ready. The process is killed at cleanup.
func startAlertmanager(t *testing.T, config string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return testdaemon.Start(t, "prometheus-alertmanager", func(addr string) []string {
		return []string{"--config.file=" + cfg, "--storage.path=" + filepath.Join(dir, "data"),
			"--web.listen-address=" + addr, "--cluster.listen-address=", "--log.level=debug"}
	})
}

// deliveries counts what the webhook answered 200, by alert status, and
// signals every delivery so the test waits on events, not on time.
type deliveries struct {
	mu     sync.Mutex
	counts map[string]int
	signal chan struct{}
}

func (d *deliveries) wrap(t *testing.T, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("read delivery: %v", err)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		if rec.Code != http.StatusOK {
			t.Errorf("webhook answered Alertmanager %d %s", rec.Code, rec.Body)
			return
		}
		m, err := Decode(bytes.NewReader(body), 0)
		if err != nil {
			t.Errorf("answered 200 to a body Decode refuses: %v", err)
			return
		}
		d.mu.Lock()
		for _, a := range m.Alerts {
			d.counts[a.Status]++
		}
		d.mu.Unlock()
		select {
		case d.signal <- struct{}{}:
		default:
		}
	})
}

// await waits until done holds, checking at every delivery.
func (d *deliveries) await(t *testing.T, what string, done func(counts map[string]int) bool) {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		d.mu.Lock()
		ok := done(d.counts)
		counts := fmt.Sprint(d.counts)
		d.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-d.signal:
		case <-deadline:
			t.Fatalf("waited %s for %s; deliveries so far: %s", waitLimit, what, counts)
		}
	}
}

func pushAlert(t *testing.T, am string, labels map[string]string, startsAt, endsAt time.Time) {
	t.Helper()
	a := map[string]any{"labels": labels, "annotations": map[string]string{"summary": "test"},
		"startsAt": startsAt, "generatorURL": "http://caretaker.test/graph"}
	if !endsAt.IsZero() {
		a["endsAt"] = endsAt
	}
	b, err := json.Marshal([]any{a})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(am+"/api/v2/alerts", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("push alert to %s: %d %s", am, resp.StatusCode, msg)
	}
}

// Two Alertmanagers (not clustered, so each sends its own notifications)
// deliver one alert again and again; the inbox records it once, then its
// resolution once, which withdraws the firing entry nobody consumed.
func TestRealAlertmanager(t *testing.T) {
	needs.Program(t, "prometheus-alertmanager")
	in, _ := openInbox(t)
	d := &deliveries{counts: map[string]int{}, signal: make(chan struct{}, 1)}
	// No OnAlerts: the entries stay pending for the test to inspect.
	m := newTestMetrics(t)
	srv := httptest.NewServer(d.wrap(t, Handler(Options{Inbox: in, Token: testToken, Metrics: m})))
	t.Cleanup(srv.Close)

	config := fmt.Sprintf(`route:
  receiver: caretaker
  group_by: ['...']
  group_wait: 0s
  group_interval: 50ms
  repeat_interval: 50ms
receivers:
  - name: caretaker
    webhook_configs:
      - url: %s%s
        send_resolved: true
        http_config:
          authorization:
            credentials: %s
`, srv.URL, Path, testToken)
	ams := []string{startAlertmanager(t, config), startAlertmanager(t, config)}

	labels := map[string]string{"alertname": "GuestCrashed", "host": "kvm-1", "uuid": "u1", "domain": "worker-1"}
	// Alertmanager keeps times to the millisecond.
	startsAt := time.Now().Add(-time.Minute).UTC().Truncate(time.Millisecond)
	for range 3 {
		for _, am := range ams {
			pushAlert(t, am, labels, startsAt, time.Time{})
		}
	}
	d.await(t, "several firing deliveries", func(c map[string]int) bool { return c["firing"] >= 6 })
	for range 2 { // re-pushed while it is being notified
		for _, am := range ams {
			pushAlert(t, am, labels, startsAt, time.Time{})
		}
	}
	d.await(t, "more firing deliveries", func(c map[string]int) bool { return c["firing"] >= 10 })

	es, err := in.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 {
		t.Fatalf("inbox holds %d entries after many deliveries, want 1: %+v", len(es), es)
	}
	a := es[0].Alert
	// Alertmanager's fingerprint is the one this package computes.
	if a.Status != "firing" || a.Name != "GuestCrashed" || !a.StartsAt.Equal(startsAt) || a.Fingerprint != fingerprint(labels) {
		t.Errorf("firing entry %+v; want GuestCrashed firing since %v, fingerprint %s", a, startsAt, fingerprint(labels))
	}

	endsAt := time.Now().Add(-time.Second).UTC().Truncate(time.Millisecond)
	for _, am := range ams {
		pushAlert(t, am, labels, startsAt, endsAt)
	}
	d.await(t, "a resolved delivery from each Alertmanager", func(c map[string]int) bool { return c["resolved"] >= 2 })
	es, err = in.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 {
		t.Fatalf("inbox holds %d entries after the resolution, want only it: %+v", len(es), es)
	}
	a = es[0].Alert
	if a.Status != "resolved" || !a.StartsAt.Equal(startsAt) || !a.EndsAt.Equal(endsAt) || a.Fingerprint != fingerprint(labels) {
		t.Errorf("resolved entry %+v; want resolved at %v", a, endsAt)
	}
	if n := testutil.ToFloat64(m.cancelled); n != 1 {
		t.Errorf("cancelled = %v, want 1 (the firing entry)", n)
	}
}
