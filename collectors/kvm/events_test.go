package kvm

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"libvirt.org/go/libvirt"

	"caretaker/collectors"
	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
)

// step is one event fed to memory.
type step struct {
	uuid   string
	t      libvirt.DomainEventType
	detail int
	reboot bool
}

func lifecycleStep(t libvirt.DomainEventType, detail int) step {
	return step{uuid: "a", t: t, detail: detail}
}

func TestMemoryCountsEvents(t *testing.T) {
	t.Parallel()
	var (
		// What libvirt's QEMU driver reports when QEMU's process is
		// killed, and after a panic when on_crash is destroy.
		killed    = lifecycleStep(libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_FAILED))
		panicStop = lifecycleStep(libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_CRASHED))
		destroyed = lifecycleStep(libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_DESTROYED))
		shutOff   = lifecycleStep(libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_SHUTDOWN))
		panicked  = lifecycleStep(libvirt.DOMAIN_EVENT_CRASHED, int(libvirt.DOMAIN_EVENT_CRASHED_PANICKED))
		booted    = lifecycleStep(libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_BOOTED))
		shutdown  = lifecycleStep(libvirt.DOMAIN_EVENT_SHUTDOWN, int(libvirt.DOMAIN_EVENT_SHUTDOWN_FINISHED))
		rebooted  = step{uuid: "a", reboot: true}
	)
	otherKilled := killed
	otherKilled.uuid = "b"

	tests := []struct {
		name    string
		steps   []step
		crashes uint64 // of domain a
		events  map[eventKind]uint64
	}{
		{
			name:    "process killed",
			steps:   []step{killed},
			crashes: 1,
			events:  map[eventKind]uint64{eventStopped: 1},
		},
		{
			name:    "panic, then destroyed by on_crash: one crash",
			steps:   []step{panicked, panicStop},
			crashes: 1,
			events:  map[eventKind]uint64{eventCrashed: 1, eventStopped: 1},
		},
		{
			name:    "panic, kept, then destroyed by hand",
			steps:   []step{panicked, destroyed},
			crashes: 1,
			events:  map[eventKind]uint64{eventCrashed: 1, eventStopped: 1},
		},
		{
			name:    "crash and restart between two scrapes, twice",
			steps:   []step{killed, booted, killed, booted},
			crashes: 2,
			events:  map[eventKind]uint64{eventStopped: 2, eventStarted: 2},
		},
		{
			name:    "panic, restarted, panic, destroyed",
			steps:   []step{panicked, booted, panicked, panicStop},
			crashes: 2,
			events:  map[eventKind]uint64{eventCrashed: 2, eventStarted: 1, eventStopped: 1},
		},
		{
			name:    "destroyed by on_crash without a panic event first",
			steps:   []step{panicStop},
			crashes: 1,
			events:  map[eventKind]uint64{eventStopped: 1},
		},
		{
			name:    "killed after a panic was handled and the guest restarted",
			steps:   []step{panicked, booted, killed},
			crashes: 2,
			events:  map[eventKind]uint64{eventCrashed: 1, eventStarted: 1, eventStopped: 1},
		},
		{
			name:   "clean shutdown",
			steps:  []step{shutdown, shutOff},
			events: map[eventKind]uint64{eventShutdown: 1, eventStopped: 1},
		},
		{
			name:   "destroyed",
			steps:  []step{destroyed},
			events: map[eventKind]uint64{eventStopped: 1},
		},
		{
			name:   "rebooted",
			steps:  []step{rebooted, rebooted},
			events: map[eventKind]uint64{eventRebooted: 2},
		},
		{
			name:   "another domain crashed",
			steps:  []step{otherKilled},
			events: map[eventKind]uint64{eventStopped: 1},
		},
		{
			name:   "an event type newer than this code",
			steps:  []step{lifecycleStep(libvirt.DomainEventType(99), 0)},
			events: map[eventKind]uint64{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMemory()
			m.setEventsOK(true)
			for _, s := range tt.steps {
				if s.reboot {
					m.rebooted()
				} else {
					m.lifecycle(s.uuid, s.t, s.detail)
				}
			}
			doms := []domain{{uuid: "a"}}
			if !m.crashes(doms) || doms[0].crashes == nil {
				t.Fatalf("no crash count with the callbacks registered")
			}
			if *doms[0].crashes != tt.crashes {
				t.Errorf("crashes of a = %d, want %d", *doms[0].crashes, tt.crashes)
			}
			got := m.eventCounts()
			for k := range numEventKinds {
				if got[k] != tt.events[k] {
					t.Errorf("%s events = %d, want %d", k, got[k], tt.events[k])
				}
			}
		})
	}
}

