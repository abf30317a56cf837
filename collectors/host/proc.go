package host

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
)

func (c *Collector) collectCPU(ch chan<- prometheus.Metric, s *scrape) error {
	stat, err := c.proc.Stat()
	if err != nil {
		return fmt.Errorf("read cpu times: %w", err)
	}
	for id, t := range stat.CPU {
		cpu := strconv.FormatInt(id, 10)
		for _, m := range []struct {
			mode    string
			seconds float64
		}{
			{"user", t.User},
			{"nice", t.Nice},
			{"system", t.System},
			{"idle", t.Idle},
			{"iowait", t.Iowait},
			{"irq", t.IRQ},
			{"softirq", t.SoftIRQ},
			{"steal", t.Steal},
			{"guest", t.Guest},
			{"guest_nice", t.GuestNice},
		} {
			ch <- counter(c.d.cpuSeconds, m.seconds, cpu, m.mode)
		}
	}
	// /proc/stat has a line for each online CPU, no more.
	s.cpus = len(stat.CPU)
	ch <- gauge(c.d.cpus, float64(s.cpus))
	ch <- gauge(c.d.bootTime, float64(stat.BootTime))
	return nil
}

func (c *Collector) collectLoad(ch chan<- prometheus.Metric) error {
	load, err := c.proc.LoadAvg()
	if err != nil {
		return fmt.Errorf("read load average: %w", err)
	}
	ch <- gauge(c.d.load1, load.Load1)
	ch <- gauge(c.d.load5, load.Load5)
	ch <- gauge(c.d.load15, load.Load15)
	return nil
}

func (c *Collector) collectMeminfo(ch chan<- prometheus.Metric, s *scrape) error {
	mem, err := c.proc.Meminfo()
	if err != nil {
		return fmt.Errorf("read meminfo: %w", err)
	}
	// A field the kernel does not have (no swap support, no hugetlbfs) is
	// nil and left out.
	for _, f := range []struct {
		desc *prometheus.Desc
		v    *uint64
	}{
		{c.d.memTotal, mem.MemTotalBytes},
		{c.d.memAvailable, mem.MemAvailableBytes},
		{c.d.memFree, mem.MemFreeBytes},
		{c.d.memBuffers, mem.BuffersBytes},
		{c.d.memCached, mem.CachedBytes},
		{c.d.swapTotal, mem.SwapTotalBytes},
		{c.d.swapFree, mem.SwapFreeBytes},
		{c.d.hugepages, mem.HugePagesTotal},
		{c.d.hugepagesFree, mem.HugePagesFree},
		{c.d.hugepageSize, mem.HugepagesizeBytes},
		{c.d.anonHugepages, mem.AnonHugePagesBytes},
	} {
		if f.v != nil {
			ch <- gauge(f.desc, float64(*f.v))
		}
	}
	if mem.MemTotalBytes != nil {
		s.memTotal = *mem.MemTotalBytes
	}
	return nil
}

// collectKSM reads /sys/kernel/mm/ksm, which exists only in kernels built
// with KSM; without it there is nothing to report and no error.
func (c *Collector) collectKSM(ch chan<- prometheus.Metric) error {
	dir := filepath.Join(c.cfg.SysFS, "kernel", "mm", "ksm")
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var errs []error
	read := func(name string) (uint64, bool) {
		v, err := readUint(filepath.Join(dir, name))
		if err != nil {
			errs = append(errs, fmt.Errorf("read ksm: %w", err))
			return 0, false
		}
		return v, true
	}
	page := float64(c.cfg.pageSize)
	if v, ok := read("run"); ok {
		ch <- gauge(c.d.ksmRun, float64(v))
	}
	if v, ok := read("pages_shared"); ok {
		ch <- gauge(c.d.ksmShared, float64(v)*page)
	}
	if v, ok := read("pages_sharing"); ok {
		ch <- gauge(c.d.ksmSharing, float64(v)*page)
	}
	if v, ok := read("full_scans"); ok {
		ch <- counter(c.d.ksmFullScans, float64(v))
	}
	return errors.Join(errs...)
}

// readUint reads a sysfs file holding one unsigned number.
func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return v, nil
}

// collectPressure reads the PSI files. A kernel without PSI has no
// /proc/pressure (or, booted with psi=0, refuses to read it): not an error.
func (c *Collector) collectPressure(ch chan<- prometheus.Metric) error {
	var errs []error
	for _, resource := range []string{"cpu", "memory", "io"} {
		psi, err := c.proc.PSIStatsForResource(resource)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.EOPNOTSUPP) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s pressure: %w", resource, err))
			continue
		}
		// The totals are in microseconds.
		if psi.Some != nil {
			ch <- counter(c.d.pressureSome, float64(psi.Some.Total)/1e6, resource)
		}
		if psi.Full != nil {
			ch <- counter(c.d.pressureFull, float64(psi.Full.Total)/1e6, resource)
		}
	}
	return errors.Join(errs...)
}

func (c *Collector) collectDiskstats(ch chan<- prometheus.Metric) error {
	stats, err := c.block.ProcDiskstats()
	if err != nil {
		return fmt.Errorf("read diskstats: %w", err)
	}
	// diskstats counts 512-byte sectors whatever the device's sector size,
	// and milliseconds.
	const sector, ms = 512, 1e-3
	for _, d := range stats {
		if c.cfg.DiskstatsExclude.MatchString(d.DeviceName) {
			continue
		}
		dev := label(d.DeviceName)
		ch <- counter(c.d.diskReads, float64(d.ReadIOs), dev)
		ch <- counter(c.d.diskWrites, float64(d.WriteIOs), dev)
		ch <- counter(c.d.diskReadBytes, float64(d.ReadSectors)*sector, dev)
		ch <- counter(c.d.diskWrittenBytes, float64(d.WriteSectors)*sector, dev)
		ch <- counter(c.d.diskReadTime, float64(d.ReadTicks)*ms, dev)
		ch <- counter(c.d.diskWriteTime, float64(d.WriteTicks)*ms, dev)
		ch <- counter(c.d.diskIOTime, float64(d.IOsTotalTicks)*ms, dev)
		ch <- gauge(c.d.diskIONow, float64(d.IOsInProgress), dev)
	}
	return nil
}

func (c *Collector) collectNetdev(ch chan<- prometheus.Metric) error {
	devs, err := c.proc.NetDev()
	if err != nil {
		return fmt.Errorf("read network devices: %w", err)
	}
	for name, d := range devs {
		dev := label(name)
		ch <- counter(c.d.netRxBytes, float64(d.RxBytes), dev)
		ch <- counter(c.d.netRxPackets, float64(d.RxPackets), dev)
		ch <- counter(c.d.netRxErrors, float64(d.RxErrors), dev)
		ch <- counter(c.d.netRxDrops, float64(d.RxDropped), dev)
		ch <- counter(c.d.netTxBytes, float64(d.TxBytes), dev)
		ch <- counter(c.d.netTxPackets, float64(d.TxPackets), dev)
		ch <- counter(c.d.netTxErrors, float64(d.TxErrors), dev)
		ch <- counter(c.d.netTxDrops, float64(d.TxDropped), dev)
	}
	return nil
}
