package inventory

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"testing"

	"caretaker/internal/etcdproc/etcdtest"
	"caretaker/internal/kv"
)

// The store's behaviour on etcd is its behaviour in a bbolt file; and two
// Stores on one etcd prefix (two servers) see one inventory, where of two
// hosts added at once with the same MAC exactly one is taken.
func TestStoreOnEtcd(t *testing.T) {
	stores, client := etcdtest.Stores(t)
	newStore := func(tb testing.TB, file *Inventory) *Store {
		tb.Helper()
		s, err := NewStore(stores(tb), func() *Inventory { return file })
		if err != nil {
			tb.Fatal(err)
		}
		return s
	}
	for _, tt := range []struct {
		name string
		test func(*testing.T, storeMaker)
	}{
		{"add", testStoreAdd},
		{"get and remove", testStoreGetRemove},
		{"all", testStoreAll},
		{"check file", testCheckFile},
		{"removed bounded", testStoreRemovedBounded},
	} {
		t.Run(tt.name, func(t *testing.T) { tt.test(t, newStore) })
	}

	t.Run("shared", func(t *testing.T) {
		prefix := "/caretaker-test/" + t.Name() + "/"
		db := kv.NewEtcd(client, kv.EtcdOptions{Prefix: prefix})
		servers := make([]*Store, 4)
		for i := range servers {
			s, err := NewStore(db, nil)
			if err != nil {
				t.Fatal(err)
			}
			servers[i] = s
		}
		if err := servers[0].Add(validHost("kvm-c1", "52:54:00:cc:00:01")); err != nil {
			t.Fatal(err)
		}
		if h, err := servers[1].Get("kvm-c1"); err != nil || h.MACs[0] != "52:54:00:cc:00:01" {
			t.Fatalf("another Store's Get = %+v, %v", h, err)
		}
		// The bucket and key as kv lays them out in etcd.
		resp, err := client.Get(context.Background(), prefix+"data/inventory_hosts/"+hex.EncodeToString([]byte("kvm-c1")))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("etcd key of kvm-c1: %v, %v", resp, err)
		}

		var wg sync.WaitGroup
		errs := make([]error, len(servers))
		for i, s := range servers {
			wg.Go(func() { errs[i] = s.Add(validHost(fmt.Sprintf("kvm-d%d", i), "52:54:00:dd:00:01")) })
		}
		wg.Wait()
		added := 0
		for i, err := range errs {
			switch {
			case err == nil:
				added++
			case !errors.Is(err, ErrConflict):
				t.Errorf("server %d: %v, want nil or ErrConflict", i, err)
			}
		}
		hosts, err := servers[3].List()
		if err != nil {
			t.Fatal(err)
		}
		if added != 1 || len(hosts) != 2 {
			t.Errorf("%d of %d concurrent adds of one MAC succeeded, %d hosts stored; want 1 and 2", added, len(servers), len(hosts))
		}

		if err := servers[2].Remove("kvm-c1"); err != nil {
			t.Fatal(err)
		}
		if recs, err := servers[0].Removed(); err != nil || len(recs) != 1 || recs[0].Name != "kvm-c1" {
			t.Errorf("Removed on another Store = %+v, %v", recs, err)
		}
	})
}
