package kvm

import (
	"fmt"
	"log/slog"
	"testing"

	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
)

// TestNode500 scrapes a generated node of 500 domains, through the
// in-process test driver and through libvirtd, and checks that every domain
// is reported with the identity genNode gave it; then that a second scrape
// reads no domain XML: in steady state a scrape is one bulk call (and the
// autostart list).
func TestNode500(t *testing.T) {
	t.Parallel()
	doms := genNode(500)
	path := writeNode(t, t.TempDir(), doms)
	forEachNodeURI(t, path, func(t *testing.T, conn *libvirtconn.Conn, logger *slog.Logger) {
		c := New(conn, logger)

		samples := scrape(t, c)
		wantSample(t, samples, "caretaker_kvm_up{}", 1)
		wantSample(t, samples, "caretaker_kvm_domains{}", float64(len(doms)))
		for _, d := range doms {
			checkGenerated(t, samples, d)
		}
		if t.Failed() {
			return
		}

		reads := c.xmlReads.Load()
		again := scrape(t, c)
		if n := c.xmlReads.Load() - reads; n != 0 {
			t.Errorf("second scrape read %d domain XMLs, want none", n)
		}
		if len(again) != len(samples) {
			t.Errorf("second scrape: %d samples, first %d", len(again), len(samples))
		}
	})
}

// checkGenerated checks the samples of one generated domain.
func checkGenerated(t *testing.T, samples map[string]float64, d genDomain) {
	t.Helper()
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_info{cluster=%q,domain=%q,role=%q,uuid=%q}`, d.cluster, d.name, d.role, d.uuid), 1)
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_state{uuid=%q}`, d.uuid), float64(d.runstate))
	intended := 0.0
	if d.meta != nil && d.meta.Intent == guestmeta.IntentRunning {
		intended = 1
	}
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_intended_running{uuid=%q}`, d.uuid), intended)
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_crashes_total{uuid=%q}`, d.uuid), 0)
	// The test driver names every domain's devices testnet<n> when it
	// loads the node, shut-off ones included (QEMU names only those of
	// running domains: see TestQEMUGuest).
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_interface_info{bridge=%q,device="testnet0",mac=%q,uuid=%q}`, d.bridge, d.mac, d.uuid), 1)
}
