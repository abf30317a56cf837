package intake

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"caretaker/internal/kv"
	"caretaker/remediation"
)

var t0 = time.Date(2026, 11, 25, 14, 0, 0, 0, time.UTC)

func openInbox(t testing.TB) (*Inbox, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "inbox.db")
	in, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	return in, path
}

func alert(host, status string, startsAt time.Time) remediation.Alert {
	labels := map[string]string{"alertname": "GuestCrashed", "host": host, "uuid": "u-" + host}
	return remediation.Alert{
		Name: "GuestCrashed", Labels: labels, Status: status, StartsAt: startsAt,
		Fingerprint: fingerprint(labels),
	}
}

// summary is what the tests compare of pending entries.
func summary(t testing.TB, in *Inbox) []string {
	t.Helper()
	es, err := in.Pending()
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, e := range es {
		s = append(s, e.Alert.Labels["host"]+" "+e.Alert.Status+" "+e.Alert.StartsAt.UTC().Format(time.RFC3339))
	}
	return s
}

func TestRecordDeduplicates(t *testing.T) {
	in, _ := openInbox(t)
	type step struct {
		alerts                          []remediation.Alert
		recorded, duplicates, cancelled int
		current                         int
	}
	firing1 := alert("kvm-1", "firing", t0)
	// The same instance from another Alertmanager, its time in another zone.
	firing1Elsewhere := firing1
	firing1Elsewhere.StartsAt = t0.In(time.FixedZone("CET", 3600))
	// No fingerprint: computed like Alertmanager's, so still the same.
	firing1NoFP := firing1
	firing1NoFP.Fingerprint = ""
	for i, s := range []step{
		{alerts: []remediation.Alert{firing1, alert("kvm-2", "firing", t0)}, recorded: 2, current: 2},
		{alerts: []remediation.Alert{firing1}, duplicates: 1, current: 1},
		{alerts: []remediation.Alert{firing1Elsewhere, firing1NoFP}, duplicates: 2, current: 1},
		// A second copy in one batch is recorded once.
		{alerts: []remediation.Alert{alert("kvm-3", "firing", t0), alert("kvm-3", "firing", t0)}, recorded: 1, duplicates: 1, current: 1},
		// A new instance of the same label set (it fired again later).
		{alerts: []remediation.Alert{alert("kvm-1", "firing", t0.Add(time.Hour))}, recorded: 1, current: 1},
	} {
		rc, err := in.Record(s.alerts)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if len(rc.Recorded) != s.recorded || rc.Duplicates != s.duplicates || rc.Cancelled != s.cancelled || len(rc.Current) != s.current {
			t.Errorf("step %d: recorded %d duplicates %d cancelled %d current %d; want %d %d %d %d", i,
				len(rc.Recorded), rc.Duplicates, rc.Cancelled, len(rc.Current), s.recorded, s.duplicates, s.cancelled, s.current)
		}
	}
	want := []string{"kvm-1 firing 2026-11-25T14:00:00Z", "kvm-2 firing 2026-11-25T14:00:00Z",
		"kvm-3 firing 2026-11-25T14:00:00Z", "kvm-1 firing 2026-11-25T15:00:00Z"}
	if got := summary(t, in); !reflect.DeepEqual(got, want) {
		t.Errorf("pending\n got %q\nwant %q", got, want)
	}
}

func TestResolvedCancelsPendingFiring(t *testing.T) {
	in, _ := openInbox(t)
	if _, err := in.Record([]remediation.Alert{alert("kvm-1", "firing", t0), alert("kvm-2", "firing", t0)}); err != nil {
		t.Fatal(err)
	}
	// kvm-2's entry is consumed; kvm-1's is still pending when both resolve.
	es, _ := in.Pending()
	if err := in.Ack(es[1].ID); err != nil {
		t.Fatal(err)
	}
	rc, err := in.Record([]remediation.Alert{alert("kvm-1", "resolved", t0), alert("kvm-2", "resolved", t0)})
	if err != nil {
		t.Fatal(err)
	}
	if rc.Cancelled != 1 || len(rc.Recorded) != 2 {
		t.Errorf("cancelled %d recorded %d, want 1 and 2", rc.Cancelled, len(rc.Recorded))
	}
	want := []string{"kvm-1 resolved 2026-11-25T14:00:00Z", "kvm-2 resolved 2026-11-25T14:00:00Z"}
	if got := summary(t, in); !reflect.DeepEqual(got, want) {
		t.Errorf("pending\n got %q\nwant %q", got, want)
	}
	// A late firing copy, from an Alertmanager that has not heard of the
	// resolution, neither returns to the inbox nor reaches the engine.
	rc, err = in.Record([]remediation.Alert{alert("kvm-1", "firing", t0)})
	if err != nil {
		t.Fatal(err)
	}
	if len(rc.Recorded) != 0 || len(rc.Current) != 0 || rc.Duplicates != 1 {
		t.Errorf("late firing copy: %+v; want a duplicate, nothing current", rc)
	}
	// Even one never seen firing before.
	rc, err = in.Record([]remediation.Alert{alert("kvm-9", "resolved", t0), alert("kvm-9", "firing", t0)})
	if err != nil {
		t.Fatal(err)
	}
	if len(rc.Recorded) != 1 || rc.Recorded[0].Alert.Status != "resolved" || len(rc.Current) != 1 {
		t.Errorf("firing after resolved in one batch: %+v", rc)
	}
}

