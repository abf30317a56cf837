package kv_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"caretaker/internal/etcdproc/etcdtest"
	"caretaker/internal/kv"
)

// stores returns one store of each kind, empty.
func stores(t *testing.T) map[string]kv.Store {
	t.Helper()
	b, err := kv.OpenBolt(filepath.Join(t.TempDir(), "kv.db"), "test store")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return map[string]kv.Store{"bolt": b, "etcd": kv.NewEtcd(etcdtest.Client(t), kv.EtcdOptions{Prefix: "/" + t.Name() + "/"})}
}

func id(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

func TestBuckets(t *testing.T) {
	for name, s := range stores(t) {
		t.Run(name, func(t *testing.T) {
			err := s.Update(func(tx kv.Tx) error {
				b := tx.Bucket("records")
				for _, n := range []uint64{3, 1, 47, 2} { // 47 is '/' in its last byte
					if err := b.Put(id(n), []byte(strconv.FormatUint(n, 10))); err != nil {
						return err
					}
				}
				if err := b.Delete(id(2)); err != nil {
					return err
				}
				// Read your writes, in order, inside the transaction.
				if got := keys(t, b, false); got != "1 3 47" {
					t.Errorf("in the transaction: %s", got)
				}
				return tx.Bucket("history", "host-a").Put([]byte("k"), []byte("v"))
			})
			if err != nil {
				t.Fatal(err)
			}
			err = s.View(func(tx kv.Tx) error {
				b := tx.Bucket("records")
				if got := keys(t, b, false); got != "1 3 47" {
					t.Errorf("ForEach: %s", got)
				}
				if got := keys(t, b, true); got != "47 3 1" {
					t.Errorf("ForEachReverse: %s", got)
				}
				v, err := b.Get(id(47))
				if err != nil || string(v) != "47" {
					t.Errorf("Get(47) = %q, %v", v, err)
				}
				if v, _ := b.Get(id(2)); v != nil {
					t.Errorf("deleted key still there: %q", v)
				}
				if n, _ := kv.Count(tx.Bucket("history")); n != 0 {
					t.Errorf("a bucket of buckets counts %d keys, want 0", n)
				}
				v, _ = tx.Bucket("history", "host-a").Get([]byte("k"))
				if string(v) != "v" {
					t.Errorf("nested bucket: %q", v)
				}
				if n, _ := kv.Count(tx.Bucket("missing")); n != 0 {
					t.Errorf("missing bucket has %d keys", n)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// keys walks b and returns its keys as decimal IDs; it stops after 3 to
// prove ErrStop ends a walk quietly.
func keys(t *testing.T, b kv.Bucket, reverse bool) string {
	t.Helper()
	out := ""
	n := 0
	fn := func(k, _ []byte) error {
		if n == 3 {
			return kv.ErrStop
		}
		n++
		if out != "" {
			out += " "
		}
		out += strconv.FormatUint(binary.BigEndian.Uint64(k), 10)
		return nil
	}
	var err error
	if reverse {
		err = b.ForEachReverse(fn)
	} else {
		err = b.ForEach(fn)
	}
	if err != nil {
		t.Errorf("walk: %v", err)
	}
	return out
}

func TestFailedUpdateWritesNothing(t *testing.T) {
	for name, s := range stores(t) {
		t.Run(name, func(t *testing.T) {
			boom := errors.New("boom")
			err := s.Update(func(tx kv.Tx) error {
				if err := tx.Bucket("b").Put([]byte("k"), []byte("v")); err != nil {
					return err
				}
				if _, err := tx.Bucket("b").NextSequence(); err != nil {
					return err
				}
				return boom
			})
			if !errors.Is(err, boom) {
				t.Fatalf("Update = %v, want boom", err)
			}
			_ = s.View(func(tx kv.Tx) error {
				if v, _ := tx.Bucket("b").Get([]byte("k")); v != nil {
					t.Errorf("a failed update left %q", v)
				}
				return nil
			})
			var seq uint64
			_ = s.Update(func(tx kv.Tx) error {
				var err error
				seq, err = tx.Bucket("b").NextSequence()
				return err
			})
			if seq != 1 {
				t.Errorf("sequence after a failed update = %d, want 1", seq)
			}
		})
	}
}

// Two writers (two servers) on one etcd: every increment counts, every
// sequence number is given once.
func TestConcurrentWriters(t *testing.T) {
	c := etcdtest.Client(t)
	prefix := "/" + t.Name() + "/"
	const writers, each = 4, 15
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var wg sync.WaitGroup
	for range writers {
		s := kv.NewEtcd(c, kv.EtcdOptions{Prefix: prefix})
		wg.Go(func() {
			for range each {
				var seq uint64
				err := s.Update(func(tx kv.Tx) error {
					b := tx.Bucket("counters")
					v, err := b.Get([]byte("n"))
					if err != nil {
						return err
					}
					n, _ := strconv.Atoi(string(v))
					if err := b.Put([]byte("n"), []byte(strconv.Itoa(n+1))); err != nil {
						return err
					}
					seq, err = tx.Bucket("pending").NextSequence()
					return err
				})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[seq] {
					t.Errorf("sequence %d given twice", seq)
				}
				seen[seq] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	s := kv.NewEtcd(c, kv.EtcdOptions{Prefix: prefix})
	_ = s.View(func(tx kv.Tx) error {
		v, _ := tx.Bucket("counters").Get([]byte("n"))
		if string(v) != strconv.Itoa(writers*each) {
			t.Errorf("counter = %s, want %d: an increment was lost", v, writers*each)
		}
		return nil
	})
}

func TestFence(t *testing.T) {
	c := etcdtest.Client(t)
	prefix := "/" + t.Name() + "/"
	ctx := context.Background()
	put, err := c.Put(ctx, prefix+"leader", "me")
	if err != nil {
		t.Fatal(err)
	}
	rev := put.Header.Revision
	s := kv.NewEtcd(c, kv.EtcdOptions{Prefix: prefix, MaxOps: 3})
	write := func(st kv.Store, n int) error {
		return st.Update(func(tx kv.Tx) error {
			for i := range n {
				if err := tx.Bucket("b").Put(id(uint64(i)), []byte("x")); err != nil {
					return err
				}
			}
			return nil
		})
	}
	cases := []struct {
		name  string
		fence func() (string, int64, bool)
		want  error
	}{
		{"leading", func() (string, int64, bool) { return prefix + "leader", rev, true }, nil},
		{"lease expired here", func() (string, int64, bool) { return prefix + "leader", rev, false }, kv.ErrNotLeader},
		{"another term's key", func() (string, int64, bool) { return prefix + "leader", rev - 1, true }, kv.ErrNotLeader},
		{"key gone", func() (string, int64, bool) { return prefix + "gone", rev, true }, kv.ErrNotLeader},
	}
	// An update that writes nothing only reads, as a follower may.
	notLeading := s.Fenced(func() (string, int64, bool) { return prefix + "leader", rev, false })
	if err := write(notLeading, 0); err != nil {
		t.Errorf("a read-only update of a store fenced out: %v, want nil", err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Delete(ctx, prefix+"data/", clientv3.WithPrefix()); err != nil {
				t.Fatal(err)
			}
			err := write(s.Fenced(tc.fence), 7) // 7 writes: three etcd transactions of MaxOps 3
			if !errors.Is(err, tc.want) {
				t.Fatalf("Update = %v, want %v", err, tc.want)
			}
			got, err := c.Get(ctx, prefix+"data/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				t.Fatal(err)
			}
			want := int64(7)
			if tc.want != nil {
				want = 0
			}
			if got.Count != want {
				t.Errorf("%d keys written, want %d", got.Count, want)
			}
		})
	}
}

// A walk that reads more than a page merges the transaction's writes in.
func TestLongWalk(t *testing.T) {
	s := kv.NewEtcd(etcdtest.Client(t), kv.EtcdOptions{Prefix: "/" + t.Name() + "/"})
	const n = 1203
	for start := 0; start < n; start += 100 {
		err := s.Update(func(tx kv.Tx) error {
			for i := start; i < min(start+100, n); i++ {
				if i%2 == 0 {
					if err := tx.Bucket("b").Put(id(uint64(i)), []byte("x")); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	err := s.Update(func(tx kv.Tx) error {
		b := tx.Bucket("b")
		for _, i := range []uint64{1, 501, 1001, 1300} {
			if err := b.Put(id(i), []byte("y")); err != nil {
				return err
			}
		}
		if err := b.Delete(id(600)); err != nil {
			return err
		}
		for _, reverse := range []bool{false, true} {
			var got []uint64
			walk := b.ForEach
			if reverse {
				walk = b.ForEachReverse
			}
			if err := walk(func(k, _ []byte) error {
				got = append(got, binary.BigEndian.Uint64(k))
				return nil
			}); err != nil {
				return err
			}
			if len(got) != 602+4-1 {
				return fmt.Errorf("reverse %v: %d keys, want %d", reverse, len(got), 605)
			}
			for i := 1; i < len(got); i++ {
				if (got[i] <= got[i-1]) != reverse {
					return fmt.Errorf("reverse %v: out of order at %d: %d after %d", reverse, i, got[i], got[i-1])
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A transaction that read more keys than one etcd transaction can compare
// still commits, checked by bucket.
func TestManyReads(t *testing.T) {
	s := kv.NewEtcd(etcdtest.Client(t), kv.EtcdOptions{Prefix: "/" + t.Name() + "/", MaxOps: 10})
	err := s.Update(func(tx kv.Tx) error {
		for i := range 25 {
			if _, err := tx.Bucket("seen").Get(id(uint64(i))); err != nil {
				return err
			}
			if err := tx.Bucket("pending").Put(id(uint64(i)), []byte("x")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.View(func(tx kv.Tx) error {
		if n, _ := kv.Count(tx.Bucket("pending")); n != 25 {
			t.Errorf("%d keys written, want 25", n)
		}
		return nil
	})
}

// A single server's bbolt file moves into etcd whole: keys, nested
// buckets and sequences, so that new IDs follow the old ones.
func TestCopyBolt(t *testing.T) {
	src, err := kv.OpenBolt(filepath.Join(t.TempDir(), "kv.db"), "test store")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	err = src.Update(func(tx kv.Tx) error {
		for range 5 {
			n, err := tx.Bucket("records").NextSequence()
			if err != nil {
				return err
			}
			if err := tx.Bucket("records").Put(id(n), []byte("r")); err != nil {
				return err
			}
		}
		return tx.Bucket("history", "host-a").Put([]byte("k"), []byte("v"))
	})
	if err != nil {
		t.Fatal(err)
	}
	dst := kv.NewEtcd(etcdtest.Client(t), kv.EtcdOptions{Prefix: "/" + t.Name() + "/", MaxOps: 4})
	if empty, err := dst.Empty(); err != nil || !empty {
		t.Fatalf("Empty = %v, %v before the copy", empty, err)
	}
	n, err := kv.CopyBolt(dst, src)
	if err != nil || n != 6 {
		t.Fatalf("CopyBolt = %d, %v; want 6 keys", n, err)
	}
	if empty, _ := dst.Empty(); empty {
		t.Error("Empty after the copy")
	}
	err = dst.Update(func(tx kv.Tx) error {
		if got := keys(t, tx.Bucket("records"), false); got != "1 2 3" {
			t.Errorf("records: %s", got)
		}
		if v, _ := tx.Bucket("history", "host-a").Get([]byte("k")); string(v) != "v" {
			t.Errorf("nested bucket: %q", v)
		}
		next, err := tx.Bucket("records").NextSequence()
		if next != 6 {
			t.Errorf("next sequence %d, want 6", next)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
