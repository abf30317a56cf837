package clusters

import (
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"caretaker/internal/kv"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func openDB(t testing.TB, path string) *kv.Bolt {
	t.Helper()
	db, err := kv.OpenBolt(path, "test database")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// storeMaker makes an empty Store: newStore in a bbolt file, or one in
// etcd (TestStoreOnEtcd).
type storeMaker func(t testing.TB, vnis VNIRange) *Store

func newStore(t testing.TB, vnis VNIRange) *Store {
	t.Helper()
	return storeAt(t, openDB(t, filepath.Join(t.TempDir(), "clusters.db")), vnis)
}

func storeAt(t testing.TB, db kv.Store, vnis VNIRange) *Store {
	t.Helper()
	s, err := NewStore(db, StoreOptions{VNIs: vnis, Now: func() time.Time { return t0 }, Random: mrand.NewChaCha8([32]byte{1}),
		BaseImages: testImages})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testImages are the base images the tests' stores allow.
var testImages = BaseImages{Default: "base.qcow2", Declared: []string{"debian-12.qcow2", "rocky-9.qcow2"}}

func names(ns []NodeState) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.Name+"="+n.State)
	}
	return out
}

func TestStoreCreate(t *testing.T) { testStoreCreate(t, newStore) }

func testStoreCreate(t *testing.T, newStore storeMaker) {
	s := newStore(t, VNIRange{})
	c, err := s.Create(Spec{Name: "lab", Pools: pools(masters(1), workers(2))})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"lab-masters-0=pending", "lab-workers-0=pending", "lab-workers-1=pending"}
	if got := names(c.Nodes); !slices.Equal(got, want) {
		t.Errorf("nodes %v, want %v", got, want)
	}
	if c.VNI != 10000 || c.Phase != PhaseCreating || !c.Created.Equal(t0) {
		t.Errorf("vni %d, phase %s, created %v", c.VNI, c.Phase, c.Created)
	}
	uuidRE := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	macRE := regexp.MustCompile(`^52:54:00(:[0-9a-f]{2}){3}$`)
	seen := map[string]bool{}
	for _, n := range c.Nodes {
		if !uuidRE.MatchString(n.UUID) || !macRE.MatchString(n.MAC) || seen[n.UUID] || seen[n.MAC] {
			t.Errorf("node %s: uuid %q mac %q: malformed or repeated", n.Name, n.UUID, n.MAC)
		}
		seen[n.UUID], seen[n.MAC] = true, true
	}
	got, err := s.Get("lab")
	if err != nil || !slices.Equal(names(got.Nodes), want) || got.VNI != c.VNI {
		t.Errorf("Get = %+v, %v", got, err)
	}

	_, err = s.Create(Spec{Name: "lab", Pools: pools(workers(1))})
	if !errors.Is(err, ErrExists) {
		t.Errorf("second create: %v, want ErrExists", err)
	}
	_, err = s.Create(Spec{Name: "Lab", Pools: pools(workers(1))})
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("invalid create: %v, want ErrInvalid", err)
	}
	if _, err := s.Get("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(nope): %v, want ErrNotFound", err)
	}
}

func TestStoreVNIs(t *testing.T) { testStoreVNIs(t, newStore) }

func testStoreVNIs(t *testing.T, newStore storeMaker) {
	s := newStore(t, VNIRange{First: 100, Last: 102})
	create := func(name string) (int, error) {
		c, err := s.Create(Spec{Name: name, Pools: pools(workers(1))})
		return c.VNI, err
	}
	for i, name := range []string{"a", "b", "c"} {
		if v, err := create(name); err != nil || v != 100+i {
			t.Fatalf("create %s: vni %d, %v; want %d", name, v, err, 100+i)
		}
	}
	if _, err := create("d"); !errors.Is(err, ErrConflict) || err.Error() != "create cluster d: no free VNI in 100-102: conflict" {
		t.Errorf("create in a full range: %v", err)
	}
	// A deleting cluster keeps its VNI until its record is gone.
	if _, err := s.Delete("b"); err != nil {
		t.Fatal(err)
	}
	if _, err := create("d"); !errors.Is(err, ErrConflict) {
		t.Errorf("create while b is deleting: %v, want ErrConflict", err)
	}
	if err := s.remove("b"); err != nil {
		t.Fatal(err)
	}
	if v, err := create("d"); err != nil || v != 101 {
		t.Errorf("create after b is gone: vni %d, %v; want 101", v, err)
	}
	if _, err := NewStore(openDB(t, filepath.Join(t.TempDir(), "x.db")), StoreOptions{VNIs: VNIRange{First: 5, Last: 1 << 24}}); err == nil {
		t.Error("NewStore took a range beyond 24 bits")
	}
}

