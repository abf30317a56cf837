package kv

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// EtcdOptions configure a Store in etcd.
type EtcdOptions struct {
	// Prefix is put before every key ("/caretaker/"), so one etcd can
	// hold other things, or two fleets.
	Prefix string
	// Fence, when set, makes the store the leader's: every commit checks,
	// in its own etcd transaction, that key still exists with create
	// revision rev (the leader's election key), and fails with
	// ErrNotLeader when it does not, or when ok is false. A leader that
	// lost its lease, however late it wakes, writes nothing.
	Fence func() (key string, rev int64, ok bool)
	// Timeout bounds each request to etcd (5 s when 0).
	Timeout time.Duration
	// MaxOps is the most operations (and the most comparisons) one etcd
	// transaction carries: etcd refuses more than its --max-txn-ops
	// (128 by default). 100 when 0.
	MaxOps int
}

// Etcd is a Store whose buckets are key prefixes in etcd:
//
//	<prefix>data/<bucket>/<bucket>…/<hex of the key>  the values
//	<prefix>seq/<bucket>/<bucket>…                    NextSequence's counter
//
// Keys are hex so that a key's bytes (a big-endian ID holds '/') cannot
// be taken for a nested bucket, and sort as the bytes do. A transaction
// reads at one revision. A fenced store's commit compares the fence only:
// its writer is alone. An unfenced one's also compares what it read
// (optimistic concurrency): when another server's writer got there first,
// fn runs again on the new state.
type Etcd struct {
	c *clientv3.Client
	o EtcdOptions
	// mu makes this process's updates one at a time, as bbolt's writer
	// lock does, for the store and every Fenced copy of it: a fenced
	// store is then the only writer of its keys anywhere (the fence
	// keeps out other servers), and its transactions are never re-run.
	mu *sync.Mutex
}

// NewEtcd keeps a Store in c under o.Prefix. The caller closes c.
func NewEtcd(c *clientv3.Client, o EtcdOptions) *Etcd {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.MaxOps <= 0 {
		o.MaxOps = 100
	}
	return &Etcd{c: c, o: o, mu: &sync.Mutex{}}
}

// Fenced returns the same store with every commit fenced by fence (see
// EtcdOptions.Fence).
func (s *Etcd) Fenced(fence func() (key string, rev int64, ok bool)) *Etcd {
	o := s.o
	o.Fence = fence
	return &Etcd{c: s.c, o: o, mu: s.mu}
}

// Close does nothing: the client is the caller's.
func (s *Etcd) Close() error { return nil }

// View runs fn on one revision of the store.
func (s *Etcd) View(fn func(Tx) error) error {
	return fn(&etcdTx{s: s})
}

// maxAttempts bounds the re-runs of a transaction another writer overtook.
const maxAttempts = 10

// Update runs fn and commits what it wrote, re-running it when another
// writer changed what it read.
func (s *Etcd) Update(fn func(Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 1; ; attempt++ {
		tx := &etcdTx{s: s, writable: true, writes: map[string][]byte{}, reads: map[string]int64{}, walked: map[string]bool{}}
		if err := fn(tx); err != nil {
			return err
		}
		err := tx.commit()
		if !errors.Is(err, errConflict) {
			return err
		}
		if attempt == maxAttempts {
			return fmt.Errorf("etcd: %d attempts overtaken by other writers: %w", attempt, err)
		}
		time.Sleep(time.Duration(rand.IntN(20*attempt)) * time.Millisecond)
	}
}

var errConflict = errors.New("another writer changed what the transaction read")

func (s *Etcd) bucketPrefix(path []string) string {
	return s.o.Prefix + "data/" + strings.Join(path, "/") + "/"
}

func (s *Etcd) seqKey(path []string) string {
	return s.o.Prefix + "seq/" + strings.Join(path, "/")
}

type etcdTx struct {
	s        *Etcd
	rev      int64 // the revision every read sees; 0 before the first
	writable bool
	writes   map[string][]byte // etcd key → value; nil deletes
	reads    map[string]int64  // etcd key → its mod revision when read (0: absent)
	walked   map[string]bool   // prefixes walked
}

func (t *etcdTx) Bucket(path ...string) Bucket {
	if err := checkPath(path); err != nil {
		return errBucket{err}
	}
	return &etcdBucket{tx: t, path: path, prefix: t.s.bucketPrefix(path)}
}

// get reads one etcd key through the transaction.
func (t *etcdTx) get(key string) ([]byte, error) {
	if v, ok := t.writes[key]; ok {
		return v, nil
	}
	resp, err := t.rangeReq(key, "", 0, false)
	if err != nil {
		return nil, err
	}
	var mod int64
	var v []byte
	if len(resp.Kvs) > 0 {
		mod, v = resp.Kvs[0].ModRevision, resp.Kvs[0].Value
	}
	if t.writable {
		t.reads[key] = mod
	}
	return v, nil
}

func (t *etcdTx) rangeReq(key, end string, limit int64, descend bool) (*clientv3.GetResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), t.s.o.Timeout)
	defer cancel()
	opts := []clientv3.OpOption{}
	if end != "" {
		opts = append(opts, clientv3.WithRange(end))
	}
	if limit > 0 {
		opts = append(opts, clientv3.WithLimit(limit))
	}
	if descend {
		opts = append(opts, clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	}
	if t.rev > 0 {
		opts = append(opts, clientv3.WithRev(t.rev))
	}
	resp, err := t.s.c.Get(ctx, key, opts...)
	if err != nil {
		return nil, fmt.Errorf("etcd: read %s: %w", key, err)
	}
	if t.rev == 0 {
		t.rev = resp.Header.Revision
	}
	return resp, nil
}

