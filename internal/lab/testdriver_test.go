package lab

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"caretaker/internal/api"
)

// TestLabTestDriver runs the lab on libvirt's test driver, as it does on a
// machine without libvirtd: the server scrapes both agents and reports
// every guest running; stopping the lab restores runbook's config.
func TestLabTestDriver(t *testing.T) {
	dir := t.TempDir()
	rbConfig := filepath.Join(dir, "runbook", "config.yml")
	const before = "url: http://elsewhere:9300\ntoken: mine\n"
	if err := os.MkdirAll(filepath.Dir(rbConfig), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rbConfig, []byte(before), 0o600); err != nil {
		t.Fatal(err)
	}

	o := DefaultOptions()
	o.Driver = "test"
	o.ListenAddress = "127.0.0.1:0"
	o.DataDir = filepath.Join(dir, "data")
	o.RunbookConfig = rbConfig
	o.Logger = slog.New(slog.DiscardHandler)
	var out syncBuffer
	o.Out = &out

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()

	var status api.Status
	await(t, done, time.Minute, "6 running guests on 2 hosts", func() bool {
		b, err := os.ReadFile(rbConfig)
		if err != nil || !strings.HasPrefix(string(b), runbookMarker) {
			return false
		}
		var url, token string
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "url: "); ok {
				url = v
			}
			if v, ok := strings.CutPrefix(line, "token: "); ok {
				token = v
			}
		}
		s, err := api.NewClient(url, token, nil).Status(context.Background())
		if err != nil {
			return false
		}
		running := 0
		for _, g := range s.Guests {
			if g.State == "running" && g.IntendedRunning && strings.HasPrefix(g.Domain, "lab-host-") {
				running++
			}
		}
		status = s
		return running == 6 && len(s.Hosts) == 2 && s.Hosts[0].AgentUp && s.Hosts[1].AgentUp
	})
	for _, h := range status.Hosts {
		if !h.LibvirtUp || h.Guests != 3 {
			t.Errorf("host %+v: want libvirt up and 3 guests", h)
		}
	}
	if !strings.Contains(out.String(), "test driver") {
		t.Errorf("the lab did not say it uses the test driver:\n%s", out.String())
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("lab: %v", err)
	}
	if b, err := os.ReadFile(rbConfig); err != nil || string(b) != before {
		t.Errorf("runbook config after the lab: %q, %v; want the original back", b, err)
	}
}
