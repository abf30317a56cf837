package lab

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Scoreboard is what a game day found, fault by fault.
type Scoreboard struct {
	Started         time.Time `json:"started"`
	DurationSeconds float64   `json:"duration_seconds"`
	// Hold is how long libvirtd-stop kept libvirtd stopped.
	Hold string `json:"hold"`
	// Overlays is the first check of the lab's overlays, nil without
	// guests that boot.
	Overlays *OverlayCheck `json:"overlays,omitempty"`
	Faults   []*Score      `json:"faults"`
	// Error is why the game day could not run at all (the lab never
	// got ready).
	Error string `json:"error,omitempty"`
	OK    bool   `json:"ok"`
}

// Score is one fault's line of the scoreboard.
type Score struct {
	Fault Fault `json:"-"`
	// Name, Kind and the expectations are the fault's (Faults).
	Name           string   `json:"fault"`
	Kind           string   `json:"kind"`
	Targets        []string `json:"targets"`
	ExpectedAlert  string   `json:"expected_alert"`
	ExpectedAction string   `json:"expected_action"`
	// ExpectedHeal: caretaker is to heal it with no human.
	ExpectedHeal bool `json:"expected_heal"`
	// DetectedAfter is from the injection to the expected alert going
	// active (pending or firing) or the first journal record for the
	// target, whichever came first; nil: never.
	DetectedAfter *float64 `json:"detected_after_seconds"`
	// Alerts are the alerts seen active for the targets, with the
	// furthest state each reached ("GuestCrashed firing").
	Alerts []string `json:"alerts"`
	// Actions are the journal's records for the targets since the
	// injection.
	Actions []TakenAction `json:"actions"`
	// HealedAfter is from the injection to the heal check passing; nil:
	// not within the deadline. HealedBy says who healed: caretaker, or
	// the runner standing in for the paged human.
	HealedAfter *float64 `json:"healed_after_seconds"`
	HealedBy    string   `json:"healed_by,omitempty"`
	// TrafficAfter is from the injection to the broken guests (or the
	// broken overlay's) reaching their peers on the other hosts again;
	// nil: not within the deadline, or the lab's guests boot no OS.
	TrafficAfter *float64 `json:"traffic_restored_after_seconds"`
	// Skipped says what of the lab the fault needed and did not have.
	Skipped string `json:"skipped,omitempty"`
	// Doubled counts actions executed more than once for one target and
	// fault: must be 0.
	Doubled int `json:"doubled_actions"`
	// Held counts actions the guards held (the circuit breaker's).
	Held int `json:"held_actions"`
	// Pages are the critical alerts that fired during the fault.
	Pages []Page `json:"pages"`
	// Runbook is the page the on-call reads where no action heals the
	// fault.
	Runbook string   `json:"runbook,omitempty"`
	Notes   []string `json:"notes,omitempty"`
	Error   string   `json:"error,omitempty"`
	OK      bool     `json:"ok"`
	// Problems say why the line is not OK.
	Problems []string `json:"problems,omitempty"`
}

// OverlayCheck is what the game day found of the lab's overlays before
// the first fault: the guest pairs (from→to) of one cluster on different
// hosts that reach each other, and the pairs of different clusters that
// do not, as they must not.
type OverlayCheck struct {
	Reach    []string `json:"reach"`
	Isolated []string `json:"isolated"`
	Error    string   `json:"error,omitempty"`
}

// TakenAction is one journal record of a fault.
type TakenAction struct {
	ID        uint64 `json:"id"`
	Action    string `json:"action"`
	Domain    string `json:"domain,omitempty"`
	Host      string `json:"host,omitempty"`
	State     string `json:"state"`
	Reason    string `json:"reason,omitempty"`
	FromEvent bool   `json:"from_event,omitempty"`
}

// Page is a critical alert that fired: who was paged, and which runbook
// page they read.
type Page struct {
	Alert   string `json:"alert"`
	Runbook string `json:"runbook"`
}

func newScore(f Fault) *Score {
	return &Score{Fault: f, Name: f.Name, Kind: f.Kind, ExpectedAlert: f.Alert, ExpectedAction: f.Action, ExpectedHeal: f.Heals,
		Targets: []string{}, Alerts: []string{}, Actions: []TakenAction{}, Pages: []Page{}}
}

// judge sets OK and Problems: detected, healed within its deadline (by
// caretaker where it should heal), no action doubled.
func (s *Score) judge() {
	s.Problems = nil
	if s.Skipped != "" {
		s.Problems = append(s.Problems, "skipped: it needs "+s.Skipped)
		s.OK = false
		return
	}
	if s.Error != "" {
		s.Problems = append(s.Problems, s.Error)
	}
	if s.DetectedAfter == nil {
		s.Problems = append(s.Problems, "not detected")
	}
	switch {
	case s.HealedAfter == nil:
		s.Problems = append(s.Problems, "not healed within its deadline")
	case s.Fault.Heals && s.HealedBy != "caretaker":
		s.Problems = append(s.Problems, "healed by "+s.HealedBy+", not by caretaker")
	}
	if s.Doubled > 0 {
		s.Problems = append(s.Problems, fmt.Sprintf("%d doubled action(s)", s.Doubled))
	}
	s.OK = len(s.Problems) == 0
}