func TestMemoryCachesIdentity(t *testing.T) {
	t.Parallel()
	ident := identity{meta: guestmeta.Metadata{Cluster: "lab"}, hasMeta: true}
	// store takes a ticket for domain a with ID 1 and caches ident with it.
	store := func(m *memory) {
		_, _, tk := m.identity("a", 1)
		m.storeIdentity("a", 1, ident, tk)
	}
	connected := func(m *memory) { m.connected(); m.setEventsOK(true) }
	stopped := func(m *memory, uuid string) {
		m.lifecycle(uuid, libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_DESTROYED))
	}
	tests := []struct {
		name string
		// run acts on a memory whose callbacks are registered; the
		// test then looks up domain a with ID 1.
		run    func(m *memory)
		cached bool
	}{
		{name: "stored", run: store, cached: true},
		{name: "nothing stored", run: func(*memory) {}},
		{
			name:   "another domain changed",
			run:    func(m *memory) { store(m); m.changed("b"); stopped(m, "b") },
			cached: true,
		},
		{name: "metadata or devices changed", run: func(m *memory) { store(m); m.changed("a") }},
		{name: "lifecycle event", run: func(m *memory) { store(m); stopped(m, "a") }},
		{
			name: "event while reading",
			run: func(m *memory) {
				_, _, tk := m.identity("a", 1)
				m.changed("a")
				m.storeIdentity("a", 1, ident, tk)
			},
		},
		{
			name: "restarted: read for another ID",
			run: func(m *memory) {
				_, _, tk := m.identity("a", 2)
				m.storeIdentity("a", 2, ident, tk)
			},
		},
		{name: "reconnected", run: func(m *memory) { store(m); connected(m) }},
		{
			name: "reconnected while reading",
			run: func(m *memory) {
				_, _, tk := m.identity("a", 1)
				connected(m)
				m.storeIdentity("a", 1, ident, tk)
			},
		},
		{name: "no callbacks", run: func(m *memory) { m.setEventsOK(false); store(m) }},
		{name: "callbacks lost", run: func(m *memory) { store(m); m.setEventsOK(false) }},
		{
			name: "pruned: gone from libvirt's list",
			run:  func(m *memory) { store(m); m.prune(map[string]struct{}{"b": {}}, m.now()) },
		},
		{
			name:   "kept: in libvirt's list",
			run:    func(m *memory) { store(m); m.prune(map[string]struct{}{"a": {}}, m.now()) },
			cached: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMemory()
			connected(m)
			tt.run(m)
			got, ok, _ := m.identity("a", 1)
			if ok != tt.cached {
				t.Fatalf("cached = %v, want %v", ok, tt.cached)
			}
			if ok && !slices.Equal(got.ifaces, ident.ifaces) || ok && got.meta != ident.meta {
				t.Errorf("cached identity %+v, want %+v", got, ident)
			}
		})
	}
}

func TestMemoryPruneKeepsDomainsNewerThanTheList(t *testing.T) {
	t.Parallel()
	m := newMemory()
	m.setEventsOK(true)
	m.lifecycle("gone", libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_CRASHED))
	m.lifecycle("kept", libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_CRASHED))
	since := m.now()
	// Defined and crashed after libvirt listed the domains.
	m.lifecycle("new", libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_CRASHED))
	m.prune(map[string]struct{}{"kept": {}}, since)

	doms := []domain{{uuid: "gone"}, {uuid: "kept"}, {uuid: "new"}}
	m.crashes(doms)
	for _, d := range doms {
		want := uint64(1)
		if d.uuid == "gone" {
			want = 0
		}
		if d.crashes == nil || *d.crashes != want {
			t.Errorf("crashes of %s = %v, want %d", d.uuid, d.crashes, want)
		}
	}
}

