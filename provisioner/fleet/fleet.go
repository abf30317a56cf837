// Package fleet is the provisioner as the server runs it: the inventory,
// the hosts' state machine driven through their BMCs, the PXE endpoints and
// the guest clusters put together, with the hosts' agents making the
// clusters' nodes and overlays. It is the remediation engine's Provisioner
// (recreate-vm, reprovision-host), the state machine's GuestMover and the
// cluster reconciler's Hosts, and it serves the provisioner's HTTP API:
// clusters, the inventory's hosts, the hosts' provisioning and /pxe/.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"caretaker/internal/agentapi"
	"caretaker/internal/config"
	"caretaker/internal/kv"
	"caretaker/internal/monitoring"
	"caretaker/provisioner/bmc"
	"caretaker/provisioner/clusters"
	"caretaker/provisioner/hoststate"
	"caretaker/provisioner/inventory"
	"caretaker/provisioner/placement"
	"caretaker/provisioner/pxe"
	"caretaker/remediation"
)

// Provisioner wires the provisioner's packages together: the inventory,
// the hosts' state machine driven through their BMCs, the PXE endpoints,
// and the guest clusters, whose nodes and overlays the hosts' agents make.
type Provisioner struct {
	log      *slog.Logger
	cfg      config.Provisioner
	db       kv.Store // the inventory's and the clusters'
	ownDB    bool     // opened by New (provisioner.db), so closed by Close
	inv      *inventory.Store
	machine  *hoststate.Machine
	clusters *clusters.Store
	images   clusters.BaseImages // what a node's base image may be
	rec      *clusters.Reconciler
	pxe      http.Handler // nil without provisioner.pxe
	agents   *agentapi.Hosts
	monitor  *atomic.Pointer[monitoring.Monitor]
	fileSD   string // the agents of the inventory, for the embedded Prometheus
	// bmcSecrets is provisioner.bmc.secrets_dir, where password files are.
	bmcSecrets string
}

// provisionerTick spaces the provisioner's timed work: phase timeouts,
// hosts registering and booting, the file_sd file.
const provisionerTick = 15 * time.Second

// reconcileEvery is how often the clusters are reconciled besides after
// every change.
const reconcileEvery = time.Minute

// Options are what New needs.
type Options struct {
	// Config is the server's configuration; its provisioner section
	// says what to run, its paths are relative to its file.
	Config *config.Server
	// DataDir holds the provisioner's file_sd file and, without Store,
	// its databases, under "provisioner".
	DataDir string
	// Store, when set, holds the inventory's hosts, the host states and
	// the clusters (distinct buckets: "inventory_hosts",
	// "inventory_removed", "hosts", "history", "clusters"), for servers
	// sharing their state in etcd; it stays the caller's to close. When
	// nil, New opens provisioner.db and hosts.db under DataDir, and Close
	// closes them.
	Store kv.Store
	// Follower is a clustered server's provisioner while another leads:
	// it reads the shared state (Follow) and registers no host.
	Follower bool
	// Agents gets a client for each host of the inventory.
	Agents *agentapi.Hosts
	// Monitor is the embedded Prometheus, whose figures size the hosts;
	// nil until it runs.
	Monitor    *atomic.Pointer[monitoring.Monitor]
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// New opens the provisioner's databases and loads its inventory and PXE
// configuration; Run does its timed work.
func New(o Options) (*Provisioner, error) {
	cfg, dataDir, logger := o.Config, o.DataDir, o.Logger
	pc := cfg.Provisioner
	p := &Provisioner{log: logger, cfg: pc, agents: o.Agents, monitor: o.Monitor,
		fileSD:     filepath.Join(dataDir, "provisioner", "agents.json"),
		bmcSecrets: cfg.Path(pc.BMC.SecretsDir)}
	file, err := inventory.Load(cfg.Path(pc.InventoryFile))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(p.fileSD), 0o755); err != nil {
		return nil, fmt.Errorf("provisioner: %w", err)
	}
	if o.Store != nil {
		p.db = o.Store
	} else {
		db, err := kv.OpenBolt(filepath.Join(dataDir, "provisioner", "provisioner.db"), "the provisioner's database")
		if err != nil {
			return nil, err
		}
		p.db, p.ownDB = db, true
	}
	ok := false
	defer func() {
		if !ok {
			p.Close()
		}
	}()
	if p.inv, err = inventory.NewStore(p.db, func() *inventory.Inventory { return file }); err != nil {
		return nil, err
	}
	if err := p.inv.CheckFile(file); err != nil {
		return nil, err
	}
	p.images = clusters.BaseImages{Default: pc.BaseImage, Declared: pc.BaseImages}
	if p.clusters, err = clusters.NewStore(p.db, clusters.StoreOptions{BaseImages: p.images, NodeFits: p.nodeFits}); err != nil {
		return nil, err
	}
	p.rec, err = clusters.New(clusters.Options{
		Store:    p.clusters,
		Hosts:    p,
		Nodes:    nodes{p},
		Overlays: nodes{p},
		VTEP:     p.vtep,
		Config: clusters.Config{Underlay: pc.Underlay,
			Ratios: placement.Ratios{CPU: pc.Overcommit.CPU, Memory: pc.Overcommit.Memory}},
		Logger: logger.With("component", "clusters"),
	})
	if err != nil {
		return nil, err
	}
	hostsPath := ""
	if o.Store == nil {
		hostsPath = filepath.Join(dataDir, "provisioner", "hosts.db")
	}
	p.machine, err = hoststate.Open(hoststate.Options{
		Store: o.Store,
		Path:  hostsPath,
		Config: hoststate.Config{MaxAttempts: pc.MaxAttempts, Timeouts: hoststate.Timeouts{
			PoweringOn: pc.Timeouts.PoweringOn, PXEBooting: pc.Timeouts.PXEBooting, Installing: pc.Timeouts.Installing}},
		BMC:        p.bmc,
		Guests:     p,
		Logger:     logger.With("component", "hosts"),
		Registerer: o.Registerer,
	})
	if err != nil {
		return nil, err
	}
	if pc.PXE.ConfigFile != "" {
		pcfg, err := pxe.Load(cfg.Path(pc.PXE.ConfigFile))
		if err != nil {
			return nil, err
		}
		secret, err := config.ReadSecret(cfg.Path(pc.PXE.SecretFile))
		if err != nil {
			return nil, fmt.Errorf("provisioner.pxe.secret_file: %w", err)
		}
		// The state machine says which hosts are being provisioned and
		// takes their one-time script fetch and callback.
		p.pxe = pxe.NewHandler(pcfg, pxe.Options{
			BaseURL: pc.PXE.BaseURL, Secret: []byte(secret), Attempts: p.machine,
			Logger: logger.With("component", "pxe"),
		})
	}
	if o.Follower {
		p.publish()
	} else {
		p.sync()
	}
	ok = true
	return p, nil
}

