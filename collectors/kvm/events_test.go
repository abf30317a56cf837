package kvm

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"caretaker/collectors"
	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
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
		killed    = lifecycleStep(libvirt.DomainEventStopped, int(libvirt.DomainEventStoppedFailed))
		panicStop = lifecycleStep(libvirt.DomainEventStopped, int(libvirt.DomainEventStoppedCrashed))
		destroyed = lifecycleStep(libvirt.DomainEventStopped, int(libvirt.DomainEventStoppedDestroyed))
		shutOff   = lifecycleStep(libvirt.DomainEventStopped, int(libvirt.DomainEventStoppedShutdown))
		panicked  = lifecycleStep(libvirt.DomainEventCrashed, int(libvirt.DomainEventCrashedPanicked))
		booted    = lifecycleStep(libvirt.DomainEventStarted, int(libvirt.DomainEventStartedBooted))
		shutdown  = lifecycleStep(libvirt.DomainEventShutdown, int(libvirt.DomainEventShutdownFinished))
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
		m.lifecycle(uuid, libvirt.DomainEventStopped, int(libvirt.DomainEventStoppedDestroyed))
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
	m.lifecycle("gone", libvirt.DomainEventStopped, int(libvirt.DomainEventStoppedCrashed))
	m.lifecycle("kept", libvirt.DomainEventStopped, int(libvirt.DomainEventStoppedCrashed))
	since := m.now()
	// Defined and crashed after libvirt listed the domains.
	m.lifecycle("new", libvirt.DomainEventStopped, int(libvirt.DomainEventStoppedCrashed))
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

// eventWatcher waits for the collector to have heard libvirt's events.
// The collector hears them on its subscriptions' goroutines; a second
// subscription beside it would hear the same event in no set order with
// the collector's, so the watcher looks at the collector's memory instead.
type eventWatcher struct {
	c *Collector
}

// watchEvents connects c's Conn now, if it has not yet, so that the
// collector's subscriptions are made before the test acts.
func watchEvents(t *testing.T, conn *libvirtconn.Conn, c *Collector) *eventWatcher {
	t.Helper()
	if _, err := conn.Get(); err != nil {
		t.Fatal(err)
	}
	return &eventWatcher{c: c}
}

// await waits until cond holds of the collector's memory.
func (w *eventWatcher) await(t *testing.T, what string, cond func(m *memory) bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		w.c.memory.mu.Lock()
		ok := cond(w.c.memory)
		w.c.memory.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the collector did not hear %s within a minute", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// counted holds once the collector counted n events of kind k.
func counted(k eventKind, n uint64) func(m *memory) bool {
	return func(m *memory) bool { return m.events[k] >= n }
}

// crashed holds once the collector counted n crashes of the domain.
func crashed(uuid string, n uint64) func(m *memory) bool {
	return func(m *memory) bool { d := m.domains[uuid]; return d != nil && d.crashes >= n }
}

// forgotten holds once the collector dropped the domain's cached identity
// for an event.
func forgotten(uuid string) func(m *memory) bool {
	return func(m *memory) bool { d := m.domains[uuid]; return d != nil && d.ident == nil }
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
	needs.Libvirtd(t)
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
	w := watchEvents(t, conn, c)
	lv, err := conn.Get()
	if err != nil {
		t.Fatal(err)
	}
	dom, err := lv.DomainLookupByName(restarted.name)
	if err != nil {
		t.Fatal(err)
	}
	if err := lv.DomainDestroy(dom); err != nil {
		t.Fatalf("destroy %s: %v", restarted.name, err)
	}
	w.await(t, restarted.name+" stopped", counted(eventStopped, 1))
	if err := lv.DomainCreate(dom); err != nil {
		t.Fatalf("start %s: %v", restarted.name, err)
	}
	w.await(t, restarted.name+" started", counted(eventStarted, 1))

	meta := *moved.meta
	meta.Cluster = "moved"
	elem, err := meta.XML()
	if err != nil {
		t.Fatal(err)
	}
	mdom, err := lv.DomainLookupByName(moved.name)
	if err != nil {
		t.Fatal(err)
	}
	if err := lv.DomainSetMetadata(mdom, int32(libvirt.DomainMetadataElement), libvirt.OptString{elem}, libvirt.OptString{guestmeta.Prefix}, libvirt.OptString{guestmeta.Namespace}, libvirt.DomainAffectConfig|libvirt.DomainAffectLive); err != nil {
		t.Fatalf("set metadata of %s: %v", moved.name, err)
	}
	w.await(t, moved.name+" metadata", forgotten(moved.uuid))

	before := c.xmlReads.Load()
	samples := scrape(t, c)
	if n := c.xmlReads.Load() - before; n != 2 {
		t.Errorf("scrape after the events read %d domain XMLs, want 2 (the restarted and the moved domain)", n)
	}
	wantSample(t, samples, `caretaker_kvm_lifecycle_events_total{event="stopped"}`, 1)
	wantSample(t, samples, `caretaker_kvm_lifecycle_events_total{event="started"}`, 1)
	wantSample(t, samples, `caretaker_kvm_lifecycle_events_total{event="crashed"}`, 0)
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_crashes_total{uuid=%q}`, restarted.uuid), 0)
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_state{uuid=%q}`, restarted.uuid), float64(libvirt.DomainRunning))
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_info{cluster="moved",domain=%q,role=%q,uuid=%q}`, moved.name, moved.role, moved.uuid), 1)
}

// TestCollectorWithoutEvents checks the fallback when the subscriptions
// cannot be made (libvirtd refuses them): nothing is cached, every scrape
// reads every XML, and the output is the same. The collector's memory is
// told directly that the subscriptions are missing.
func TestCollectorWithoutEvents(t *testing.T) {
	t.Parallel()
	needs.Libvirtd(t)
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