func (t *etcdTx) put(key string, v []byte) error {
	if !t.writable {
		return errors.New("kv: write in a read-only transaction")
	}
	t.writes[key] = v
	return nil
}

// commit writes the transaction's changes in etcd transactions of at most
// MaxOps operations. The first carries the comparisons on what was read;
// when a commit is larger than one etcd transaction, the later ones carry
// only the fence: such a commit is all or nothing only per part.
func (t *etcdTx) commit() error {
	if len(t.writes) == 0 {
		return nil
	}
	var fenceKey string
	var fence []clientv3.Cmp
	if t.s.o.Fence != nil {
		key, rev, ok := t.s.o.Fence()
		if !ok {
			return ErrNotLeader
		}
		fenceKey = key
		fence = []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", rev)}
	}
	cmps := fence
	if fence == nil {
		// Unfenced (the webhook inbox, which every server writes): what
		// was read must be as read.
		var err error
		if cmps, err = t.readChecks(); err != nil {
			return err
		}
	}
	keys := make([]string, 0, len(t.writes))
	for k := range t.writes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for part := range slices.Chunk(keys, t.s.o.MaxOps) {
		ops := make([]clientv3.Op, 0, len(part))
		for _, k := range part {
			if v := t.writes[k]; v == nil {
				ops = append(ops, clientv3.OpDelete(k))
			} else {
				ops = append(ops, clientv3.OpPut(k, string(v)))
			}
		}
		if err := t.txn(cmps, ops, fenceKey); err != nil {
			return err
		}
		cmps = fence
	}
	return nil
}

func (t *etcdTx) txn(cmps []clientv3.Cmp, ops []clientv3.Op, fenceKey string) error {
	ctx, cancel := context.WithTimeout(context.Background(), t.s.o.Timeout)
	defer cancel()
	txn := t.s.c.Txn(ctx).If(cmps...).Then(ops...)
	if fenceKey != "" {
		txn = txn.Else(clientv3.OpGet(fenceKey))
	}
	resp, err := txn.Commit()
	if err != nil {
		return fmt.Errorf("etcd: commit: %w", err)
	}
	if resp.Succeeded {
		return nil
	}
	if fenceKey != "" {
		_, rev, _ := t.s.o.Fence()
		got := resp.Responses[0].GetResponseRange().GetKvs()
		if len(got) == 0 || got[0].CreateRevision != rev {
			return ErrNotLeader
		}
	}
	return errConflict
}

// readChecks are the comparisons that fail when another writer changed
// what the transaction read: each key read keeps its revision, nothing in
// a walked bucket is newer than the read. When that is more than one etcd
// transaction holds, the keys read are checked by their buckets instead:
// nothing in them is newer (coarser, and blind to deletions).
func (t *etcdTx) readChecks() ([]clientv3.Cmp, error) {
	var cmps []clientv3.Cmp
	newer := func(prefix string) clientv3.Cmp {
		return clientv3.Compare(clientv3.ModRevision(prefix), "<", t.rev+1).WithPrefix()
	}
	for p := range t.walked {
		cmps = append(cmps, newer(p))
	}
	if len(cmps)+len(t.reads) <= t.s.o.MaxOps {
		for k, mod := range t.reads {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", mod))
		}
		return cmps, nil
	}
	buckets := maps.Clone(t.walked)
	for k, mod := range t.reads {
		if strings.HasPrefix(k, t.s.o.Prefix+"seq/") {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", mod))
			continue
		}
		b := k[:strings.LastIndex(k, "/")+1]
		if !buckets[b] {
			buckets[b] = true
			cmps = append(cmps, newer(b))
		}
	}
	if len(cmps) > t.s.o.MaxOps {
		return nil, fmt.Errorf("etcd: a transaction that read %d buckets is too large to check (at most %d)", len(cmps), t.s.o.MaxOps)
	}
	return cmps, nil
}