func TestDurableAcrossReopen(t *testing.T) {
	in, path := openInbox(t)
	alerts := []remediation.Alert{alert("kvm-1", "firing", t0), alert("kvm-2", "firing", t0)}
	alerts[0].Annotations = map[string]string{"summary": "Guest crashed"}
	alerts[0].EndsAt = t0.Add(5 * time.Minute)
	rc, err := in.Record(alerts)
	if err != nil {
		t.Fatal(err)
	}
	// The server stops between recording and handling.
	if err := in.Close(); err != nil {
		t.Fatal(err)
	}
	in, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	es, err := in.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 {
		t.Fatalf("%d pending after reopen, want 2", len(es))
	}
	for i, e := range es {
		if e.ID != rc.Recorded[i].ID || !e.Received.Equal(rc.Recorded[i].Received) {
			t.Errorf("entry %d: %+v, recorded as %+v", i, e, rc.Recorded[i])
		}
		w := alerts[i]
		g := e.Alert
		if g.Name != w.Name || g.Status != w.Status || g.Fingerprint != w.Fingerprint || !g.StartsAt.Equal(w.StartsAt) ||
			!g.EndsAt.Equal(w.EndsAt) || !reflect.DeepEqual(g.Labels, w.Labels) || !reflect.DeepEqual(g.Annotations, w.Annotations) {
			t.Errorf("entry %d alert\n got %+v\nwant %+v", i, g, w)
		}
	}
	// Re-handled at start, then gone; and still known as seen.
	var handled []remediation.Alert
	n, err := in.Replay(context.Background(), func(_ context.Context, as []remediation.Alert) { handled = append(handled, as...) })
	if err != nil || n != 2 || len(handled) != 2 {
		t.Fatalf("Replay = %d, %v; handled %d; want 2", n, err, len(handled))
	}
	if got := summary(t, in); got != nil {
		t.Errorf("pending after Replay: %q", got)
	}
	if n, err := in.Replay(context.Background(), func(context.Context, []remediation.Alert) { t.Error("replayed an empty inbox") }); n != 0 || err != nil {
		t.Errorf("second Replay = %d, %v", n, err)
	}
	rc, err = in.Record(alerts)
	if err != nil || len(rc.Recorded) != 0 || rc.Duplicates != 2 {
		t.Errorf("re-delivery after restart: %+v, %v; want 2 duplicates", rc, err)
	}
}

func TestPrune(t *testing.T) {
	in, _ := openInbox(t)
	now := t0
	in.now = func() time.Time { return now }
	old, pending, fresh := alert("kvm-1", "firing", t0), alert("kvm-2", "firing", t0), alert("kvm-3", "firing", t0)
	rc, err := in.Record([]remediation.Alert{old, pending, fresh})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Ack(rc.Recorded[0].ID, rc.Recorded[2].ID); err != nil {
		t.Fatal(err)
	}
	now = t0.Add(time.Hour)
	if _, err := in.Record([]remediation.Alert{fresh}); err != nil { // re-sent: still alive
		t.Fatal(err)
	}
	n, err := in.Prune(t0.Add(time.Minute))
	if err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1 (kvm-1)", n, err)
	}
	rc, err = in.Record([]remediation.Alert{old, pending, fresh})
	if err != nil {
		t.Fatal(err)
	}
	if len(rc.Recorded) != 1 || rc.Recorded[0].Alert.Labels["host"] != "kvm-1" || rc.Duplicates != 2 {
		t.Errorf("after Prune: %+v; want kvm-1 recorded anew, the others duplicates", rc)
	}
}

func TestAckUnknown(t *testing.T) {
	in, _ := openInbox(t)
	if err := in.Ack(42, 43); err != nil {
		t.Errorf("Ack of unknown IDs: %v", err)
	}
	if err := in.Ack(); err != nil {
		t.Errorf("Ack of nothing: %v", err)
	}
}

