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

	"caretaker/remediation/guards"
)

// State is where a record is in its life.
type State string

//	pending → (awaiting_approval) → running → verifying → succeeded | failed
//	pending | awaiting_approval → cancelled | expired
//
// and skipped for a decision not to act at all, interrupted for an action
// whose outcome a restart lost and no check could recover.
const (
	// StatePending is decided but held by a guard (a window, a pause,
	// the breaker…); Reason says which.
	StatePending State = "pending"
	// StateAwaitingApproval waits for a human's yes or no (Approval).
	StateAwaitingApproval State = "awaiting_approval"
	// StateRunning has been handed to the agent; the outcome is unknown.
	StateRunning State = "running"
	// StateVerifying was done; the engine checks that the target is
	// healthy again.
	StateVerifying State = "verifying"
	// StateSucceeded was done and verified.
	StateSucceeded State = "succeeded"
	// StateFailed was tried and did not work; Error says why.
	StateFailed State = "failed"
	// StateCancelled never started: its alert resolved or a human
	// denied it.
	StateCancelled State = "cancelled"
	// StateExpired waited for an approval that did not come in time.
	StateExpired State = "expired"
	// StateSkipped was decided against; Reason says why.
	StateSkipped State = "skipped"
	// StateInterrupted was running when the server stopped, and its
	// outcome could not be checked.
	StateInterrupted State = "interrupted"
)

// Open reports whether a record in state s still awaits its outcome.
func (s State) Open() bool {
	switch s {
	case StatePending, StateAwaitingApproval, StateRunning, StateVerifying:
		return true
	}
	return false
}

// Started reports whether the action of a record in state s may have
// reached the target.
func (s State) Started() bool { return s == StateRunning || s == StateVerifying }

// Transition is one change of a record's state.
type Transition struct {
	State State     `json:"state"`
	At    time.Time `json:"at"`
	Note  string    `json:"note,omitempty"`
}

// Record is one remediation decision and its outcome.
type Record struct {
	ID      uint64    `json:"id"`
	Created time.Time `json:"created"`

	// The alert instance that caused the decision.
	Alert         string    `json:"alert"`
	Fingerprint   string    `json:"fingerprint"`
	AlertStartsAt time.Time `json:"alert_starts_at"`

	// Labels are the alert's labels, which the action's parameters and
	// a later retry (after an approval, or a restart) are taken from.
	Labels map[string]string `json:"labels,omitempty"`

	// The decision: which rule chose which action on which target.
	Rule   string `json:"rule,omitempty"`
	Action string `json:"action"`
	// Step is the action's place in the rule's escalation chain: 0 for
	// the rule's own action, 1 for the first escalation…
	Step    int    `json:"step,omitempty"`
	Target  string `json:"target,omitempty"` // the key guards and pauses use
	Host    string `json:"host,omitempty"`
	UUID    string `json:"uuid,omitempty"`
	Domain  string `json:"domain,omitempty"`
	Cluster string `json:"cluster,omitempty"`
	// Author and Comment are set for an action a human ran by hand:
	// Author is the API token's name (the authenticated identity),
	// AuthorRole its role, OnBehalfOf whom the request said it was for.
	Author     string `json:"author,omitempty"`
	AuthorRole string `json:"author_role,omitempty"`
	OnBehalfOf string `json:"on_behalf_of,omitempty"`
	Comment    string `json:"comment,omitempty"`
	DryRun     bool   `json:"dry_run,omitempty"`

	State  State  `json:"state"`
	Reason string `json:"reason,omitempty"` // why it was decided, skipped or interrupted
	Error  string `json:"error,omitempty"`
	// Decisions are every guard's word at the latest check, in order.
	Decisions []guards.Decision `json:"decisions,omitempty"`
	Approval  *guards.Approval  `json:"approval,omitempty"`
	// Output is what a command printed, capped.
	Output string `json:"output,omitempty"`
	// Transitions are the states the record went through, oldest first.
	Transitions []Transition `json:"transitions,omitempty"`

	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// Attempt counts the tries for one alert instance, from 1.
	Attempt int `json:"attempt,omitempty"`
	// HealSeconds runs from the alert's start to the verified success.
	HealSeconds float64 `json:"heal_seconds,omitempty"`
	// GaveUp is set on the failure after which the engine tried nothing
	// more: the escalation chain is spent and a human takes over.
	GaveUp bool `json:"gave_up,omitempty"`
}

