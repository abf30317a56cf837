package kvm

import (
	"flag"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"caretaker/collectors"
	"caretaker/internal/golden"
	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestCollectorGolden scrapes the domains of testdata/node.xml, through
// libvirtd's test driver by both forms of its URI, and compares the whole
// output with testdata/node.metrics.
func TestCollectorGolden(t *testing.T) {
	t.Parallel()
	node, err := filepath.Abs(filepath.Join("testdata", "node.xml"))
	if err != nil {
		t.Fatal(err)
	}
	forEachNodeURI(t, node, func(t *testing.T, conn *libvirtconn.Conn, logger *slog.Logger) {
		prepareNode(t, conn)

		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(collectors.NewSet(logger, time.Minute, map[string]collectors.Collector{
			"kvm": New(conn, logger),
		}))
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("gather: %v", err)
		}

		t.Run("promtool", func(t *testing.T) { golden.CheckMetrics(t, golden.Encode(t, mfs)) })

		// The duration varies from run to run; its presence is
		// checked here, the rest against the golden file.
		var stable []*dto.MetricFamily
		for _, mf := range mfs {
			if mf.GetName() == "caretaker_scrape_collector_duration_seconds" {
				continue
			}
			stable = append(stable, mf)
		}
		if len(stable) == len(mfs) {
			t.Errorf("no caretaker_scrape_collector_duration_seconds in the output")
		}
		golden.Compare(t, filepath.Join("testdata", "node.metrics"), golden.Encode(t, stable), *update)
	})
}

// prepareNode does what the test driver cannot read from node.xml: it sets
// autostart on "spare" and destroys "web-3" (shutoff, reason destroyed).
func prepareNode(t *testing.T, conn *libvirtconn.Conn) {
	t.Helper()
	lv, err := conn.Get()
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	for name, act := range map[string]func(libvirt.Domain) error{
		"spare": func(d libvirt.Domain) error { return lv.DomainSetAutostart(d, 1) },
		"web-3": lv.DomainDestroy,
	} {
		dom, err := lv.DomainLookupByName(name)
		if err != nil {
			t.Fatalf("look up %s: %v", name, err)
		}
		if err := act(dom); err != nil {
			t.Fatalf("prepare %s: %v", name, err)
		}
	}
}