type etcdBucket struct {
	tx     *etcdTx
	path   []string
	prefix string
}

func (b *etcdBucket) key(k []byte) string { return b.prefix + hex.EncodeToString(k) }

func (b *etcdBucket) Get(key []byte) ([]byte, error) { return b.tx.get(b.key(key)) }

func (b *etcdBucket) Put(key, value []byte) error {
	if value == nil {
		value = []byte{} // nil means delete in the write set
	}
	return b.tx.put(b.key(key), value)
}

func (b *etcdBucket) Delete(key []byte) error { return b.tx.put(b.key(key), nil) }

func (b *etcdBucket) NextSequence() (uint64, error) {
	k := b.tx.s.seqKey(b.path)
	v, err := b.tx.get(k)
	if err != nil {
		return 0, err
	}
	var n uint64
	if len(v) > 0 {
		if n, err = strconv.ParseUint(string(v), 10, 64); err != nil {
			return 0, fmt.Errorf("etcd: sequence %s: %w", k, err)
		}
	}
	n++
	return n, b.tx.put(k, []byte(strconv.FormatUint(n, 10)))
}

func (b *etcdBucket) ForEach(fn func(k, v []byte) error) error { return b.walk(fn, false) }

func (b *etcdBucket) ForEachReverse(fn func(k, v []byte) error) error { return b.walk(fn, true) }

// pageSize is how many keys one read of a walk fetches.
const pageSize = 500

// walk reads the bucket's keys a page at a time and merges the
// transaction's own writes in, in order.
func (b *etcdBucket) walk(fn func(k, v []byte) error, reverse bool) error {
	t := b.tx
	if t.writable {
		t.walked[b.prefix] = true
	}
	cmp := func(x, y string) int {
		if reverse {
			return strings.Compare(y, x)
		}
		return strings.Compare(x, y)
	}
	var mine []string // this transaction's writes in the bucket, in walk order
	for k := range t.writes {
		if strings.HasPrefix(k, b.prefix) {
			mine = append(mine, k)
		}
	}
	slices.SortFunc(mine, cmp)
	emit := func(k string, v []byte) error {
		rest := k[len(b.prefix):]
		if v == nil || strings.Contains(rest, "/") {
			return nil // deleted, or a nested bucket's key
		}
		raw, err := hex.DecodeString(rest)
		if err != nil {
			return fmt.Errorf("etcd: key %s is not caretaker's: %w", k, err)
		}
		return fn(raw, v)
	}
	end := clientv3.GetPrefixRangeEnd(b.prefix)
	from, to := b.prefix, end // the range still to read: [from, to)
	for {
		resp, err := t.rangeReq(from, to, pageSize, reverse)
		if err != nil {
			return err
		}
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			for len(mine) > 0 && cmp(mine[0], k) < 0 {
				if err := emit(mine[0], t.writes[mine[0]]); err != nil {
					return walkErr(err)
				}
				mine = mine[1:]
			}
			v := kv.Value
			if w, ok := t.writes[k]; ok {
				v = w
				mine = mine[1:] // mine[0] == k
			}
			if err := emit(k, v); err != nil {
				return walkErr(err)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		last := resp.Kvs[len(resp.Kvs)-1].Key
		if reverse {
			to = string(last)
		} else {
			from = string(append(bytes.Clone(last), 0))
		}
	}
	for _, k := range mine {
		if err := emit(k, t.writes[k]); err != nil {
			return walkErr(err)
		}
	}
	return nil
}

// Empty reports whether the store holds no key.
func (s *Etcd) Empty() (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.o.Timeout)
	defer cancel()
	resp, err := s.c.Get(ctx, s.o.Prefix+"data/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("etcd: read %sdata/: %w", s.o.Prefix, err)
	}
	return resp.Count == 0, nil
}
