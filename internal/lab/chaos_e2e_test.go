package lab

import (
	"encoding/json"
	"errors"
	"flag"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"caretaker/internal/guestos"
	"caretaker/internal/needs"
)

var (
	gameDayFaults = flag.String("gameday.faults", "qemu-kill,vxlan-delete,agent-kill",
		"TestGameDayReduced: the faults of the reduced game day, one of each kind (libvirtd-stop would freeze this machine's libvirtd for -gameday.hold)")
	gameDayHold = flag.Duration("gameday.hold", 5*time.Second, "TestGameDayReduced: --chaos.hold")
)

// gameDayWithin bounds the reduced game day: make test gives it 3 minutes.
const gameDayWithin = 3 * time.Minute

// TestGameDayReduced runs `caretaker lab --chaos … -o json`, the real
// binary with real QEMU guests that boot Linux, and checks its
// scoreboard: the overlays carry the guests' traffic between hosts and
// keep clusters apart; every fault detected, the faults caretaker heals
// healed by it, the others healed once the runner stood in for the human
// (with the runbook page named), the guests' traffic restored, no action
// doubled, exit status 0 — all within 3 minutes. One fault of each kind:
// a guest's (qemu-kill), an overlay's (vxlan-delete) and a host's daemon
// (agent-kill, with a guest crashing while the agent is down).
func TestGameDayReduced(t *testing.T) {
	requireQEMU(t)
	needs.Root(t, "the lab's network: namespaces, bridges, VXLAN")
	if err := guestos.Check(guestos.DefaultDir); err != nil {
		needs.Missing(t, "needs the guest OS: %v", err)
	}
	bin := buildBinaries(t)
	sweepStale(t, "gd")
	prefix := ownPrefix("gd")
	dir := t.TempDir()
	var stdout syncBuffer
	start := time.Now()
	lab := startLab(t, bin, &stdout, []string{prefix}, "--driver", "qemu", "--clusters=false",
		"--guests-per-host", "2", "--guest-prefix", prefix, "--runbook.config", "",
		"--web.listen-address", "127.0.0.1:0", "--data.dir", filepath.Join(dir, "data"),
		"--chaos", *gameDayFaults, "--chaos.hold", gameDayHold.String(), "-o", "json")
	var err error
	select {
	case err = <-lab.exited:
		lab.exited <- err
	case <-time.After(gameDayWithin):
		t.Fatalf("the game day did not end within %s", gameDayWithin)
	}
	took := time.Since(start)
	var board Scoreboard
	if jerr := json.Unmarshal([]byte(stdout.String()), &board); jerr != nil {
		t.Fatalf("scoreboard: %v (exit: %v)\nstdout:\n%s", jerr, err, stdout.String())
	}
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
		t.Errorf("caretaker lab --chaos exited %v; the board says ok=%v", err, board.OK)
	}
	faults := strings.Split(*gameDayFaults, ",")
	if len(board.Faults) != len(faults) {
		t.Fatalf("the board has %d faults, want %d (%s): %s", len(board.Faults), len(faults), board.Error, stdout.String())
	}
	for i, s := range board.Faults {
		if s.Name != faults[i] {
			t.Errorf("fault %d is %s, want %s", i, s.Name, faults[i])
		}
		line := s.Name + " (" + strings.Join(s.Targets, ",") + ")"
		switch {
		case s.DetectedAfter == nil:
			t.Errorf("%s: not detected", line)
		case s.HealedAfter == nil:
			t.Errorf("%s: not healed", line)
		case s.ExpectedHeal && s.HealedBy != "caretaker":
			t.Errorf("%s: healed by %s, not caretaker", line, s.HealedBy)
		case !s.ExpectedHeal && s.Runbook == "":
			t.Errorf("%s: needs a human but names no runbook page", line)
		case s.Doubled != 0:
			t.Errorf("%s: %d doubled actions: %+v", line, s.Doubled, s.Actions)
		case !s.OK:
			t.Errorf("%s: not ok: %q", line, s.Problems)
		}
		if s.TrafficAfter == nil {
			t.Errorf("%s: the guests' traffic was not restored: %q", line, s.Notes)
		}
		if s.ExpectedHeal && !hasSucceeded(s.Actions, strings.Fields(s.ExpectedAction)[0]) {
			t.Errorf("%s: no succeeded %s in %+v", line, s.ExpectedAction, s.Actions)
		}
		// GuestCrashed pages only when the rule fires before the agent's
		// event has the guest running again: either is right.
		for _, p := range s.Pages {
			if p.Runbook != "alerts/runbooks/"+p.Alert+".md" {
				t.Errorf("%s: page %s names runbook %q", line, p.Alert, p.Runbook)
			}
		}
		t.Logf("%s: detected after %s, healed after %s by %s, alerts %v, actions %s, pages %s",
			line, secs(s.DetectedAfter), secs(s.HealedAfter), s.HealedBy, s.Alerts, actionsText(s.Actions), pagesText(s.Pages))
	}
	if o := board.Overlays; o == nil || o.Error != "" || len(o.Reach) == 0 || len(o.Isolated) == 0 {
		t.Errorf("overlays: %+v: want pairs that reach and pairs kept apart, no error", o)
	}
	if !board.OK {
		t.Errorf("the board is not ok")
	}
	t.Logf("reduced game day (%s): %s", *gameDayFaults, took.Round(time.Second))
}

func hasSucceeded(as []TakenAction, action string) bool {
	for _, a := range as {
		if a.Action == action && a.State == "succeeded" {
			return true
		}
	}
	return false
}
