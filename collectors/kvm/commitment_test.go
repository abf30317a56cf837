package kvm

import (
	"sync"
	"testing"

	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
)

func TestCommitment(t *testing.T) {
	t.Parallel()
	online := statsVcpu{StateSet: true, State: vcpuRunning}
	doms := []domain{
		// Active: 2 vCPUs with a state (the third libvirt said nothing
		// of), 1 GiB maximum.
		{active: true, stats: &domainStats{
			Vcpu:    []statsVcpu{online, online, {}},
			Balloon: &statsBalloon{MaximumSet: true, Maximum: 1 << 20},
		}},
		// Shut off: not counted.
		{active: false, stats: &domainStats{
			Vcpu:    []statsVcpu{online},
			Balloon: &statsBalloon{MaximumSet: true, Maximum: 1 << 20},
		}},
		// Active without balloon stats.
		{active: true, stats: &domainStats{Vcpu: []statsVcpu{online}}},
		{active: true},
	}
	vcpus, mem := commitment(doms)
	if vcpus != 3 || mem != 1<<30 {
		t.Errorf("commitment: %d vCPUs, %d bytes; want 3 and %d", vcpus, mem, 1<<30)
	}
}

// TestGuestCommitmentSharesTheScrape: the host collector's commitment,
// asked while the kvm collector scrapes, comes from the kvm collector's call
// to libvirt, not a second one.
func TestGuestCommitmentSharesTheScrape(t *testing.T) {
	t.Parallel()
	needs.Libvirtd(t)
	conn := libvirtconn.New("test:///default", testLogger(t))
	t.Cleanup(func() { conn.Close() })
	c := New(conn, testLogger(t))
	var wg sync.WaitGroup
	wg.Go(func() {
		if up, err := updateUp(t, c); up != 1 || err != nil {
			t.Errorf("scrape: up %v, %v", up, err)
		}
	})
	// test:///default has one running domain, "test", with 2 vCPUs and
	// 8 GiB.
	vcpus, mem, err := c.GuestCommitment(t.Context())
	wg.Wait()
	if err != nil {
		t.Fatalf("GuestCommitment: %v", err)
	}
	t.Logf("test:///default: %d vCPUs, %d bytes", vcpus, mem)
	if n := c.calls.Load(); n != 1 {
		t.Errorf("%d calls to libvirt for a scrape and the commitment, want 1", n)
	}
}
