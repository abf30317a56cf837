package clusters

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"caretaker/internal/overlayspec"
	"caretaker/provisioner/placement"
)

// Hosts says which hosts may take nodes.
type Hosts interface {
	// ReadyHosts returns the worker hosts with their capacity and usage.
	// Used must count the nodes the store has placed on a host (see
	// Store.Placed), not only running domains, or two clusters placed at
	// once could overbook it. A host missing from the list, or listed not
	// ready, cordoned or not a worker, is not ready.
	ReadyHosts(ctx context.Context) ([]placement.Host, error)
}

// Nodes creates and deletes nodes' domains on hosts.
type Nodes interface {
	// CreateNode defines and starts n's domain on host, replacing a domain
	// of the same name, cluster and UUID left by an earlier attempt or a
	// broken guest, and returns the domain's UUID. A domain of that name
	// of another cluster or UUID is never replaced: an error.
	CreateNode(ctx context.Context, host string, n NodeSpec) (uuid string, err error)
	// DeleteNode removes the node's domain and its disk; a missing one is
	// not an error. A domain of that name of another cluster or UUID is
	// never deleted: an error.
	DeleteNode(ctx context.Context, host string, n NodeID) error
	// NodeRunning says whether the domain with this UUID runs on host.
	NodeRunning(ctx context.Context, host, uuid string) (bool, error)
}

// Overlays makes hosts' VXLAN overlays (through the agents, by netlink).
type Overlays interface {
	EnsureOverlay(ctx context.Context, host string, o overlayspec.Overlay) error
	// RemoveOverlay removes the cluster's bridge and VXLAN device; missing
	// ones are not an error.
	RemoveOverlay(ctx context.Context, host, cluster string) error
}

// NodeID names one node's domain as the agents check it: the name, the
// cluster in its metadata, and its UUID.
type NodeID struct {
	Cluster, Name, UUID string
}

// NodeSpec is what a host needs to create a node's domain.
type NodeSpec struct {
	Cluster     string
	Name        string
	Pool        string // the node pool, not a storage pool
	Role        string
	VCPUs       int
	MemoryBytes uint64
	DiskBytes   uint64
	Bridge      string // br-<cluster>
	MAC         string
	BaseImage   string
	UUID        string
}

// Config is the reconciler's configuration.
type Config struct {
	// Underlay is the production interface the VXLAN devices send on.
	Underlay string
	// Port and MTU go into every overlay; 0 takes overlayspec's defaults.
	Port, MTU int
	// Ratios are the overcommit ratios for placement; zero: DefaultRatios.
	Ratios placement.Ratios
	// Parallel bounds the node and overlay operations in flight, across
	// clusters, so a large cluster does not swamp libvirtd; default 8.
	Parallel int
}

// Options are a Reconciler's dependencies; all are required but Logger.
type Options struct {
	Store    *Store
	Hosts    Hosts
	Nodes    Nodes
	Overlays Overlays
	// VTEP returns a host's underlay address, nil if unknown.
	VTEP   func(host string) net.IP
	Config Config
	Logger *slog.Logger
}

// Reconciler makes hosts match the stored clusters. Reconcile is
// level-triggered: it compares the whole desired state with what it
// recorded and does only what is missing, so it may run any number of
// times, and after a crash at any point.
type Reconciler struct {
	o   Options
	log *slog.Logger
	sem chan struct{}

	mu     sync.Mutex
	locks  map[string]*sync.Mutex // one per cluster: a cluster is reconciled by one caller at a time
	active map[string]*bool       // clusters Run is reconciling; true: once more when done
	place  sync.Mutex             // placements, so two clusters never take the same room
	kick   chan struct{}
	wg     sync.WaitGroup
}

