package clusters

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"caretaker/internal/kv"
	"caretaker/internal/who"
	"caretaker/provisioner/placement"
)

// Errors the store's callers tell apart (the handler maps them to 400,
// 404 and 409).
var (
	ErrInvalid  = errors.New("invalid")
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrConflict = errors.New("conflict")
)

// invalid keeps a validation error's own message while matching ErrInvalid.
type invalid struct{ err error }

func (e invalid) Error() string   { return e.err.Error() }
func (e invalid) Unwrap() []error { return []error{ErrInvalid, e.err} }

const bucket = "clusters"

// VNIRange is the inclusive range VNIs are allocated from.
type VNIRange struct{ First, Last int }

// DefaultVNIs leaves the low VNIs to whatever else the fabric carries.
func DefaultVNIs() VNIRange { return VNIRange{First: 10000, Last: 1<<24 - 1} }

// Validate says what is wrong with the range.
func (r VNIRange) Validate() error {
	if r.First < 1 || r.Last > 1<<24-1 || r.First > r.Last {
		return fmt.Errorf("vni range %d-%d: must lie within 1-%d, first not above last", r.First, r.Last, 1<<24-1)
	}
	return nil
}

// StoreOptions configure a Store; the zero value takes the defaults.
type StoreOptions struct {
	VNIs VNIRange         // zero: DefaultVNIs
	Now  func() time.Time // default time.Now
	// Random supplies node UUIDs and MACs; default crypto/rand. Tests pass
	// a seeded source for stable output.
	Random io.Reader
	// BaseImages are the images a spec's base_image may name; the zero
	// value allows none but the default ("").
	BaseImages BaseImages
	// NodeFits, when set, says why a pool's node fits on no host, or
	// nil when some host could take it. It is asked at create and at a
	// scale up, outside any transaction, so that a node larger than every
	// host is refused (400) instead of failing at placement.
	NodeFits func(Pool) error
}

// Store keeps clusters in a bucket of a kv.Store (a bbolt file or etcd) as
// JSON, one key per cluster name. It is safe for concurrent use: every
// change is a read-modify-write in one transaction. It caches nothing of
// the store, so two Stores on one etcd agree.
type Store struct {
	db     kv.Store
	vnis   VNIRange
	now    func() time.Time
	ids    *idSource
	images BaseImages
	fits   func(Pool) error
}

