// Package host collects the state of a hypervisor host: CPU, load, memory,
// pressure, disks, filesystems and network devices from procfs and sysfs, and
// what makes it a KVM host — the /dev/kvm device, libvirtd, KSM, huge pages
// and how much of the host its running guests have been promised.
//
// Each part is read independently: one that fails leaves the others in the
// scrape, and Update returns the failures joined.
package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
	"github.com/prometheus/procfs/blockdevice"
)

const namespace = "caretaker_host"

// Config configures a Collector. The zero value reads the host it runs on.
type Config struct {
	// ProcFS, SysFS are where procfs and sysfs are mounted (default /proc,
	// /sys). RootFS is where the host's root filesystem is (default /):
	// mount points are statted under it, and the KVM device is looked up
	// under it, so that an agent in a container with the host's / mounted
	// at /host reports the host's filesystems and the host's /dev/kvm.
	ProcFS, SysFS, RootFS string
	// DevKVM is the KVM device (default dev/kvm under RootFS: /dev/kvm).
	DevKVM string
	// KVMNotRequired declares that this host's guests do not need KVM:
	// they run under TCG (domain type qemu), so a missing /dev/kvm is
	// expected, not a fault. It is exported as caretaker_host_kvm_required
	// (0 when set, 1 by default), which the alert on the device reads.
	KVMNotRequired bool
	// FilesystemTimeout bounds each statfs (default 2s): a stuck NFS
	// mount must never block the scrape.
	FilesystemTimeout time.Duration
	// DiskstatsExclude names the block devices left out of the disk
	// metrics (default: loop, ram and zram devices, floppies and
	// partitions, whose I/O is counted again in their disk).
	DiskstatsExclude *regexp.Regexp
	// LibvirtCheck, if set, pings libvirtd; its result is
	// caretaker_host_libvirtd_up.
	LibvirtCheck func(ctx context.Context) error
	// Guests, if set, returns the vCPUs and memory given to the running
	// guests; without it the commitment metrics are left out. The agent
	// takes them from the kvm collector's call to libvirt of the same
	// scrape (kvm.Collector.GuestCommitment), not a second one.
	Guests func(ctx context.Context) (vcpus int, memoryBytes uint64, err error)
	// LibvirtTimeout bounds how long a scrape waits for LibvirtCheck and
	// Guests (--libvirt.timeout), whatever they do with their context:
	// after it libvirtd_up is 0 and the commitment is left out, and the
	// host's other metrics are sent all the same. <= 0: only the scrape's
	// deadline.
	LibvirtTimeout time.Duration

	// statfs replaces statfs(2) in tests (nil: statfs(2)).
	statfs func(path string) (fsStats, error)
	// pageSize is the size of the pages KSM counts (0: this machine's).
	pageSize int
}

// DefaultDiskstatsExclude is the default of Config.DiskstatsExclude.
const DefaultDiskstatsExclude = `^(z?ram\d+|loop\d+|fd\d+|(h|s|v|xv)d[a-z]+\d+|nvme\d+n\d+p\d+|mmcblk\d+p\d+)$`

// Collector is the host collector. It implements collectors.Collector.
type Collector struct {
	cfg    Config
	logger *slog.Logger
	proc   procfs.FS
	block  blockdevice.FS

	// libvirtCheck and guests are the calls to LibvirtCheck and Guests
	// under way: scrapes that come while one runs (several servers
	// scrape every agent) share it, and a function that ignores its
	// context gets no second goroutine from the next scrape.
	libvirtCheck flight[struct{}]
	guests       flight[commitment]

	// statting holds the paths whose statfs is running, possibly left
	// over from an earlier scrape that gave up on them.
	statMu   sync.Mutex
	statting map[string]bool
	// statWG counts the statfs goroutines, so that tests can await one
	// that outlived its scrape.
	statWG sync.WaitGroup

	d descs
}

