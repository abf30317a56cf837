package leader_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"caretaker/internal/etcdproc/etcdtest"
	"caretaker/internal/kv"
	"caretaker/internal/leader"
)

// server is one elector running as a server would.
type server struct {
	e     *leader.Elector
	stop  context.CancelFunc
	done  chan struct{}
	terms chan *leader.Term
}

func start(t *testing.T, c *clientv3.Client, prefix, name string) *server {
	t.Helper()
	e, err := leader.New(leader.Options{Client: c, Prefix: prefix, Name: name, Address: "http://" + name + ":9300",
		TTL: 2 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &server{e: e, stop: stop, done: make(chan struct{}), terms: make(chan *leader.Term, 10)}
	go func() {
		defer close(s.done)
		e.Run(ctx, func(ctx context.Context, term *leader.Term) {
			s.terms <- term
			<-ctx.Done()
		})
	}()
	t.Cleanup(func() { stop(); <-s.done })
	return s
}

// One of two servers leads; when it stops, the other leads in a later
// term, and the first one's fence no longer lets a write through.
func TestHandover(t *testing.T) {
	c := etcdtest.Client(t)
	const prefix = "/handover/"
	a := start(t, c, prefix, "s1")
	first := <-a.terms
	b := start(t, c, prefix, "s2")
	if !a.e.Valid(first.Epoch) {
		t.Fatal("the leader's own term is not valid")
	}
	store := kv.NewEtcd(c, kv.EtcdOptions{Prefix: prefix})
	write := func(fence func() (string, int64, bool)) error {
		return store.Fenced(fence).Update(func(tx kv.Tx) error { return tx.Bucket("b").Put([]byte("k"), []byte("v")) })
	}
	if err := write(a.e.Fence(first)); err != nil {
		t.Fatalf("the leader's write: %v", err)
	}
	servers := waitServers(t, b.e, 2)
	if !servers[0].Leader || servers[0].Name != "s1" || servers[0].Epoch != first.Epoch || servers[1].Leader {
		t.Errorf("servers = %+v, want s1 leading at epoch %d", servers, first.Epoch)
	}

	a.stop() // resigns on the way out
	<-a.done
	select {
	case <-first.Done:
	default:
		t.Error("the stopped leader's term is not done")
	}
	second := <-b.terms
	if second.Epoch <= first.Epoch {
		t.Errorf("second epoch %d is not above the first %d", second.Epoch, first.Epoch)
	}
	if a.e.Valid(first.Epoch) {
		t.Error("the old term is still valid")
	}
	if err := write(a.e.Fence(first)); !errors.Is(err, kv.ErrNotLeader) {
		t.Errorf("the old leader's write: %v, want ErrNotLeader", err)
	}
	// Even a server that believes it leads is stopped by etcd: the old
	// key is gone.
	stale := func() (string, int64, bool) { return first.Key, first.Epoch, true }
	if err := write(stale); !errors.Is(err, kv.ErrNotLeader) {
		t.Errorf("a stale leader's write: %v, want ErrNotLeader", err)
	}
	if err := write(b.e.Fence(second)); err != nil {
		t.Errorf("the new leader's write: %v", err)
	}
	servers = waitServers(t, b.e, 2)
	for _, s := range servers {
		if s.Name == "s1" && (s.Healthy || s.Leader) {
			t.Errorf("stopped server listed as %+v", s)
		}
	}
}

// waitServers polls until the elector has read a leader and lists n
// servers.
func waitServers(t *testing.T, e *leader.Elector, n int) []leader.Server {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ss, err := e.Servers(context.Background())
		_, ok := e.Leader()
		if err == nil && ok && len(ss) == n {
			return ss
		}
		if time.Now().After(deadline) {
			t.Fatalf("servers = %+v, %v (leader known %v); want %d", ss, err, ok, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestTTLMustBeWholeSeconds(t *testing.T) {
	for _, ttl := range []time.Duration{time.Second, 2500 * time.Millisecond} {
		if _, err := leader.New(leader.Options{TTL: ttl}); err == nil {
			t.Errorf("TTL %s accepted", ttl)
		}
	}
}
