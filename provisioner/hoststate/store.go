package hoststate

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"caretaker/internal/kv"
	"caretaker/internal/who"
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

const (
	hostsBucket   = "hosts"
	historyBucket = "history" // one nested bucket per host
)

// historyLimit caps each host's journal; a reprovision takes a handful of
// transitions, so this keeps years of them.
const historyLimit = 1000

type store struct {
	db    kv.Store
	where string // the file, or "in etcd", for errors
	owned bool   // opened here, so closed here
}

// openStore loads the hosts from db; with db nil, it opens the bbolt file
// at path (and closes it in close).
func openStore(db kv.Store, path string) (*store, []Host, error) {
	s := &store{db: db, where: path}
	if db == nil {
		b, err := kv.OpenBolt(path, "host states")
		if err != nil {
			return nil, nil, err
		}
		s.db, s.owned = b, true
	} else if path == "" {
		s.where = "in the shared store"
	}
	var hosts []Host
	err := s.db.Update(func(tx kv.Tx) error {
		hosts = nil // fn may run again
		// In a bbolt file both buckets are created here, as they always
		// were; a bucket's first use reports a failed creation.
		if _, err := tx.Bucket(historyBucket).Get([]byte{0}); err != nil {
			return err
		}
		return tx.Bucket(hostsBucket).ForEach(func(k, v []byte) error {
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
		if s.owned {
			s.db.Close()
		}
		return nil, nil, fmt.Errorf("load host states %s: %w", s.where, err)
	}
	return s, hosts, nil
}

func (s *store) close() error {
	if !s.owned {
		return nil
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close host states %s: %w", s.where, err)
	}
	return nil
}

// put stores h and, if t is not nil, appends t to its journal, in one
// transaction that is durable when put returns.
func (s *store) put(h Host, t *Transition) error {
	hv, err := json.Marshal(storedHost{Host: h, Nonce: h.Nonce})
	if err != nil {
		return fmt.Errorf("store host %s: %w", h.Name, err)
	}
	var tv []byte
	if t != nil {
		if tv, err = json.Marshal(t); err != nil {
			return fmt.Errorf("store host %s: %w", h.Name, err)
		}
	}
	err = s.db.Update(func(tx kv.Tx) error {
		if err := tx.Bucket(hostsBucket).Put([]byte(h.Name), hv); err != nil {
			return err
		}
		if t == nil {
			return nil
		}
		hb := tx.Bucket(historyBucket, h.Name)
		seq, err := hb.NextSequence()
		if err != nil {
			return err
		}
		if err := hb.Put(seqKey(seq), tv); err != nil {
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
	err := s.db.View(func(tx kv.Tx) error {
		ts = nil
		return tx.Bucket(historyBucket, name).ForEach(func(k, v []byte) error {
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
