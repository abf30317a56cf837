// Package etcdtest gives other packages' tests a real etcd member.
package etcdtest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"caretaker/internal/etcdproc"
	"caretaker/internal/kv"
	"caretaker/internal/needs"
)

// Start starts one etcd member on free loopback ports with its data in
// t.TempDir() and stops it at cleanup, logging the end of its output if the
// test failed. It needs Debian's etcd-server: without it the test is
// skipped, or fails under CARETAKER_REQUIRE_E2E=1 (see package needs).
//
// The member lives until the cleanup, not until t.Context() ends: that
// context is cancelled before the cleanups run, and the cleanups of what
// the test started later (servers shutting down) may still talk to etcd.
func Start(tb testing.TB) *etcdproc.Proc {
	tb.Helper()
	bin, err := etcdproc.Find()
	if err != nil {
		needs.Missing(tb, "%v", err)
		return nil // not reached: Missing ends the test
	}
	p, err := etcdproc.Start(context.Background(), etcdproc.Options{
		Binary: bin,
		Dir:    tb.TempDir(),
		Name:   "test",
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := p.Stop(); err != nil {
			tb.Error(err)
		}
		if tb.Failed() {
			tb.Logf("etcd log (tail):\n%s", p.Log())
		}
	})
	return p
}

// Client starts a member (Start) and returns a client of it, closed at
// cleanup.
func Client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	p := Start(tb)
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{p.Endpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// Stores starts a member and returns a maker of kv stores in it, each under
// a prefix of its own so that tests share nothing, and the client.
func Stores(tb testing.TB) (func(testing.TB) *kv.Etcd, *clientv3.Client) {
	tb.Helper()
	c := Client(tb)
	var n atomic.Int64
	return func(t testing.TB) *kv.Etcd {
		return kv.NewEtcd(c, kv.EtcdOptions{Prefix: fmt.Sprintf("/caretaker-test/%s/%d/", t.Name(), n.Add(1))})
	}, c
}
