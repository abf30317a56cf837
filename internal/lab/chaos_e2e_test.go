package lab

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var (
	gameDayFaults = flag.String("gameday.faults", "qemu-kill,virsh-destroy,guest-paused,libvirtd-stop",
		"TestGameDayReduced: the faults of the reduced game day (libvirtd-stop freezes this machine's libvirtd for -gameday.hold)")
	gameDayHold = flag.Duration("gameday.hold", 5*time.Second, "TestGameDayReduced: --chaos.hold")
)

// gameDayWithin bounds the reduced game day: make test gives it 3 minutes.
const gameDayWithin = 3 * time.Minute

// TestGameDayReduced runs `caretaker lab --chaos … -o json`, the real
// binary with real QEMU guests, and checks its scoreboard: every fault
// detected, the guest faults caretaker heals healed by it, the others
// healed once the runner stood in for the human (with the runbook page
// named), no action doubled, exit status 0 — all within 3 minutes.
//
// libvirtd-stop freezes the machine's one libvirtd for 5 s: make test runs
// one package at a time (-p 1) and no other test of this package runs
// beside this one, so only work outside the test run can notice.
func TestGameDayReduced(t *testing.T) {
	requireQEMU(t)
	bin := buildBinaries(t)
	sweepStaleVirsh(t, "gd")
	prefix := ownPrefix("gd")
	dir := t.TempDir()
	var stdout bytes.Buffer
	var stderr syncBuffer
	start := time.Now()
	cmd := exec.Command(filepath.Join(bin, "caretaker"), "lab", "--driver", "qemu", "--clusters=false",
		"--guests-per-host", "2", "--guest-prefix", prefix, "--runbook.config", "",
		"--web.listen-address", "127.0.0.1:0", "--data.dir", filepath.Join(dir, "data"),
		"--chaos", *gameDayFaults, "--chaos.hold", gameDayHold.String(), "-o", "json")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		virshRemovePrefix(t, prefix)
		if t.Failed() {
			t.Logf("lab output:\n%s", stderr.String())
		}
	})
	var err error
	select {
	case err = <-exited:
	case <-time.After(gameDayWithin):
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			<-exited
		}
		t.Fatalf("the game day did not end within %s", gameDayWithin)
	}
	took := time.Since(start)
	var board Scoreboard
	if jerr := json.Unmarshal(stdout.Bytes(), &board); jerr != nil {
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
		if s.ExpectedHeal && !hasSucceeded(s.Actions, s.ExpectedAction) {
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

// virshRemovePrefix destroys and undefines every domain whose name
// starts with prefix.
func virshRemovePrefix(t *testing.T, prefix string) {
	t.Helper()
	out, err := exec.Command("virsh", "-c", systemURI, "list", "--all", "--name").Output()
	if err != nil {
		t.Errorf("virsh list: %v", err)
		return
	}
	for _, name := range strings.Fields(string(out)) {
		if strings.HasPrefix(name, prefix) {
			_ = exec.Command("virsh", "-c", systemURI, "destroy", name).Run()
			if out, err := exec.Command("virsh", "-c", systemURI, "undefine", name).CombinedOutput(); err != nil {
				t.Errorf("undefine %s: %v: %s", name, err, out)
			}
		}
	}
}

// sweepStaleVirsh removes the guests an earlier run of a test tagged tag
// left when it was killed: those of ownPrefix(tag) whose process is gone.
func sweepStaleVirsh(t *testing.T, tag string) {
	t.Helper()
	re := regexp.MustCompile("^(lab-" + regexp.QuoteMeta(tag) + `(\d+)-)`)
	out, err := exec.Command("virsh", "-c", systemURI, "list", "--all", "--name").Output()
	if err != nil {
		t.Fatalf("virsh list: %v", err)
	}
	for _, name := range strings.Fields(string(out)) {
		if m := re.FindStringSubmatch(name); m != nil && !processExists(m[2]) {
			virshRemovePrefix(t, name)
			t.Logf("removed %s, left by an earlier run", name)
		}
	}
}
