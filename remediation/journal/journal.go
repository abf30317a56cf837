// Package journal is the durable record of every remediation decision and
// its outcome. The engine writes the intent before it acts and the result
// after, so an operator can always tell what was done, why, and whether it
// worked — and so the engine, after a crash, knows which actions it must not
// repeat blindly.
package journal

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// State is where a record is in its life.
type State string

const (
	// StatePending is decided but not started.
	StatePending State = "pending"
	// StateRunning has been handed to the agent; the outcome is unknown.
	StateRunning State = "running"
	// StateSucceeded was done and verified.
	StateSucceeded State = "succeeded"
	// StateFailed was tried and did not work; Error says why.
	StateFailed State = "failed"
	// StateSkipped was decided against; Reason says why.
	StateSkipped State = "skipped"
	// StateInterrupted was pending or running when the server stopped.
	StateInterrupted State = "interrupted"
)

// Open reports whether a record in state s still awaits its outcome.
func (s State) Open() bool { return s == StatePending || s == StateRunning }

// ReasonInterrupted is the Reason Recover gives interrupted records.
const ReasonInterrupted = "the server stopped before the outcome was known; not retried automatically"

// Record is one remediation decision and its outcome.
type Record struct {
	ID      uint64    `json:"id"`
	Created time.Time `json:"created"`

	// The alert instance that caused the decision.
	Alert         string    `json:"alert"`
	Fingerprint   string    `json:"fingerprint"`
	AlertStartsAt time.Time `json:"alert_starts_at"`

	// The decision: which rule chose which action on which target.
	Rule   string `json:"rule,omitempty"`
	Action string `json:"action"`
	Host   string `json:"host,omitempty"`
	UUID   string `json:"uuid,omitempty"`
	Domain string `json:"domain,omitempty"`

	State  State  `json:"state"`
	Reason string `json:"reason,omitempty"` // why it was decided, skipped or interrupted
	Error  string `json:"error,omitempty"`

	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// Attempt counts the tries for one alert instance, from 1.
	Attempt int `json:"attempt,omitempty"`
	// HealSeconds runs from the alert's start to the verified success.
	HealSeconds float64 `json:"heal_seconds,omitempty"`
}

// ErrNotFound is returned for an ID the journal does not hold.
var ErrNotFound = errors.New("no such record")

// lockTimeout bounds the wait for the file lock: a second server on the same
// data directory should fail at once with a clear error, not hang.
const lockTimeout = 2 * time.Second

var recordsBucket = []byte("records")

// Journal is a bbolt file of records keyed by ID. It is safe for concurrent
// use.
type Journal struct {
	db   *bolt.DB
	path string
	// observe, if set, sees every record once it is on disk (the audit
	// stream to Loki).
	observe func(Record)
}

// OnRecord makes fn see every record as it is stored — appended, updated or
// recovered — after its transaction commits. fn must not block. Call it
// before the journal is used.
func (j *Journal) OnRecord(fn func(Record)) { j.observe = fn }

func (j *Journal) notify(recs ...Record) {
	if j.observe == nil {
		return
	}
	for _, r := range recs {
		j.observe(r)
	}
}

// Open opens (creating if needed) the journal file at path.
func Open(path string) (*Journal, error) {
	return open(path, lockTimeout)
}

func open(path string, timeout time.Duration) (*Journal, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open journal %s: %w: the file is locked, is another caretaker server using it?", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(recordsBucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise journal %s: %w", path, err)
	}
	return &Journal{db: db, path: path}, nil
}

// Close closes the file and releases its lock.
func (j *Journal) Close() error {
	if err := j.db.Close(); err != nil {
		return fmt.Errorf("close journal %s: %w", j.path, err)
	}
	return nil
}

// Append stores rec under a new ID and returns it as stored. It returns
// only after the record is on disk.
func (j *Journal) Append(rec Record) (Record, error) {
	err := j.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(recordsBucket)
		id, err := b.NextSequence()
		if err != nil {
			return err
		}
		rec.ID = id
		return put(b, rec)
	})
	if err != nil {
		return Record{}, fmt.Errorf("append journal record: %w", err)
	}
	j.notify(rec)
	return rec, nil
}

// Update applies fn to the record with id and stores the result durably.
// fn cannot change the ID.
func (j *Journal) Update(id uint64, fn func(*Record)) (Record, error) {
	var rec Record
	err := j.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(recordsBucket)
		var err error
		if rec, err = get(b, id); err != nil {
			return err
		}
		fn(&rec)
		rec.ID = id
		return put(b, rec)
	})
	if err != nil {
		return Record{}, fmt.Errorf("update journal record %d: %w", id, err)
	}
	j.notify(rec)
	return rec, nil
}

// Get returns the record with id, or an error wrapping ErrNotFound.
func (j *Journal) Get(id uint64) (Record, error) {
	var rec Record
	err := j.db.View(func(tx *bolt.Tx) error {
		var err error
		rec, err = get(tx.Bucket(recordsBucket), id)
		return err
	})
	if err != nil {
		return Record{}, fmt.Errorf("get journal record %d: %w", id, err)
	}
	return rec, nil
}

// List returns up to limit records, newest first; limit <= 0 means all.
func (j *Journal) List(limit int) ([]Record, error) {
	var recs []Record
	err := j.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(recordsBucket).Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			if limit > 0 && len(recs) >= limit {
				break
			}
			rec, err := decode(k, v)
			if err != nil {
				return err
			}
			recs = append(recs, rec)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list journal: %w", err)
	}
	return recs, nil
}

// Recover marks every pending or running record interrupted, finished at
// now, and returns them. Their outcome is unknown — the agent may or may not
// have acted — so they are reported to the operator, never repeated.
func (j *Journal) Recover(now time.Time) ([]Record, error) {
	var recovered []Record
	err := j.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(recordsBucket)
		var open []Record
		err := b.ForEach(func(k, v []byte) error {
			rec, err := decode(k, v)
			if err != nil {
				return err
			}
			if rec.State.Open() {
				open = append(open, rec)
			}
			return nil
		})
		if err != nil {
			return err
		}
		// Written after the walk: bbolt forbids changing a bucket while
		// iterating over it.
		for _, rec := range open {
			rec.State = StateInterrupted
			rec.Reason = ReasonInterrupted
			rec.Finished = now
			if err := put(b, rec); err != nil {
				return err
			}
			recovered = append(recovered, rec)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("recover journal: %w", err)
	}
	j.notify(recovered...)
	return recovered, nil
}

func key(id uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, id) // big-endian sorts by ID
}

func put(b *bolt.Bucket, rec Record) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode record %d: %w", rec.ID, err)
	}
	return b.Put(key(rec.ID), v)
}

func get(b *bolt.Bucket, id uint64) (Record, error) {
	v := b.Get(key(id))
	if v == nil {
		return Record{}, ErrNotFound
	}
	return decode(key(id), v)
}

func decode(k, v []byte) (Record, error) {
	var rec Record
	if err := json.Unmarshal(v, &rec); err != nil {
		return Record{}, fmt.Errorf("decode record %x: %w", k, err)
	}
	return rec, nil
}
