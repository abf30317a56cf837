package lab

import (
	"bytes"
	"encoding/json"
	"flag"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"caretaker/internal/golden"
	"caretaker/remediation/journal"
)

var updateGolden = flag.Bool("update", false, "rewrite the game day's golden files in testdata")

func TestChaosFaultTable(t *testing.T) {
	var b bytes.Buffer
	if err := PrintFaults(&b); err != nil {
		t.Fatal(err)
	}
	golden.Compare(t, filepath.Join("testdata", "chaos-faults.txt"), b.Bytes(), *updateGolden)
	for _, f := range Faults {
		if f.Heals != (f.Action == "restart-vm" || f.Action == "repair-overlay" || f.Action == "reprovision-host" || strings.HasPrefix(f.Action, "restart-vm")) {
			t.Errorf("%s: heals %v, but its action is %q", f.Name, f.Heals, f.Action)
		}
	}
}

func TestParseChaos(t *testing.T) {
	names := func(fs []Fault) []string {
		var out []string
		for _, f := range fs {
			out = append(out, f.Name)
		}
		return out
	}
	for _, tc := range []struct {
		spec string
		want []string
		err  string
	}{
		{spec: "all", want: []string{"qemu-kill", "virsh-destroy", "guest-panic", "guest-paused", "vxlan-delete", "fdb-remove",
			"vxlan-mtu", "underlay-down", "libvirtd-stop", "libvirtd-kill", "agent-kill", "power-loss", "leader-kill", "storm"}},
		{spec: "qemu-kill", want: []string{"qemu-kill"}},
		{spec: "guest-paused, qemu-kill", want: []string{"guest-paused", "qemu-kill"}},
		{spec: "qemu-kill,nope", err: `no fault "nope"`},
		{spec: "", err: `no fault ""`},
	} {
		got, err := parseChaos(tc.spec)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseChaos(%q): error %v, want one with %q", tc.spec, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(names(got), tc.want) {
			t.Errorf("parseChaos(%q) = %v, %v; want %v", tc.spec, names(got), err, tc.want)
		}
	}
}

// sampleBoard is a scoreboard of every kind of line: healed by caretaker,
// healed by the runner with nobody paged, a page, a doubled action and a
// fault never detected.
func sampleBoard() *Scoreboard {
	f := func(v float64) *float64 { return &v }
	fault := func(name string) Fault {
		fs, _ := parseChaos(name)
		return fs[0]
	}
	kill := newScore(fault("qemu-kill"))
	kill.Targets = []string{"lab-host-a-1"}
	kill.DetectedAfter, kill.HealedAfter, kill.HealedBy = f(0.81), f(4.02), "caretaker"
	kill.Alerts = []string{"GuestCrashed firing"}
	kill.Actions = []TakenAction{{ID: 1, Action: "restart-vm", Domain: "lab-host-a-1", Host: "host-a", State: "succeeded", FromEvent: true}}
	kill.Pages = []Page{{Alert: "GuestCrashed", Runbook: "alerts/runbooks/GuestCrashed.md"}}

	paused := newScore(fault("guest-paused"))
	paused.Targets = []string{"lab-host-b-1"}
	paused.DetectedAfter, paused.HealedAfter, paused.HealedBy = f(1.2), f(1.9), "runner"
	paused.Alerts = []string{"GuestPausedUnexpectedly pending"}
	paused.Runbook = "alerts/runbooks/GuestPausedUnexpectedly.md"
	paused.Notes = []string{"the runner resumed lab-host-b-1 (virsh resume)"}

	destroy := newScore(fault("virsh-destroy"))
	destroy.Targets = []string{"lab-host-a-2"}
	destroy.DetectedAfter, destroy.HealedAfter, destroy.HealedBy = f(0.5), f(5), "caretaker"
	destroy.Actions = []TakenAction{
		{ID: 2, Action: "restart-vm", Domain: "lab-host-a-2", State: "succeeded", FromEvent: true},
		{ID: 3, Action: "restart-vm", Domain: "lab-host-a-2", State: "succeeded"},
	}
	destroy.Doubled = 1

	storm := newScore(fault("storm"))
	storm.Targets = []string{"lab-host-a-1", "lab-host-b-1", "lab-host-a-3"}
	storm.DetectedAfter, storm.HealedAfter, storm.HealedBy = f(0.3), f(75.5), "runner"
	storm.Actions = []TakenAction{
		{ID: 4, Action: "restart-vm", State: "succeeded", FromEvent: true},
		{ID: 5, Action: "restart-vm", State: "skipped", Reason: "skipped: circuit breaker open"},
		{ID: 6, Action: "restart-vm", State: "skipped", Reason: "skipped: circuit breaker open"},
	}
	storm.Held = 2
	storm.Pages = []Page{{Alert: "RemediationCircuitBreakerOpen", Runbook: "alerts/runbooks/RemediationCircuitBreakerOpen.md"}}
	storm.Runbook = "alerts/runbooks/RemediationCircuitBreakerOpen.md"

	stop := newScore(fault("libvirtd-stop"))
	stop.Targets = []string{"host-a", "host-b"}
	stop.Runbook = "alerts/runbooks/HostLibvirtdDown.md"

	return &Scoreboard{Started: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), DurationSeconds: 120, Hold: "5s",
		Faults: []*Score{kill, paused, destroy, storm, stop}}
}

