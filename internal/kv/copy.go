package kv

import (
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// CopyBolt copies every bucket of src, nested ones and their sequences
// included, into dst, and returns how many keys it copied: how a single
// server's state moves into the etcd of a cluster. It writes in etcd
// transactions of at most MaxOps keys, so it is not one transaction: run
// it on an empty prefix (Empty) and again from the start if it fails.
func CopyBolt(dst *Etcd, src *Bolt) (int, error) {
	n := 0
	err := src.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return copyBucket(dst, []string{string(name)}, b, &n)
		})
	})
	if err != nil {
		return n, fmt.Errorf("copy %s into etcd: %w", src.Path(), err)
	}
	return n, nil
}

func copyBucket(dst *Etcd, path []string, b *bolt.Bucket, n *int) error {
	if err := checkPath(path); err != nil {
		return err
	}
	type kv struct{ k, v []byte }
	var batch []kv
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := dst.Update(func(tx Tx) error {
			bk := tx.Bucket(path...)
			for _, e := range batch {
				if err := bk.Put(e.k, e.v); err != nil {
					return err
				}
			}
			return nil
		})
		*n += len(batch)
		batch = batch[:0]
		return err
	}
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil {
			if err := copyBucket(dst, append(path[:len(path):len(path)], string(k)), b.Bucket(k), n); err != nil {
				return err
			}
			continue
		}
		// bbolt's bytes live only as long as the transaction.
		batch = append(batch, kv{append([]byte(nil), k...), append([]byte(nil), v...)})
		if len(batch) == dst.o.MaxOps {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if seq := b.Sequence(); seq > 0 {
		return dst.Update(func(tx Tx) error {
			return tx.(*etcdTx).put(dst.seqKey(path), []byte(strconv.FormatUint(seq, 10)))
		})
	}
	return nil
}