// eventWatcher receives the events the collector receives about some
// domains: its callbacks are registered after the collector's, and libvirt
// calls the callbacks of one event in the order they were registered, so
// once the watcher has an event the collector has counted it. The callbacks
// are registered for each domain: libvirt refuses a second callback for
// every domain on one connection, as the binding passes the same C function.
type eventWatcher struct {
	ch chan string
}

func watchEvents(t *testing.T, conn *libvirtconn.Conn, names ...string) *eventWatcher {
	t.Helper()
	w := &eventWatcher{ch: make(chan string, 64)}
	conn.OnConnect(func(lv *libvirt.Connect) func() {
		var ids []int
		for _, name := range names {
			dom, err := lv.LookupDomainByName(name)
			if err != nil {
				t.Errorf("look up %s: %v", name, err)
				continue
			}
			id, err := lv.DomainEventLifecycleRegister(dom, func(_ *libvirt.Connect, _ *libvirt.Domain, ev *libvirt.DomainEventLifecycle) {
				kind, _ := lifecycleKind(ev.Event)
				w.ch <- fmt.Sprintf("%s %s %d", name, kind, ev.Detail)
			})
			if err != nil {
				t.Errorf("register test lifecycle callback: %v", err)
			} else {
				ids = append(ids, id)
			}
			id, err = lv.DomainEventMetadataChangeRegister(dom, func(*libvirt.Connect, *libvirt.Domain, *libvirt.DomainEventMetadataChange) {
				w.ch <- name + " metadata"
			})
			if err != nil {
				t.Errorf("register test metadata callback: %v", err)
			} else {
				ids = append(ids, id)
			}
			dom.Free()
		}
		return func() {
			for _, id := range ids {
				_ = lv.DomainEventDeregister(id)
			}
		}
	})
	// Connect now if conn has not yet, so that the callbacks (the
	// collector's first) are registered before the test acts.
	if _, err := conn.Get(); err != nil {
		t.Fatal(err)
	}
	return w
}

// await waits for an event whose description starts with prefix, skipping
// others.
func (w *eventWatcher) await(t *testing.T, prefix string) {
	t.Helper()
	timeout := time.After(time.Minute)
	for {
		select {
		case ev := <-w.ch:
			if strings.HasPrefix(ev, prefix) {
				return
			}
			t.Logf("event %q while waiting for %q", ev, prefix)
		case <-timeout:
			t.Fatalf("no event %q within a minute", prefix)
		}
	}
}

// scrape runs c in a Set, as the agent does, and returns every sample as
// `name{label="value",…}` (labels sorted) → value.
func scrape(t *testing.T, c *Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collectors.NewSet(testLogger(t), time.Minute, map[string]collectors.Collector{"kvm": c}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	samples := make(map[string]float64)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			samples[sampleKey(mf.GetName(), m.GetLabel())] = sampleValue(m)
		}
	}
	if samples[`caretaker_scrape_collector_success{collector="kvm"}`] != 1 {
		t.Fatalf("kvm collector failed")
	}
	return samples
}

func sampleKey(name string, labels []*dto.LabelPair) string {
	parts := make([]string, 0, len(labels))
	for _, l := range labels {
		parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	slices.Sort(parts)
	return name + "{" + strings.Join(parts, ",") + "}"
}

func sampleValue(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	default:
		return m.GetUntyped().GetValue()
	}
}

// wantSample checks one sample.
func wantSample(t *testing.T, samples map[string]float64, key string, want float64) {
	t.Helper()
	got, ok := samples[key]
	if !ok {
		t.Errorf("no sample %s", key)
		return
	}
	if got != want {
		t.Errorf("%s = %v, want %v", key, got, want)
	}
}