func (s *Score) summary() string {
	if s.OK {
		return fmt.Sprintf("ok: detected after %s, healed after %s by %s", secs(s.DetectedAfter), secs(s.HealedAfter), s.HealedBy)
	}
	return "FAILED: " + strings.Join(s.Problems, "; ")
}

// failed names the faults that failed, with why.
func (b *Scoreboard) failed() []string {
	var out []string
	if b.Error != "" {
		out = append(out, b.Error)
	}
	if b.Overlays != nil && b.Overlays.Error != "" {
		out = append(out, "overlays: "+b.Overlays.Error)
	}
	for _, s := range b.Faults {
		if !s.OK {
			out = append(out, s.Name+": "+strings.Join(s.Problems, ", "))
		}
	}
	return out
}

func (b *Scoreboard) judge() {
	b.OK = b.Error == "" && len(b.Faults) > 0 && (b.Overlays == nil || b.Overlays.Error == "")
	for _, s := range b.Faults {
		s.judge()
		b.OK = b.OK && s.OK
	}
}

func (b *Scoreboard) writeJSON(w io.Writer) error {
	b.judge()
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(b)
}

// writeTable writes the scoreboard as a table, then a line per fault
// that needed a human or did not pass.
func (b *Scoreboard) writeTable(w io.Writer) error {
	b.judge()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FAULT\tTARGET\tDETECTED\tALERTS\tACTIONS\tHEALED\tTRAFFIC\tDOUBLED\tPAGES\tRESULT")
	for _, s := range b.Faults {
		result := "ok"
		if !s.OK {
			result = "FAILED"
		}
		healed := secs(s.HealedAfter)
		if s.HealedAfter != nil && s.HealedBy != "caretaker" {
			healed += " (" + s.HealedBy + ")"
		}
		traffic := "—"
		if s.TrafficAfter != nil {
			traffic = secs(s.TrafficAfter)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", s.Name, targets(s.Targets), secs(s.DetectedAfter),
			orDash(strings.Join(s.Alerts, ", ")), actionsText(s.Actions), healed, traffic, s.Doubled, pagesText(s.Pages), result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range b.Faults {
		if s.Runbook != "" {
			who := "nobody was paged"
			if len(s.Pages) > 0 {
				var names []string
				for _, p := range s.Pages {
					names = append(names, p.Alert)
				}
				who = "the on-call was paged (" + strings.Join(names, ", ") + ")"
			}
			fmt.Fprintf(w, "%s: no automatic heal; %s; runbook %s\n", s.Name, who, s.Runbook)
		}
		for _, n := range s.Notes {
			fmt.Fprintf(w, "%s: %s\n", s.Name, n)
		}
		if !s.OK {
			fmt.Fprintf(w, "%s: FAILED: %s\n", s.Name, strings.Join(s.Problems, "; "))
		}
	}
	if o := b.Overlays; o != nil {
		fmt.Fprintf(w, "overlays: %d guest pairs of one cluster on different hosts reach each other; %d pairs of different clusters do not\n",
			len(o.Reach), len(o.Isolated))
		if o.Error != "" {
			fmt.Fprintf(w, "overlays: FAILED: %s\n", o.Error)
		}
	}
	if b.Error != "" {
		fmt.Fprintf(w, "game day: %s\n", b.Error)
	}
	verdict := "every fault detected and healed, no action doubled"
	if !b.OK {
		verdict = "FAILED"
	}
	_, err := fmt.Fprintf(w, "game day: %d fault(s) in %.0fs: %s\n", len(b.Faults), b.DurationSeconds, verdict)
	return err
}

func secs(d *float64) string {
	if d == nil {
		return "never"
	}
	return fmt.Sprintf("%.2fs", *d)
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func targets(t []string) string {
	if len(t) > 2 {
		return fmt.Sprintf("%s +%d", t[0], len(t)-1)
	}
	return orDash(strings.Join(t, ","))
}

// actionsText sums the records up: "restart-vm succeeded (event)",
// "2× restart-vm skipped".
func actionsText(as []TakenAction) string {
	type key struct {
		action, state string
		event         bool
	}
	var keys []key
	n := map[key]int{}
	for _, a := range as {
		k := key{a.Action, a.State, a.FromEvent}
		if n[k] == 0 {
			keys = append(keys, k)
		}
		n[k]++
	}
	var parts []string
	for _, k := range keys {
		p := k.action + " " + k.state
		if k.event {
			p += " (event)"
		}
		if n[k] > 1 {
			p = fmt.Sprintf("%d× %s", n[k], p)
		}
		parts = append(parts, p)
	}
	return orDash(strings.Join(parts, ", "))
}

func pagesText(ps []Page) string {
	var names []string
	for _, p := range ps {
		if !slices.Contains(names, p.Alert) {
			names = append(names, p.Alert)
		}
	}
	return orDash(strings.Join(names, ", "))
}
