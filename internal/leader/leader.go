// Package leader elects one caretaker server among several through an etcd
// election, and says whether this one may act. A lease alone is not mutual
// exclusion — a paused or partitioned old leader can still believe it leads
// — so the election's revision is handed out as the leader's epoch, a
// fencing token: the shared store compares the election key in the same
// etcd transaction as every write (kv.EtcdOptions.Fence) and the agents
// refuse a lower epoch than the highest they have seen.
package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Options configure an election.
type Options struct {
	Client *clientv3.Client
	// Prefix is the etcd key prefix of the cluster's state ("/caretaker/").
	Prefix string
	// Name and Address are this server's: its unique name and the URL of
	// its API, where the others forward writes.
	Name, Address string
	// TTL is the lease's: how long a dead leader keeps the lead. Whole
	// seconds, at least 2.
	TTL        time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Term is one stretch of leadership of this server.
type Term struct {
	Key   string // the election key, compared by every fenced write
	Epoch int64  // its create revision: higher for every new term
	// Done is closed when the term ends: the lease was lost or expired
	// here, or the server is stopping.
	Done <-chan struct{}
}

// Server is one server as the election sees it.
type Server struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Leader  bool   `json:"leader"`
	Epoch   int64  `json:"epoch"`
	Healthy bool   `json:"healthy"`
}

// Elector campaigns for this server and watches who leads.
type Elector struct {
	o       Options
	log     *slog.Logger
	metrics metrics

	mu sync.Mutex
	// term is the current term while this server leads.
	term *Term
	// validUntil is when the lead ends unless etcd renews the lease: the
	// last renewal plus two thirds of the TTL, so a server that was paused
	// or cut off stops acting before etcd gives the lead away.
	validUntil time.Time
	// leader is who etcd says leads, as last read; ok when read.
	leader   Server
	leaderOK bool
}

// New returns an elector; Run campaigns.
func New(o Options) (*Elector, error) {
	if o.TTL < 2*time.Second || o.TTL%time.Second != 0 {
		return nil, fmt.Errorf("cluster.lease_ttl: %s must be whole seconds, at least 2s", o.TTL)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	e := &Elector{o: o, log: o.Logger}
	var err error
	if e.metrics, err = newMetrics(o.Registerer); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *Elector) electionPrefix() string { return e.o.Prefix + "election/" }
func (e *Elector) memberKey(name string) string {
	return e.o.Prefix + "members/" + name
}
func (e *Elector) aliveKey(name string) string { return e.o.Prefix + "alive/" + name }

// Valid reports whether this server leads in the term of epoch, now: the
// fence of every write and every action.
func (e *Elector) Valid(epoch int64) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.term != nil && e.term.Epoch == epoch && e.o.Now().Before(e.validUntil)
}

// Fence is a kv fence for the term: the store refuses to write once the
// term is over, here (Valid) or in etcd (the key's create revision).
func (e *Elector) Fence(t *Term) func() (string, int64, bool) {
	return func() (string, int64, bool) { return t.Key, t.Epoch, e.Valid(t.Epoch) }
}

// Leader returns who leads as last read from etcd, and whether one does.
func (e *Elector) Leader() (Server, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leader, e.leaderOK
}

// Run campaigns until ctx ends, calling lead for every term this server
// wins; lead runs the term's work and must return once t.Done is closed.
// On the way out the server resigns, so another leads at once rather than
// after the lease's TTL.
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context, t *Term)) {
	var wg sync.WaitGroup
	wg.Go(func() { e.watch(ctx) })
	defer wg.Wait()
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		err := e.campaign(ctx, lead)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			e.log.Warn("not campaigning for the lead: etcd fails; this server does not act", "err", err, "retry_in", backoff)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, e.o.TTL)
	}
}

// campaign holds one lease: it registers this server, waits to lead, and
// leads until the lease is lost.
func (e *Elector) campaign(ctx context.Context, lead func(context.Context, *Term)) error {
	c := e.o.Client
	ttl := int64(e.o.TTL / time.Second)
	gctx, cancel := context.WithTimeout(ctx, e.o.TTL)
	grant, err := c.Grant(gctx, ttl)
	cancel()
	if err != nil {
		return fmt.Errorf("grant a lease: %w", err)
	}
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	renewals, err := c.KeepAlive(lctx, grant.ID)
	if err != nil {
		return fmt.Errorf("keep the lease alive: %w", err)
	}
	lost := make(chan struct{})
	go func() {
		defer close(lost)
		for r := range renewals {
			e.renewed(time.Duration(r.TTL) * time.Second)
		}
	}()
	e.renewed(e.o.TTL)
	sess, err := concurrency.NewSession(c, concurrency.WithLease(grant.ID), concurrency.WithContext(lctx))
	if err != nil {
		return fmt.Errorf("open an etcd session: %w", err)
	}
	defer e.revoke(grant.ID)
	if err := e.register(lctx, grant.ID); err != nil {
		return err
	}
	el := concurrency.NewElection(sess, e.electionPrefix())
	won := make(chan error, 1)
	go func() { won <- el.Campaign(lctx, e.value()) }()
	select {
	case err := <-won:
		if err != nil {
			return fmt.Errorf("campaign: %w", err)
		}
	case <-lost:
		stop()
		<-won
		return errors.New("the lease was lost while waiting to lead")
	}
	done := make(chan struct{})
	t := &Term{Key: el.Key(), Epoch: el.Rev(), Done: done}
	e.begin(t)
	e.log.Info("this server leads", "epoch", t.Epoch)
	var wg sync.WaitGroup
	tctx, endTerm := context.WithCancel(ctx)
	wg.Go(func() { lead(tctx, t) })
	// The term ends when etcd stops renewing the lease or when its last
	// renewal is too old to trust, whichever comes first.
	tick := time.NewTicker(e.o.TTL / 10)
	defer tick.Stop()
	reason := "the server stops"
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-lost:
			reason = "etcd no longer renews the lease"
			break loop
		case <-tick.C:
			if !e.Valid(t.Epoch) {
				reason = "the lease was not renewed in time"
				break loop
			}
		}
	}
	e.end(t)
	close(done)
	endTerm()
	wg.Wait()
	if ctx.Err() != nil {
		// Handing over at once; the lease's revoke (deferred) does the rest.
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = el.Resign(rctx)
		cancel()
		e.log.Info("this server no longer leads: it resigned", "epoch", t.Epoch)
		return nil
	}
	e.log.Warn("this server no longer leads and stops acting; it keeps monitoring", "epoch", t.Epoch, "reason", reason)
	return nil
}

