package guards

import (
	"errors"
	"fmt"
	"time"
)

// Outcome is how an attempt ended.
type Outcome string

// Outcomes.
const (
	Succeeded Outcome = "succeeded"
	Failed    Outcome = "failed"
)

// TargetPolicy bounds the actions on one target (a guest, a host, an
// overlay).
type TargetPolicy struct {
	// Cooldown is the quiet time after any attempt, successful or not.
	Cooldown time.Duration `json:"cooldown"`
	// BackoffBase is the wait after the first failure, doubled after each
	// further consecutive failure up to BackoffMax.
	BackoffBase time.Duration `json:"backoff_base"`
	BackoffMax  time.Duration `json:"backoff_max"`
	// Jitter spreads the backoff by ±Jitter of itself (0.2: 80%–120%), so
	// targets that failed together do not retry together.
	Jitter float64 `json:"jitter"`
	// MaxAttempts within Window, after which the target is escalated; 0
	// is no limit. A zero Window counts the whole history.
	MaxAttempts int           `json:"max_attempts"`
	Window      time.Duration `json:"window"`
}

// Validate reports a policy that cannot be applied.
func (p TargetPolicy) Validate() error {
	var errs []error
	if p.Cooldown < 0 || p.BackoffBase < 0 || p.BackoffMax < 0 || p.Window < 0 {
		errs = append(errs, errors.New("durations must not be negative"))
	}
	if p.BackoffMax > 0 && p.BackoffBase > p.BackoffMax {
		errs = append(errs, fmt.Errorf("backoff_base %s exceeds backoff_max %s", p.BackoffBase, p.BackoffMax))
	}
	if p.Jitter < 0 || p.Jitter > 1 || p.Jitter != p.Jitter {
		errs = append(errs, fmt.Errorf("jitter %v is not within [0, 1]", p.Jitter))
	}
	if p.MaxAttempts < 0 {
		errs = append(errs, fmt.Errorf("max_attempts %d is negative", p.MaxAttempts))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("target policy: %w", err)
	}
	return nil
}

// Attempt is one action on a target.
type Attempt struct {
	At      time.Time `json:"at"`
	Outcome Outcome   `json:"outcome"`
	// Jitter is the sample in [0, 1) drawn when the attempt was recorded.
	// Drawing it once keeps the retry time stable across evaluations.
	Jitter float64 `json:"jitter"`
}

// TargetHistory is the attempts on one target, oldest first.
type TargetHistory struct {
	Target   string    `json:"target"`
	Attempts []Attempt `json:"attempts"`
}

// Record appends an attempt, drawing its jitter sample from rnd (for
// example math/rand/v2.Float64; tests pass a constant). A nil rnd draws 0.5,
// which is no jitter.
func (h *TargetHistory) Record(at time.Time, outcome Outcome, rnd func() float64) {
	j := 0.5
	if rnd != nil {
		j = min(max(rnd(), 0), 1)
	}
	h.Attempts = append(h.Attempts, Attempt{At: at, Outcome: outcome, Jitter: j})
}

// Backoff is the wait after the given number of consecutive failures, with
// the jitter sample j in [0, 1]. The cap applies before the jitter, so
// targets at the cap still spread out.
func (p TargetPolicy) Backoff(failures int, j float64) time.Duration {
	if failures < 1 || p.BackoffBase <= 0 {
		return 0
	}
	d := p.BackoffBase
	for i := 1; i < failures; i++ {
		if p.BackoffMax > 0 && d >= p.BackoffMax || d > time.Duration(1<<62) {
			break
		}
		d *= 2
	}
	if p.BackoffMax > 0 && d > p.BackoffMax {
		d = p.BackoffMax
	}
	factor := 1 + p.Jitter*(2*j-1)
	return time.Duration(float64(d) * factor)
}

// Decide says whether the target may be acted on at now: escalate when
// MaxAttempts attempts fall within the window (an attempt exactly Window
// old has left it), wait during the cooldown and the backoff (both end
// exactly at their end), else allow.
func Decide(p TargetPolicy, h TargetHistory, now time.Time) Decision {
	target := h.Target
	if target == "" {
		target = "target"
	}
	if len(h.Attempts) == 0 {
		return allow(GuardTarget, "no earlier attempt on %s", target)
	}
	if p.MaxAttempts > 0 {
		var in []Attempt
		for _, a := range h.Attempts {
			if p.Window == 0 || a.At.After(now.Add(-p.Window)) {
				in = append(in, a)
			}
		}
		if len(in) >= p.MaxAttempts {
			d := Decision{Guard: GuardTarget, Verdict: Escalate}
			if p.Window == 0 {
				d.Reason = fmt.Sprintf("escalate: %s on %s (limit %d)", count(len(in), "attempt"), target, p.MaxAttempts)
				return d
			}
			// The oldest attempt in the window leaves it first.
			d.RetryAt = in[len(in)-p.MaxAttempts].At.Add(p.Window)
			d.Reason = fmt.Sprintf("escalate: %s on %s within %s (limit %d)",
				count(len(in), "attempt"), target, human(p.Window), p.MaxAttempts)
			return d
		}
	}
	last := h.Attempts[len(h.Attempts)-1]
	failures := 0
	for i := len(h.Attempts) - 1; i >= 0 && h.Attempts[i].Outcome == Failed; i-- {
		failures++
	}
	cool := last.At.Add(p.Cooldown)
	back := last.At.Add(p.Backoff(failures, last.Jitter))
	switch {
	case back.After(now) && !back.Before(cool):
		return wait(GuardTarget, back, "backoff after %s on %s, retry at %s",
			count(failures, "failed attempt"), target, stamp(back))
	case cool.After(now):
		return wait(GuardTarget, cool, "cooldown of %s on %s after the attempt at %s, until %s",
			human(p.Cooldown), target, stamp(last.At), stamp(cool))
	}
	if failures > 0 {
		return allow(GuardTarget, "retry after %s on %s", count(failures, "failed attempt"), target)
	}
	return allow(GuardTarget, "cooldown of %s on %s is over", human(p.Cooldown), target)
}