// Run does the provisioner's timed work until ctx ends.
func (p *Provisioner) Run(ctx context.Context) {
	// Waited for, so that close never pulls the database from under a
	// reconciliation.
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { p.rec.Run(ctx, reconcileEvery) })
	t := time.NewTicker(provisionerTick)
	defer t.Stop()
	refresh := time.NewTicker(reconcileEvery)
	defer refresh.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh.C:
			p.refreshOverlays(ctx)
		case <-t.C:
			p.sync()
			p.adoptBooted(ctx)
			if err := p.machine.Tick(ctx); err != nil {
				p.log.Error("provisioner tick", "err", err)
			}
		}
	}
}

// refreshOverlays puts every host's expected overlays again. The agents
// keep what they were given in memory, so an agent that restarted gets its
// overlays — and its overlay collector its expectations — back here; on
// the others the PUT finds nothing to change.
func (p *Provisioner) refreshOverlays(ctx context.Context) {
	hosts, err := p.inv.All()
	if err != nil {
		return
	}
	for _, h := range hosts {
		want, err := p.rec.ExpectedOverlays(h.Name)
		if err != nil {
			p.log.Error("expected overlays", "host", h.Name, "err", err)
			continue
		}
		for _, d := range want {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if err := (nodes{p}).EnsureOverlay(cctx, h.Name, d); err != nil {
				p.log.Warn("refresh overlay", "host", h.Name, "cluster", d.Cluster, "err", err)
			}
			cancel()
		}
	}
}

// Close closes the provisioner's databases, after Run has returned; a
// Store of Options stays open.
func (p *Provisioner) Close() {
	if p.machine != nil {
		p.machine.Close()
	}
	if p.db != nil && p.ownDB {
		p.db.Close()
	}
}

// FileSD is the file_sd file that lists the inventory's agents, for the
// embedded Prometheus.
func (p *Provisioner) FileSD() string { return p.fileSD }

// sync registers the inventory's hosts with the state machine, gives the
// server an agent client for each, and writes their file_sd file, so a host
// added through the API is scraped and provisioned.
func (p *Provisioner) sync() {
	hosts, ok := p.publish()
	if !ok {
		return
	}
	for _, h := range hosts {
		if _, known := p.machine.Host(h.Name); !known {
			if err := p.machine.Register(h.Name, h.MACs[0]); err != nil {
				p.log.Error("register host", "host", h.Name, "err", err)
			}
		}
	}
}

