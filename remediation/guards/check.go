package guards

import (
	"fmt"
	"time"
)

// Candidate is one action the engine would like to run.
type Candidate struct {
	Action     string            `json:"action"`
	Target     string            `json:"target"`                // the key pauses and history use
	Host       string            `json:"host,omitempty"`        // for guest actions: the guest's host
	HostLabels map[string]string `json:"host_labels,omitempty"` // for window selectors
}

// Inputs is everything the guards look at for one candidate. The engine
// gathers it; Check only decides.
type Inputs struct {
	Pauses  Pauses       `json:"pauses,omitempty"`
	Windows Windows      `json:"windows,omitempty"`
	Breaker BreakerState `json:"breaker"`
	// UnhealthyHosts maps a host to its condition ("unreachable", …).
	UnhealthyHosts map[string]string `json:"unhealthy_hosts,omitempty"`
	Target         TargetPolicy      `json:"target_policy"`
	History        TargetHistory     `json:"history"`
	MaxInFlight    int               `json:"max_in_flight"`
	InFlight       int               `json:"in_flight"`
	Rate           RateLimit         `json:"rate"`
	Starts         []time.Time       `json:"starts,omitempty"` // of this action, fleet-wide
	NeedsApproval  bool              `json:"needs_approval"`
	Approval       *Approval         `json:"approval,omitempty"`
	// DryRun decides and records everything but never executes.
	DryRun bool `json:"dry_run"`
}

// Result is the outcome of Check, as the journal stores it.
type Result struct {
	Candidate Candidate  `json:"candidate"`
	At        time.Time  `json:"at"`
	Verdict   Verdict    `json:"verdict"`
	Reason    string     `json:"reason"`
	Execute   bool       `json:"execute"` // Verdict is Allow and not a dry run
	DryRun    bool       `json:"dry_run"`
	Decisions []Decision `json:"decisions"` // every guard, in Order
	RetryAt   time.Time  `json:"retry_at,omitzero"`
}

// Order gives the order Check runs the guards in, and so which refusal is
// reported when several refuse:
//
//  1. pause: an operator's explicit word overrides everything;
//  2. window: maintenance windows and change freezes, also set by people;
//  3. circuit-breaker: a fleet-wide failure stops all automation;
//  4. dependency: a guest's unhealthy host is handled first;
//  5. target: cooldown, backoff and the attempt budget (escalation);
//  6. concurrency: actions in flight across the fleet;
//  7. rate: starts of this action over time;
//  8. approval: last, so a human is asked only about an action that
//     would otherwise run now.
func Order() []string {
	return []string{GuardPause, GuardWindow, GuardBreaker, GuardDependency,
		GuardTarget, GuardConcurrency, GuardRate, GuardApproval}
}

// Check runs every guard for c at now and returns the first refusal in
// Order, or allow. Every guard's decision is recorded, even after a
// refusal, so the journal shows all that stood in the way. Approval is
// consulted only when in.NeedsApproval.
func Check(c Candidate, in Inputs, now time.Time) Result {
	h := in.History
	if h.Target == "" {
		h.Target = c.Target
	}
	ds := []Decision{
		in.Pauses.Decide(c.Target, now),
		in.Windows.Decide(c.HostLabels, now),
		in.Breaker.Decide(),
		Dependency(c.Host, in.UnhealthyHosts),
		Decide(in.Target, h, now),
		Concurrency(in.MaxInFlight, in.InFlight),
		in.Rate.Decide(c.Action, in.Starts, now),
	}
	if in.NeedsApproval {
		ds = append(ds, in.Approval.Decide(now))
	} else {
		ds = append(ds, allow(GuardApproval, "%s needs no approval", c.Action))
	}
	r := Result{Candidate: c, At: now, Verdict: Allow, DryRun: in.DryRun, Decisions: ds}
	for _, d := range ds {
		if !d.Allowed() {
			r.Verdict, r.Reason, r.RetryAt = d.Verdict, d.Reason, d.RetryAt
			break
		}
	}
	if r.Verdict == Allow {
		r.Reason = fmt.Sprintf("allowed: %s on %s passed all %d guards", c.Action, c.Target, len(ds))
		r.Execute = !in.DryRun
	}
	if in.DryRun {
		r.Reason = "dry-run: not executed; " + r.Reason
	}
	return r
}
