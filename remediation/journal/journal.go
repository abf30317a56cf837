// Package journal is the durable record of every remediation decision and
// its outcome. The engine writes the intent before it acts and the result
// after, so an operator can always tell what was done, why, and whether it
// worked — and so the engine, after a crash, knows which actions it must not
// repeat blindly.
package journal

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"caretaker/internal/kv"
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
	// FromEvent: the alert was raised from an agent's libvirt event,
	// not by a rule (the rule's later copy is the same instance).
	FromEvent bool `json:"from_event,omitempty"`

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

// The journal's buckets, as in the bbolt files written before kv.
const (
	recordsBucket = "records"
	stateBucket   = "state"
)

// Journal is a store of records keyed by ID: a bbolt file (Open) or any
// kv.Store, such as etcd shared by clustered servers (New). It is safe for
// concurrent use.
type Journal struct {
	store kv.Store
	close func() error // closes the store when Open opened it; nil for New
	// opened is the store's page writes at New, so PagesWritten starts at
	// 0; -1 when the store does not count them.
	opened int64
	// observe, if set, sees every record once it is stored (the audit
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
	store, err := kv.OpenBolt(path, "journal")
	if err != nil {
		return nil, err
	}
	j, err := New(store)
	if err != nil {
		store.Close()
		return nil, err
	}
	j.close = func() error {
		if err := store.Close(); err != nil {
			return fmt.Errorf("close journal %s: %w", path, err)
		}
		return nil
	}
	return j, nil
}

// New keeps a journal in store, which the caller closes. Its buckets need
// no initialising: a bucket exists from its first key, and reading a
// missing one finds nothing.
func New(store kv.Store) (*Journal, error) {
	return &Journal{store: store, opened: pagesWritten(store)}, nil
}

// Close closes the file if Open opened it; a store given to New is the
// caller's to close.
func (j *Journal) Close() error {
	if j.close == nil {
		return nil
	}
	return j.close()
}

// Append stores rec under a new ID and returns it as stored. It returns
// only after the record is durable.
func (j *Journal) Append(rec Record) (Record, error) {
	var stored Record
	err := j.Batch(func(b *Batch) error {
		var err error
		stored, err = b.Append(rec) // rec itself stays as given, for a re-run
		return err
	})
	return stored, err
}

// Update applies fn to the record with id and stores the result durably.
// fn cannot change the ID. On a shared store fn may run more than once.
func (j *Journal) Update(id uint64, fn func(*Record)) (Record, error) {
	var rec Record
	err := j.Batch(func(b *Batch) error {
		var err error
		rec, err = b.Update(id, fn)
		return err
	})
	return rec, err
}

// Batch is a set of changes written in one transaction.
type Batch struct {
	records kv.Bucket
	changed bool     // a change was made: the transaction must commit
	written []Record // notified once the transaction committed
}

// Append adds rec under a new ID and returns it as it will be stored.
func (b *Batch) Append(rec Record) (Record, error) {
	b.changed = true
	id, err := b.records.NextSequence()
	if err != nil {
		return Record{}, fmt.Errorf("append journal record: %w", err)
	}
	rec.ID = id
	if err := put(b.records, rec); err != nil {
		return Record{}, fmt.Errorf("append journal record: %w", err)
	}
	b.written = append(b.written, rec)
	return rec, nil
}

// Get returns the record with id as this batch sees it, its own changes
// included.
func (b *Batch) Get(id uint64) (Record, error) {
	rec, err := get(b.records, id)
	if err != nil {
		return Record{}, fmt.Errorf("get journal record %d: %w", id, err)
	}
	return rec, nil
}

// Update applies fn to the record with id; fn cannot change the ID.
func (b *Batch) Update(id uint64, fn func(*Record)) (Record, error) {
	rec, err := get(b.records, id)
	if err != nil {
		return Record{}, fmt.Errorf("update journal record %d: %w", id, err)
	}
	fn(&rec)
	rec.ID = id
	b.changed = true
	if err := put(b.records, rec); err != nil {
		return Record{}, fmt.Errorf("update journal record %d: %w", id, err)
	}
	b.written = append(b.written, rec)
	return rec, nil
}

// errUnchanged rolls back the transaction of a batch that changed nothing.
var errUnchanged = errors.New("the batch changed nothing")