func TestOpenLocked(t *testing.T) {
	_, path := openInbox(t)
	_, err := Open(path) // waits kv.OpenBolt's 2 s for the lock, then refuses
	if !errors.Is(err, bolterrors.ErrTimeout) {
		t.Fatalf("second Open = %v, want a lock timeout", err)
	}
}

// The inbox can live in a store the server opened for other buckets.
func TestNewInSharedDB(t *testing.T) {
	db, err := kv.OpenBolt(filepath.Join(t.TempDir(), "server.db"), "server store")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	in, err := New(db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Record([]remediation.Alert{alert("kvm-1", "firing", t0)}); err != nil {
		t.Fatal(err)
	}
	if err := in.Close(); err != nil {
		t.Fatal(err)
	}
	// Close left the caller's database open.
	if err := db.View(func(kv.Tx) error { return nil }); err != nil {
		t.Fatalf("database closed by Inbox.Close: %v", err)
	}
	in, err = New(db)
	if err != nil {
		t.Fatal(err)
	}
	if got := summary(t, in); len(got) != 1 {
		t.Errorf("pending %q, want kvm-1", got)
	}
}

// At its bound the inbox refuses a batch with a new alert whole, keeps
// accepting re-deliveries, and takes new alerts again once pruned.
func TestInboxBound(t *testing.T) {
	in, path := openInbox(t)
	now := t0
	in.now = func() time.Time { return now }
	in.SetMaxEntries(3)
	rc, err := in.Record([]remediation.Alert{alert("kvm-1", "firing", t0), alert("kvm-2", "firing", t0)})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Ack(rc.IDs()...); err != nil {
		t.Fatal(err)
	}
	_, err = in.Record([]remediation.Alert{alert("kvm-3", "firing", t0), alert("kvm-4", "firing", t0)})
	if !errors.Is(err, ErrFull) {
		t.Fatalf("Record over the bound = %v, want ErrFull", err)
	}
	if in.Len() != 2 || summary(t, in) != nil {
		t.Fatalf("after the refusal: %d entries, pending %q; want 2 and none (the batch is refused whole)", in.Len(), summary(t, in))
	}
	// A re-delivery adds nothing and is accepted.
	if rc, err := in.Record([]remediation.Alert{alert("kvm-1", "firing", t0)}); err != nil || rc.Duplicates != 1 {
		t.Fatalf("re-delivery at the bound = %+v, %v", rc, err)
	}
	now = t0.Add(48 * time.Hour)
	m := newTestMetrics(t)
	if n, err := in.PruneExpired(now, 0, m); err != nil || n != 2 {
		t.Fatalf("PruneExpired = %d, %v; want the 2 consumed entries older than the default retention", n, err)
	}
	if got := testutil.ToFloat64(m.pruned); got != 2 {
		t.Errorf("pruned_total = %v, want 2", got)
	}
	if rc, err := in.Record([]remediation.Alert{alert("kvm-3", "firing", t0), alert("kvm-4", "firing", t0)}); err != nil || len(rc.Recorded) != 2 {
		t.Fatalf("after pruning = %+v, %v; want both recorded", rc, err)
	}
	// The count survives a reopen.
	in.Close()
	in2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer in2.Close()
	if in2.Len() != 2 {
		t.Errorf("reopened inbox has %d entries, want 2", in2.Len())
	}
}

// RunPruning prunes at once, keeps pending entries and what was delivered
// within the retention, and reports the size and what it pruned.
func TestRunPruning(t *testing.T) {
	in, _ := openInbox(t)
	in.now = func() time.Time { return time.Now().Add(-25 * time.Hour) }
	rc, err := in.Record([]remediation.Alert{alert("kvm-1", "firing", t0), alert("kvm-2", "firing", t0)})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Ack(rc.Recorded[0].ID); err != nil { // kvm-2 stays pending
		t.Fatal(err)
	}
	in.now = time.Now
	if _, err := in.Record([]remediation.Alert{alert("kvm-3", "firing", t0)}); err != nil {
		t.Fatal(err)
	}
	m := newTestMetrics(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // one round, then RunPruning returns
	in.RunPruning(ctx, PruneOptions{Metrics: m})
	if in.Len() != 2 || testutil.ToFloat64(m.pruned) != 1 || testutil.ToFloat64(m.entries) != 2 {
		t.Errorf("after a round: %d entries, pruned_total %v, entries gauge %v; want 2, 1, 2",
			in.Len(), testutil.ToFloat64(m.pruned), testutil.ToFloat64(m.entries))
	}
	if s := summary(t, in); len(s) != 2 {
		t.Errorf("pending %q, want kvm-2 and kvm-3 kept", s)
	}
}
