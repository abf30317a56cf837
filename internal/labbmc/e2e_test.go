package labbmc

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"caretaker/provisioner/bmc"
	"caretaker/provisioner/hoststate"
	"caretaker/provisioner/pxe"
)

// noGuests is a host without guests to move.
type noGuests struct {
	mu    sync.Mutex
	calls []string
}

func (g *noGuests) MoveGuests(_ context.Context, host string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, host)
	return nil
}

// TestReprovisionThroughLabBMC is a reprovision as the server runs it
// against a lab host: the real state machine sets PXE boot once and
// power-cycles the host through its lab BMC with the provisioner's IPMI
// driver; OnPower reports off and on from pxe; the host's firmware boots
// from the real PXE handler serving LabProfile, and its callback readies
// the host.
func TestReprovisionThroughLabBMC(t *testing.T) {
	t.Parallel()
	const host, mac = "h1", "52:54:00:1a:b0:01"
	ctx := context.Background()
	b, rec := startBMCs(t, host, "h2")
	dir := t.TempDir()

	m, err := hoststate.Open(hoststate.Options{
		Path: filepath.Join(dir, "hosts.db"),
		// As the server opens a host's BMC: from its inventory block.
		BMC: func(h string) (hoststate.BMC, error) {
			cfg, ok := b.BMCConfig(h)
			if !ok {
				return nil, fmt.Errorf("no BMC for %s", h)
			}
			return bmc.New(cfg, slog.New(slog.DiscardHandler))
		},
		Guests: &noGuests{},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	wantState := func(s hoststate.State, attempt int) {
		t.Helper()
		if h, _ := m.Host(host); h.State != s || h.Attempt != attempt {
			t.Fatalf("host is %s attempt %d, want %s attempt %d (last error %q)", h.State, h.Attempt, s, attempt, h.LastError)
		}
	}
	must(m.Register(host, mac))
	must(m.Booted(host)) // the lab's host runs
	wantState(hoststate.Ready, 0)

	cfg, err := pxe.Parse(filepath.Join(dir, "pxe.yml"), []byte(LabProfile()))
	must(err)
	// The server's PXE endpoints, recording the host's state as each
	// request arrives.
	var (
		mu     sync.Mutex
		served []string
	)
	var h http.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, _ := m.Host(host)
		mu.Lock()
		served = append(served, r.URL.Path+" while "+string(st.State))
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	h = pxe.NewHandler(cfg, pxe.Options{BaseURL: srv.URL, Secret: []byte("lab-pxe-secret-0123456789abcdef"), Attempts: m})

	must(m.Reprovision(ctx, host))
	wantState(hoststate.PoweringOn, 1)
	rec.await(t, host, power{false, BootPXE}, power{true, BootPXE})
	must(m.Tick(ctx)) // the BMC reports power on
	wantState(hoststate.PXEBooting, 1)

	fw := Firmware{BaseURL: srv.URL, MAC: mac, Client: srv.Client()}
	report, err := fw.Boot(ctx)
	if err != nil {
		t.Fatalf("%v; fetched:\n%s", err, report)
	}
	wantState(hoststate.Ready, 1)
	if h, _ := m.Host(host); h.Cordoned {
		t.Errorf("host still cordoned: %+v", h)
	}
	mu.Lock()
	got := slices.Clone(served)
	mu.Unlock()
	want := []string{"/pxe/boot.ipxe while pxe-booting", "/pxe/ipxe while pxe-booting", "/pxe/booted while installing"}
	if !slices.Equal(got, want) {
		t.Errorf("served %q, want %q", got, want)
	}
	var fetched []string
	for _, f := range report.Fetched {
		fetched = append(fetched, fmt.Sprintf("%s %d %s", f.Command, f.Status, strings.SplitN(strings.TrimPrefix(f.URL, srv.URL), "?", 2)[0]))
		if strings.Contains(f.URL, "token=") && !strings.Contains(f.URL, "token=REDACTED") {
			t.Errorf("report shows a token: %s", f.URL)
		}
	}
	if want := []string{"chain 200 /pxe/boot.ipxe", "chain 200 /pxe/ipxe", "imgfetch 204 /pxe/booted"}; !slices.Equal(fetched, want) || report.Booted != "" {
		t.Errorf("report:\n%s\nwant fetches %q and no image booted", report, want)
	}
	ts, err := m.History(host)
	must(err)
	var steps []string
	for _, tr := range ts {
		steps = append(steps, string(tr.From)+"→"+string(tr.To))
	}
	if want := []string{"→registered", "registered→ready", "ready→powering-on", "powering-on→pxe-booting", "pxe-booting→installing", "installing→ready"}; !slices.Equal(steps, want) {
		t.Errorf("journal %q, want %q", steps, want)
	}

	// Booting from PXE again (a second cycle with boot device pxe) gets
	// the chain script only: the attempt is over, its callback taken once.
	report, err = fw.Boot(ctx)
	if err == nil || !strings.Contains(err.Error(), "HTTP 404") {
		t.Fatalf("second boot: %v; fetched:\n%s", err, report)
	}
	wantState(hoststate.Ready, 1)
	// h2 was never touched.
	if ps, err := controller(t, b, "h2").PowerStatus(ctx); err != nil || ps != bmc.PowerOn {
		t.Errorf("h2 power %v, %v", ps, err)
	}
}
