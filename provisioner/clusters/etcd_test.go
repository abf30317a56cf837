package clusters

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"caretaker/internal/etcdproc/etcdtest"
)

// The store and the reconciler on etcd behave as on a bbolt file — the
// reconciler's parallel node updates of one cluster, re-run when another
// overtook them, included; and clusters created at once through several
// Stores on one etcd (several servers) get distinct VNIs.
func TestStoreOnEtcd(t *testing.T) {
	stores, _ := etcdtest.Stores(t)
	newStore := func(t testing.TB, vnis VNIRange) *Store { return storeAt(t, stores(t), vnis) }
	newRig := func(t *testing.T, hosts, parallel int) *rig {
		return newRigOn(t, newStore(t, VNIRange{}), hosts, parallel)
	}
	for _, tt := range []struct {
		name string
		test func(*testing.T, storeMaker)
	}{
		{"create", testStoreCreate},
		{"VNIs", testStoreVNIs},
		{"scale and delete", testStoreScaleAndDelete},
		{"node names unique", testStoreNodeNamesUnique},
		{"base images", testStoreBaseImages},
	} {
		t.Run(tt.name, func(t *testing.T) { tt.test(t, newStore) })
	}
	for _, tt := range []struct {
		name string
		test func(*testing.T, rigMaker)
	}{
		{"reconcile create", testReconcileCreate},
		{"reconcile scale", testReconcileScale},
		{"reconcile delete", testReconcileDelete},
		{"recreate node", testRecreateNode},
	} {
		t.Run(tt.name, func(t *testing.T) { tt.test(t, newRig) })
	}

	t.Run("shared", func(t *testing.T) {
		db := stores(t)
		servers := make([]*Store, 6)
		for i := range servers {
			servers[i] = storeAt(t, db, VNIRange{First: 100, Last: 104})
		}
		var wg sync.WaitGroup
		errs := make([]error, len(servers))
		for i, s := range servers {
			wg.Go(func() {
				_, errs[i] = s.Create(Spec{Name: fmt.Sprintf("c%d", i), Pools: pools(workers(1))})
			})
		}
		wg.Wait()
		created := 0
		for i, err := range errs {
			switch {
			case err == nil:
				created++
			case !errors.Is(err, ErrConflict):
				t.Errorf("server %d: %v, want nil or ErrConflict (no free VNI)", i, err)
			}
		}
		cs, err := servers[0].List()
		if err != nil {
			t.Fatal(err)
		}
		vnis := map[int]string{}
		for _, c := range cs {
			if o, ok := vnis[c.VNI]; ok {
				t.Errorf("clusters %s and %s share VNI %d", o, c.Name, c.VNI)
			}
			vnis[c.VNI] = c.Name
		}
		if created != 5 || len(cs) != 5 {
			t.Errorf("%d created, %d listed; want the 5 VNIs taken", created, len(cs))
		}
	})
}
