package intake

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"caretaker/internal/kv"
	"caretaker/remediation"
)

// The inbox's buckets, as in the bbolt files written before kv.
const (
	// pendingBucket holds the entries the engine has not consumed, by ID.
	pendingBucket = "intake_pending"
	// seenBucket holds one key per alert instance and status ever
	// recorded, so re-deliveries are recognised after their entry is acked.
	seenBucket = "intake_seen"
)

// The inbox's bound and pruning. An entry is one alert instance and status
// recorded (what deduplicates re-deliveries), pending or consumed.
const (
	// DefaultMaxEntries bounds the inbox: at the bound a delivery with a new
	// alert is refused with ErrFull (the webhook answers 503, so
	// Alertmanager retries it) until pruning makes room.
	DefaultMaxEntries = 100_000
	// DefaultRetention is how long a consumed entry is kept after its alert
	// was last delivered: Alertmanager re-sends firing alerts every
	// repeat_interval (4h by default), each re-send keeps the entry.
	DefaultRetention = 24 * time.Hour
	// DefaultPruneInterval is how often RunPruning prunes.
	DefaultPruneInterval = 10 * time.Minute
)

// ErrFull is Record's error when the inbox holds its maximum of entries.
var ErrFull = errors.New("the intake inbox is full")

// Entry is one recorded alert awaiting the engine.
type Entry struct {
	ID       uint64
	Received time.Time
	Alert    remediation.Alert
}

// storedEntry is an Entry on disk, with names of its own so the file does
// not change when remediation.Alert does.
type storedEntry struct {
	ID          uint64            `json:"id"`
	Received    time.Time         `json:"received"`
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Status      string            `json:"status"`
	StartsAt    time.Time         `json:"starts_at"`
	EndsAt      time.Time         `json:"ends_at,omitzero"`
	Fingerprint string            `json:"fingerprint"`
}

func encodeEntry(e Entry) ([]byte, error) {
	a := e.Alert
	v, err := json.Marshal(storedEntry{
		ID: e.ID, Received: e.Received, Name: a.Name, Labels: a.Labels, Annotations: a.Annotations,
		Status: a.Status, StartsAt: a.StartsAt, EndsAt: a.EndsAt, Fingerprint: a.Fingerprint,
	})
	if err != nil {
		return nil, fmt.Errorf("encode entry %d: %w", e.ID, err)
	}
	return v, nil
}

func decodeEntry(k, v []byte) (Entry, error) {
	var s storedEntry
	if err := json.Unmarshal(v, &s); err != nil {
		return Entry{}, fmt.Errorf("decode entry %x: %w", k, err)
	}
	return Entry{ID: s.ID, Received: s.Received, Alert: remediation.Alert{
		Name: s.Name, Labels: s.Labels, Annotations: s.Annotations, Status: s.Status,
		StartsAt: s.StartsAt, EndsAt: s.EndsAt, Fingerprint: s.Fingerprint,
	}}, nil
}

// Receipt says what Record did with a batch of alerts.
type Receipt struct {
	// Recorded are the new entries, pending until acked.
	Recorded []Entry
	// Duplicates counts alerts already recorded (by fingerprint, start time
	// and status), from an earlier delivery or another Alertmanager.
	Duplicates int
	// Cancelled counts pending firing entries withdrawn because their
	// resolution arrived before the engine consumed them.
	Cancelled int
	// Current is what the engine should see of the batch: every distinct
	// alert, except firing ones already known to be resolved. Re-sent
	// firing alerts are included because the engine retries failed
	// actions when an alert is re-sent; it acts once per alert instance.
	Current []remediation.Alert
}

// IDs returns the IDs of the recorded entries, for Ack.
func (r Receipt) IDs() []uint64 {
	ids := make([]uint64, len(r.Recorded))
	for i, e := range r.Recorded {
		ids[i] = e.ID
	}
	return ids
}

// Inbox is the durable record of the alerts delivered to the server. It is
// safe for concurrent use.
type Inbox struct {
	store kv.Store
	owned bool // Close closes store
	now   func() time.Time

	// mu orders this Inbox's writes that change entries, so its count is
	// exact on one server.
	mu sync.Mutex
	// entries counts the keys of seenBucket: every alert instance and
	// status held, pending ones included (each has its key). When several
	// servers share the store (etcd), each counts only what it added and
	// pruned itself, so the count, and the bound checked against it, is
	// approximate between prunes; every Prune recounts it from the store.
	// Counting in every Record would walk the whole bucket per delivery.
	entries int
	max     int
}

// Open opens (creating if needed) an inbox in its own bbolt file at path.
func Open(path string) (*Inbox, error) {
	store, err := kv.OpenBolt(path, "intake inbox")
	if err != nil {
		return nil, err
	}
	in, err := New(store)
	if err != nil {
		store.Close()
		return nil, err
	}
	in.owned = true
	return in, nil
}

