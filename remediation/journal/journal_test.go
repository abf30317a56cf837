package journal

import (
	"errors"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	bolterrors "go.etcd.io/bbolt/errors"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func openTemp(t *testing.T) (*Journal, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "journal.db")
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j, path
}

func sample(state State) Record {
	return Record{
		Created:       t0,
		Alert:         "GuestCrashed",
		Fingerprint:   "0123456789abcdef",
		AlertStartsAt: t0.Add(-time.Minute),
		Rule:          "restart-crashed-guests",
		Action:        "restart-vm",
		Host:          "hv-a1",
		UUID:          "6695eb01-f6a4-8304-79aa-97f2502e193f",
		Domain:        "test",
		State:         state,
	}
}

func TestAppendAssignsIncreasingIDs(t *testing.T) {
	j, _ := openTemp(t)
	for want := uint64(1); want <= 3; want++ {
		rec, err := j.Append(sample(StateRunning))
		if err != nil {
			t.Fatal(err)
		}
		if rec.ID != want {
			t.Fatalf("ID = %d, want %d", rec.ID, want)
		}
	}
	// An ID the caller sets is not trusted: IDs come from the journal.
	r := sample(StateSkipped)
	r.ID = 99
	if rec, err := j.Append(r); err != nil || rec.ID != 4 {
		t.Fatalf("Append with a preset ID = %d, %v; want 4", rec.ID, err)
	}
}