func TestCollectorDomainFilter(t *testing.T) {
	t.Parallel()
	needs.Libvirtd(t)
	node, err := filepath.Abs(filepath.Join("testdata", "node.xml"))
	if err != nil {
		t.Fatal(err)
	}
	logger := testLogger(t)
	conn := libvirtconn.New("test://"+node, logger)
	t.Cleanup(func() { conn.Close() })
	c := New(conn, logger, WithDomainMatch(regexp.MustCompile(`^web-[12]$`).MatchString))

	const want = `
# HELP caretaker_kvm_domain_info Identity of a libvirt domain; always 1. cluster and role come from caretaker's domain metadata, or else from a name of the form <cluster>-<role>-<n>, and are empty without either.
# TYPE caretaker_kvm_domain_info gauge
caretaker_kvm_domain_info{cluster="lab",domain="web-1",role="worker",uuid="0a000000-0000-4000-8000-000000000001"} 1
caretaker_kvm_domain_info{cluster="lab",domain="web-2",role="worker",uuid="0a000000-0000-4000-8000-000000000002"} 1
# HELP caretaker_kvm_domains Number of domains defined in libvirt, running or not.
# TYPE caretaker_kvm_domains gauge
caretaker_kvm_domains 2
`
	set := collectors.NewSet(logger, time.Minute, map[string]collectors.Collector{"kvm": c})
	if err := testutil.CollectAndCompare(set, strings.NewReader(want), "caretaker_kvm_domain_info", "caretaker_kvm_domains"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(set, "caretaker_kvm_domain_state"); n != 2 {
		t.Errorf("got %d caretaker_kvm_domain_state series, want 2", n)
	}
}

func TestCollectorLibvirtUnreachable(t *testing.T) {
	t.Parallel()
	uri := "qemu+unix:///system?socket=" + filepath.Join(t.TempDir(), "no-libvirtd.sock")
	logger := testLogger(t)
	conn := libvirtconn.New(uri, logger)
	t.Cleanup(func() { conn.Close() })
	c := New(conn, logger)

	t.Run("Update", func(t *testing.T) {
		ch := make(chan prometheus.Metric, 16)
		err := c.Update(t.Context(), ch)
		close(ch)
		if err == nil {
			t.Fatalf("Update succeeded without libvirt")
		}
		if !strings.Contains(err.Error(), uri) {
			t.Errorf("error %q does not name the URI", err)
		}
		var got []prometheus.Metric
		for m := range ch {
			got = append(got, m)
		}
		if len(got) != 1 || !strings.Contains(got[0].Desc().String(), `"caretaker_kvm_up"`) {
			t.Fatalf("got %v, want caretaker_kvm_up alone", got)
		}
	})

	t.Run("in a Set", func(t *testing.T) {
		set := collectors.NewSet(logger, time.Minute, map[string]collectors.Collector{"kvm": c})
		const want = `
# HELP caretaker_kvm_up Whether libvirt answered the last scrape (1) or not (0).
# TYPE caretaker_kvm_up gauge
caretaker_kvm_up 0
# HELP caretaker_scrape_collector_success Whether a collector succeeded (1) or failed or timed out (0) in this scrape.
# TYPE caretaker_scrape_collector_success gauge
caretaker_scrape_collector_success{collector="kvm"} 0
`
		err := testutil.CollectAndCompare(set, strings.NewReader(want), "caretaker_kvm_up", "caretaker_scrape_collector_success")
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestEmit covers what the test driver does not report (CPU time, vCPUs and
// their delay, balloon and RSS, block and interface stats), each case against
// testdata/emit/<case>.metrics. The stats are shaped like what libvirt's QEMU
// driver returns for a guest with one of two vCPUs online.
func TestEmit(t *testing.T) {
	t.Parallel()
	const uuid = "0a000000-0000-4000-8000-0000000000ff"
	running := []statsVcpu{
		{StateSet: true, State: vcpuRunning, TimeSet: true, Time: 200000000, DelaySet: true, Delay: 1500000000},
		{StateSet: true, State: vcpuOffline, DelaySet: true, Delay: 500000000},
	}
	offline := []statsVcpu{
		{StateSet: true, State: vcpuOffline},
		{StateSet: true, State: vcpuOffline},
	}
	tests := []struct {
		name string
		d    domain
	}{
		{
			name: "running",
			d: domain{
				uuid: uuid, name: "probe", intendedKnown: true, intended: true, crashes: count(1),
				ident: &identity{
					meta: guestmeta.Metadata{Intent: guestmeta.IntentRunning, Cluster: "lab", Role: "worker"}, hasMeta: true,
					ifaces: []iface{
						{device: "vnet0", bridge: "br-lab", mac: "52:54:00:00:00:01"},
						{device: "vnet1", mac: "52:54:00:00:00:02"},
					},
				},
				stats: &domainStats{
					State: &statsState{StateSet: true, State: libvirt.DomainRunning, ReasonSet: true, Reason: 1},
					Cpu:   &statsCPU{TimeSet: true, Time: 228759000},
					Balloon: &statsBalloon{
						CurrentSet: true, Current: 65536, MaximumSet: true, Maximum: 131072, RssSet: true, Rss: 50212,
					},
					Vcpu: running,
					Block: []statsBlock{
						{
							NameSet: true, Name: "vda", RdReqsSet: true, RdReqs: 120, RdBytesSet: true, RdBytes: 4915200,
							RdTimesSet: true, RdTimes: 25000000, WrReqsSet: true, WrReqs: 7, WrBytesSet: true, WrBytes: 28672,
							WrTimesSet: true, WrTimes: 3000000,
						},
						// A drive without a medium reports its name only.
						{NameSet: true, Name: "sda"},
					},
					Net: []statsNet{{
						NameSet: true, Name: "vnet0", RxBytesSet: true, RxBytes: 1024, RxPktsSet: true, RxPkts: 10,
						RxErrsSet: true, RxDropSet: true, RxDrop: 2, TxBytesSet: true, TxBytes: 2048, TxPktsSet: true,
						TxPkts: 20, TxErrsSet: true, TxErrs: 1, TxDropSet: true,
					}},
				},
			},
		},
		{
			// No XML read: cluster and role come from the name.
			name: "crashed-unread",
			d: domain{
				uuid: uuid, name: "prod-worker-3", crashes: count(2),
				stats: &domainStats{
					State:   &statsState{StateSet: true, State: libvirt.DomainShutoff, ReasonSet: true, Reason: 3},
					Cpu:     &statsCPU{TimeSet: true, Time: 560000000},
					Balloon: &statsBalloon{CurrentSet: true, Current: 65536, MaximumSet: true, Maximum: 131072},
					Vcpu:    offline,
				},
			},
		},
		{
			// Meant to run (its metadata says so) but its emulator
			// died: besides the usual series, its state, reason and
			// identity under the names the guest alerts read.
			name: "crashed-intended",
			d: domain{
				uuid: uuid, name: "probe", intendedKnown: true, intended: true, crashes: count(1),
				ident: &identity{
					meta:    guestmeta.Metadata{Intent: guestmeta.IntentRunning, Cluster: "lab", Role: "worker"},
					hasMeta: true,
					ifaces:  []iface{{bridge: "br-lab", mac: "52:54:00:00:00:01"}},
				},
				stats: &domainStats{
					State:   &statsState{StateSet: true, State: libvirt.DomainShutoff, ReasonSet: true, Reason: int(libvirt.DomainShutoffCrashed)},
					Cpu:     &statsCPU{TimeSet: true, Time: 560000000},
					Balloon: &statsBalloon{CurrentSet: true, Current: 65536, MaximumSet: true, Maximum: 131072},
					Vcpu:    offline,
				},
			},
		},
		{
			// Not even crashes: libvirt's events are not available.
			name: "nothing-reported",
			d:    domain{uuid: uuid, name: "probe", intendedKnown: true, stats: &domainStats{}},
		},
		{
			// Two interfaces of a shut-off domain on one bridge (no
			// device yet), one of them listed twice, and a block
			// device reported twice: no duplicate series.
			name: "duplicates",
			d: domain{
				uuid: uuid, name: "prod-cp-1",
				ident: &identity{ifaces: []iface{
					{bridge: "br-prod", mac: "52:54:00:00:00:01"},
					{bridge: "br-prod", mac: "52:54:00:00:00:02"},
					{bridge: "br-prod", mac: "52:54:00:00:00:02"},
				}},
				stats: &domainStats{
					Block: []statsBlock{
						{NameSet: true, Name: "vda", RdBytesSet: true, RdBytes: 1},
						{NameSet: true, Name: "vda", RdBytesSet: true, RdBytes: 2},
						{RdBytesSet: true, RdBytes: 3},
					},
				},
			},
		},
	}
	c := New(nil, testLogger(t))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(emitOnly{c, tt.d})
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatalf("gather: %v", err)
			}
			out := golden.Encode(t, mfs)
			t.Run("promtool", func(t *testing.T) { golden.CheckMetrics(t, out) })
			golden.Compare(t, filepath.Join("testdata", "emit", tt.name+".metrics"), out, *update)
		})
	}
}

// TestEmitUnexpected: the unexpected-state series exist for a domain meant
// to run whose known state is not running, and for no other.
func TestEmitUnexpected(t *testing.T) {
	t.Parallel()
	const uuid = "0a000000-0000-4000-8000-0000000000fe"
	state := func(s libvirt.DomainState, reason int) *domainStats {
		return &domainStats{State: &statsState{StateSet: true, State: s, ReasonSet: true, Reason: reason}}
	}
	names := []string{
		"caretaker_kvm_domain_unexpected_state",
		"caretaker_kvm_domain_unexpected_state_reason",
		"caretaker_kvm_domain_unhealthy_info",
	}
	for _, tt := range []struct {
		name string
		d    domain
		want int // series of each of names
	}{
		{"meant to run, running", domain{intendedKnown: true, intended: true, stats: state(libvirt.DomainRunning, 1)}, 0},
		{"meant to run, shut off (crashed)", domain{intendedKnown: true, intended: true, stats: state(libvirt.DomainShutoff, 3)}, 1},
		{"meant to run, shut off (destroyed)", domain{intendedKnown: true, intended: true, stats: state(libvirt.DomainShutoff, 2)}, 1},
		{"meant to run, crashed", domain{intendedKnown: true, intended: true, stats: state(libvirt.DomainCrashed, 0)}, 1},
		{"meant to run, paused", domain{intendedKnown: true, intended: true, stats: state(libvirt.DomainPaused, 5)}, 1},
		{"meant to stay stopped, shut off", domain{intendedKnown: true, stats: state(libvirt.DomainShutoff, 3)}, 0},
		{"intent unknown, shut off", domain{stats: state(libvirt.DomainShutoff, 3)}, 0},
		{"meant to run, state unknown", domain{intendedKnown: true, intended: true, stats: &domainStats{}}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.d.uuid, tt.d.name = uuid, "lab-worker-1"
			c := New(nil, testLogger(t))
			for _, name := range names {
				if n := testutil.CollectAndCount(emitOnly{c, tt.d}, name); n != tt.want {
					t.Errorf("%s: %d series, want %d", name, n, tt.want)
				}
			}
		})
	}
}

func count(n uint64) *uint64 { return &n }

// emitOnly is an unchecked prometheus.Collector that emits one domain.
type emitOnly struct {
	c *Collector
	d domain
}

func (e emitOnly) Describe(chan<- *prometheus.Desc)    {}
func (e emitOnly) Collect(ch chan<- prometheus.Metric) { e.c.emit(ch, e.d) }

// forEachNodeURI runs fn against the node file through libvirtd's test
// driver, by both forms of its URI (skipped when libvirtd is not running).
func forEachNodeURI(t *testing.T, node string, fn func(t *testing.T, conn *libvirtconn.Conn, logger *slog.Logger)) {
	for _, tt := range []struct {
		name string
		uri  string
	}{
		{name: "test", uri: "test://" + node},
		{name: "test+unix", uri: "test+unix://" + node},
	} {
		t.Run(tt.name, func(t *testing.T) {
			needs.Libvirtd(t)
			logger := testLogger(t)
			conn := libvirtconn.New(tt.uri, logger)
			t.Cleanup(func() { conn.Close() })
			fn(t, conn, logger)
		})
	}
}
