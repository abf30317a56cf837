package host

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"caretaker/collectors"
	"caretaker/internal/golden"
	"caretaker/internal/needs"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fixtureStats are what the fake statfs returns for the mount points of
// testdata/proc/1/mountinfo, under the RootFS /host.
func fixtureStats() map[string]fsStats {
	return map[string]fsStats{
		"/host":                        {size: 107374182400, free: 53687091200, avail: 48318382080, files: 6553600, filesFree: 6012011},
		"/host/boot":                   {size: 1073741824, free: 805306368, avail: 751619276, files: 65536, filesFree: 65211},
		"/host/var/lib/libvirt/images": {size: 2199023255552, free: 879609302220, avail: 879609302220, files: 1073741760, filesFree: 1073741001},
		"/host/srv/guest images":       {size: 10995116277760, free: 5497558138880, avail: 5497558138880, files: 0, filesFree: 0},
		"/host/var/lib/caretaker":      {size: 107374182400, free: 53687091200, avail: 48318382080, files: 6553600, filesFree: 6012011},
		// /host/srv/iso is missing: its NFS handle went stale.
	}
}

func fakeStatfs(stats map[string]fsStats) func(string) (fsStats, error) {
	return func(path string) (fsStats, error) {
		st, ok := stats[path]
		if !ok {
			return fsStats{}, &os.PathError{Op: "statfs", Path: path, Err: syscall.ESTALE}
		}
		return st, nil
	}
}

// fixtureConfig reads the tree under root (testdata or a copy of it).
func fixtureConfig(root string) Config {
	return Config{
		ProcFS: filepath.Join(root, "proc"),
		SysFS:  filepath.Join(root, "sys"),
		RootFS: "/host",
		// A character device every Linux machine has.
		DevKVM:       "/dev/null",
		LibvirtCheck: func(context.Context) error { return nil },
		Guests: func(context.Context) (int, uint64, error) {
			return 6, 25165824000, nil
		},
		statfs:   fakeStatfs(fixtureStats()),
		pageSize: 4096,
	}
}

func newCollector(t testing.TB, cfg Config) *Collector {
	t.Helper()
	c, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// copyFixture copies testdata to a temporary directory the test may break.
func copyFixture(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS("testdata")); err != nil {
		t.Fatalf("copy testdata: %v", err)
	}
	return dir
}

// updateOnce is an unchecked prometheus.Collector running one Update and
// keeping its error.
type updateOnce struct {
	c   *Collector
	err error
}

func (u *updateOnce) Describe(chan<- *prometheus.Desc) {}
func (u *updateOnce) Collect(ch chan<- prometheus.Metric) {
	u.err = u.c.Update(context.Background(), ch)
}

// scrapeOnce runs one Update through a pedantic registry.
func scrapeOnce(t *testing.T, c *Collector) (series, error) {
	t.Helper()
	u := &updateOnce{c: c}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(u)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	return newSeries(mfs), u.err
}

// series maps a metric name and its labels (`name{a="b"}`) to the value.
type series map[string]float64

func newSeries(mfs []*dto.MetricFamily) series {
	s := series{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			key := mf.GetName()
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			var v float64
			switch {
			case m.Gauge != nil:
				v = m.GetGauge().GetValue()
			case m.Counter != nil:
				v = m.GetCounter().GetValue()
			}
			s[key] = v
		}
	}
	return s
}

// hasName reports whether any series of the metric name is present.
func (s series) hasName(name string) bool {
	for k := range s {
		if k == name || strings.HasPrefix(k, name+"{") {
			return true
		}
	}
	return false
}

func TestCollectorGolden(t *testing.T) {
	logger := testLogger(t)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collectors.NewSet(logger, time.Minute, map[string]collectors.Collector{
		"host": newCollector(t, fixtureConfig("testdata")),
	}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}

	t.Run("promtool", func(t *testing.T) { golden.CheckMetrics(t, golden.Encode(t, mfs)) })

	// The duration varies from run to run: checked present here, the
	// rest against the golden file.
	var stable []*dto.MetricFamily
	for _, mf := range mfs {
		if mf.GetName() != "caretaker_scrape_collector_duration_seconds" {
			stable = append(stable, mf)
		}
	}
	if len(stable) == len(mfs) {
		t.Errorf("no caretaker_scrape_collector_duration_seconds in the output")
	}
	golden.Compare(t, filepath.Join("testdata", "host.golden.prom"), golden.Encode(t, stable), *update)
}