func TestScoreboardTable(t *testing.T) {
	b := sampleBoard()
	var out bytes.Buffer
	if err := b.writeTable(&out); err != nil {
		t.Fatal(err)
	}
	golden.Compare(t, filepath.Join("testdata", "chaos-scoreboard.txt"), out.Bytes(), *updateGolden)
	want := map[string]bool{"qemu-kill": true, "guest-paused": true, "virsh-destroy": false, "storm": true, "libvirtd-stop": false}
	for _, s := range b.Faults {
		if s.OK != want[s.Name] {
			t.Errorf("%s: ok %v (problems %q), want %v", s.Name, s.OK, s.Problems, want[s.Name])
		}
	}
	if b.OK {
		t.Error("a board with a doubled action and an undetected fault is OK")
	}
	if got := b.failed(); len(got) != 2 || !strings.Contains(got[0], "1 doubled action") || !strings.Contains(got[1], "not detected") {
		t.Errorf("failed() = %q", got)
	}
}

func TestScoreboardJSON(t *testing.T) {
	var out bytes.Buffer
	if err := sampleBoard().writeJSON(&out); err != nil {
		t.Fatal(err)
	}
	golden.Compare(t, filepath.Join("testdata", "chaos-scoreboard.json"), out.Bytes(), *updateGolden)
	var back Scoreboard
	if err := json.Unmarshal(out.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Faults) != 5 || back.Faults[4].DetectedAfter != nil || *back.Faults[0].HealedAfter != 4.02 || back.Faults[2].Doubled != 1 {
		t.Errorf("decoded board differs: %+v", back.Faults)
	}
	// A fault never detected or healed is null, not 0.
	if !bytes.Contains(out.Bytes(), []byte(`"detected_after_seconds": null`)) {
		t.Error("an undetected fault's detected_after_seconds is not null")
	}
}

// A fault's records: two repairs of two overlays of one host are not
// doubled; a second succeeded restart of one guest is, and a restart the
// breaker held is counted as held.
func TestTally(t *testing.T) {
	rec := func(id uint64, action, target string, state journal.State, reason string) journal.Record {
		return journal.Record{ID: id, Action: action, Target: target, Host: "host-a", State: state, Reason: reason}
	}
	for _, tc := range []struct {
		name          string
		recs          []journal.Record // newest first
		doubled, held int
	}{
		{name: "two overlays of one host", recs: []journal.Record{
			rec(2, "repair-overlay", "host-a/overlay/lab-b", journal.StateSucceeded, ""),
			rec(1, "repair-overlay", "host-a/overlay/lab", journal.StateSucceeded, ""),
		}},
		{name: "one guest restarted twice", doubled: 1, recs: []journal.Record{
			rec(2, "restart-vm", "host-a/u1", journal.StateSucceeded, ""),
			rec(1, "restart-vm", "host-a/u1", journal.StateSucceeded, ""),
		}},
		{name: "a failed try, then the restart", recs: []journal.Record{
			rec(2, "restart-vm", "host-a/u1", journal.StateSucceeded, ""),
			rec(1, "restart-vm", "host-a/u1", journal.StateFailed, ""),
		}},
		{name: "held by the breaker", held: 1, recs: []journal.Record{
			rec(2, "restart-vm", "host-a/u2", journal.StateSkipped, "skipped: circuit breaker open, 2 of 6 targets unhealthy (threshold 1)"),
			rec(1, "restart-vm", "host-a/u1", journal.StateSucceeded, ""),
		}},
	} {
		actions, doubled, held := tally(tc.recs)
		if doubled != tc.doubled || held != tc.held {
			t.Errorf("%s: doubled %d held %d, want %d and %d", tc.name, doubled, held, tc.doubled, tc.held)
		}
		if len(actions) != len(tc.recs) || actions[0].ID != 1 {
			t.Errorf("%s: actions %+v, want all, oldest first", tc.name, actions)
		}
	}
}
