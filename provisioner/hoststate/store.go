package hoststate

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"caretaker/internal/who"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Transition is one entry of a host's journal.
type Transition struct {
	From State     `json:"from,omitempty"` // "" when the host was registered
	To   State     `json:"to"`
	At   time.Time `json:"at"`
	// Reason says why; for a failed attempt or a failure, the error.
	Reason  string `json:"reason"`
	Attempt int    `json:"attempt,omitempty"`
	// Commands were recorded here before they were executed.
	Commands []Command `json:"commands,omitempty"`
	// Refused marks a request about the host that was refused (a PXE
	// request of no attempt in flight, a replayed or forged callback):
	// the host stayed in To, and Reason says what and why.
	Refused bool `json:"refused,omitempty"`
	// By is who asked, through the API, for the provision or reprovision
	// that made this transition: the token's name and role, the client's
	// author only as on behalf of, and the request's comment.
	By *who.By `json:"by,omitempty"`
}

// storedHost is a Host as the file has it: with its attempt's nonce,
// which Host's JSON (the API's) leaves out.
type storedHost struct {
	Host
	Nonce string `json:"nonce,omitempty"`
}

var (
	hostsBucket   = []byte("hosts")
	historyBucket = []byte("history") // one nested bucket per host
)

// historyLimit caps each host's journal; a reprovision takes a handful of
// transitions, so this keeps years of them.
const historyLimit = 1000

// lockTimeout bounds the wait for the file lock: a second server on the same
// file should fail at once with a clear error, not hang.
const lockTimeout = 2 * time.Second

type store struct {
	db   *bolt.DB
	path string
}

func openStore(path string) (*store, []Host, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, nil, fmt.Errorf("open host states %s: %w: the file is locked, is another caretaker server using it?", path, err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open host states %s: %w", path, err)
	}
	var hosts []Host
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(historyBucket); err != nil {
			return err
		}
		b, err := tx.CreateBucketIfNotExists(hostsBucket)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			var sh storedHost
			if err := json.Unmarshal(v, &sh); err != nil {
				return fmt.Errorf("host %q: %w", k, err)
			}
			h := sh.Host
			h.Nonce = sh.Nonce
			if !h.State.Valid() {
				return fmt.Errorf("host %q: unknown state %q", k, h.State)
			}
			hosts = append(hosts, h)
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("load host states %s: %w", path, err)
	}
	return &store{db: db, path: path}, hosts, nil
}

func (s *store) close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close host states %s: %w", s.path, err)
	}
	return nil
}

// put stores h and, if t is not nil, appends t to its journal, in one
// transaction that is on disk when put returns.
func (s *store) put(h Host, t *Transition) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		v, err := json.Marshal(storedHost{Host: h, Nonce: h.Nonce})
		if err != nil {
			return err
		}
		if err := tx.Bucket(hostsBucket).Put([]byte(h.Name), v); err != nil {
			return err
		}
		if t == nil {
			return nil
		}
		hb, err := tx.Bucket(historyBucket).CreateBucketIfNotExists([]byte(h.Name))
		if err != nil {
			return err
		}
		seq, err := hb.NextSequence()
		if err != nil {
			return err
		}
		if v, err = json.Marshal(t); err != nil {
			return err
		}
		if err := hb.Put(seqKey(seq), v); err != nil {
			return err
		}
		if seq > historyLimit {
			return hb.Delete(seqKey(seq - historyLimit))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store host %s: %w", h.Name, err)
	}
	return nil
}

func (s *store) history(name string) ([]Transition, error) {
	var ts []Transition
	err := s.db.View(func(tx *bolt.Tx) error {
		hb := tx.Bucket(historyBucket).Bucket([]byte(name))
		if hb == nil {
			return nil
		}
		return hb.ForEach(func(k, v []byte) error {
			var t Transition
			if err := json.Unmarshal(v, &t); err != nil {
				return fmt.Errorf("transition %d: %w", binary.BigEndian.Uint64(k), err)
			}
			ts = append(ts, t)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read journal of host %s: %w", name, err)
	}
	return ts, nil
}

func seqKey(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