// TestBrokenPart shows that a part that cannot be read leaves the others
// in the scrape and makes Update fail.
func TestBrokenPart(t *testing.T) {
	tests := []struct {
		name    string
		breakIt func(t *testing.T, root string)
		wantErr string
		absent  []string
	}{
		{
			name:    "no diskstats",
			breakIt: func(t *testing.T, root string) { remove(t, root, "proc/diskstats") },
			wantErr: "read diskstats",
			absent:  []string{"caretaker_host_disk_reads_completed_total", "caretaker_host_disk_io_now"},
		},
		{
			name:    "garbled stat",
			breakIt: func(t *testing.T, root string) { write(t, root, "proc/stat", "cpu0 x y z\n") },
			wantErr: "read cpu times",
			absent:  []string{"caretaker_host_cpu_seconds_total", "caretaker_host_cpus", "caretaker_host_vcpu_overcommit_ratio"},
		},
		{
			// procfs indexes the fields of a short line: a panic,
			// which must stay within the part.
			name: "truncated net/dev line",
			breakIt: func(t *testing.T, root string) {
				write(t, root, "proc/net/dev", "Inter-|\n face |\n  eth0: 1 2\n")
			},
			wantErr: "collect netdev: panic",
			absent:  []string{"caretaker_host_network_receive_bytes_total"},
		},
		{
			name:    "no mounts",
			breakIt: func(t *testing.T, root string) { remove(t, root, "proc/1/mountinfo") },
			wantErr: "read mounts",
			absent:  []string{"caretaker_host_filesystem_info", "caretaker_host_filesystem_size_bytes"},
		},
		{
			name:    "garbled ksm counter",
			breakIt: func(t *testing.T, root string) { write(t, root, "sys/kernel/mm/ksm/pages_sharing", "lots\n") },
			wantErr: "pages_sharing",
			absent:  []string{"caretaker_host_ksm_pages_sharing_bytes"},
		},
	}
	// Every part but the broken one still reports one of these.
	everyPart := []string{
		"caretaker_host_cpus", "caretaker_host_load1", "caretaker_host_memory_total_bytes",
		"caretaker_host_ksm_run", "caretaker_host_pressure_some_stalled_seconds_total",
		"caretaker_host_disk_reads_completed_total", "caretaker_host_network_receive_bytes_total",
		"caretaker_host_filesystem_size_bytes", "caretaker_host_kvm_device_present",
		"caretaker_host_libvirtd_up", "caretaker_host_guest_vcpus",
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := copyFixture(t)
			tt.breakIt(t, root)
			got, err := scrapeOnce(t, newCollector(t, fixtureConfig(root)))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Update returned %v, want an error with %q", err, tt.wantErr)
			}
			for _, name := range tt.absent {
				if got.hasName(name) {
					t.Errorf("%s is in the output, want it left out", name)
				}
			}
			for _, name := range everyPart {
				if !got.hasName(name) && !contains(tt.absent, name) {
					t.Errorf("%s is missing: a broken part took another with it", name)
				}
			}
		})
	}

	t.Run("in a Set", func(t *testing.T) {
		root := copyFixture(t)
		remove(t, root, "proc/diskstats")
		set := collectors.NewSet(testLogger(t), time.Minute, map[string]collectors.Collector{
			"host": newCollector(t, fixtureConfig(root)),
		})
		const want = `
# HELP caretaker_host_cpus Number of online CPUs.
# TYPE caretaker_host_cpus gauge
caretaker_host_cpus 2
# HELP caretaker_scrape_collector_success Whether a collector succeeded (1) or failed or timed out (0) in this scrape.
# TYPE caretaker_scrape_collector_success gauge
caretaker_scrape_collector_success{collector="host"} 0
`
		if err := testutil.CollectAndCompare(set, strings.NewReader(want), "caretaker_host_cpus", "caretaker_scrape_collector_success"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestOptionalMissing: a kernel without PSI, KSM or huge pages is not a
// failure; their metrics are left out.
func TestOptionalMissing(t *testing.T) {
	root := copyFixture(t)
	remove(t, root, "proc/pressure")
	remove(t, root, "sys/kernel/mm/ksm")
	meminfo, err := os.ReadFile(filepath.Join(root, "proc/meminfo"))
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, line := range strings.Split(string(meminfo), "\n") {
		if !strings.Contains(line, "Huge") && !strings.HasPrefix(line, "Swap") {
			kept = append(kept, line)
		}
	}
	write(t, root, "proc/meminfo", strings.Join(kept, "\n"))

	got, err := scrapeOnce(t, newCollector(t, fixtureConfig(root)))
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	for _, name := range []string{
		"caretaker_host_pressure_some_stalled_seconds_total", "caretaker_host_pressure_full_stalled_seconds_total",
		"caretaker_host_ksm_run", "caretaker_host_ksm_pages_sharing_bytes",
		"caretaker_host_memory_hugepages", "caretaker_host_memory_hugepage_size_bytes",
		"caretaker_host_memory_anon_hugepages_bytes", "caretaker_host_memory_swap_total_bytes",
	} {
		if got.hasName(name) {
			t.Errorf("%s is in the output without its source", name)
		}
	}
	if !got.hasName("caretaker_host_memory_total_bytes") {
		t.Errorf("caretaker_host_memory_total_bytes is missing")
	}
}

// TestFilesystemTimeout: a statfs that hangs is reported as timed out, is
// not started again while it hangs, and once it returns the mount is
// statted and reported again.
func TestFilesystemTimeout(t *testing.T) {
	const stuck = "/host/var/lib/libvirt/images"
	const mp = `{mountpoint="/var/lib/libvirt/images"}`
	stats := fixtureStats()
	release := make(chan struct{})
	var mu sync.Mutex
	calls := map[string]int{}
	cfg := fixtureConfig("testdata")
	statfs := fakeStatfs(stats)
	cfg.statfs = func(path string) (fsStats, error) {
		mu.Lock()
		calls[path]++
		mu.Unlock()
		if path == stuck {
			<-release
		}
		return statfs(path)
	}
	callsOf := func() int {
		mu.Lock()
		defer mu.Unlock()
		return calls[stuck]
	}
	// The stuck mount times out whatever the timeout: keep the scrapes
	// that wait for it short.
	cfg.FilesystemTimeout = 10 * time.Millisecond
	c := newCollector(t, cfg)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
		c.statWG.Wait()
	})

	for scrape := 1; scrape <= 2; scrape++ {
		got, err := scrapeOnce(t, c)
		if err != nil {
			t.Errorf("scrape %d: Update: %v; a hung mount is the host's state, not a failure", scrape, err)
		}
		if v, ok := got["caretaker_host_filesystem_stat_timeout"+mp]; !ok || v != 1 {
			t.Errorf("scrape %d: stat_timeout = %v (present %v), want 1", scrape, v, ok)
		}
		if _, ok := got["caretaker_host_filesystem_size_bytes"+mp]; ok {
			t.Errorf("scrape %d: size of the hung mount reported", scrape)
		}
		if _, ok := got["caretaker_host_filesystem_info"+`{device="/dev/mapper/vg0-images",fstype="xfs",mountpoint="/var/lib/libvirt/images"}`]; !ok {
			t.Errorf("scrape %d: filesystem_info of the hung mount missing", scrape)
		}
		if n := callsOf(); n != 1 {
			t.Errorf("scrape %d: %d statfs calls of %s, want 1 while it hangs", scrape, n, stuck)
		}
	}

	close(release)
	c.statWG.Wait()
	// No scrape below may time out.
	c.cfg.FilesystemTimeout = time.Hour
	got, err := scrapeOnce(t, c)
	if err != nil {
		t.Errorf("Update after release: %v", err)
	}
	if v := got["caretaker_host_filesystem_stat_timeout"+mp]; v != 0 {
		t.Errorf("after release: stat_timeout = %v, want 0", v)
	}
	if v, want := got["caretaker_host_filesystem_size_bytes"+mp], float64(stats[stuck].size); v != want {
		t.Errorf("after release: size = %v, want %v", v, want)
	}
	if n := callsOf(); n != 2 {
		t.Errorf("after release: %d statfs calls of %s, want 2", n, stuck)
	}
}

func TestOvercommit(t *testing.T) {
	const help = `
# HELP caretaker_host_guest_memory_bytes Memory given to the running guests, in bytes.
# TYPE caretaker_host_guest_memory_bytes gauge
# HELP caretaker_host_guest_vcpus Number of vCPUs given to the running guests.
# TYPE caretaker_host_guest_vcpus gauge
# HELP caretaker_host_memory_overcommit_ratio Memory given to the running guests per byte of host RAM (MemTotal); above 1 the host's memory is overcommitted.
# TYPE caretaker_host_memory_overcommit_ratio gauge
# HELP caretaker_host_vcpu_overcommit_ratio vCPUs given to the running guests per online host CPU; above 1 the host's CPUs are overcommitted.
# TYPE caretaker_host_vcpu_overcommit_ratio gauge
`
	// The fixture host has 2 CPUs and MemTotal 16384000 kB.
	tests := []struct {
		name      string
		guests    func(context.Context) (int, uint64, error)
		breakStat bool
		want      string
		wantErr   string
	}{
		{
			name:   "overcommitted",
			guests: func(context.Context) (int, uint64, error) { return 6, 25165824000, nil },
			want: `
caretaker_host_guest_memory_bytes 2.5165824e+10
caretaker_host_guest_vcpus 6
caretaker_host_memory_overcommit_ratio 1.5
caretaker_host_vcpu_overcommit_ratio 3
`,
		},
		{
			name:   "half committed",
			guests: func(context.Context) (int, uint64, error) { return 1, 8388608000, nil },
			want: `
caretaker_host_guest_memory_bytes 8.388608e+09
caretaker_host_guest_vcpus 1
caretaker_host_memory_overcommit_ratio 0.5
caretaker_host_vcpu_overcommit_ratio 0.5
`,
		},
		{
			name:   "no running guests",
			guests: func(context.Context) (int, uint64, error) { return 0, 0, nil },
			want: `
caretaker_host_guest_memory_bytes 0
caretaker_host_guest_vcpus 0
caretaker_host_memory_overcommit_ratio 0
caretaker_host_vcpu_overcommit_ratio 0
`,
		},
		{
			name:      "host CPUs unknown",
			guests:    func(context.Context) (int, uint64, error) { return 6, 25165824000, nil },
			breakStat: true,
			wantErr:   "read cpu times",
			want: `
caretaker_host_guest_memory_bytes 2.5165824e+10
caretaker_host_guest_vcpus 6
caretaker_host_memory_overcommit_ratio 1.5
`,
		},
		{
			name:    "libvirt fails",
			guests:  func(context.Context) (int, uint64, error) { return 0, 0, errors.New("connection reset") },
			wantErr: "count guest vCPUs and memory: connection reset",
		},
		{
			name: "not configured",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := "testdata"
			if tt.breakStat {
				root = copyFixture(t)
				remove(t, root, "proc/stat")
			}
			cfg := fixtureConfig(root)
			cfg.Guests = tt.guests
			u := &updateOnce{c: newCollector(t, cfg)}
			want := ""
			if tt.want != "" {
				want = help + tt.want
			}
			err := testutil.CollectAndCompare(u, strings.NewReader(want),
				"caretaker_host_guest_vcpus", "caretaker_host_guest_memory_bytes",
				"caretaker_host_vcpu_overcommit_ratio", "caretaker_host_memory_overcommit_ratio")
			if err != nil {
				t.Error(err)
			}
			switch {
			case tt.wantErr == "" && u.err != nil:
				t.Errorf("Update: %v", u.err)
			case tt.wantErr != "" && (u.err == nil || !strings.Contains(u.err.Error(), tt.wantErr)):
				t.Errorf("Update returned %v, want an error with %q", u.err, tt.wantErr)
			}
		})
	}
}