// New returns a host collector reading the trees cfg names.
func New(cfg Config, logger *slog.Logger) (*Collector, error) {
	if cfg.ProcFS == "" {
		cfg.ProcFS = "/proc"
	}
	if cfg.SysFS == "" {
		cfg.SysFS = "/sys"
	}
	if cfg.RootFS == "" {
		cfg.RootFS = "/"
	}
	if cfg.DevKVM == "" {
		cfg.DevKVM = filepath.Join(cfg.RootFS, "dev", "kvm")
	}
	if cfg.FilesystemTimeout <= 0 {
		cfg.FilesystemTimeout = 2 * time.Second
	}
	if cfg.DiskstatsExclude == nil {
		cfg.DiskstatsExclude = regexp.MustCompile(DefaultDiskstatsExclude)
	}
	if cfg.statfs == nil {
		cfg.statfs = statfs
	}
	if cfg.pageSize <= 0 {
		cfg.pageSize = os.Getpagesize()
	}
	proc, err := procfs.NewFS(cfg.ProcFS)
	if err != nil {
		return nil, fmt.Errorf("open procfs at %s: %w", cfg.ProcFS, err)
	}
	block, err := blockdevice.NewFS(cfg.ProcFS, cfg.SysFS)
	if err != nil {
		return nil, fmt.Errorf("open block devices at %s and %s: %w", cfg.ProcFS, cfg.SysFS, err)
	}
	return &Collector{
		cfg:      cfg,
		logger:   logger,
		proc:     proc,
		block:    block,
		statting: make(map[string]bool),
		d:        newDescs(),
	}, nil
}

// scrape is what one Update learned that a later part needs.
type scrape struct {
	cpus     int    // online CPUs; 0 when /proc/stat could not be read
	memTotal uint64 // MemTotal in bytes; 0 when unknown
}

// Update implements collectors.Collector.
func (c *Collector) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	// libvirt may be slow: ask it first and read the kernel meanwhile.
	lctx := ctx
	if c.cfg.LibvirtTimeout > 0 {
		var cancel context.CancelFunc
		lctx, cancel = context.WithTimeout(ctx, c.cfg.LibvirtTimeout)
		defer cancel()
	}
	libvirtUp := c.startLibvirtCheck(lctx)
	guests := c.startGuests(lctx)

	var s scrape
	parts := []struct {
		name    string
		collect func() error
	}{
		{"cpu", func() error { return c.collectCPU(ch, &s) }},
		{"load", func() error { return c.collectLoad(ch) }},
		{"meminfo", func() error { return c.collectMeminfo(ch, &s) }},
		{"ksm", func() error { return c.collectKSM(ch) }},
		{"pressure", func() error { return c.collectPressure(ch) }},
		{"diskstats", func() error { return c.collectDiskstats(ch) }},
		{"netdev", func() error { return c.collectNetdev(ch) }},
		{"filesystems", func() error { return c.collectFilesystems(ctx, ch) }},
		{"kvm device", func() error { c.collectKVMDevice(ch); return nil }},
	}
	var errs []error
	for _, p := range parts {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, fmt.Errorf("collect host metrics: %w", err))...)
		}
		if err := runPart(p.name, p.collect); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.collectLibvirtUp(ctx, lctx, ch, libvirtUp); err != nil {
		errs = append(errs, err)
	}
	if err := c.collectGuests(lctx, ch, guests, s); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// runPart runs one part, turning a panic into its error: the parsers of
// procfs index fields without checking a line's length, and one malformed
// file must not take the agent down.
func runPart(name string, collect func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("collect %s: panic: %v", name, r)
		}
	}()
	return collect()
}

func (c *Collector) collectKVMDevice(ch chan<- prometheus.Metric) {
	present := false
	if fi, err := os.Stat(c.cfg.DevKVM); err == nil {
		present = fi.Mode()&os.ModeCharDevice != 0
	} else {
		c.logger.Debug("stat KVM device", "path", c.cfg.DevKVM, "err", err)
	}
	ch <- gauge(c.d.kvmDevicePresent, boolFloat(present))
	ch <- gauge(c.d.kvmRequired, boolFloat(!c.cfg.KVMNotRequired))
}

// result is what a call to LibvirtCheck or Guests returned.
type result[T any] struct {
	v   T
	err error
}

// flight runs one call at a time in its own goroutine.
type flight[T any] struct {
	mu  sync.Mutex
	cur *run[T] // the call under way, if any
	// joined counts the callers of the call under way, for the tests.
	joined int
}

