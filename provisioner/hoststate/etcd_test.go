package hoststate

import (
	"context"
	"encoding/hex"
	"slices"
	"testing"

	"caretaker/internal/etcdproc/etcdtest"
	"caretaker/internal/kv"
)

// The Machine on etcd behaves as on a bbolt file, reopening included; and
// a Machine opened later on the same store (a new leader) takes over the
// hosts, their journals and their attempts in flight.
func TestMachineOnEtcd(t *testing.T) {
	stores, client := etcdtest.Stores(t)
	newRig := func(t *testing.T, cfg Config) *rig { return newRigOn(t, cfg, stores(t)) }
	for _, tt := range []struct {
		name string
		test func(*testing.T, rigMaker)
	}{
		{"provision to ready", testMachineProvisionToReady},
		{"reprovision", testMachineReprovision},
		{"timeouts and retries", testMachineTimeoutsAndRetries},
		{"command failures", testMachineCommandFailures},
		{"refusals", testMachineRefusals},
		{"reopen", testMachineReopen},
		{"reprovision by", testMachineReprovisionBy},
	} {
		t.Run(tt.name, func(t *testing.T) { tt.test(t, newRig) })
	}

	t.Run("new leader", func(t *testing.T) {
		prefix := "/caretaker-test/" + t.Name() + "/"
		store := kv.NewEtcd(client, kv.EtcdOptions{Prefix: prefix})
		old := newRigOn(t, Config{}, store)
		old.must(old.m.Register("h1", "aa:bb:cc:dd:ee:01"))
		old.must(old.m.Reprovision(context.Background(), "h1"))
		old.wantCalls("move-guests h1", "set-pxe-boot-once h1", "power-cycle h1")
		before := old.host("h1")

		next := newRigOn(t, Config{}, store)
		if got := next.host("h1"); got != before {
			t.Fatalf("the new leader's h1:\n got %+v\nwant %+v", got, before)
		}
		next.bootOverPXE("aa:bb:cc:dd:ee:01")
		next.wantState("h1", Ready, 1)
		want := []string{"→registered", "registered→powering-on", "powering-on→installing", "installing→ready"}
		if got := next.journal("h1"); !slices.Equal(got, want) {
			t.Errorf("journal %q, want %q", got, want)
		}
		// The journal is a bucket nested under "history", as in bbolt.
		resp, err := client.Get(context.Background(), prefix+"data/history/h1/"+hex.EncodeToString(seqKey(4)))
		if err != nil || len(resp.Kvs) != 1 {
			t.Errorf("etcd key of h1's 4th transition: %v, %v", resp, err)
		}
	})
}