func TestLibvirtdUp(t *testing.T) {
	const name = "caretaker_host_libvirtd_up"
	tests := []struct {
		name    string
		check   func(context.Context) error
		want    float64
		present bool
	}{
		{name: "answers", check: func(context.Context) error { return nil }, want: 1, present: true},
		{name: "down", check: func(context.Context) error {
			return errors.New("dial unix /run/libvirt/libvirt-sock: connect: no such file or directory")
		}, want: 0, present: true},
		{name: "not checked", check: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fixtureConfig("testdata")
			cfg.LibvirtCheck = tt.check
			got, err := scrapeOnce(t, newCollector(t, cfg))
			if err != nil {
				t.Errorf("Update: %v; libvirtd being down is not a collector failure", err)
			}
			v, ok := got[name]
			if ok != tt.present || v != tt.want {
				t.Errorf("%s = %v (present %v), want %v (present %v)", name, v, ok, tt.want, tt.present)
			}
		})
	}
}

func TestKVMDevicePresent(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "kvm")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		want float64
	}{
		{"character device", "/dev/null", 1},
		{"regular file", regular, 0},
		{"directory", dir, 0},
		{"missing", filepath.Join(dir, "missing"), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fixtureConfig("testdata")
			cfg.DevKVM = tt.path
			got, err := scrapeOnce(t, newCollector(t, cfg))
			if err != nil {
				t.Errorf("Update: %v", err)
			}
			if v, ok := got["caretaker_host_kvm_device_present"]; !ok || v != tt.want {
				t.Errorf("kvm_device_present = %v (present %v), want %v", v, ok, tt.want)
			}
		})
	}
}