// waiting returns how many callers the call under way has.
func (fl *flight[T]) waiting() int {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.cur == nil {
		return 0
	}
	return fl.joined
}

// run is one call; done is closed once res is set.
type run[T any] struct {
	done chan struct{}
	res  result[T]
}

// start runs f unless a call is under way, and returns the call whose
// result the caller gets: its own or the one under way.
func (fl *flight[T]) start(f func() (T, error)) *run[T] {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.cur != nil {
		fl.joined++
		return fl.cur
	}
	r := &run[T]{done: make(chan struct{})}
	fl.cur, fl.joined = r, 1
	go func() {
		v, err := f()
		r.res = result[T]{v, err}
		// Cleared before the waiters wake: a scrape after them starts a
		// fresh call.
		fl.mu.Lock()
		fl.cur = nil
		fl.mu.Unlock()
		close(r.done)
	}()
	return r
}

// shared is the context of a call that may serve scrapes other than the
// one starting it: it keeps that scrape's deadline, not its cancellation.
func shared(ctx context.Context) (context.Context, context.CancelFunc) {
	rctx := context.WithoutCancel(ctx)
	if deadline, ok := ctx.Deadline(); ok {
		return context.WithDeadline(rctx, deadline)
	}
	return rctx, func() {}
}

// await waits for the call's result, or for ctx.
func (r *run[T]) await(ctx context.Context) (T, error) {
	select {
	case <-r.done:
		return r.res.v, r.res.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

func (c *Collector) startLibvirtCheck(ctx context.Context) *run[struct{}] {
	if c.cfg.LibvirtCheck == nil {
		return nil
	}
	return c.libvirtCheck.start(func() (struct{}, error) {
		ctx, cancel := shared(ctx)
		defer cancel()
		return struct{}{}, c.cfg.LibvirtCheck(ctx)
	})
}

// collectLibvirtUp reports whether the check answered within lctx. libvirtd
// being down or not answering in time is a fact about the host, not a
// failure of the collector; only the scrape (ctx) ending first is.
func (c *Collector) collectLibvirtUp(ctx, lctx context.Context, ch chan<- prometheus.Metric, pending *run[struct{}]) error {
	if c.cfg.LibvirtCheck == nil {
		return nil
	}
	_, err := pending.await(lctx)
	if err != nil {
		c.logger.Debug("libvirtd check failed", "err", err)
	}
	ch <- gauge(c.d.libvirtdUp, boolFloat(err == nil))
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("check libvirtd: %w", ctxErr)
	}
	return nil
}

type commitment struct {
	vcpus       int
	memoryBytes uint64
}

func (c *Collector) startGuests(ctx context.Context) *run[commitment] {
	if c.cfg.Guests == nil {
		return nil
	}
	return c.guests.start(func() (commitment, error) {
		ctx, cancel := shared(ctx)
		defer cancel()
		vcpus, mem, err := c.cfg.Guests(ctx)
		return commitment{vcpus, mem}, err
	})
}

// collectGuests reports what the running guests were given and how far
// that exceeds the host. A ratio whose host side is unknown is left out.
func (c *Collector) collectGuests(ctx context.Context, ch chan<- prometheus.Metric, pending *run[commitment], s scrape) error {
	if c.cfg.Guests == nil {
		return nil
	}
	g, err := pending.await(ctx)
	if err != nil {
		return fmt.Errorf("count guest vCPUs and memory: %w", err)
	}
	ch <- gauge(c.d.guestVCPUs, float64(g.vcpus))
	ch <- gauge(c.d.guestMemory, float64(g.memoryBytes))
	if s.cpus > 0 {
		ch <- gauge(c.d.vcpuOvercommit, float64(g.vcpus)/float64(s.cpus))
	}
	if s.memTotal > 0 {
		ch <- gauge(c.d.memoryOvercommit, float64(g.memoryBytes)/float64(s.memTotal))
	}
	return nil
}

func gauge(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func counter(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
}

// label makes a name taken from the kernel (a mount point, an interface)
// a valid label value: the client panics on invalid UTF-8, which paths and
// interface names may hold.
func label(s string) string {
	return strings.ToValidUTF8(s, "\uFFFD")
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