// New keeps an inbox in buckets of store, which the caller opened and
// closes.
func New(store kv.Store) (*Inbox, error) {
	entries := 0
	err := store.View(func(tx kv.Tx) error {
		var err error
		entries, err = kv.Count(tx.Bucket(seenBucket))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("initialise intake inbox: %w", err)
	}
	return &Inbox{store: store, now: time.Now, entries: entries, max: DefaultMaxEntries}, nil
}

// SetMaxEntries changes the bound (DefaultMaxEntries); n < 1 is no bound.
func (in *Inbox) SetMaxEntries(n int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.max = n
}

// Len returns how many entries (alert instances and statuses, pending or
// consumed) the inbox holds.
func (in *Inbox) Len() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.entries
}

// Close closes the file if Open opened it.
func (in *Inbox) Close() error {
	if !in.owned {
		return nil
	}
	if err := in.store.Close(); err != nil {
		return fmt.Errorf("close intake inbox: %w", err)
	}
	return nil
}

// Record stores the alerts that are new, in one transaction, and returns
// only once they are on disk. A resolved alert withdraws the pending entry
// of the same firing instance. When the new alerts would take the inbox
// over its bound, nothing of the batch is recorded and the error wraps
// ErrFull.
//
// Servers sharing the store (etcd) may record at once: IDs stay distinct,
// and a transaction another server overtook runs again on the new state.
func (in *Inbox) Record(alerts []remediation.Alert) (Receipt, error) {
	var rc Receipt
	now := in.now().UTC()
	in.mu.Lock()
	defer in.mu.Unlock()
	added := 0
	err := in.store.Update(func(tx kv.Tx) error {
		// Reset per attempt: fn runs again when another writer overtook it.
		rc, added = Receipt{}, 0
		pending, seen := tx.Bucket(pendingBucket), tx.Bucket(seenBucket)
		for _, a := range alerts {
			a = normalize(a)
			key := seenKey(a.Fingerprint, a.StartsAt, a.Status)
			v, err := seen.Get(key)
			if err != nil {
				return err
			}
			if v != nil {
				rc.Duplicates++
				// Refreshed so Prune keeps what is still being delivered.
				if err := seen.Put(key, seenValue(seenID(v), now)); err != nil {
					return err
				}
				over, err := resolved(seen, a)
				if err != nil {
					return err
				}
				if a.Status == remediation.StatusResolved || !over {
					rc.Current = appendOnce(rc.Current, a)
				}
				continue
			}
			if a.Status == remediation.StatusFiring {
				over, err := resolved(seen, a)
				if err != nil {
					return err
				}
				if over {
					// A late copy from another Alertmanager: the incident is over.
					rc.Duplicates++
					continue
				}
			}
			if a.Status == remediation.StatusResolved {
				fv, err := seen.Get(seenKey(a.Fingerprint, a.StartsAt, remediation.StatusFiring))
				if err != nil {
					return err
				}
				if fv != nil {
					id := idKey(seenID(fv))
					pv, err := pending.Get(id)
					if err != nil {
						return err
					}
					if pv != nil {
						if err := pending.Delete(id); err != nil {
							return err
						}
						rc.Cancelled++
					}
				}
			}
			if in.max > 0 && in.entries+added >= in.max {
				return fmt.Errorf("%w: %d entries, the bound; pruning makes room as alerts age out", ErrFull, in.entries)
			}
			added++
			id, err := pending.NextSequence()
			if err != nil {
				return err
			}
			e := Entry{ID: id, Received: now, Alert: a}
			ev, err := encodeEntry(e)
			if err != nil {
				return err
			}
			if err := pending.Put(idKey(id), ev); err != nil {
				return err
			}
			if err := seen.Put(key, seenValue(id, now)); err != nil {
				return err
			}
			rc.Recorded = append(rc.Recorded, e)
			rc.Current = append(rc.Current, a)
		}
		return nil
	})
	if err != nil {
		return Receipt{}, fmt.Errorf("record %d alerts in the intake inbox: %w", len(alerts), err)
	}
	in.entries += added
	return rc, nil
}

// appendOnce drops a second copy of an alert within one batch.
func appendOnce(as []remediation.Alert, a remediation.Alert) []remediation.Alert {
	for _, b := range as {
		if b.Fingerprint == a.Fingerprint && b.StartsAt.Equal(a.StartsAt) && b.Status == a.Status {
			return as
		}
	}
	return append(as, a)
}

// resolved reports whether the resolution of a's instance was recorded.
func resolved(seen kv.Bucket, a remediation.Alert) (bool, error) {
	v, err := seen.Get(seenKey(a.Fingerprint, a.StartsAt, remediation.StatusResolved))
	return v != nil, err
}