// revoke drops the lease, so the keys it holds go at once.
func (e *Elector) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = e.o.Client.Revoke(ctx, id)
}

func (e *Elector) value() string {
	v, _ := json.Marshal(Server{Name: e.o.Name, Address: e.o.Address})
	return string(v)
}

// register records this server among the cluster's members (for good) and
// as alive (with the lease).
func (e *Elector) register(ctx context.Context, lease clientv3.LeaseID) error {
	ctx, cancel := context.WithTimeout(ctx, e.o.TTL)
	defer cancel()
	v := e.value()
	_, err := e.o.Client.Txn(ctx).Then(
		clientv3.OpPut(e.memberKey(e.o.Name), v),
		clientv3.OpPut(e.aliveKey(e.o.Name), v, clientv3.WithLease(lease)),
	).Commit()
	if err != nil {
		return fmt.Errorf("register this server: %w", err)
	}
	return nil
}

func (e *Elector) renewed(ttl time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.validUntil = e.o.Now().Add(ttl * 2 / 3)
}

func (e *Elector) begin(t *Term) {
	e.mu.Lock()
	e.term = t
	// Known at once, not at the next read: requests to this server must
	// not be sent to the leader it replaces.
	e.leader = Server{Name: e.o.Name, Address: e.o.Address, Leader: true, Epoch: t.Epoch, Healthy: true}
	e.leaderOK = true
	e.mu.Unlock()
	e.metrics.leader.Set(1)
	e.metrics.terms.Inc()
}

func (e *Elector) end(t *Term) {
	e.mu.Lock()
	if e.term == t {
		e.term = nil
	}
	if e.leader.Name == e.o.Name {
		e.leaderOK = false // who leads next is read from etcd
	}
	e.mu.Unlock()
	e.metrics.leader.Set(0)
}

// watchEvery is how often every server reads who leads: the figures of
// the CaretakerNoLeader and CaretakerEtcdUnreachable alerts.
const watchEvery = time.Second

func (e *Elector) watch(ctx context.Context) {
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	for {
		e.readLeader(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// current reads who leads from etcd: the oldest key of the election.
func (e *Elector) current(ctx context.Context) (Server, bool, error) {
	resp, err := e.o.Client.Get(ctx, e.electionPrefix(), clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		return Server{}, false, err
	}
	var s Server
	_ = json.Unmarshal(resp.Kvs[0].Value, &s)
	s.Leader, s.Epoch, s.Healthy = true, resp.Kvs[0].CreateRevision, true
	return s, true, nil
}

func (e *Elector) readLeader(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, watchEvery)
	defer cancel()
	s, ok, err := e.current(rctx)
	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil && e.leaderOK {
			e.log.Warn("etcd cannot be read: who leads is unknown", "err", err)
		}
		e.leaderOK = false
		e.metrics.etcdUp.Set(0)
		e.metrics.leaderKnown.Set(0)
		return
	}
	e.metrics.etcdUp.Set(1)
	if !ok {
		e.leaderOK = false
		e.metrics.leaderKnown.Set(0)
		return
	}
	e.leader, e.leaderOK = s, true
	e.metrics.leaderKnown.Set(1)
	e.metrics.epoch.Set(float64(s.Epoch))
}

// Servers lists every server that ever joined, with who leads and which
// hold a live lease.
func (e *Elector) Servers(ctx context.Context) ([]Server, error) {
	ctx, cancel := context.WithTimeout(ctx, e.o.TTL)
	defer cancel()
	c := e.o.Client
	members, err := c.Get(ctx, e.o.Prefix+"members/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd: read the servers: %w", err)
	}
	alive, err := c.Get(ctx, e.o.Prefix+"alive/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("etcd: read the servers: %w", err)
	}
	live := map[string]bool{}
	for _, kv := range alive.Kvs {
		live[string(kv.Key[len(e.o.Prefix+"alive/"):])] = true
	}
	lead, ok, err := e.current(ctx)
	if err != nil {
		return nil, fmt.Errorf("etcd: read who leads: %w", err)
	}
	out := make([]Server, 0, len(members.Kvs))
	for _, kv := range members.Kvs {
		var s Server
		if err := json.Unmarshal(kv.Value, &s); err != nil {
			continue
		}
		s.Healthy = live[s.Name]
		if ok && lead.Name == s.Name {
			s.Leader, s.Epoch = true, lead.Epoch
		}
		out = append(out, s)
	}
	return out, nil
}