// TestKVMDeviceUnderRootFS: without DevKVM the device is looked up under
// RootFS, as an agent in a container sees the host's /dev at /host/dev;
// the machine's own /dev/kvm plays no part.
func TestKVMDeviceUnderRootFS(t *testing.T) {
	withKVM := t.TempDir()
	if err := os.Mkdir(filepath.Join(withKVM, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A character device every Linux machine has, standing in for kvm.
	if err := os.Symlink("/dev/null", filepath.Join(withKVM, "dev", "kvm")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, root string
		want       float64
	}{
		{"present", withKVM, 1},
		{"absent", t.TempDir(), 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fixtureConfig("testdata")
			cfg.RootFS, cfg.DevKVM = tt.root, ""
			got, err := scrapeOnce(t, newCollector(t, cfg))
			if err != nil {
				t.Errorf("Update: %v", err)
			}
			if v, ok := got["caretaker_host_kvm_device_present"]; !ok || v != tt.want {
				t.Errorf("kvm_device_present under %s = %v (present %v), want %v", tt.root, v, ok, tt.want)
			}
		})
	}
}

// TestKVMRequired: a host declares by default that its guests need KVM;
// one whose guests run under TCG says it does not.
func TestKVMRequired(t *testing.T) {
	for _, tt := range []struct {
		notRequired bool
		want        float64
	}{{false, 1}, {true, 0}} {
		cfg := fixtureConfig("testdata")
		cfg.KVMNotRequired = tt.notRequired
		got, err := scrapeOnce(t, newCollector(t, cfg))
		if err != nil {
			t.Errorf("Update: %v", err)
		}
		if v, ok := got["caretaker_host_kvm_required"]; !ok || v != tt.want {
			t.Errorf("KVMNotRequired %v: kvm_required = %v (present %v), want %v", tt.notRequired, v, ok, tt.want)
		}
	}
}

func TestNewBadRoots(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	for _, cfg := range []Config{{ProcFS: missing}, {SysFS: missing}} {
		if _, err := New(cfg, testLogger(t)); err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("New(%+v) returned %v, want an error naming %s", cfg, err, missing)
		}
	}
}

