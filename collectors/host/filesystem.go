package host

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// fsStats is what statfs(2) tells of one filesystem.
type fsStats struct {
	size, free, avail uint64 // bytes
	files, filesFree  uint64
}

func statfs(path string) (fsStats, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fsStats{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	// Block counts are in fragments (statvfs's f_frsize), which old
	// kernels leave 0 to mean f_bsize.
	unit := uint64(st.Frsize)
	if unit == 0 {
		unit = uint64(st.Bsize)
	}
	return fsStats{
		size:      st.Blocks * unit,
		free:      st.Bfree * unit,
		avail:     st.Bavail * unit,
		files:     st.Files,
		filesFree: st.Ffree,
	}, nil
}

// mount is one filesystem to report.
type mount struct {
	mountpoint string // as the host sees it, unescaped
	device     string
	fstype     string
	readonly   bool
}

// statOutcome is how the statfs of one mount ended in this scrape.
type statOutcome struct {
	stats    fsStats
	err      error
	timedOut bool
}

func (c *Collector) collectFilesystems(ctx context.Context, ch chan<- prometheus.Metric) error {
	mounts, err := c.mounts()
	if err != nil {
		return err
	}
	outcomes, err := c.statMounts(ctx, mounts)
	if err != nil {
		return err
	}
	for i, m := range mounts {
		mp := label(m.mountpoint)
		o := outcomes[i]
		ch <- gauge(c.d.fsInfo, 1, mp, label(m.device), label(m.fstype))
		ch <- gauge(c.d.fsReadonly, boolFloat(m.readonly), mp)
		ch <- gauge(c.d.fsStatTimeout, boolFloat(o.timedOut), mp)
		ch <- gauge(c.d.fsStatError, boolFloat(o.err != nil), mp)
		if o.timedOut || o.err != nil {
			// An unmounted or unreadable mount point is the host's
			// state, reported above, not a failure of the collector.
			if o.err != nil {
				c.logger.Debug("statfs failed", "mountpoint", m.mountpoint, "err", o.err)
			}
			continue
		}
		ch <- gauge(c.d.fsSize, float64(o.stats.size), mp)
		ch <- gauge(c.d.fsFree, float64(o.stats.free), mp)
		ch <- gauge(c.d.fsAvail, float64(o.stats.avail), mp)
		ch <- gauge(c.d.fsFiles, float64(o.stats.files), mp)
		ch <- gauge(c.d.fsFilesFree, float64(o.stats.filesFree), mp)
	}
	return nil
}

// mounts lists the host's real filesystems, one per mount point.
func (c *Collector) mounts() ([]mount, error) {
	// PID 1's mounts are the host's even when the agent runs in a
	// container with the host's /proc and its own mount namespace.
	infos, err := c.proc.GetProcMounts(1)
	if err != nil {
		c.logger.Debug("read the mounts of PID 1, reading the agent's own", "err", err)
		var selfErr error
		if infos, selfErr = c.proc.GetMounts(); selfErr != nil {
			return nil, fmt.Errorf("read mounts: %w (and of PID 1: %w)", selfErr, err)
		}
	}
	return filterMounts(infos), nil
}

// filterMounts keeps the mounts of real filesystems and, of several
// mounted at one point, the last, which hides the others.
func filterMounts(infos []*procfs.MountInfo) []mount {
	index := make(map[string]int, len(infos))
	var out []mount
	for _, mi := range infos {
		if pseudoFilesystem(mi.FSType) {
			continue
		}
		_, ro := mi.Options["ro"]
		m := mount{
			mountpoint: unescapeMountField(mi.MountPoint),
			device:     unescapeMountField(mi.Source),
			fstype:     mi.FSType,
			readonly:   ro,
		}
		if i, ok := index[m.mountpoint]; ok {
			out[i] = m
			continue
		}
		index[m.mountpoint] = len(out)
		out = append(out, m)
	}
	return out
}

// pseudoFilesystem reports whether a filesystem type holds no data of its
// own worth a size: kernel interfaces, memory-backed filesystems and
// read-only images that are always full.
func pseudoFilesystem(fstype string) bool {
	switch fstype {
	case "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs",
		"debugfs", "devpts", "devtmpfs", "efivarfs", "fusectl",
		"fuse.gvfsd-fuse", "fuse.lxcfs", "fuse.portal", "hugetlbfs",
		"mqueue", "nsfs", "proc", "pstore", "ramfs", "rpc_pipefs",
		"securityfs", "selinuxfs", "squashfs", "sysfs", "tmpfs", "tracefs":
		return true
	}
	return false
}

// unescapeMountField undoes the octal escapes (\040 for a space, \011,
// \012, \134) the kernel writes in the fields of mountinfo. Anything else
// is kept as it is.
func unescapeMountField(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctalByte(s[i+1:i+4]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isOctalByte reports whether s is three octal digits worth one byte.
func isOctalByte(s string) bool {
	return s[0] >= '0' && s[0] <= '3' &&
		s[1] >= '0' && s[1] <= '7' &&
		s[2] >= '0' && s[2] <= '7'
}

// statMounts statfs's every mount at once, each in its own goroutine, and
// waits for them up to FilesystemTimeout. A mount whose earlier statfs has
// not returned is not statted again but counted as timed out, so that a
// hung NFS server costs one blocked goroutine, not one per scrape.
func (c *Collector) statMounts(ctx context.Context, mounts []mount) ([]statOutcome, error) {
	type done struct {
		i     int
		stats fsStats
		err   error
	}
	outcomes := make([]statOutcome, len(mounts))
	// Room for every result: a goroutine that returns after this scrape
	// gave up on it must not block.
	results := make(chan done, len(mounts))
	pending := make(map[int]bool, len(mounts))
	for i, m := range mounts {
		path := filepath.Join(c.cfg.RootFS, m.mountpoint)
		if !c.startStat(path, func(st fsStats, err error) { results <- done{i, st, err} }) {
			outcomes[i].timedOut = true
			continue
		}
		pending[i] = true
	}

	timer := time.NewTimer(c.cfg.FilesystemTimeout)
	defer timer.Stop()
	for len(pending) > 0 {
		select {
		case r := <-results:
			outcomes[r.i] = statOutcome{stats: r.stats, err: r.err}
			delete(pending, r.i)
		case <-timer.C:
			for i := range pending {
				outcomes[i].timedOut = true
				c.logger.Warn("statfs timed out", "mountpoint", mounts[i].mountpoint, "timeout", c.cfg.FilesystemTimeout)
			}
			return outcomes, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("stat filesystems: %w", ctx.Err())
		}
	}
	return outcomes, nil
}

// startStat runs statfs of path in a goroutine that passes its result to
// report, unless a statfs of path still runs; it returns false then.
func (c *Collector) startStat(path string, report func(fsStats, error)) bool {
	c.statMu.Lock()
	defer c.statMu.Unlock()
	if c.statting[path] {
		return false
	}
	c.statting[path] = true
	c.statWG.Add(1)
	go func() {
		defer c.statWG.Done()
		st, err := c.cfg.statfs(path)
		c.statMu.Lock()
		delete(c.statting, path)
		c.statMu.Unlock()
		report(st, err)
	}()
	return true
}