// Pending returns the entries not yet acked, oldest first.
func (in *Inbox) Pending() ([]Entry, error) {
	var es []Entry
	err := in.store.View(func(tx kv.Tx) error {
		return tx.Bucket(pendingBucket).ForEach(func(k, v []byte) error {
			e, err := decodeEntry(k, v)
			if err != nil {
				return err
			}
			es = append(es, e)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list the intake inbox: %w", err)
	}
	return es, nil
}

// Ack removes the entries the engine has consumed. Unknown IDs (already
// acked, or cancelled by a resolution) are ignored.
func (in *Inbox) Ack(ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	err := in.store.Update(func(tx kv.Tx) error {
		b := tx.Bucket(pendingBucket)
		for _, id := range ids {
			if err := b.Delete(idKey(id)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ack %d intake inbox entries: %w", len(ids), err)
	}
	return nil
}

// Replay hands the pending entries to handle (Engine.Handle) and acks them
// once it returns. The server calls it at start, before serving the
// webhook, for what a crash left between recording and handling.
func (in *Inbox) Replay(ctx context.Context, handle func(context.Context, []remediation.Alert)) (int, error) {
	es, err := in.Pending()
	if err != nil {
		return 0, fmt.Errorf("replay: %w", err)
	}
	if len(es) == 0 {
		return 0, nil
	}
	alerts := make([]remediation.Alert, len(es))
	ids := make([]uint64, len(es))
	for i, e := range es {
		alerts[i], ids[i] = e.Alert, e.ID
	}
	handle(ctx, alerts)
	if err := in.Ack(ids...); err != nil {
		return 0, fmt.Errorf("replay: %w", err)
	}
	return len(es), nil
}

// Prune forgets the alert instances not delivered since before, so the
// record of what was seen does not grow forever. Pending entries are kept.
// A firing alert re-sent after its key was pruned is recorded again; the
// engine, which remembers instances in its journal, still acts only once.
func (in *Inbox) Prune(before time.Time) (int, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	n, left := 0, 0
	err := in.store.Update(func(tx kv.Tx) error {
		pending, seen := tx.Bucket(pendingBucket), tx.Bucket(seenBucket)
		// The pending IDs in one walk rather than a Get per seen key: on
		// etcd every key read is a comparison the commit must carry.
		waiting := map[uint64]bool{}
		err := pending.ForEach(func(k, _ []byte) error {
			if len(k) == 8 {
				waiting[binary.BigEndian.Uint64(k)] = true
			}
			return nil
		})
		if err != nil {
			return err
		}
		var stale [][]byte
		total := 0
		err = seen.ForEach(func(k, v []byte) error {
			total++
			if seenAt(v).Before(before) && !waiting[seenID(v)] {
				stale = append(stale, bytes.Clone(k)) // bbolt's k lives only as long as the transaction
			}
			return nil
		})
		if err != nil {
			return err
		}
		// Deleted after the walk: a bucket must not change during one.
		for _, k := range stale {
			if err := seen.Delete(k); err != nil {
				return err
			}
		}
		n, left = len(stale), total-len(stale) // per attempt: fn may run again
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune the intake inbox: %w", err)
	}
	// Recounted, not decremented: other servers sharing the store change
	// the bucket too.
	in.entries = left
	return n, nil
}

// PruneOptions configure RunPruning; zero values are the defaults.
type PruneOptions struct {
	Retention time.Duration // DefaultRetention
	Interval  time.Duration // DefaultPruneInterval
	Metrics   *Metrics      // nil counts nothing
	Logger    *slog.Logger  // nil discards
}

// PruneExpired is one round of RunPruning at now: it prunes the consumed
// entries whose alert was last delivered more than retention (0 is
// DefaultRetention) before now, and updates the metrics.
func (in *Inbox) PruneExpired(now time.Time, retention time.Duration, m *Metrics) (int, error) {
	if retention <= 0 {
		retention = DefaultRetention
	}
	n, err := in.Prune(now.Add(-retention))
	m.inbox(in.Len(), n)
	return n, err
}

// RunPruning prunes the inbox at once and then every interval until ctx
// is done. Its owner starts it beside the webhook:
//
//	go inbox.RunPruning(ctx, intake.PruneOptions{Metrics: m, Logger: log})
func (in *Inbox) RunPruning(ctx context.Context, o PruneOptions) {
	if o.Interval <= 0 {
		o.Interval = DefaultPruneInterval
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	now := time.Now()
	for {
		if n, err := in.PruneExpired(now, o.Retention, o.Metrics); err != nil {
			log.Error("cannot prune the webhook inbox", "err", err)
		} else if n > 0 {
			log.Debug("pruned the webhook inbox", "pruned", n, "entries", in.Len())
		}
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		}
	}
}

// normalize gives an alert its name and fingerprint as the engine would,
// so the inbox keys on what the engine keys on.
func normalize(a remediation.Alert) remediation.Alert {
	if a.Name == "" {
		a.Name = a.Labels["alertname"]
	}
	if a.Fingerprint == "" {
		a.Fingerprint = fingerprint(a.Labels)
	}
	return a
}

func idKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, id) // big-endian sorts by ID
}

// seenKey names an alert instance and status. Start times are kept in UTC
// so deliveries from Alertmanagers in different zones compare equal.
func seenKey(fp string, startsAt time.Time, status string) []byte {
	return []byte(fp + " " + startsAt.UTC().Format(time.RFC3339Nano) + " " + status)
}

func seenValue(id uint64, at time.Time) []byte {
	v := binary.BigEndian.AppendUint64(nil, id)
	return binary.BigEndian.AppendUint64(v, uint64(at.UnixNano()))
}

func seenID(v []byte) uint64 {
	if len(v) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func seenAt(v []byte) time.Time {
	if len(v) < 16 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v[8:])))
}