func TestStoreScaleAndDelete(t *testing.T) { testStoreScaleAndDelete(t, newStore) }

func testStoreScaleAndDelete(t *testing.T, newStore storeMaker) {
	s := newStore(t, VNIRange{})
	if _, err := s.Create(Spec{Name: "lab", Pools: pools(masters(1), workers(3))}); err != nil {
		t.Fatal(err)
	}
	c, err := s.Scale("lab", "workers", 1)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"lab-masters-0=pending", "lab-workers-0=pending", "lab-workers-1=deleting", "lab-workers-2=deleting"}
	if got := names(c.Nodes); !slices.Equal(got, want) {
		t.Errorf("after scale down: %v, want %v", got, want)
	}
	before := c.node("lab-workers-0").UUID
	c, err = s.Scale("lab", "workers", 4)
	if err != nil {
		t.Fatal(err)
	}
	// Nodes still being deleted stay so; the reconciler drops them and the
	// next sync brings them back under the same names.
	want = []string{"lab-masters-0=pending", "lab-workers-0=pending", "lab-workers-1=deleting", "lab-workers-2=deleting", "lab-workers-3=pending"}
	if got := names(c.Nodes); !slices.Equal(got, want) {
		t.Errorf("after scale up: %v, want %v", got, want)
	}
	if c.node("lab-workers-0").UUID != before {
		t.Error("scaling changed an existing node's UUID")
	}

	for _, tt := range []struct {
		cluster, pool string
		count         int
		want          error
		msg           string
	}{
		{"nope", "workers", 1, ErrNotFound, "scale cluster nope pool workers to 1: not found"},
		{"lab", "gpus", 1, ErrNotFound, "scale cluster lab pool gpus to 1: pool gpus: not found"},
		{"lab", "workers", -1, ErrInvalid, "scale cluster lab pool workers to -1: pools[1].count: -1, must not be negative"},
		{"lab", "workers", 1001, ErrInvalid, "pools[1].count: 1001, must be at most 1000"},
	} {
		_, err := s.Scale(tt.cluster, tt.pool, tt.count)
		if !errors.Is(err, tt.want) || !regexp.MustCompile(regexp.QuoteMeta(tt.msg)).MatchString(err.Error()) {
			t.Errorf("Scale(%s, %s, %d): %v, want %v with %q", tt.cluster, tt.pool, tt.count, err, tt.want, tt.msg)
		}
	}
	if _, err := s.Scale("lab", "masters", 0); err != nil {
		t.Errorf("scale masters to 0 with workers left: %v", err)
	}
	if _, err := s.Scale("lab", "workers", 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("scale the last nodes away: %v, want ErrInvalid", err)
	}

	c, err = s.Delete("lab")
	if err != nil || c.Phase != PhaseDeleting {
		t.Fatalf("Delete: phase %s, %v", c.Phase, err)
	}
	for _, n := range c.Nodes {
		if n.State != NodeDeleting {
			t.Errorf("node %s: %s after delete, want deleting", n.Name, n.State)
		}
	}
	if _, err := s.Delete("lab"); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	if _, err := s.Scale("lab", "workers", 2); !errors.Is(err, ErrConflict) {
		t.Errorf("scale a deleting cluster: %v, want ErrConflict", err)
	}
	if _, err := s.Delete("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Delete(nope): %v, want ErrNotFound", err)
	}
}