// New checks the options and returns a reconciler.
func New(o Options) (*Reconciler, error) {
	switch {
	case o.Store == nil || o.Hosts == nil || o.Nodes == nil || o.Overlays == nil || o.VTEP == nil:
		return nil, errors.New("clusters reconciler: Store, Hosts, Nodes, Overlays and VTEP are required")
	case o.Config.Parallel < 0:
		return nil, fmt.Errorf("clusters reconciler: parallel %d: must not be negative", o.Config.Parallel)
	}
	if o.Config.Ratios == (placement.Ratios{}) {
		o.Config.Ratios = placement.DefaultRatios()
	}
	if err := o.Config.Ratios.Validate(); err != nil {
		return nil, fmt.Errorf("clusters reconciler: %w", err)
	}
	probe := overlayspec.Overlay{Cluster: "x", Device: Device("x"), Bridge: Bridge("x"), Underlay: o.Config.Underlay, Port: o.Config.Port, MTU: o.Config.MTU}
	if err := probe.ValidateRepair(); err != nil {
		return nil, fmt.Errorf("clusters reconciler: overlay settings: %w", err)
	}
	if o.Config.Parallel == 0 {
		o.Config.Parallel = 8
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{
		o: o, log: o.Logger, sem: make(chan struct{}, o.Config.Parallel),
		locks: map[string]*sync.Mutex{}, active: map[string]*bool{}, kick: make(chan struct{}, 1),
	}, nil
}

// Notify asks Run to reconcile every cluster soon; it never blocks. The
// API handler calls it after every change.
func (r *Reconciler) Notify() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run reconciles every cluster at once, then every `every` and after each
// Notify, until ctx ends. Clusters are reconciled concurrently, each by
// one goroutine at a time; a trigger during a cluster's pass runs it once
// more afterwards.
func (r *Reconciler) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		r.reconcileAll(ctx)
		select {
		case <-ctx.Done():
			r.wg.Wait()
			return
		case <-t.C:
		case <-r.kick:
		}
	}
}

func (r *Reconciler) reconcileAll(ctx context.Context) {
	cs, err := r.o.Store.List()
	if err != nil {
		r.log.Error("reconcile clusters", "err", err)
		return
	}
	for _, c := range cs {
		r.start(ctx, c.Name)
	}
}

// start reconciles the cluster in a goroutine unless one already is; then
// that one goes round again.
func (r *Reconciler) start(ctx context.Context, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if again, ok := r.active[name]; ok {
		*again = true
		return
	}
	again := new(bool)
	r.active[name] = again
	r.wg.Go(func() {
		for {
			if err := r.Reconcile(ctx, name); err != nil {
				r.log.Warn("reconcile cluster", "cluster", name, "err", err)
			}
			r.mu.Lock()
			if !*again || ctx.Err() != nil {
				delete(r.active, name)
				r.mu.Unlock()
				return
			}
			*again = false
			r.mu.Unlock()
		}
	})
}

