package journal

import (
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"caretaker/internal/etcdproc/etcdtest"
	"caretaker/internal/kv"
)

// etcdStore is a kv store on a real etcd of the test's own.
func etcdStore(t *testing.T) *kv.Etcd {
	stores, _ := etcdtest.Stores(t)
	return stores(t)
}

// The journal's behaviour on etcd, as clustered servers keep it.
func TestEtcd(t *testing.T) {
	store := etcdStore(t)
	j, err := New(store)
	if err != nil {
		t.Fatal(err)
	}
	var seen []uint64
	j.OnRecord(func(r Record) { seen = append(seen, r.ID) })
	for i := range 4 {
		rec := sample(StateSucceeded)
		if i%2 == 1 {
			rec.State = StateRunning
		}
		rec.Created = t0.Add(time.Duration(i) * time.Hour)
		if got, err := j.Append(rec); err != nil || got.ID != uint64(i+1) {
			t.Fatalf("Append = %d, %v; want ID %d", got.ID, err, i+1)
		}
	}
	updated, err := j.Update(2, func(r *Record) { r.Move(StateFailed, t0, "boom"); r.Error = "boom" })
	if err != nil {
		t.Fatal(err)
	}
	if got, err := j.Get(2); err != nil || !reflect.DeepEqual(got, updated) {
		t.Errorf("Get(2) = %+v, %v\nwant %+v", got, err, updated)
	}
	if _, err := j.Update(99, func(*Record) {}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Update(99) = %v, want ErrNotFound", err)
	}
	if want := []uint64{1, 2, 3, 4, 2}; !reflect.DeepEqual(seen, want) {
		t.Errorf("OnRecord saw %v, want %v", seen, want)
	}
	if got := ids(j.List(2)); !reflect.DeepEqual(got, []uint64{4, 3}) {
		t.Errorf("List(2) = %v, want [4 3]", got)
	}
	if got := ids(j.Unfinished()); !reflect.DeepEqual(got, []uint64{4}) {
		t.Errorf("Unfinished = %v, want [4]", got)
	}
	// A batch that changes nothing commits nothing, and etcd counts no pages.
	if err := j.Batch(func(b *Batch) error { _, err := b.Get(1); return err }); err != nil {
		t.Errorf("read-only Batch = %v", err)
	}
	if n := j.PagesWritten(); n != -1 {
		t.Errorf("PagesWritten on etcd = %d, want -1", n)
	}
	if n, err := j.Prune(t0.Add(3 * time.Hour)); err != nil || n != 3 {
		t.Errorf("Prune = %d, %v; want 3", n, err)
	}
	if got := ids(j.List(0)); !reflect.DeepEqual(got, []uint64{4}) {
		t.Errorf("after Prune: %v, want [4]", got)
	}
	if n, err := j.Len(); err != nil || n != 1 {
		t.Errorf("Len = %d, %v; want 1", n, err)
	}
	if err := j.SaveState("pauses", []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	// Another server's journal on the same store sees it all.
	other, _ := New(store)
	var got []string
	if ok, err := other.LoadState("pauses", &got); !ok || err != nil || !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("LoadState = %v, %v, %v", got, ok, err)
	}
	if rec, err := other.Append(sample(StateRunning)); err != nil || rec.ID != 5 {
		t.Errorf("Append by the other = %d, %v; want ID 5", rec.ID, err)
	}
}

// Updates of one record racing on etcd are re-run, not lost, and each
// commit is notified once, whatever the attempts.
func TestEtcdConcurrentUpdates(t *testing.T) {
	j, err := New(etcdStore(t))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	notified := 0
	j.OnRecord(func(Record) { mu.Lock(); notified++; mu.Unlock() })
	rec, err := j.Append(sample(StateRunning))
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 3, 5
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range each {
				if _, err := j.Update(rec.ID, func(r *Record) { r.Attempt++ }); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if got, err := j.Get(rec.ID); err != nil || got.Attempt != writers*each {
		t.Errorf("Attempt = %d, %v; want %d", got.Attempt, err, writers*each)
	}
	if notified != 1+writers*each {
		t.Errorf("notified %d records, want %d", notified, 1+writers*each)
	}
}

// A server that is no longer the leader writes nothing, and says so in a
// way the engine can tell.
func TestEtcdFenced(t *testing.T) {
	store := etcdStore(t)
	j, err := New(store.Fenced(func() (string, int64, bool) { return "k", 0, false }))
	if err != nil {
		t.Fatal(err)
	}
	notified := false
	j.OnRecord(func(Record) { notified = true })
	if _, err := j.Append(sample(StateRunning)); !errors.Is(err, kv.ErrNotLeader) {
		t.Errorf("Append on a fenced store = %v, want ErrNotLeader", err)
	}
	err = j.Batch(func(b *Batch) error { _, err := b.Append(sample(StateRunning)); return err })
	if !errors.Is(err, kv.ErrNotLeader) {
		t.Errorf("Batch on a fenced store = %v, want ErrNotLeader", err)
	}
	unfenced, _ := New(store)
	if n, err := unfenced.Len(); err != nil || n != 0 || notified {
		t.Errorf("after the refusals: %d records, %v, notified %v; want none", n, err, notified)
	}
	if _, err := unfenced.Append(sample(StateRunning)); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Update(1, func(r *Record) { r.State = StateFailed }); !errors.Is(err, kv.ErrNotLeader) {
		t.Errorf("Update on a fenced store = %v, want ErrNotLeader", err)
	}
	if got, _ := unfenced.Get(1); got.State != StateRunning {
		t.Errorf("record after a fenced Update is %s, want running", got.State)
	}
}

// ids are the IDs of recs, or the error.
func ids(recs []Record, err error) any {
	if err != nil {
		return err
	}
	var out []uint64
	for _, r := range recs {
		out = append(out, r.ID)
	}
	return out
}