// TestEventsThroughLibvirt has the test driver send lifecycle and metadata
// events, and checks that they are counted and refresh the cached identity
// of the domains they concern, and of those alone.
func TestEventsThroughLibvirt(t *testing.T) {
	t.Parallel()
	doms := genNode(8)
	path := writeNode(t, t.TempDir(), doms)
	logger := testLogger(t)
	conn := libvirtconn.New("test://"+path, logger)
	t.Cleanup(func() { conn.Close() })
	c := New(conn, logger)

	scrape(t, c)
	if n := c.xmlReads.Load(); n != uint64(len(doms)) {
		t.Fatalf("first scrape read %d domain XMLs, want one per domain (%d)", n, len(doms))
	}
	scrape(t, c)
	if n := c.xmlReads.Load(); n != uint64(len(doms)) {
		t.Fatalf("second scrape read %d domain XMLs again, want none: the identities are cached", n-uint64(len(doms)))
	}

	// Domain 2 runs and is restarted; domain 4 runs and is moved to
	// another cluster.
	restarted, moved := doms[2], doms[4]
	if restarted.runstate != 1 || moved.runstate != 1 || moved.meta == nil {
		t.Fatalf("genNode changed: domains 2 and 4 should run, 4 with metadata")
	}
	w := watchEvents(t, conn, restarted.name, moved.name)
	lv, err := conn.Get()
	if err != nil {
		t.Fatal(err)
	}
	dom, err := lv.LookupDomainByName(restarted.name)
	if err != nil {
		t.Fatal(err)
	}
	defer dom.Free()
	if err := dom.Destroy(); err != nil {
		t.Fatalf("destroy %s: %v", restarted.name, err)
	}
	w.await(t, restarted.name+" stopped")
	if err := dom.Create(); err != nil {
		t.Fatalf("start %s: %v", restarted.name, err)
	}
	w.await(t, restarted.name+" started")

	meta := *moved.meta
	meta.Cluster = "moved"
	elem, err := meta.XML()
	if err != nil {
		t.Fatal(err)
	}
	mdom, err := lv.LookupDomainByName(moved.name)
	if err != nil {
		t.Fatal(err)
	}
	defer mdom.Free()
	if err := mdom.SetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, elem, guestmeta.Prefix, guestmeta.Namespace, libvirt.DOMAIN_AFFECT_CONFIG|libvirt.DOMAIN_AFFECT_LIVE); err != nil {
		t.Fatalf("set metadata of %s: %v", moved.name, err)
	}
	w.await(t, moved.name+" metadata")

	before := c.xmlReads.Load()
	samples := scrape(t, c)
	if n := c.xmlReads.Load() - before; n != 2 {
		t.Errorf("scrape after the events read %d domain XMLs, want 2 (the restarted and the moved domain)", n)
	}
	wantSample(t, samples, `caretaker_kvm_lifecycle_events_total{event="stopped"}`, 1)
	wantSample(t, samples, `caretaker_kvm_lifecycle_events_total{event="started"}`, 1)
	wantSample(t, samples, `caretaker_kvm_lifecycle_events_total{event="crashed"}`, 0)
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_crashes_total{uuid=%q}`, restarted.uuid), 0)
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_state{uuid=%q}`, restarted.uuid), float64(libvirt.DOMAIN_RUNNING))
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_info{cluster="moved",domain=%q,role=%q,uuid=%q}`, moved.name, moved.role, moved.uuid), 1)
}

// TestCollectorWithoutEventLoop checks the fallback when the callbacks
// cannot be registered (the agent did not start libvirt's event loop):
// nothing is cached, every scrape reads every XML, and the output is the
// same. TestMain starts the loop for the whole process, so the collector's
// memory is told directly that the callbacks are missing.
func TestCollectorWithoutEventLoop(t *testing.T) {
	t.Parallel()
	path := writeNode(t, t.TempDir(), genNode(4))
	logger := testLogger(t)
	conn := libvirtconn.New("test://"+path, logger)
	t.Cleanup(func() { conn.Close() })
	c := New(conn, logger)
	if _, err := conn.Get(); err != nil {
		t.Fatal(err)
	}
	c.memory.setEventsOK(false)
	first := scrape(t, c)
	second := scrape(t, c)
	if n := c.xmlReads.Load(); n != 8 {
		t.Errorf("two scrapes read %d domain XMLs, want 8: without events nothing is cached", n)
	}
	if len(first) != len(second) {
		t.Errorf("scrapes differ: %d and %d samples", len(first), len(second))
	}
	// Without events there is nothing to count: the counters are left
	// out rather than reported as zero.
	for key := range second {
		if strings.HasPrefix(key, "caretaker_kvm_lifecycle_events_total{") || strings.HasPrefix(key, "caretaker_kvm_domain_crashes_total{") {
			t.Errorf("sample %s without events", key)
		}
	}
}
