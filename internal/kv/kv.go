// Package kv is the server's durable state behind one small interface: a
// store of buckets of keys with transactions, kept in a bbolt file on one
// server (OpenBolt) or in etcd, shared by clustered servers (NewEtcd). The
// journal, the webhook inbox, the inventory, the host states and the guest
// clusters are written against it, so the same code runs on either.
package kv

import (
	"errors"
	"fmt"
	"strings"
)

// Store is a transactional store of buckets.
type Store interface {
	// View runs fn in a read-only transaction that sees one consistent
	// state of the store.
	View(fn func(Tx) error) error
	// Update runs fn in a read-write transaction: everything fn wrote is
	// durable when Update returns nil, and nothing is when it returns an
	// error. fn may be run more than once (etcd retries a transaction
	// that another writer overtook), so it must not act outside tx.
	Update(fn func(Tx) error) error
	Close() error
}

// Tx is one transaction.
type Tx interface {
	// Bucket returns the bucket at path (one name per level). A bucket
	// exists as soon as a key is put in it; reading a missing one finds
	// nothing. On etcd a bucket holds keys or buckets, not both.
	Bucket(path ...string) Bucket
}

// Bucket is a sorted set of keys and values.
type Bucket interface {
	// Get returns the value of key, nil when it is absent.
	Get(key []byte) ([]byte, error)
	Put(key, value []byte) error
	Delete(key []byte) error
	// ForEach calls fn for every key in ascending order; when fn returns
	// ErrStop the walk ends without an error. The bucket must not be
	// changed during the walk.
	ForEach(fn func(k, v []byte) error) error
	// ForEachReverse is ForEach in descending order.
	ForEachReverse(fn func(k, v []byte) error) error
	// NextSequence returns the bucket's next integer, from 1; never the
	// same twice, even to two writers at once.
	NextSequence() (uint64, error)
}

// ErrStop ends a ForEach walk early without an error.
var ErrStop = errors.New("stop the walk")

// ErrNotLeader is returned by an Update of a fenced store that would write
// when this server is no longer the leader: nothing was written. An Update
// that writes nothing only reads, as a follower may.
var ErrNotLeader = errors.New("this server is not the leader")

// Count returns how many keys bucket b holds.
func Count(b Bucket) (int, error) {
	n := 0
	err := b.ForEach(func(_, _ []byte) error { n++; return nil })
	return n, err
}

// checkPath refuses a bucket name that would break the etcd key layout.
func checkPath(path []string) error {
	if len(path) == 0 {
		return errors.New("kv: a bucket needs a name")
	}
	for _, p := range path {
		if p == "" || strings.ContainsAny(p, "/\x00") {
			return fmt.Errorf("kv: bucket name %q: empty or holds / or NUL", p)
		}
	}
	return nil
}

// errBucket is a bucket that can only fail: Tx.Bucket has no error, so a
// bad path or a failed creation is reported by the bucket's first use.
type errBucket struct{ err error }

func (b errBucket) Get([]byte) ([]byte, error)                   { return nil, b.err }
func (b errBucket) Put(_, _ []byte) error                        { return b.err }
func (b errBucket) Delete([]byte) error                          { return b.err }
func (b errBucket) ForEach(func(k, v []byte) error) error        { return b.err }
func (b errBucket) ForEachReverse(func(k, v []byte) error) error { return b.err }
func (b errBucket) NextSequence() (uint64, error)                { return 0, b.err }

// walkErr turns ErrStop into the end of a walk.
func walkErr(err error) error {
	if errors.Is(err, ErrStop) {
		return nil
	}
	return err
}
