package intake

import (
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"caretaker/internal/etcdproc/etcdtest"
	"caretaker/internal/kv"
	"caretaker/remediation"
)

// Two servers, each with its own client and Inbox on one etcd prefix,
// record deliveries at once: every entry gets its own ID, both see all
// of them pending, and a re-delivery to the other server is a duplicate.
func TestEtcdTwoServers(t *testing.T) {
	p := etcdtest.Start(t)
	prefix := fmt.Sprintf("/test/%s/", t.Name())
	var servers [2]*Inbox
	for i := range servers {
		// Each server has its own client, as two processes would.
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{p.Endpoint()}, DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if servers[i], err = New(kv.NewEtcd(c, kv.EtcdOptions{Prefix: prefix})); err != nil {
			t.Fatal(err)
		}
	}
	const perServer = 10
	var mu sync.Mutex
	ids := map[uint64]string{}
	var wg sync.WaitGroup
	for i, in := range servers {
		for n := range perServer {
			wg.Go(func() {
				host := fmt.Sprintf("kvm-%d-%d", i, n)
				rc, err := in.Record([]remediation.Alert{alert(host, "firing", t0)})
				if err != nil {
					t.Error(err)
					return
				}
				if len(rc.Recorded) != 1 || rc.Duplicates != 0 {
					t.Errorf("%s: %+v, want recorded once", host, rc)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				id := rc.Recorded[0].ID
				if other, dup := ids[id]; dup {
					t.Errorf("ID %d given to %s and %s", id, other, host)
				}
				ids[id] = host
			})
		}
	}
	wg.Wait()
	for i, in := range servers {
		if got := summary(t, in); len(got) != 2*perServer {
			t.Errorf("server %d sees %d pending entries, want %d", i, len(got), 2*perServer)
		}
	}
	rc, err := servers[1].Record([]remediation.Alert{alert("kvm-0-0", "firing", t0)})
	if err != nil || rc.Duplicates != 1 || len(rc.Recorded) != 0 {
		t.Errorf("re-delivery to the other server = %+v, %v; want a duplicate", rc, err)
	}
	// Each server counted only its own entries; a prune recounts them all.
	if n, err := servers[0].Prune(t0.Add(-time.Hour)); err != nil || n != 0 || servers[0].Len() != 2*perServer {
		t.Errorf("Prune = %d, %v, then Len %d; want 0 pruned, %d entries", n, err, servers[0].Len(), 2*perServer)
	}
}
