// Package etcdtest gives other packages' tests a real etcd member.
package etcdtest

import (
	"context"
	"testing"

	"caretaker/internal/etcdproc"
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