// ErrNotFound is returned for an ID the journal does not hold.
var ErrNotFound = errors.New("no such record")

// lockTimeout bounds the wait for the file lock: a second server on the same
// data directory should fail at once with a clear error, not hang.
const lockTimeout = 2 * time.Second

var (
	recordsBucket = []byte("records")
	stateBucket   = []byte("state")
)

// Journal is a bbolt file of records keyed by ID. It is safe for concurrent
// use.
type Journal struct {
	db     *bolt.DB
	path   string
	opened int64 // bbolt's page writes after Open, so PagesWritten starts at 0
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
		for _, b := range [][]byte{recordsBucket, stateBucket} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise journal %s: %w", path, err)
	}
	return &Journal{db: db, path: path, opened: pagesWritten(db)}, nil
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
	err := j.Batch(func(b *Batch) error {
		var err error
		rec, err = b.Append(rec)
		return err
	})
	return rec, err
}

// Update applies fn to the record with id and stores the result durably.
// fn cannot change the ID.
func (j *Journal) Update(id uint64, fn func(*Record)) (Record, error) {
	var rec Record
	err := j.Batch(func(b *Batch) error {
		var err error
		rec, err = b.Update(id, fn)
		return err
	})
	return rec, err
}

// Batch is a set of changes written in one transaction. The transaction
// opens with the first change, so a batch that changes nothing takes no
// write lock and costs no fsync.
type Batch struct {
	db      *bolt.DB
	tx      *bolt.Tx // nil until the first change
	written []Record
}

// bucket returns the records bucket of the batch's write transaction,
// opening it on first use.
func (b *Batch) bucket() (*bolt.Bucket, error) {
	if b.tx == nil {
		tx, err := b.db.Begin(true)
		if err != nil {
			return nil, err
		}
		b.tx = tx
	}
	return b.tx.Bucket(recordsBucket), nil
}

// Append adds rec under a new ID and returns it as it will be stored.
func (b *Batch) Append(rec Record) (Record, error) {
	bk, err := b.bucket()
	if err != nil {
		return Record{}, fmt.Errorf("append journal record: %w", err)
	}
	id, err := bk.NextSequence()
	if err != nil {
		return Record{}, fmt.Errorf("append journal record: %w", err)
	}
	rec.ID = id
	if err := put(bk, rec); err != nil {
		return Record{}, fmt.Errorf("append journal record: %w", err)
	}
	b.written = append(b.written, rec)
	return rec, nil
}

// Get returns the record with id as this batch sees it: through its
// transaction once it has one (bbolt must not have a read transaction open
// beside the write one in the same goroutine), else as stored.
func (b *Batch) Get(id uint64) (Record, error) {
	var rec Record
	var err error
	if b.tx != nil {
		rec, err = get(b.tx.Bucket(recordsBucket), id)
	} else {
		err = b.db.View(func(tx *bolt.Tx) error {
			var gerr error
			rec, gerr = get(tx.Bucket(recordsBucket), id)
			return gerr
		})
	}
	if err != nil {
		return Record{}, fmt.Errorf("get journal record %d: %w", id, err)
	}
	return rec, nil
}

