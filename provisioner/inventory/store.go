package inventory

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"caretaker/internal/kv"
	"caretaker/internal/who"
	"caretaker/internal/yamlfile"
)

var (
	// ErrConflict is wrapped by the errors of a host whose name, MAC or
	// serial another host already has.
	ErrConflict = errors.New("conflicts with another host")
	// ErrNotFound is wrapped by the errors about a host the store does
	// not hold.
	ErrNotFound = errors.New("no such host")
)

// bucket holds the hosts added through the API, JSON by name.
const bucket = "inventory_hosts"

// removedBucket holds the record of hosts removed through the API, JSON
// by the bucket's sequence number (big-endian): in the order of removal.
const removedBucket = "inventory_removed"

// MaxRemoved is how many records of removed hosts the store keeps: the
// oldest go first.
const MaxRemoved = 1000

// Removed is the record of a host removed through the API: enough to
// tell which machine it was, who added it and who removed it.
type Removed struct {
	Name    string   `json:"name"`
	Serial  string   `json:"serial,omitempty"`
	MACs    []string `json:"macs,omitempty"`
	AddedBy *who.By  `json:"added_by,omitempty"`
	// RemovedBy is the token's name and role (the client's author only as
	// on behalf of), with the client's comment; nil when the caller
	// recorded no one (Remove).
	RemovedBy *who.By   `json:"removed_by,omitempty"`
	RemovedAt time.Time `json:"removed_at"`
}

const (
	fromFile = "in the inventory file"
	fromAPI  = "added through the API"
)

// Store keeps the hosts added through the API in two buckets of a
// kv.Store (a bbolt file or etcd) that it may share with others. It is
// safe for concurrent use. It caches nothing of the store: every read is
// a transaction, so two Stores on one etcd agree.
type Store struct {
	db kv.Store
	// file returns the current inventory file, whose hosts the store's
	// must not clash with.
	file func() *Inventory
}

