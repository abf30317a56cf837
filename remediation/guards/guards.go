// Package guards holds the safety guards of the remediation engine: pure
// decisions about whether one candidate action may run now. Each guard takes
// the time as an argument and returns a Decision with a sentence for the
// journal; Check runs them all in a fixed order.
//
// Models: Cluster API's MachineHealthCheck (the max-unhealthy short
// circuit), Kubernetes' unhealthy-zone threshold and Nomad's restart
// tracker (attempts, interval, delay, jitter).
package guards

import (
	"fmt"
	"strings"
	"time"
)

// Verdict is what a guard says about a candidate action.
type Verdict string

// Verdicts.
const (
	// Allow: this guard does not stand in the way.
	Allow Verdict = "allow"
	// Wait: not now; the action may be allowed later (RetryAt when known).
	Wait Verdict = "wait"
	// Skip: refused by a rule or an operator's word.
	Skip Verdict = "skip"
	// Escalate: automation has done what it may; a human takes over.
	Escalate Verdict = "escalate"
)

// Guard names, as recorded in Decision.Guard.
const (
	GuardPause       = "pause"
	GuardWindow      = "window"
	GuardBreaker     = "circuit-breaker"
	GuardDependency  = "dependency"
	GuardTarget      = "target"
	GuardConcurrency = "concurrency"
	GuardRate        = "rate"
	GuardApproval    = "approval"
)

// Decision is one guard's verdict and the reason in words.
type Decision struct {
	Guard   string    `json:"guard"`
	Verdict Verdict   `json:"verdict"`
	Reason  string    `json:"reason"`
	RetryAt time.Time `json:"retry_at,omitzero"` // for Wait and Escalate, when known
}

// Allowed reports whether the decision lets the action run.
func (d Decision) Allowed() bool { return d.Verdict == Allow }

func allow(guard, format string, args ...any) Decision {
	return Decision{Guard: guard, Verdict: Allow, Reason: "allowed: " + fmt.Sprintf(format, args...)}
}

func skip(guard, format string, args ...any) Decision {
	return Decision{Guard: guard, Verdict: Skip, Reason: "skipped: " + fmt.Sprintf(format, args...)}
}

func wait(guard string, until time.Time, format string, args ...any) Decision {
	return Decision{Guard: guard, Verdict: Wait, RetryAt: until, Reason: "waiting: " + fmt.Sprintf(format, args...)}
}

// stamp formats a time for the journal; UTC so sentences compare across hosts.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// human formats a duration without the trailing zero units of
// time.Duration.String ("1h" rather than "1h0m0s").
func human(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// count writes "1 attempt" or "3 attempts".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
