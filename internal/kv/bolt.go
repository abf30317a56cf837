package kv

import (
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// lockTimeout bounds the wait for a bbolt file's lock: a second server on
// the same data directory fails at once with a clear error, not hangs.
const lockTimeout = 2 * time.Second

// Bolt is a Store in one bbolt file: a single server's state. Its buckets
// and keys are bbolt's own, so files written before this package load as
// they are.
type Bolt struct {
	db     *bolt.DB
	opened int64 // page writes at open, so PagesWritten starts at 0
}

// OpenBolt opens (creating if needed) the bbolt file at path; what names
// it in errors ("journal", "intake inbox"…).
func OpenBolt(path, what string) (*Bolt, error) {
	return openBolt(path, what, lockTimeout)
}

func openBolt(path, what string, timeout time.Duration) (*Bolt, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s %s: %w: the file is locked, is another caretaker server using it?", what, path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s %s: %w", what, path, err)
	}
	return &Bolt{db: db, opened: pagesWritten(db)}, nil
}

// Path is the file's path.
func (s *Bolt) Path() string { return s.db.Path() }

// Close closes the file and releases its lock.
func (s *Bolt) Close() error { return s.db.Close() }

// PagesWritten reports how many pages were written since Open: every
// commit writes at least its meta page (and fsyncs), so the count stands
// still exactly while nothing is committed.
func (s *Bolt) PagesWritten() int64 { return pagesWritten(s.db) - s.opened }

func pagesWritten(db *bolt.DB) int64 {
	st := db.Stats()
	return st.TxStats.GetWrite()
}

// View runs fn in a bbolt read transaction.
func (s *Bolt) View(fn func(Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

// Update runs fn in a bbolt write transaction, committed (one fsync) when
// fn returns nil.
func (s *Bolt) Update(fn func(Tx) error) error {
	return s.db.Update(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

type boltTx struct{ tx *bolt.Tx }

func (t boltTx) Bucket(path ...string) Bucket {
	if err := checkPath(path); err != nil {
		return errBucket{err}
	}
	if !t.tx.Writable() {
		b := t.tx.Bucket([]byte(path[0]))
		for _, p := range path[1:] {
			if b == nil {
				break
			}
			b = b.Bucket([]byte(p))
		}
		return boltBucket{b: b}
	}
	b, err := t.tx.CreateBucketIfNotExists([]byte(path[0]))
	for _, p := range path[1:] {
		if err != nil {
			break
		}
		b, err = b.CreateBucketIfNotExists([]byte(p))
	}
	if err != nil {
		return errBucket{fmt.Errorf("bucket %v: %w", path, err)}
	}
	return boltBucket{b: b}
}

// boltBucket is a bbolt bucket; b is nil for a bucket a read transaction
// did not find, which holds nothing.
type boltBucket struct{ b *bolt.Bucket }

func (b boltBucket) Get(key []byte) ([]byte, error) {
	if b.b == nil {
		return nil, nil
	}
	v := b.b.Get(key)
	if v == nil {
		return nil, nil
	}
	// bbolt's value lives only as long as the transaction.
	return append([]byte(nil), v...), nil
}

func (b boltBucket) Put(key, value []byte) error { return b.b.Put(key, value) }

func (b boltBucket) Delete(key []byte) error { return b.b.Delete(key) }

func (b boltBucket) ForEach(fn func(k, v []byte) error) error {
	if b.b == nil {
		return nil
	}
	c := b.b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil {
			continue // a nested bucket
		}
		if err := fn(k, v); err != nil {
			return walkErr(err)
		}
	}
	return nil
}

func (b boltBucket) ForEachReverse(fn func(k, v []byte) error) error {
	if b.b == nil {
		return nil
	}
	c := b.b.Cursor()
	for k, v := c.Last(); k != nil; k, v = c.Prev() {
		if v == nil {
			continue
		}
		if err := fn(k, v); err != nil {
			return walkErr(err)
		}
	}
	return nil
}

func (b boltBucket) NextSequence() (uint64, error) { return b.b.NextSequence() }