// TestRealHost scrapes the machine the test runs on.
func TestRealHost(t *testing.T) {
	for _, dir := range []string{"/proc/self", "/sys/kernel"} {
		if _, err := os.Stat(dir); err != nil {
			needs.Missing(t, "no procfs or sysfs here: %v", err)
		}
	}
	c := newCollector(t, Config{})
	got, err := scrapeOnce(t, c)
	if err != nil {
		t.Errorf("Update: %v", err)
	}
	for _, name := range []string{
		"caretaker_host_cpu_seconds_total{cpu=\"0\",mode=\"steal\"}",
		"caretaker_host_cpu_seconds_total{cpu=\"0\",mode=\"guest\"}",
		"caretaker_host_load1",
		"caretaker_host_kvm_device_present",
		"caretaker_host_network_receive_bytes_total{device=\"lo\"}",
	} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s is missing", name)
		}
	}
	for _, name := range []string{
		"caretaker_host_cpus", "caretaker_host_memory_total_bytes", "caretaker_host_boot_time_seconds",
		"caretaker_host_filesystem_size_bytes{mountpoint=\"/\"}",
	} {
		if v := got[name]; v <= 0 {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}
}

func TestUnescapeMountField(t *testing.T) {
	tests := []struct{ in, want string }{
		{`/srv/iso`, `/srv/iso`},
		{`/srv/guest\040images`, `/srv/guest images`},
		{`/a\011b\012c\134d`, "/a\tb\nc\\d"},
		{`/trailing\04`, `/trailing\04`},
		{`/not\8octal`, `/not\8octal`},
		{`/too\777big`, `/too\777big`},
		{`\`, `\`},
	}
	for _, tt := range tests {
		if got := unescapeMountField(tt.in); got != tt.want {
			t.Errorf("unescapeMountField(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// escapeMountField escapes as the kernel does in mountinfo (mangle()).
func escapeMountField(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			b.WriteByte('\\')
			b.WriteByte('0' + c>>6)
			b.WriteByte('0' + c>>3&7)
			b.WriteByte('0' + c&7)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func FuzzUnescapeMountField(f *testing.F) {
	for _, s := range []string{"/", "/srv/guest images", "/a\tb\nc\\d", `\040`, `\\`, "\xff/odd"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		if got := unescapeMountField(escapeMountField(path)); got != path {
			t.Errorf("unescape(escape(%q)) = %q", path, got)
		}
		// Whatever a file holds, unescaping never grows it.
		if got := unescapeMountField(path); len(got) > len(path) {
			t.Errorf("unescape(%q) = %q, longer", path, got)
		}
	})
}

func BenchmarkUpdate(b *testing.B) {
	c := newCollector(b, fixtureConfig("testdata"))
	c.logger = slog.New(slog.DiscardHandler)
	ch := make(chan prometheus.Metric, 1024)
	done := make(chan struct{})
	go func() {
		for range ch {
		}
		close(done)
	}()
	ctx := context.Background()
	for b.Loop() {
		if err := c.Update(ctx, ch); err != nil {
			b.Fatal(err)
		}
	}
	close(ch)
	<-done
}

func remove(t *testing.T, root, rel string) {
	t.Helper()
	if err := os.RemoveAll(filepath.Join(root, rel)); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, root, rel, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(root, rel), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Several servers scrape every agent: scrapes that come while a call to
// libvirt runs share it, each reporting its result, and libvirt is called
// once, not once per scrape, nor refused.
func TestConcurrentScrapesShareCalls(t *testing.T) {
	cfg := fixtureConfig("testdata")
	release := make(chan struct{})
	var checks, counts atomic.Int32
	cfg.LibvirtCheck = func(context.Context) error {
		checks.Add(1)
		<-release
		return nil
	}
	cfg.Guests = func(context.Context) (int, uint64, error) {
		counts.Add(1)
		<-release
		return 6, 25165824000, nil
	}
	c := newCollector(t, cfg)
	const scrapes = 3
	results := make(chan series, scrapes)
	var started sync.WaitGroup
	for range scrapes {
		started.Add(1)
		go func() {
			started.Done()
			got, err := scrapeOnce(t, c)
			if err != nil {
				t.Errorf("Update: %v", err)
			}
			results <- got
		}()
	}
	started.Wait()
	// Every scrape has joined the call under way before it returns.
	for c.libvirtCheck.waiting() < scrapes || c.guests.waiting() < scrapes {
		time.Sleep(time.Millisecond)
	}
	close(release)
	for range scrapes {
		got := <-results
		if got["caretaker_host_libvirtd_up"] != 1 || got["caretaker_host_guest_vcpus"] != 6 {
			t.Errorf("a scrape that shared the call got libvirtd_up %v, guest_vcpus %v; want 1, 6",
				got["caretaker_host_libvirtd_up"], got["caretaker_host_guest_vcpus"])
		}
	}
	if checks.Load() != 1 || counts.Load() != 1 {
		t.Errorf("libvirt checked %d times and guests counted %d times for %d concurrent scrapes, want once each", checks.Load(), counts.Load(), scrapes)
	}
}