// publish gives the server an agent client for each host of the inventory
// and writes their file_sd file; it writes nothing to the store. It
// returns the hosts, and false when the inventory could not be read.
func (p *Provisioner) publish() ([]inventory.Host, bool) {
	hosts, err := p.inv.All()
	if err != nil {
		p.log.Error("read the inventory", "err", err)
		return nil, false
	}
	for _, h := range hosts {
		p.agents.Add(h.Name, h.Agent)
	}
	if err := inventory.WriteFileSD(p.fileSD, hosts); err != nil {
		p.log.Error("write the agents' file_sd file", "err", err)
	}
	return hosts, true
}

// Follow is a server's part while another leads, until ctx ends: every
// provisionerTick it reads the shared inventory, gives the server an
// agent client for each host and rewrites its file_sd file, which its own
// Prometheus scrapes. It writes nothing to the store: registering hosts,
// their states and the clusters are the leader's (Run).
func (p *Provisioner) Follow(ctx context.Context) {
	t := time.NewTicker(provisionerTick)
	defer t.Stop()
	for {
		p.publish()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// adoptBooted marks ready the hosts whose agent is scraped while they are
// registered (a host that already runs) or installing (the new system came
// up): the agent's first successful scrape reports boot completion. Other
// states are left alone: during powering-on and pxe-booting an answering
// agent may still be the old system.
func (p *Provisioner) adoptBooted(ctx context.Context) {
	up := p.byHost(ctx, fmt.Sprintf("up{job=%q}", monitoring.JobName))
	for _, h := range p.machine.Hosts() {
		if (h.State == hoststate.Registered || h.State == hoststate.Installing) && up[h.Name] == 1 {
			p.booted(h.Name, "the agent answers")
		}
	}
}

func (p *Provisioner) booted(host, why string) {
	if err := p.machine.Booted(host); err != nil {
		p.log.Warn("boot completion not applied", "host", host, "why", why, "err", err)
		return
	}
	p.log.Info("host booted", "host", host, "why", why)
}

// bmc opens a host's BMC from its inventory entry.
func (p *Provisioner) bmc(host string) (hoststate.BMC, error) {
	h, err := p.inventoryHost(host)
	if err != nil {
		return nil, err
	}
	h.BMC.SecretsDir = p.bmcSecrets
	return bmc.New(h.BMC, p.log.With("host", host, "component", "bmc"))
}

func (p *Provisioner) inventoryHost(name string) (inventory.Host, error) {
	hosts, err := p.inv.All()
	if err != nil {
		return inventory.Host{}, err
	}
	for _, h := range hosts {
		if h.Name == name {
			return h, nil
		}
	}
	return inventory.Host{}, fmt.Errorf("host %q is not in the inventory", name)
}

// Hosts lists the inventory's hosts as the status shows them; nil for a
// server without a provisioner.
func (p *Provisioner) Hosts() []config.Host {
	if p == nil {
		return nil
	}
	all, err := p.inv.All()
	if err != nil {
		return nil
	}
	out := make([]config.Host, len(all))
	for i, h := range all {
		out[i] = config.Host{Name: h.Name, Agent: h.Agent}
	}
	return out
}

// vtep is a host's underlay address: the inventory's underlay_address,
// else the address of its agent.
func (p *Provisioner) vtep(host string) net.IP {
	h, err := p.inventoryHost(host)
	if err != nil {
		return nil
	}
	if h.UnderlayAddress != "" {
		return net.ParseIP(h.UnderlayAddress)
	}
	addr, _, err := net.SplitHostPort(h.Agent)
	if err != nil {
		return nil
	}
	return net.ParseIP(addr)
}

// ReadyHosts implements clusters.Hosts: the ready, uncordoned workers with
// their capacity (the inventory's, else what the host collector reports)
// and what their guests use (the host collector's figures, plus the nodes
// placed and not yet running).
func (p *Provisioner) ReadyHosts(ctx context.Context) ([]placement.Host, error) {
	hosts, err := p.inv.All()
	if err != nil {
		return nil, err
	}
	placed, err := p.clusters.Placed()
	if err != nil {
		return nil, err
	}
	// One query per figure for the whole fleet, not one per host.
	cpus := p.byHost(ctx, "caretaker_host_cpus")
	memory := p.byHost(ctx, "caretaker_host_memory_total_bytes")
	usedCPUs := p.byHost(ctx, "caretaker_host_guest_vcpus")
	usedMemory := p.byHost(ctx, "caretaker_host_guest_memory_bytes")
	var out []placement.Host
	for _, h := range hosts {
		st, known := p.machine.Host(h.Name)
		if h.Role != inventory.RoleWorker || !known || !st.Schedulable() {
			continue
		}
		ph := placement.Host{Name: h.Name, Zone: h.Labels["zone"], Worker: true, Ready: true,
			CPUs: h.CPUs, MemoryBytes: h.MemoryBytes}
		if ph.CPUs == 0 {
			ph.CPUs = int(cpus[h.Name])
		}
		if ph.MemoryBytes == 0 {
			ph.MemoryBytes = uint64(memory[h.Name])
		}
		ph.Used.VCPUs = int(usedCPUs[h.Name]) + placed[h.Name].VCPUs
		ph.Used.MemoryBytes = uint64(usedMemory[h.Name]) + placed[h.Name].MemoryBytes
		out = append(out, ph)
	}
	return out, nil
}

// nodeFits says what of a pool's node no worker of the inventory offers
// under the overcommit ratios, whatever the worker's state (a host down
// now may come back); placement judges what is free. While no worker's
// capacity is known (no inventory figures, no scrape yet) every node fits.
func (p *Provisioner) nodeFits(pool clusters.Pool) error {
	hosts, err := p.inv.All()
	if err != nil {
		p.log.Warn("check a node's size against the hosts", "err", err)
		return nil
	}
	var cpus, memory map[string]float64
	if p.monitor != nil {
		ctx := context.Background() // byHost bounds each query
		cpus = p.byHost(ctx, "caretaker_host_cpus")
		memory = p.byHost(ctx, "caretaker_host_memory_total_bytes")
	}
	r := placement.Ratios{CPU: p.cfg.Overcommit.CPU, Memory: p.cfg.Overcommit.Memory}
	known, maxCPU, maxMem := false, 0, uint64(0)
	for _, h := range hosts {
		if h.Role != inventory.RoleWorker {
			continue
		}
		ph := placement.Host{CPUs: h.CPUs, MemoryBytes: h.MemoryBytes}
		if ph.CPUs == 0 {
			ph.CPUs = int(cpus[h.Name])
		}
		if ph.MemoryBytes == 0 {
			ph.MemoryBytes = uint64(memory[h.Name])
		}
		if ph.CPUs == 0 || ph.MemoryBytes == 0 {
			continue // not known yet
		}
		known = true
		c, m := placement.Capacity(ph, r)
		if c >= pool.VCPUs && m >= pool.MemoryBytes {
			return nil
		}
		maxCPU, maxMem = max(maxCPU, c), max(maxMem, m)
	}
	if !known {
		return nil
	}
	var errs []error
	if pool.VCPUs > maxCPU {
		errs = append(errs, fmt.Errorf("no host has %d vCPUs: the largest offers %d (cpu overcommit %g)", pool.VCPUs, maxCPU, r.CPU))
	}
	if pool.MemoryBytes > maxMem {
		errs = append(errs, fmt.Errorf("no host has %d MiB of memory: the largest offers %d MiB (memory overcommit %g)", pool.MemoryBytes>>20, maxMem>>20, r.Memory))
	}
	if len(errs) == 0 {
		errs = append(errs, fmt.Errorf("no host has both %d vCPUs and %d MiB of memory", pool.VCPUs, pool.MemoryBytes>>20))
	}
	return errors.Join(errs...)
}

// byHost returns the metric's value by host; hosts without it are missing.
func (p *Provisioner) byHost(ctx context.Context, name string) map[string]float64 {
	out := map[string]float64{}
	m := p.monitor.Load()
	if m == nil {
		return out
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	vec, err := m.Query(ctx, "max by (host) ("+name+")", time.Now())
	if err != nil {
		p.log.Warn("read host capacity", "metric", name, "err", err)
		return out
	}
	for _, s := range vec {
		out[s.Metric.Get("host")] = s.F
	}
	return out
}

// MoveGuests implements hoststate.GuestMover: every node of a guest
// cluster on the host is re-created elsewhere. The host is cordoned by
// then, so placement passes it over.
func (p *Provisioner) MoveGuests(ctx context.Context, host string) error {
	all, err := p.clusters.List()
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range all {
		for _, n := range c.Nodes {
			if n.Host == host && n.UUID != "" {
				if err := p.rec.RecreateNode(ctx, host, n.UUID); err != nil {
					errs = append(errs, fmt.Errorf("move node %s: %w", n.Name, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// RecreateVM implements remediation.Provisioner for the nodes of guest
// clusters; another guest has no desired state to be re-created from.
func (p *Provisioner) RecreateVM(ctx context.Context, host, uuid string) error {
	err := p.rec.RecreateNode(ctx, host, uuid)
	if errors.Is(err, clusters.ErrNotFound) {
		return fmt.Errorf("recreate-vm is %w for guest %s on %s: it is not a node of a guest cluster the provisioner manages",
			remediation.ErrNotAvailable, uuid, host)
	}
	return err
}

// ReprovisionHost implements remediation.Provisioner.
func (p *Provisioner) ReprovisionHost(ctx context.Context, host string) error {
	return p.machine.Reprovision(ctx, host)
}