func TestUpdateAndGet(t *testing.T) {
	j, _ := openTemp(t)
	rec, err := j.Append(sample(StateRunning))
	if err != nil {
		t.Fatal(err)
	}
	updated, err := j.Update(rec.ID, func(r *Record) {
		r.State = StateSucceeded
		r.Finished = t0.Add(5 * time.Second)
		r.HealSeconds = 65
		r.ID = 1000 // must be ignored
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := j.Get(rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, updated) {
		t.Errorf("Get = %+v\nwant %+v", got, updated)
	}
	if got.ID != rec.ID || got.State != StateSucceeded || got.HealSeconds != 65 || !got.Finished.Equal(t0.Add(5*time.Second)) {
		t.Errorf("record after Update = %+v", got)
	}
	if _, err := j.Get(1000); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(1000) = %v, want ErrNotFound", err)
	}
}

func TestUpdateMissing(t *testing.T) {
	j, _ := openTemp(t)
	called := false
	_, err := j.Update(7, func(*Record) { called = true })
	if !errors.Is(err, ErrNotFound) || called {
		t.Fatalf("Update(7) = %v (fn called: %v), want ErrNotFound without calling fn", err, called)
	}
}

func TestList(t *testing.T) {
	j, _ := openTemp(t)
	for range 5 {
		if _, err := j.Append(sample(StateSucceeded)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		limit int
		want  []uint64
	}{
		{limit: 0, want: []uint64{5, 4, 3, 2, 1}},
		{limit: -1, want: []uint64{5, 4, 3, 2, 1}},
		{limit: 2, want: []uint64{5, 4}},
		{limit: 10, want: []uint64{5, 4, 3, 2, 1}},
	}
	for _, tt := range tests {
		recs, err := j.List(tt.limit)
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint64
		for _, r := range recs {
			ids = append(ids, r.ID)
		}
		if !reflect.DeepEqual(ids, tt.want) {
			t.Errorf("List(%d) IDs = %v, want %v", tt.limit, ids, tt.want)
		}
	}
}

// Find keeps the newest matching records and reads no further back than
// the limit needs.
func TestFind(t *testing.T) {
	j, _ := openTemp(t)
	for i := range 6 {
		st := StateSucceeded
		if i%2 == 0 {
			st = StateFailed
		}
		if _, err := j.Append(sample(st)); err != nil {
			t.Fatal(err)
		}
	}
	failed := func(r Record) bool { return r.State == StateFailed }
	for _, tt := range []struct {
		limit int
		want  []uint64
		read  int // records the walk decoded
	}{
		{limit: 0, want: []uint64{5, 3, 1}, read: 6},
		{limit: 1, want: []uint64{5}, read: 2},
		{limit: 2, want: []uint64{5, 3}, read: 4},
	} {
		read := 0
		recs, err := j.Find(tt.limit, func(r Record) bool { read++; return failed(r) })
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint64
		for _, r := range recs {
			ids = append(ids, r.ID)
		}
		if !reflect.DeepEqual(ids, tt.want) || read != tt.read {
			t.Errorf("Find(%d, failed) = %v after reading %d records, want %v after %d", tt.limit, ids, read, tt.want, tt.read)
		}
	}
}

func TestListEmpty(t *testing.T) {
	j, _ := openTemp(t)
	recs, err := j.List(0)
	if err != nil || len(recs) != 0 {
		t.Fatalf("List on an empty journal = %v, %v", recs, err)
	}
}

// What was appended and updated survives closing and reopening the file,
// and IDs continue from where they stopped.
func TestDurableAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	first, err := j.Append(sample(StateRunning))
	if err != nil {
		t.Fatal(err)
	}
	first, err = j.Update(first.ID, func(r *Record) { r.State = StateFailed; r.Error = "boom" })
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	j, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	got, err := j.Get(first.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, first) {
		t.Errorf("after reopen: %+v\nwant %+v", got, first)
	}
	second, err := j.Append(sample(StateRunning))
	if err != nil || second.ID != first.ID+1 {
		t.Fatalf("Append after reopen: ID %d, %v; want %d", second.ID, err, first.ID+1)
	}
}

func TestUnfinishedAndPrune(t *testing.T) {
	j, _ := openTemp(t)
	states := []State{StatePending, StateRunning, StateSucceeded, StateFailed, StateSkipped,
		StateInterrupted, StateAwaitingApproval, StateVerifying, StateCancelled, StateExpired}
	for i, s := range states {
		rec := sample(s)
		rec.Created = t0.Add(time.Duration(i) * time.Hour)
		if _, err := j.Append(rec); err != nil {
			t.Fatal(err)
		}
	}
	open, err := j.Unfinished()
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	for _, r := range open {
		ids = append(ids, r.ID)
	}
	if want := []uint64{1, 2, 7, 8}; !reflect.DeepEqual(ids, want) {
		t.Errorf("unfinished IDs = %v, want %v", ids, want)
	}

	// Records created before hour 9: the finished ones go, open ones stay
	// however old, record 10 is too young.
	n, err := j.Prune(t0.Add(9 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	left, _ := j.List(0)
	ids = ids[:0]
	for _, r := range left {
		ids = append(ids, r.ID)
	}
	if want := []uint64{10, 8, 7, 2, 1}; n != 5 || !reflect.DeepEqual(ids, want) {
		t.Errorf("Prune deleted %d, left %v; want 5 and %v", n, ids, want)
	}
}

func TestState(t *testing.T) {
	j, path := openTemp(t)
	var got []string
	if ok, err := j.LoadState("pauses", &got); ok || err != nil {
		t.Fatalf("LoadState before any save = %v, %v", ok, err)
	}
	if err := j.SaveState("pauses", []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if ok, err := j.LoadState("pauses", &got); !ok || err != nil || !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("LoadState after reopen = %v, %v, %v", got, ok, err)
	}
}

// A second server on the same file gets an error naming the cause instead
// of waiting for the lock forever (kv.OpenBolt's 2 s). flock locks
// conflict between two opens of one file even within a process, so one
// process can test it.
func TestOpenLocked(t *testing.T) {
	_, path := openTemp(t)
	j, err := Open(path)
	if err == nil {
		j.Close()
		t.Fatal("second Open of a locked journal succeeded")
	}
	if !errors.Is(err, bolterrors.ErrTimeout) || !strings.Contains(err.Error(), "another caretaker server") {
		t.Errorf("error = %v", err)
	}
}

func TestOpenBadPath(t *testing.T) {
	_, err := Open(filepath.Join(t.TempDir(), "missing-dir", "journal.db"))
	if err == nil || !strings.Contains(err.Error(), "open journal") {
		t.Fatalf("Open in a missing directory = %v", err)
	}
}

// OnRecord sees every stored record, after it is on disk.
func TestOnRecord(t *testing.T) {
	j, err := Open(filepath.Join(t.TempDir(), "journal.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var seen []State
	j.OnRecord(func(r Record) {
		if _, err := j.Get(r.ID); err != nil {
			t.Errorf("observed record %d is not on disk: %v", r.ID, err)
		}
		seen = append(seen, r.State)
	})
	rec, err := j.Append(Record{State: StateRunning})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(Record{State: StateRunning}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Update(rec.ID, func(r *Record) { r.State = StateSucceeded }); err != nil {
		t.Fatal(err)
	}
	want := []State{StateRunning, StateRunning, StateSucceeded}
	if !slices.Equal(seen, want) {
		t.Errorf("observed %v, want %v", seen, want)
	}
}

// A batch that changes nothing commits nothing: no write transaction, no
// fsync. One that changes something commits, and a failed one leaves
// nothing behind.
func TestBatchOpensItsTransactionOnFirstChange(t *testing.T) {
	j, _ := openTemp(t)
	rec, err := j.Append(sample(StateRunning))
	if err != nil {
		t.Fatal(err)
	}
	before := j.PagesWritten()
	if before == 0 {
		t.Fatal("PagesWritten = 0 after an append")
	}
	err = j.Batch(func(b *Batch) error {
		got, err := b.Get(rec.ID) // a read opens no write transaction
		if err != nil || got.State != StateRunning {
			t.Errorf("Get = %+v, %v", got, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := j.PagesWritten(); n != before {
		t.Errorf("a batch that changed nothing wrote %d pages", n-before)
	}

	boom := errors.New("boom")
	err = j.Batch(func(b *Batch) error {
		if _, err := b.Update(rec.ID, func(r *Record) { r.State = StateFailed }); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Batch = %v, want boom", err)
	}
	if got, _ := j.Get(rec.ID); got.State != StateRunning || j.PagesWritten() != before {
		t.Errorf("a failed batch left state %s, %d pages written", got.State, j.PagesWritten()-before)
	}

	err = j.Batch(func(b *Batch) error {
		if _, err := b.Update(rec.ID, func(r *Record) { r.State = StateSucceeded }); err != nil {
			return err
		}
		got, err := b.Get(rec.ID) // through the write transaction
		if err != nil || got.State != StateSucceeded {
			t.Errorf("Get in the batch = %s, %v; want its own change", got.State, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := j.Get(rec.ID); got.State != StateSucceeded || j.PagesWritten() == before {
		t.Errorf("after a batch that changed the record: state %s, pages written %d", got.State, j.PagesWritten()-before)
	}
}

func TestLen(t *testing.T) {
	j, _ := openTemp(t)
	for i := range 3 {
		if n, err := j.Len(); err != nil || n != i {
			t.Fatalf("Len = %d, %v; want %d", n, err, i)
		}
		if _, err := j.Append(sample(StatePending)); err != nil {
			t.Fatal(err)
		}
	}
}