// NewStore keeps the hosts in store, creating its buckets if needed (in a
// bbolt file; in etcd a bucket exists with its first key). file returns
// the inventory file as currently loaded (nil: none). The store stays the
// caller's to close.
func NewStore(store kv.Store, file func() *Inventory) (*Store, error) {
	err := store.Update(func(tx kv.Tx) error {
		// A bucket's first use reports a failed creation.
		for _, name := range []string{bucket, removedBucket} {
			if _, err := tx.Bucket(name).Get([]byte{0}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create inventory bucket: %w", err)
	}
	return &Store{db: store, file: file}, nil
}

func (s *Store) fileHosts() []Host {
	if s.file == nil {
		return nil
	}
	if inv := s.file(); inv != nil {
		return inv.Hosts
	}
	return nil
}

// Add validates h and stores it. Invalid fields are FieldErrors by their
// path in the host ("macs[0]"); a name, MAC or serial already in the
// inventory (file or store) is an error wrapping ErrConflict.
func (s *Store) Add(h Host) error {
	h = h.clone()
	errs := normalize(&h)
	for i, m := range h.MACs {
		if j := slices.Index(h.MACs, m); j < i {
			errs = append(errs, yamlfile.Errorf(fmt.Sprintf("macs[%d]", i), "%s is also macs[%d]", m, j))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	file := s.fileHosts()
	return s.db.Update(func(tx kv.Tx) error {
		b := tx.Bucket(bucket)
		stored, err := list(b)
		if err != nil {
			return err
		}
		errs := conflicts(h, file, fromFile)
		errs = append(errs, conflicts(h, stored, fromAPI)...)
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		data, err := json.Marshal(h)
		if err != nil {
			return fmt.Errorf("store host %s: %w", h.Name, err)
		}
		if err := b.Put([]byte(h.Name), data); err != nil {
			return fmt.Errorf("store host %s: %w", h.Name, err)
		}
		return nil
	})
}

// conflict is a field of a new host that another host already has.
type conflict struct{ path, msg string }

func (c *conflict) Error() string { return c.path + ": " + c.msg }
func (c *conflict) Unwrap() error { return ErrConflict }

// conflicts returns one error per field of h that a host of others (from
// where) has.
func conflicts(h Host, others []Host, where string) []error {
	var errs []error
	for _, o := range others {
		if o.Name == h.Name {
			errs = append(errs, &conflict{"name", fmt.Sprintf("host %s already exists (%s)", h.Name, where)})
		}
		if h.Serial != "" && o.Serial == h.Serial {
			errs = append(errs, &conflict{"serial", fmt.Sprintf("%q is the serial of host %s (%s)", h.Serial, o.Name, where)})
		}
		for i, m := range h.MACs {
			if slices.Contains(o.MACs, m) {
				errs = append(errs, &conflict{fmt.Sprintf("macs[%d]", i), fmt.Sprintf("%s is a MAC of host %s (%s)", m, o.Name, where)})
			}
		}
	}
	return errs
}

// located is a conflict error located in the inventory file.
type located struct{ error }

func (l located) Unwrap() []error { return []error{l.error, ErrConflict} }

// CheckFile reports every host of file whose name, MAC or serial a host
// added through the API has, located in the file. Call it on each load of
// the inventory file, before using the file.
func (s *Store) CheckFile(file *Inventory) error {
	stored, err := s.List()
	if err != nil {
		return err
	}
	var errs []error
	var lines map[string]int
	for i, h := range file.Hosts {
		for _, e := range conflicts(h, stored, fromAPI) {
			if lines == nil {
				lines = lineIndex(file.data)
			}
			c := e.(*conflict)
			errs = append(errs, located{file.fieldError(lines, fmt.Sprintf("hosts[%d].%s", i, c.path), c.msg)})
		}
	}
	return errors.Join(errs...)
}

// Remove deletes the host added through the API under name, recording
// its removal with no one as who removed it. The API uses RemoveBy.
func (s *Store) Remove(name string) error {
	return s.RemoveBy(name, nil)
}

// RemoveBy deletes the host added through the API under name and, in the
// same transaction, keeps a Removed record of it with by (may be nil) as
// who removed it. The store keeps the last MaxRemoved such records.
func (s *Store) RemoveBy(name string, by *who.By) error {
	return s.db.Update(func(tx kv.Tx) error {
		b := tx.Bucket(bucket)
		data, err := b.Get([]byte(name))
		if err != nil {
			return fmt.Errorf("remove host %s: %w", name, err)
		}
		if data == nil {
			return fmt.Errorf("remove host %s: %w added through the API", name, ErrNotFound)
		}
		var h Host
		if err := json.Unmarshal(data, &h); err != nil {
			return fmt.Errorf("remove host %s: decode: %w", name, err)
		}
		rec := Removed{Name: h.Name, Serial: h.Serial, MACs: h.MACs, AddedBy: h.AddedBy, RemovedAt: time.Now().UTC()}
		if by != nil {
			b := *by
			rec.RemovedBy = &b
			if !b.At.IsZero() {
				rec.RemovedAt = b.At
			}
		}
		if err := keepRemoved(tx.Bucket(removedBucket), rec); err != nil {
			return fmt.Errorf("remove host %s: %w", name, err)
		}
		if err := b.Delete([]byte(name)); err != nil {
			return fmt.Errorf("remove host %s: %w", name, err)
		}
		return nil
	})
}

// keepRemoved appends rec to b and drops the oldest records over
// MaxRemoved.
func keepRemoved(b kv.Bucket, rec Removed) error {
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := b.Put(binary.BigEndian.AppendUint64(nil, seq), data); err != nil {
		return err
	}
	// Counted by a walk, which sees this transaction's own writes.
	n, err := kv.Count(b)
	if err != nil || n <= MaxRemoved {
		return err
	}
	// The oldest keys first; deleted after the walk, which must not
	// change the bucket.
	var oldest [][]byte
	err = b.ForEach(func(k, _ []byte) error {
		oldest = append(oldest, bytes.Clone(k))
		if len(oldest) == n-MaxRemoved {
			return kv.ErrStop
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range oldest {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Removed returns the records of the hosts removed through the API, the
// oldest first (at most MaxRemoved).
func (s *Store) Removed() ([]Removed, error) {
	var recs []Removed
	err := s.db.View(func(tx kv.Tx) error {
		recs = nil
		return tx.Bucket(removedBucket).ForEach(func(k, v []byte) error {
			var r Removed
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("list removed hosts: decode record %x: %w", k, err)
			}
			recs = append(recs, r)
			return nil
		})
	})
	return recs, err
}

// Get returns the host added through the API under name.
func (s *Store) Get(name string) (Host, error) {
	var h Host
	err := s.db.View(func(tx kv.Tx) error {
		data, err := tx.Bucket(bucket).Get([]byte(name))
		if err != nil {
			return fmt.Errorf("get host %s: %w", name, err)
		}
		if data == nil {
			return fmt.Errorf("get host %s: %w added through the API", name, ErrNotFound)
		}
		if err := json.Unmarshal(data, &h); err != nil {
			return fmt.Errorf("get host %s: decode: %w", name, err)
		}
		return nil
	})
	return h, err
}

// List returns the hosts added through the API, by name.
func (s *Store) List() ([]Host, error) {
	var hosts []Host
	err := s.db.View(func(tx kv.Tx) error {
		var err error
		hosts, err = list(tx.Bucket(bucket))
		return err
	})
	return hosts, err
}

// list decodes the bucket's hosts, in key (name) order.
func list(b kv.Bucket) ([]Host, error) {
	var hosts []Host
	err := b.ForEach(func(k, v []byte) error {
		var h Host
		if err := json.Unmarshal(v, &h); err != nil {
			return fmt.Errorf("list hosts: decode host %s: %w", k, err)
		}
		hosts = append(hosts, h)
		return nil
	})
	return hosts, err
}

// All returns the inventory: the file's hosts and the store's, by name.
// Should a name be in both (CheckFile was not called), the file's wins.
func (s *Store) All() ([]Host, error) {
	stored, err := s.List()
	if err != nil {
		return nil, err
	}
	file := s.fileHosts()
	all := make([]Host, 0, len(file)+len(stored))
	for _, h := range file {
		all = append(all, h.clone())
	}
	for _, h := range stored {
		if !slices.ContainsFunc(file, func(f Host) bool { return f.Name == h.Name }) {
			all = append(all, h)
		}
	}
	slices.SortFunc(all, func(a, b Host) int { return strings.Compare(a.Name, b.Name) })
	return all, nil
}

// inFile reports whether name is a host of the inventory file, and returns
// it.
func (s *Store) inFile(name string) (Host, bool) {
	for _, h := range s.fileHosts() {
		if h.Name == name {
			return h.clone(), true
		}
	}
	return Host{}, false
}