// Batch runs fn in one transaction: everything fn wrote is durable when
// Batch returns nil, and nothing is when it returns an error. One commit
// (one fsync) for many records is what lets an alert storm be recorded
// quickly. A batch that changes nothing is rolled back rather than
// committed, so it writes nothing and costs no fsync (on bbolt it still
// holds the write lock while fn runs: kv's transactions take a callback,
// so the transaction cannot open lazily at fn's first change).
//
// On a shared store (etcd) fn runs again when another writer overtook the
// transaction, so it must not act outside the batch; on a fenced store
// that lost the leadership the error wraps kv.ErrNotLeader.
func (j *Journal) Batch(fn func(*Batch) error) error {
	var b *Batch
	var fnErr error
	err := j.store.Update(func(tx kv.Tx) error {
		// A new Batch per attempt: what a re-run attempt wrote is all
		// that commits, so it alone is notified.
		b = &Batch{records: tx.Bucket(recordsBucket)}
		fnErr = fn(b)
		if fnErr != nil {
			return fnErr
		}
		if !b.changed {
			return errUnchanged
		}
		return nil
	})
	switch {
	case errors.Is(err, errUnchanged):
		return nil
	case err != nil && fnErr != nil:
		return err // fn's own error, as fn returned it
	case err != nil:
		return fmt.Errorf("write the journal: %w", err)
	}
	j.notify(b.written...)
	return nil
}

// PagesWritten reports how many pages the journal has written since it was
// opened, when its store is a bbolt file: every commit writes at least its
// meta page (and fsyncs), so the count stands still exactly while nothing
// is committed. It is -1 for a store that does not count pages (etcd).
func (j *Journal) PagesWritten() int64 {
	n := pagesWritten(j.store)
	if n < 0 {
		return -1
	}
	return n - j.opened
}

func pagesWritten(s kv.Store) int64 {
	if p, ok := s.(interface{ PagesWritten() int64 }); ok {
		return p.PagesWritten()
	}
	return -1
}

// Get returns the record with id, or an error wrapping ErrNotFound.
func (j *Journal) Get(id uint64) (Record, error) {
	var rec Record
	err := j.store.View(func(tx kv.Tx) error {
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
	return j.Find(limit, nil)
}

// Find returns the newest limit records that match (nil: all; limit 0:
// no limit), newest first, reading no further back than it must.
func (j *Journal) Find(limit int, match func(Record) bool) ([]Record, error) {
	var recs []Record
	err := j.store.View(func(tx kv.Tx) error {
		recs = nil
		return tx.Bucket(recordsBucket).ForEachReverse(func(k, v []byte) error {
			if limit > 0 && len(recs) >= limit {
				return kv.ErrStop
			}
			rec, err := decode(k, v)
			if err != nil {
				return err
			}
			if match == nil || match(rec) {
				recs = append(recs, rec)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list journal: %w", err)
	}
	return recs, nil
}

// Len returns how many records the journal holds, without decoding them.
func (j *Journal) Len() (int, error) {
	n := 0
	err := j.store.View(func(tx kv.Tx) error {
		var err error
		n, err = kv.Count(tx.Bucket(recordsBucket))
		return err
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
	err := j.store.View(func(tx kv.Tx) error {
		open = nil
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
	err := j.store.Update(func(tx kv.Tx) error {
		b := tx.Bucket(recordsBucket)
		var old [][]byte
		err := b.ForEach(func(k, v []byte) error {
			rec, err := decode(k, v)
			if err != nil {
				return err
			}
			if rec.Created.Before(cutoff) && !rec.State.Open() {
				old = append(old, bytes.Clone(k)) // bbolt's k lives only as long as the transaction
			}
			return nil
		})
		if err != nil {
			return err
		}
		// Deleted after the walk: a bucket must not change during one.
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(old) // set per attempt: fn may run again
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
	err = j.store.Update(func(tx kv.Tx) error {
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
	err := j.store.View(func(tx kv.Tx) error {
		var err error
		data, err = tx.Bucket(stateBucket).Get([]byte(name))
		return err
	})
	if err != nil {
		return false, fmt.Errorf("load %s: %w", name, err)
	}
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

func put(b kv.Bucket, rec Record) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode record %d: %w", rec.ID, err)
	}
	return b.Put(key(rec.ID), v)
}

func get(b kv.Bucket, id uint64) (Record, error) {
	v, err := b.Get(key(id))
	if err != nil {
		return Record{}, err
	}
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