// NewStore keeps clusters in store, creating the bucket if needed (in a
// bbolt file; in etcd a bucket exists with its first key). The store
// stays the caller's to close.
func NewStore(store kv.Store, o StoreOptions) (*Store, error) {
	if o.VNIs == (VNIRange{}) {
		o.VNIs = DefaultVNIs()
	}
	if err := o.VNIs.Validate(); err != nil {
		return nil, err
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Random == nil {
		o.Random = rand.Reader
	}
	err := store.Update(func(tx kv.Tx) error {
		// A bucket's first use reports a failed creation.
		_, err := tx.Bucket(bucket).Get([]byte{0})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create clusters bucket: %w", err)
	}
	return &Store{db: store, vnis: o.VNIs, now: o.Now, ids: &idSource{r: o.Random}, images: o.BaseImages,
		fits: o.NodeFits}, nil
}

// Create stores a new cluster with the lowest free VNI and its nodes
// pending. Its base_image must be "" (the default) or a declared one.
func (s *Store) Create(spec Spec) (Cluster, error) {
	return s.CreateBy(spec, nil)
}

// CreateBy is Create recording by (may be nil) as who created the
// cluster; its time is the store's.
func (s *Store) CreateBy(spec Spec, by *who.By) (Cluster, error) {
	if err := s.checkNew(spec); err != nil {
		return Cluster{}, fmt.Errorf("create cluster: %w", err)
	}
	var c Cluster
	err := s.db.Update(func(tx kv.Tx) error {
		b := tx.Bucket(bucket)
		vni, err := s.vniFor(b, spec)
		if err != nil {
			return err
		}
		now := s.now().UTC()
		c = Cluster{Spec: spec, VNI: vni, Created: now, CreatedBy: stamp(by, now)}
		return s.put(b, &c)
	})
	if err != nil {
		return Cluster{}, fmt.Errorf("create cluster %s: %w", spec.Name, err)
	}
	return c, nil
}

// CheckNew says why spec could not be created now, as CreateBy would
// (ErrInvalid, ErrExists, ErrConflict), without creating it.
func (s *Store) CheckNew(spec Spec) error {
	if err := s.checkNew(spec); err != nil {
		return err
	}
	return s.db.View(func(tx kv.Tx) error {
		_, err := s.vniFor(tx.Bucket(bucket), spec)
		return err
	})
}

// checkNew validates spec and asks NodeFits about each pool's node.
func (s *Store) checkNew(spec Spec) error {
	if err := s.check(spec); err != nil {
		return invalid{err}
	}
	var unfit []error
	for i, p := range spec.Pools {
		if p.Count == 0 {
			continue // checked when scaled up
		}
		if err := s.nodeFits(p); err != nil {
			unfit = append(unfit, fmt.Errorf("pools[%d]: %w", i, err))
		}
	}
	if len(unfit) > 0 {
		return invalid{errors.Join(unfit...)}
	}
	return nil
}

// vniFor returns the first VNI no stored cluster uses, or why spec's name
// or its nodes' names are already taken, or that no VNI is free.
func (s *Store) vniFor(b kv.Bucket, spec Spec) (int, error) {
	if v, err := b.Get([]byte(spec.Name)); err != nil {
		return 0, err
	} else if v != nil {
		return 0, fmt.Errorf("cluster %s: %w", spec.Name, ErrExists)
	}
	used := map[int]bool{}
	var others []Cluster
	err := b.ForEach(func(_, v []byte) error {
		var o Cluster
		if err := json.Unmarshal(v, &o); err != nil {
			return err
		}
		used[o.VNI] = true
		others = append(others, o)
		return nil
	})
	if err != nil {
		return 0, err
	}
	if err := nameClash(spec, others); err != nil {
		return 0, err
	}
	for v := s.vnis.First; v <= s.vnis.Last; v++ {
		if !used[v] {
			return v, nil
		}
	}
	return 0, fmt.Errorf("no free VNI in %d-%d: %w", s.vnis.First, s.vnis.Last, ErrConflict)
}

// check validates spec and its base image against the declared ones,
// every problem at once.
func (s *Store) check(spec Spec) error {
	err := spec.Validate()
	if _, ierr := s.images.Resolve(spec.BaseImage); ierr != nil {
		err = errors.Join(err, ierr)
	}
	return err
}

// nodeFits asks NodeFits, if set, about the pool's node.
func (s *Store) nodeFits(p Pool) error {
	if s.fits == nil {
		return nil
	}
	return s.fits(p)
}

// nameClash refuses a spec whose node names could be another cluster's.
// A node is named <cluster>-<pool>-<index>, and the index has no '-', so
// two nodes' names are equal exactly when their stems <cluster>-<pool>
// are: cluster "a" with pool "b-c" and cluster "a-b" with pool "c" would
// both name their first node a-b-c-0. Each pool's stem must therefore
// differ from every stem of the other clusters — their pools', and their
// nodes' (a record may hold nodes of a name scheme no pool gives). Pools
// cannot be added to a cluster afterwards, so a scale cannot clash.
func nameClash(spec Spec, others []Cluster) error {
	owner := map[string]string{}
	for _, o := range others {
		for _, p := range o.Pools {
			owner[o.Name+"-"+p.Name] = fmt.Sprintf("cluster %q pool %q", o.Name, p.Name)
		}
		for _, n := range o.Nodes {
			if stem, ok := nodeStem(n.Name); ok {
				if _, known := owner[stem]; !known {
					owner[stem] = fmt.Sprintf("cluster %q (node %s)", o.Name, n.Name)
				}
			}
		}
	}
	var errs []error
	for i, p := range spec.Pools {
		stem := spec.Name + "-" + p.Name
		if who, ok := owner[stem]; ok {
			errs = append(errs, fmt.Errorf("pools[%d].name %q: its nodes would be named %s-<n>, as are the nodes of %s: node names are unique across clusters, choose another cluster or pool name", i, p.Name, stem, who))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrConflict, errors.Join(errs...))
	}
	return nil
}

// nodeStem is a node name without its "-<index>".
func nodeStem(name string) (string, bool) {
	i := strings.LastIndexByte(name, '-')
	if i <= 0 || i == len(name)-1 {
		return "", false
	}
	for _, c := range name[i+1:] {
		if c < '0' || c > '9' {
			return "", false
		}
	}
	return name[:i], true
}

// put syncs c's nodes with its spec, derives its phase and writes it.
func (s *Store) put(b kv.Bucket, c *Cluster) error {
	if err := c.sync(s.ids); err != nil {
		return err
	}
	c.Phase = c.phase()
	c.Updated = s.now().UTC()
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return b.Put([]byte(c.Name), data)
}

// Get returns the named cluster.
func (s *Store) Get(name string) (Cluster, error) {
	var c Cluster
	err := s.db.View(func(tx kv.Tx) error {
		c = Cluster{}
		v, err := tx.Bucket(bucket).Get([]byte(name))
		if err != nil {
			return err
		}
		if v == nil {
			return ErrNotFound
		}
		return json.Unmarshal(v, &c)
	})
	if err != nil {
		return Cluster{}, fmt.Errorf("cluster %s: %w", name, err)
	}
	return c, nil
}

// List returns every cluster, by name.
func (s *Store) List() ([]Cluster, error) {
	var cs []Cluster
	err := s.db.View(func(tx kv.Tx) error {
		cs = nil
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			var c Cluster
			if err := json.Unmarshal(v, &c); err != nil {
				return fmt.Errorf("cluster %s: %w", k, err)
			}
			cs = append(cs, c)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list clusters: %w", err)
	}
	return cs, nil
}

// Delete marks the cluster and its nodes deleting; the reconciler deletes
// the nodes, then the overlays, then the record. Deleting a cluster twice
// is not an error.
func (s *Store) Delete(name string) (Cluster, error) {
	return s.DeleteBy(name, nil)
}

// DeleteBy is Delete recording by (may be nil) as who last changed the
// cluster.
func (s *Store) DeleteBy(name string, by *who.By) (Cluster, error) {
	c, err := s.update(name, func(c *Cluster) error {
		c.Phase = PhaseDeleting
		if by != nil {
			c.ChangedBy = stamp(by, s.now().UTC())
		}
		return nil
	})
	if err != nil {
		return Cluster{}, fmt.Errorf("delete cluster %s: %w", name, err)
	}
	return c, nil
}

// Scale sets a pool's node count. Nodes added get the lowest free indexes;
// the reconciler deletes the surplus, highest index first.
func (s *Store) Scale(name, pool string, count int) (Cluster, error) {
	return s.ScaleBy(name, pool, count, nil)
}

// ScaleBy is Scale recording by (may be nil) as who last changed the
// cluster.
func (s *Store) ScaleBy(name, pool string, count int, by *who.By) (Cluster, error) {
	// A pool's node size never changes, so it is checked before the
	// transaction: NodeFits may read other stores of the same database.
	if c, err := s.Get(name); err == nil {
		if p, ok := c.pool(pool); ok && count > p.Count {
			if err := s.nodeFits(p); err != nil {
				return Cluster{}, fmt.Errorf("scale cluster %s pool %s to %d: %w", name, pool, count, invalid{err})
			}
		}
	}
	c, err := s.update(name, func(c *Cluster) error {
		if c.Phase == PhaseDeleting {
			return fmt.Errorf("the cluster is being deleted: %w", ErrConflict)
		}
		i := slices.IndexFunc(c.Pools, func(p Pool) bool { return p.Name == pool })
		if i < 0 {
			return fmt.Errorf("pool %s: %w", pool, ErrNotFound)
		}
		grow := count > c.Pools[i].Count
		c.Pools = slices.Clone(c.Pools)
		c.Pools[i].Count = count
		err := c.Spec.Validate()
		if grow {
			// new nodes need a base image still declared; fewer nodes
			// never do
			err = s.check(c.Spec)
		}
		if err != nil {
			return invalid{err}
		}
		if by != nil {
			c.ChangedBy = stamp(by, s.now().UTC())
		}
		return nil
	})
	if err != nil {
		return Cluster{}, fmt.Errorf("scale cluster %s pool %s to %d: %w", name, pool, count, err)
	}
	return c, nil
}

// stamp returns a copy of by (nil stays nil) at the store's time now.
func stamp(by *who.By, now time.Time) *who.By {
	if by == nil {
		return nil
	}
	b := *by
	b.At = now
	return &b
}

// update applies f to the stored cluster in one transaction; f's error
// aborts it. f may run more than once (kv.Store.Update), each time on the
// cluster as then stored: it must only change the cluster, or set
// variables that each run sets anew.
func (s *Store) update(name string, f func(*Cluster) error) (Cluster, error) {
	var c Cluster
	err := s.db.Update(func(tx kv.Tx) error {
		c = Cluster{} // not what an overtaken run decoded
		b := tx.Bucket(bucket)
		v, err := b.Get([]byte(name))
		if err != nil {
			return err
		}
		if v == nil {
			return ErrNotFound
		}
		if err := json.Unmarshal(v, &c); err != nil {
			return err
		}
		if err := f(&c); err != nil {
			return err
		}
		return s.put(b, &c)
	})
	return c, err
}

// remove deletes the record of a deleting cluster, freeing its VNI.
func (s *Store) remove(name string) error {
	return s.db.Update(func(tx kv.Tx) error {
		return tx.Bucket(bucket).Delete([]byte(name))
	})
}

// Placed sums, per host, the vCPUs and memory of the nodes placed there,
// whatever their state: what a Hosts implementation adds to a host's Used
// so that nodes placed but not yet running are counted.
func (s *Store) Placed() (map[string]placement.Usage, error) {
	cs, err := s.List()
	if err != nil {
		return nil, err
	}
	used := map[string]placement.Usage{}
	for _, c := range cs {
		for _, n := range c.Nodes {
			p, ok := c.pool(n.Pool)
			if n.Host == "" || !ok {
				continue
			}
			u := used[n.Host]
			u.VCPUs += p.VCPUs
			u.MemoryBytes += p.MemoryBytes
			used[n.Host] = u
		}
	}
	return used, nil
}

// idSource makes node UUIDs and MACs.
type idSource struct {
	mu sync.Mutex
	r  io.Reader
}

// newNode returns a random version 4 UUID and a MAC under QEMU's prefix
// 52:54:00 that is not in macs (the cluster's own MACs: each cluster is its
// own layer-2 domain), and adds the MAC to macs.
func (g *idSource) newNode(macs map[string]bool) (uuid, mac string, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var b [16]byte
	if _, err := io.ReadFull(g.r, b[:]); err != nil {
		return "", "", fmt.Errorf("make node UUID: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	uuid = fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	for range 100 {
		var m [3]byte
		if _, err := io.ReadFull(g.r, m[:]); err != nil {
			return "", "", fmt.Errorf("make node MAC: %w", err)
		}
		mac = fmt.Sprintf("52:54:00:%02x:%02x:%02x", m[0], m[1], m[2])
		if !macs[mac] {
			macs[mac] = true
			return uuid, mac, nil
		}
	}
	return "", "", errors.New("make node MAC: no unused address after 100 tries")
}