// Update applies fn to the record with id; fn cannot change the ID.
func (b *Batch) Update(id uint64, fn func(*Record)) (Record, error) {
	bk, err := b.bucket()
	if err != nil {
		return Record{}, fmt.Errorf("update journal record %d: %w", id, err)
	}
	rec, err := get(bk, id)
	if err != nil {
		return Record{}, fmt.Errorf("update journal record %d: %w", id, err)
	}
	fn(&rec)
	rec.ID = id
	if err := put(bk, rec); err != nil {
		return Record{}, fmt.Errorf("update journal record %d: %w", id, err)
	}
	b.written = append(b.written, rec)
	return rec, nil
}

// Batch runs fn in one transaction: everything fn wrote is on disk when
// Batch returns nil, and nothing is when it returns an error. One fsync for
// many records is what lets an alert storm be recorded quickly. The write
// transaction opens with fn's first change: when fn changes nothing, Batch
// writes nothing.
func (j *Journal) Batch(fn func(*Batch) error) error {
	b := &Batch{db: j.db}
	done := false
	defer func() {
		if b.tx != nil && !done { // fn failed or panicked
			_ = b.tx.Rollback()
		}
	}()
	if err := fn(b); err != nil {
		return err
	}
	if b.tx == nil {
		return nil
	}
	done = true
	if err := b.tx.Commit(); err != nil {
		return err
	}
	j.notify(b.written...)
	return nil
}

// PagesWritten reports how many pages the journal has written since it was
// opened. Every commit writes at least its meta page (and fsyncs), so the
// count stands still exactly while nothing is committed.
func (j *Journal) PagesWritten() int64 {
	return pagesWritten(j.db) - j.opened
}

func pagesWritten(db *bolt.DB) int64 {
	s := db.Stats()
	return s.TxStats.GetWrite()
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

// Len returns how many records the journal holds, without decoding them.
func (j *Journal) Len() (int, error) {
	n := 0
	err := j.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(recordsBucket).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("count journal records: %w", err)
	}
	return n, nil
}

// Unfinished returns the records whose outcome is still open, oldest
// first: after a restart the engine reconciles each with the target's real
// state rather than repeating it blindly.
func (j *Journal) Unfinished() ([]Record, error) {
	var open []Record
	err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(recordsBucket).ForEach(func(k, v []byte) error {
			rec, err := decode(k, v)
			if err == nil && rec.State.Open() {
				open = append(open, rec)
			}
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list unfinished journal records: %w", err)
	}
	return open, nil
}

// Prune deletes the finished records created before cutoff and returns how
// many it deleted. Open records are kept whatever their age.
func (j *Journal) Prune(cutoff time.Time) (int, error) {
	n := 0
	err := j.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(recordsBucket)
		var old [][]byte
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			rec, err := decode(k, v)
			if err != nil {
				return err
			}
			if rec.Created.Before(cutoff) && !rec.State.Open() {
				old = append(old, k)
			}
		}
		// Deleted after the walk: bbolt forbids changing a bucket while
		// iterating over it.
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(old)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune journal: %w", err)
	}
	return n, nil
}

// SaveState stores v, as JSON, under name: small documents that must
// survive a restart beside the records, such as the pauses in force.
func (j *Journal) SaveState(name string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("save %s: %w", name, err)
	}
	err = j.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(stateBucket).Put([]byte(name), data)
	})
	if err != nil {
		return fmt.Errorf("save %s: %w", name, err)
	}
	return nil
}

// LoadState decodes the document saved under name into v and reports
// whether there was one.
func (j *Journal) LoadState(name string, v any) (bool, error) {
	var data []byte
	_ = j.db.View(func(tx *bolt.Tx) error {
		data = append(data, tx.Bucket(stateBucket).Get([]byte(name))...)
		return nil
	})
	if data == nil {
		return false, nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("load %s: %w", name, err)
	}
	return true, nil
}

// Move sets the record's state and remembers the transition.
func (r *Record) Move(to State, at time.Time, note string) {
	r.State = to
	r.Transitions = append(r.Transitions, Transition{State: to, At: at, Note: note})
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
