package fleet

import (
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"caretaker/internal/config"
	"caretaker/internal/kv"
	"caretaker/provisioner/bmc"
	"caretaker/provisioner/clusters"
	"caretaker/provisioner/inventory"
)

// A node larger than every worker's capacity (under the overcommit
// ratios) is refused at create and scale up with 400, not left to fail
// at placement; hosts whose capacity is unknown and other roles do not
// count.
func TestNodeFitsLargestHost(t *testing.T) {
	db, err := kv.OpenBolt(filepath.Join(t.TempDir(), "provisioner.db"), "test database")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	inv, err := inventory.NewStore(db, func() *inventory.Inventory { return nil })
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range []inventory.Host{
		{Name: "hv-1", Role: inventory.RoleWorker, CPUs: 8, MemoryBytes: 64 << 30},
		{Name: "hv-2", Role: inventory.RoleWorker, CPUs: 16, MemoryBytes: 32 << 30},
		{Name: "hv-3", Role: inventory.RoleWorker}, // capacity not known yet
		{Name: "mon-1", Role: inventory.RoleMonitoring, CPUs: 128, MemoryBytes: 1 << 40},
	} {
		h.MACs = []string{"52:54:00:aa:00:0" + strconv.Itoa(i)}
		h.BMC = bmc.Config{Type: "ipmi", Address: "192.0.2.1" + strconv.Itoa(i), Username: "root", PasswordFile: h.Name + ".pass"}
		if err := inv.Add(h); err != nil {
			t.Fatal(err)
		}
	}
	p := &Provisioner{log: slog.New(slog.DiscardHandler), inv: inv,
		cfg: config.Provisioner{Overcommit: config.Overcommit{CPU: 4, Memory: 1}}}
	store, err := clusters.NewStore(db, clusters.StoreOptions{NodeFits: p.nodeFits})
	if err != nil {
		t.Fatal(err)
	}
	h := clusters.Handler(store, nil, nil, nil)
	post := func(body string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/api/v1/clusters", strings.NewReader(body)))
		return rec.Code, rec.Body.String()
	}
	pool := func(name string, count, vcpus int, memGiB uint64) string {
		return `{"name": "` + name + `", "pools": [{"name": "w", "role": "worker", "count": ` + strconv.Itoa(count) + `, "vcpus": ` + strconv.Itoa(vcpus) +
			`, "memory_bytes": ` + strconv.Itoa(int(memGiB<<30)) + `, "disk_bytes": 1073741824}]}`
	}
	for _, tc := range []struct {
		body string
		code int
		want string
	}{
		{pool("big", 1, 65, 1), 400, `no host has 65 vCPUs: the largest offers 64 (cpu overcommit 4)`},
		{pool("fat", 1, 1, 65), 400, `no host has 66560 MiB of memory: the largest offers 65536 MiB (memory overcommit 1)`},
		{pool("both", 1, 40, 40), 400, `no host has both 40 vCPUs and 40960 MiB of memory`},
		{pool("ok1", 1, 64, 32), 202, `"name": "ok1"`},
		{pool("ok2", 1, 32, 64), 202, `"name": "ok2"`},
		{strings.Replace(pool("later", 1, 1, 1), `]}`, `, {"name": "g", "role": "worker", "count": 0, "vcpus": 65, "memory_bytes": 1073741824, "disk_bytes": 1073741824}]}`, 1),
			202, `"name": "later"`}, // pool g is checked when scaled up
	} {
		code, body := post(tc.body)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %s, want %d with %q", tc.body, code, body, tc.code, tc.want)
		}
	}
	if _, err := store.Get("big"); err == nil {
		t.Error("cluster big stored")
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("PATCH", "/api/v1/clusters/later/pools/g", strings.NewReader(`{"count": 1}`)))
	if want := "scale cluster later pool g to 1: no host has 65 vCPUs: the largest offers 64 (cpu overcommit 4)"; rec.Code != 400 || !strings.Contains(rec.Body.String(), want) {
		t.Errorf("scale up: %d %s, want 400 %q", rec.Code, rec.Body.String(), want)
	}
}