func (r *Reconciler) lock(name string) func() {
	r.mu.Lock()
	l := r.locks[name]
	if l == nil {
		l = new(sync.Mutex)
		r.locks[name] = l
	}
	r.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// Reconcile brings one cluster towards its desired state: deletes surplus
// nodes (highest index first), places unplaced nodes, ensures the overlay
// on every host holding a node and removes it where none is left, checks
// nodes an interrupted pass left creating, and creates missing nodes in
// parallel; for a deleting cluster it deletes the nodes, then the
// overlays, then the record. Each step is recorded as it completes. The
// error joins what failed; the nodes' states say the same per node.
func (r *Reconciler) Reconcile(ctx context.Context, name string) error {
	defer r.lock(name)()
	return r.reconcile(ctx, name)
}

func (r *Reconciler) reconcile(ctx context.Context, name string) error {
	c, err := r.o.Store.Get(name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	if c.Phase == PhaseDeleting {
		return r.teardown(ctx, c)
	}
	var errs []error
	c, err = r.deleteSurplus(ctx, c)
	errs = append(errs, err)
	c, err = r.placeNodes(ctx, c)
	errs = append(errs, err)
	c, ok, err := r.ensureOverlays(ctx, c)
	errs = append(errs, err)
	errs = append(errs, r.createNodes(ctx, c, ok))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reconcile cluster %s: %w", name, err)
	}
	return nil
}

// setNode records a change to one node; other changes to the cluster made
// meanwhile (a scale, another node's progress) are kept.
func (r *Reconciler) setNode(cluster, node string, f func(*NodeState)) error {
	_, err := r.o.Store.update(cluster, func(c *Cluster) error {
		if n := c.node(node); n != nil {
			f(n)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record node %s: %w", node, err)
	}
	return nil
}

func (r *Reconciler) dropNode(cluster, node string) error {
	_, err := r.o.Store.update(cluster, func(c *Cluster) error {
		c.Nodes = slices.DeleteFunc(c.Nodes, func(n NodeState) bool { return n.Name == node })
		return nil
	})
	if err != nil {
		return fmt.Errorf("record node %s deleted: %w", node, err)
	}
	return nil
}

// each runs f for 0..n-1 concurrently, at most Parallel at a time across
// the reconciler, and returns the errors joined in index order.
func (r *Reconciler) each(ctx context.Context, n int, f func(i int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			select {
			case r.sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			defer func() { <-r.sem }()
			errs[i] = f(i)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// deleteSurplus deletes the nodes a scale-down left over, one at a time,
// highest index first, so the lowest-numbered (often the first
// bootstrapped) nodes stay longest.
func (r *Reconciler) deleteSurplus(ctx context.Context, c Cluster) (Cluster, error) {
	var surplus []NodeState
	for _, n := range c.Nodes {
		if n.State == NodeDeleting {
			surplus = append(surplus, n)
		}
	}
	if len(surplus) == 0 {
		return c, nil
	}
	slices.SortStableFunc(surplus, func(a, b NodeState) int { return c.index(b) - c.index(a) })
	var errs []error
	for _, n := range surplus {
		if err := r.deleteNode(ctx, c.Name, n); err != nil {
			errs = append(errs, err)
		}
	}
	c, err := r.o.Store.Get(c.Name)
	return c, errors.Join(append(errs, err)...)
}

func (r *Reconciler) deleteNode(ctx context.Context, cluster string, n NodeState) error {
	if n.Host != "" {
		if err := r.o.Nodes.DeleteNode(ctx, n.Host, NodeID{Cluster: cluster, Name: n.Name, UUID: n.UUID}); err != nil {
			err = fmt.Errorf("delete node %s on %s: %w", n.Name, n.Host, err)
			return errors.Join(err, r.setNode(cluster, n.Name, func(s *NodeState) { s.Error = err.Error() }))
		}
	}
	return r.dropNode(cluster, n.Name)
}

// placeNodes gives every pending or failed node without a host one, all
// at once; when no plan fits them all, they are marked failed with
// placement's reason.
func (r *Reconciler) placeNodes(ctx context.Context, c Cluster) (Cluster, error) {
	var todo []placement.Node
	for _, n := range c.Nodes {
		if n.Host == "" && (n.State == NodePending || n.State == NodeFailed) {
			p, _ := c.pool(n.Pool)
			todo = append(todo, placement.Node{Cluster: c.Name, Name: n.Name, VCPUs: p.VCPUs, MemoryBytes: p.MemoryBytes})
		}
	}
	if len(todo) == 0 {
		return c, nil
	}
	r.place.Lock()
	defer r.place.Unlock()
	hosts, err := r.o.Hosts.ReadyHosts(ctx)
	var plan placement.Plan
	if err == nil {
		holding := c.members()
		for i := range hosts {
			if slices.Contains(holding, hosts[i].Name) {
				cs := maps.Clone(hosts[i].Clusters)
				if cs == nil {
					cs = map[string]bool{}
				}
				cs[c.Name] = true
				hosts[i].Clusters = cs
			}
		}
		plan, err = placement.Place(hosts, todo, r.o.Config.Ratios)
	} else {
		err = fmt.Errorf("list ready hosts: %w", err)
	}
	c, uerr := r.o.Store.update(c.Name, func(c *Cluster) error {
		for _, t := range todo {
			n := c.node(t.Name)
			if n == nil || n.Host != "" || n.State == NodeDeleting {
				continue // changed meanwhile
			}
			if err != nil {
				n.State, n.Error = NodeFailed, err.Error()
				continue
			}
			n.Host, n.State, n.Error = plan[t.Name], NodePending, ""
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("place %d nodes: %w", len(todo), err)
	}
	if uerr != nil {
		uerr = fmt.Errorf("record placement: %w", uerr)
	}
	return c, errors.Join(err, uerr)
}

// desired is host's overlay for the cluster whose nodes are on members:
// the other members are its peers, each named, with its VTEP.
func (r *Reconciler) desired(c Cluster, host string, members []string) (overlayspec.Overlay, error) {
	d := overlayspec.Overlay{
		Cluster: c.Name, Device: Device(c.Name), Bridge: Bridge(c.Name), VNI: c.VNI,
		Underlay: r.o.Config.Underlay, Port: r.o.Config.Port, MTU: r.o.Config.MTU,
	}
	if ip := r.o.VTEP(host); ip != nil {
		d.Local = ip.String()
	}
	var missing []string
	for _, m := range members {
		if m == host {
			continue
		}
		ip := r.o.VTEP(m)
		if ip == nil {
			missing = append(missing, m)
			continue
		}
		d.Peers = append(d.Peers, overlayspec.Peer{Host: m, Address: ip.String()})
	}
	if len(missing) > 0 {
		return d, fmt.Errorf("no VTEP address known for %v", missing)
	}
	return d, nil
}

// ensureOverlays ensures the overlay on every member host whose recorded
// overlay differs from the desired one (all of them when membership
// changes) and removes it from hosts no longer holding a node. ok says on
// which hosts the overlay is in place; the others' errors are returned.
func (r *Reconciler) ensureOverlays(ctx context.Context, c Cluster) (Cluster, map[string]error, error) {
	members := c.members()
	type job struct {
		host   string
		remove bool
		d      overlayspec.Overlay
	}
	var jobs []job
	status := map[string]error{}
	var errs []error
	for _, h := range members {
		d, err := r.desired(c, h, members)
		if err != nil {
			err = fmt.Errorf("overlay on %s: %w", h, err)
			status[h] = err
			errs = append(errs, err)
			continue
		}
		if have, ok := c.Overlays[h]; ok {
			have.Cluster = c.Name // not in the record's JSON: the record is the cluster's
			if have.Equal(d) {
				status[h] = nil
				continue
			}
		}
		jobs = append(jobs, job{host: h, d: d})
	}
	for _, h := range slices.Sorted(maps.Keys(c.Overlays)) {
		if !slices.Contains(members, h) {
			jobs = append(jobs, job{host: h, remove: true})
		}
	}
	if len(jobs) == 0 {
		return c, status, errors.Join(errs...)
	}
	var mu sync.Mutex
	done := map[string]bool{}
	err := r.each(ctx, len(jobs), func(i int) error {
		j := jobs[i]
		var err error
		if j.remove {
			if err = r.o.Overlays.RemoveOverlay(ctx, j.host, c.Name); err != nil {
				err = fmt.Errorf("remove overlay on %s: %w", j.host, err)
			}
		} else if err = r.o.Overlays.EnsureOverlay(ctx, j.host, j.d); err != nil {
			err = fmt.Errorf("ensure overlay on %s: %w", j.host, err)
		}
		mu.Lock()
		defer mu.Unlock()
		done[j.host] = err == nil
		if !j.remove {
			status[j.host] = err
		}
		return err
	})
	errs = append(errs, err)
	c, err = r.o.Store.update(c.Name, func(c *Cluster) error {
		for _, j := range jobs {
			switch {
			case !done[j.host]:
			case j.remove:
				delete(c.Overlays, j.host)
			default:
				if c.Overlays == nil {
					c.Overlays = HostOverlays{}
				}
				c.Overlays[j.host] = j.d
			}
		}
		return nil
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("record overlays: %w", err))
	}
	return c, status, errors.Join(errs...)
}

// createNodes creates every placed node that is not running, in parallel,
// on hosts whose overlay is in place. A node an interrupted pass left
// creating is asked after first, so it is not created twice.
func (r *Reconciler) createNodes(ctx context.Context, c Cluster, overlay map[string]error) error {
	var todo []NodeState
	for _, n := range c.Nodes {
		if n.Host != "" && (n.State == NodePending || n.State == NodeFailed || n.State == NodeCreating) {
			todo = append(todo, n)
		}
	}
	return r.each(ctx, len(todo), func(i int) error {
		n := todo[i]
		if err, ok := overlay[n.Host]; !ok || err != nil {
			if err == nil {
				err = fmt.Errorf("overlay on %s not in place", n.Host)
			}
			msg := "waiting for the overlay: " + err.Error()
			return r.setNode(c.Name, n.Name, func(s *NodeState) { s.Error = msg })
		}
		if n.State == NodeCreating {
			running, err := r.o.Nodes.NodeRunning(ctx, n.Host, n.UUID)
			if err != nil {
				err = fmt.Errorf("check node %s on %s: %w", n.Name, n.Host, err)
				return errors.Join(err, r.setNode(c.Name, n.Name, func(s *NodeState) { s.Error = err.Error() }))
			}
			if running {
				return r.setNode(c.Name, n.Name, func(s *NodeState) {
					if s.State == NodeCreating {
						s.State, s.Error = NodeRunning, ""
					}
				})
			}
		}
		return r.createNode(ctx, c, n)
	})
}

func (r *Reconciler) createNode(ctx context.Context, c Cluster, n NodeState) error {
	err := r.setNode(c.Name, n.Name, func(s *NodeState) {
		if s.Host == n.Host && s.State != NodeDeleting {
			s.State, s.Error = NodeCreating, ""
		}
	})
	if err != nil {
		return err
	}
	p, _ := c.pool(n.Pool)
	spec := NodeSpec{
		Cluster: c.Name, Name: n.Name, Pool: n.Pool, Role: n.Role,
		VCPUs: p.VCPUs, MemoryBytes: p.MemoryBytes, DiskBytes: p.DiskBytes,
		Bridge: Bridge(c.Name), MAC: n.MAC, BaseImage: c.BaseImage, UUID: n.UUID,
	}
	uuid, err := r.o.Nodes.CreateNode(ctx, n.Host, spec)
	if err != nil {
		err = fmt.Errorf("create node %s on %s: %w", n.Name, n.Host, err)
	}
	rerr := r.setNode(c.Name, n.Name, func(s *NodeState) {
		if s.Host != n.Host || s.State != NodeCreating {
			return // deleted or moved meanwhile
		}
		if err != nil {
			s.State, s.Error = NodeFailed, err.Error()
			return
		}
		s.State, s.Error = NodeRunning, ""
		if uuid != "" {
			s.UUID = uuid
		}
	})
	return errors.Join(err, rerr)
}

// teardown deletes a deleting cluster's nodes in parallel, then its
// overlays, then its record.
func (r *Reconciler) teardown(ctx context.Context, c Cluster) error {
	err := r.each(ctx, len(c.Nodes), func(i int) error { return r.deleteNode(ctx, c.Name, c.Nodes[i]) })
	if err != nil {
		return fmt.Errorf("delete cluster %s: %w", c.Name, err)
	}
	c, err = r.o.Store.Get(c.Name)
	if err != nil {
		return fmt.Errorf("delete cluster %s: %w", c.Name, err)
	}
	if len(c.Nodes) > 0 { // a node a racing pass had not yet recorded
		return fmt.Errorf("delete cluster %s: %d nodes left", c.Name, len(c.Nodes))
	}
	c, _, err = r.ensureOverlays(ctx, c)
	if err != nil {
		return fmt.Errorf("delete cluster %s: %w", c.Name, err)
	}
	if len(c.Overlays) > 0 {
		return fmt.Errorf("delete cluster %s: overlays left on %v", c.Name, slices.Sorted(maps.Keys(c.Overlays)))
	}
	if err := r.o.Store.remove(c.Name); err != nil {
		return fmt.Errorf("delete cluster %s: remove record: %w", c.Name, err)
	}
	return nil
}

// RecreateNode re-creates a node's domain from its stored desired state,
// keeping its name, MAC and UUID: on the same host if that host is ready,
// otherwise on a host placement chooses (the overlays follow). uuid may
// also be the node's name. It returns nil once the node runs again.
func (r *Reconciler) RecreateNode(ctx context.Context, host, uuid string) error {
	cs, err := r.o.Store.List()
	if err != nil {
		return fmt.Errorf("recreate node %s on %s: %w", uuid, host, err)
	}
	var cluster, node string
	for _, c := range cs {
		for _, n := range c.Nodes {
			if n.UUID == uuid || n.Host == host && n.Name == uuid {
				cluster, node = c.Name, n.Name
			}
		}
	}
	if cluster == "" {
		return fmt.Errorf("recreate node %s on %s: %w", uuid, host, ErrNotFound)
	}
	defer r.lock(cluster)()

	hosts, err := r.o.Hosts.ReadyHosts(ctx)
	if err != nil {
		return fmt.Errorf("recreate node %s on %s: list ready hosts: %w", node, host, err)
	}
	ready := slices.ContainsFunc(hosts, func(h placement.Host) bool {
		return h.Name == host && h.Ready && h.Worker && !h.Cordoned
	})
	var from, nodeUUID string
	_, err = r.o.Store.update(cluster, func(c *Cluster) error {
		n := c.node(node)
		switch {
		case c.Phase == PhaseDeleting || n == nil || n.State == NodeDeleting:
			return fmt.Errorf("node is being deleted: %w", ErrConflict)
		case n.Host != host:
			return fmt.Errorf("node is on %q: %w", n.Host, ErrConflict)
		}
		n.State, n.Error = NodePending, ""
		nodeUUID = n.UUID
		if !ready {
			from, n.Host = n.Host, ""
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("recreate node %s on %s: %w", node, host, err)
	}
	if from != "" {
		// The host is unhealthy and may not answer; its reprovisioning
		// wipes the old domain anyway.
		if err := r.o.Nodes.DeleteNode(ctx, from, NodeID{Cluster: cluster, Name: node, UUID: nodeUUID}); err != nil {
			r.log.Warn("delete moved node on unready host", "node", node, "host", from, "err", err)
		}
	}
	rerr := r.reconcile(ctx, cluster)
	c, err := r.o.Store.Get(cluster)
	if err != nil {
		return fmt.Errorf("recreate node %s: %w", node, err)
	}
	n := c.node(node)
	if n == nil || n.State != NodeRunning {
		msg := "gone"
		if n != nil {
			msg = n.State
			if n.Error != "" {
				msg += ": " + n.Error
			}
		}
		return fmt.Errorf("recreate node %s of %s: %s", node, cluster, msg)
	}
	if rerr != nil {
		r.log.Warn("recreate node: reconcile", "node", node, "err", rerr)
	}
	return nil
}

// ExpectedOverlays returns the overlays the agent on host should have: one
// per cluster with a node there, with the other holding hosts as peers
// (hosts without a known VTEP are left out; Reconcile reports them).
func (r *Reconciler) ExpectedOverlays(host string) ([]overlayspec.Overlay, error) {
	cs, err := r.o.Store.List()
	if err != nil {
		return nil, fmt.Errorf("expected overlays on %s: %w", host, err)
	}
	var ds []overlayspec.Overlay
	for _, c := range cs {
		members := c.members()
		if !slices.Contains(members, host) {
			continue
		}
		d, _ := r.desired(c, host, members)
		ds = append(ds, d)
	}
	return ds, nil
}
