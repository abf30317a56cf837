package pxe

import (
	"errors"
	"sync"
)

// fakeAttempts is a table of attempts in flight, for the handler's tests;
// the state machine's own behaviour with the handler is tested in
// provisioner/hoststate.
type fakeAttempts struct {
	mu        sync.Mutex
	attempts  map[string]*Attempt // by MAC
	served    []Attempt
	completed chan Attempt
	refused   []string
}

func newFakeAttempts(as ...Attempt) *fakeAttempts {
	f := &fakeAttempts{attempts: map[string]*Attempt{}, completed: make(chan Attempt, 8)}
	for _, a := range as {
		f.attempts[a.MAC] = &a
	}
	return f
}

func (f *fakeAttempts) Attempt(mac string) (Attempt, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.attempts[mac]
	if !ok {
		return Attempt{}, false
	}
	return *a, true
}

func (f *fakeAttempts) current(a Attempt) (*Attempt, error) {
	cur, ok := f.attempts[a.MAC]
	if !ok || cur.Nonce != a.Nonce || cur.Host != a.Host || cur.Number != a.Number {
		return nil, errors.New("not the attempt in flight")
	}
	return cur, nil
}

func (f *fakeAttempts) ScriptServed(a Attempt) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur, err := f.current(a)
	if err != nil {
		return err
	}
	if cur.ScriptServed {
		return errors.New("script served already")
	}
	cur.ScriptServed = true
	f.served = append(f.served, *cur)
	return nil
}

func (f *fakeAttempts) Completed(a Attempt) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur, err := f.current(a)
	if err != nil {
		return err
	}
	if !cur.ScriptServed {
		return errors.New("script not served")
	}
	delete(f.attempts, a.MAC)
	f.completed <- *cur
	return nil
}

func (f *fakeAttempts) Refused(mac, why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refused = append(f.refused, mac+" "+why)
}