func TestStoreDurable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clusters.db")
	db := openDB(t, path)
	s := storeAt(t, db, VNIRange{})
	a, err := s.Create(Spec{Name: "a", Pools: pools(workers(2))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(Spec{Name: "b", Pools: pools(workers(1))}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s = storeAt(t, openDB(t, path), VNIRange{})
	cs, err := s.List()
	if err != nil || len(cs) != 2 || cs[0].Name != "a" || cs[1].Name != "b" {
		t.Fatalf("List after reopen: %+v, %v", cs, err)
	}
	if cs[0].Nodes[1].UUID != a.Nodes[1].UUID || cs[1].VNI != 10001 {
		t.Errorf("reopened store lost state: %+v", cs)
	}
	placed, err := s.Placed()
	if err != nil || len(placed) != 0 {
		t.Errorf("Placed with nothing placed: %v, %v", placed, err)
	}
}

// TestStoreNodeNamesUnique tries every shape of node-name clash between
// two clusters: the second is refused (409, naming the other cluster's
// pool), whichever comes first; shapes that only look alike are accepted,
// and then no scale of either makes two nodes share a name.
func TestStoreNodeNamesUnique(t *testing.T) { testStoreNodeNamesUnique(t, newStore) }

func testStoreNodeNamesUnique(t *testing.T, newStore storeMaker) {
	pool := func(name string, count int) Pool {
		p := workers(count)
		p.Name = name
		return p
	}
	tests := []struct {
		first, second Spec
		wantErr       string // "" when the second is accepted
	}{
		{Spec{Name: "a", Pools: pools(pool("b-c", 1))}, Spec{Name: "a-b", Pools: pools(pool("c", 1))},
			`pools[0].name "c": its nodes would be named a-b-c-<n>, as are the nodes of cluster "a" pool "b-c"`},
		{Spec{Name: "a-b", Pools: pools(pool("c", 1))}, Spec{Name: "a", Pools: pools(pool("b-c", 1))},
			`pools[0].name "b-c": its nodes would be named a-b-c-<n>, as are the nodes of cluster "a-b" pool "c"`},
		{Spec{Name: "a", Pools: pools(pool("b-c-d", 1))}, Spec{Name: "a-b-c", Pools: pools(pool("d", 1))},
			`as are the nodes of cluster "a" pool "b-c-d"`},
		{Spec{Name: "a-b", Pools: pools(pool("c-d", 1))}, Spec{Name: "a", Pools: pools(pool("x", 1), pool("b-c-d", 1))},
			`pools[1].name "b-c-d": its nodes would be named a-b-c-d-<n>, as are the nodes of cluster "a-b" pool "c-d"`},
		{Spec{Name: "a", Pools: pools(pool("b-c", 1), pool("w", 0))}, Spec{Name: "a-w", Pools: pools(pool("x", 1))}, ""},
		// A pool with no nodes yet clashes too: a scale would make them.
		{Spec{Name: "a", Pools: pools(pool("b-c", 0), pool("w", 1))}, Spec{Name: "a-b", Pools: pools(pool("c", 1))},
			`as are the nodes of cluster "a" pool "b-c"`},
		// Alike, not the same: a-b-<n> and a-b-c-<n> never meet.
		{Spec{Name: "a", Pools: pools(pool("b", 1))}, Spec{Name: "a-b", Pools: pools(pool("c", 1))}, ""},
		{Spec{Name: "a", Pools: pools(pool("b1", 1))}, Spec{Name: "a-b", Pools: pools(pool("c1", 1))}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.first.Name+"/"+tt.first.Pools[0].Name+"+"+tt.second.Name, func(t *testing.T) {
			s := newStore(t, VNIRange{})
			if _, err := s.Create(tt.first); err != nil {
				t.Fatal(err)
			}
			_, err := s.Create(tt.second)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("second Create: %v, want a conflict with %q", err, tt.wantErr)
				}
				if _, err := s.Get(tt.second.Name); !errors.Is(err, ErrNotFound) {
					t.Errorf("the refused cluster was stored: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("second Create: %v", err)
			}
			for _, sp := range []Spec{tt.first, tt.second} {
				for _, p := range sp.Pools {
					if _, err := s.Scale(sp.Name, p.Name, 12); err != nil {
						t.Fatal(err)
					}
				}
			}
			cs, err := s.List()
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]string{}
			for _, c := range cs {
				for _, n := range c.Nodes {
					if o, dup := seen[n.Name]; dup {
						t.Errorf("node %s of %s and of %s", n.Name, c.Name, o)
					}
					seen[n.Name] = c.Name
				}
			}
		})
	}
}

// A cluster's base_image is the default or a declared image, never another
// volume of the pool (another cluster's node disk) nor a path out of it;
// a refused spec stores nothing.
func TestStoreBaseImages(t *testing.T) { testStoreBaseImages(t, newStore) }

func testStoreBaseImages(t *testing.T, newStore storeMaker) {
	s := newStore(t, VNIRange{})
	if _, err := s.Create(Spec{Name: "c1", Pools: pools(workers(1))}); err != nil {
		t.Fatal(err)
	}
	const allowed = "allowed: base.qcow2 (the default), debian-12.qcow2, rocky-9.qcow2, or none for the default"
	for _, image := range []string{"../../etc/shadow", "c1-workers-0.qcow2", "c1-workers-0-cidata.iso", "ubuntu-24.04.qcow2", "/var/lib/libvirt/images/base.qcow2"} {
		_, err := s.Create(Spec{Name: "c2", Pools: pools(workers(1)), BaseImage: image})
		want := fmt.Sprintf("create cluster: base_image %q: not a declared base image (provisioner.base_images); %s", image, allowed)
		if !errors.Is(err, ErrInvalid) || err.Error() != want {
			t.Errorf("base_image %q: %v, want %s", image, err, want)
		}
		if _, err := s.Get("c2"); !errors.Is(err, ErrNotFound) {
			t.Errorf("base_image %q: cluster stored (%v)", image, err)
		}
	}
	// every problem at once
	_, err := s.Create(Spec{Name: "C2", Pools: pools(workers(1)), BaseImage: "x.qcow2"})
	if err == nil || !strings.Contains(err.Error(), `name "C2"`) || !strings.Contains(err.Error(), `base_image "x.qcow2"`) {
		t.Errorf("bad name and image: %v, want both named", err)
	}
	for name, image := range map[string]string{"d1": "", "d2": "base.qcow2", "d3": "rocky-9.qcow2"} {
		c, err := s.Create(Spec{Name: name, Pools: pools(workers(1)), BaseImage: image})
		if err != nil {
			t.Fatalf("base_image %q: %v", image, err)
		}
		if c.BaseImage != image {
			t.Errorf("base_image %q stored as %q", image, c.BaseImage)
		}
	}
	// The zero value allows only the default.
	z, err := NewStore(openDB(t, filepath.Join(t.TempDir(), "z.db")), StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := z.Create(Spec{Name: "c1", Pools: pools(workers(1)), BaseImage: "debian-12.qcow2"}); !errors.Is(err, ErrInvalid) ||
		!strings.Contains(err.Error(), "declares none") {
		t.Errorf("zero BaseImages took debian-12.qcow2: %v", err)
	}
	if _, err := z.Create(Spec{Name: "c1", Pools: pools(workers(1))}); err != nil {
		t.Errorf("zero BaseImages refused the default: %v", err)
	}
}

// A cluster whose image is no longer declared may shrink, not grow.
func TestStoreScaleUndeclaredImage(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "clusters.db"))
	s := storeAt(t, db, VNIRange{})
	if _, err := s.Create(Spec{Name: "c1", Pools: pools(workers(2)), BaseImage: "rocky-9.qcow2"}); err != nil {
		t.Fatal(err)
	}
	narrower, err := NewStore(db, StoreOptions{BaseImages: BaseImages{Default: "base.qcow2"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := narrower.Scale("c1", "workers", 3); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `base_image "rocky-9.qcow2": not a declared base image`) {
		t.Errorf("scale up with an undeclared image: %v, want invalid", err)
	}
	if _, err := narrower.Scale("c1", "workers", 1); err != nil {
		t.Errorf("scale down with an undeclared image: %v", err)
	}
}
