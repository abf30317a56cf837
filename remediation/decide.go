package remediation

import (
	"fmt"
	"strings"
	"time"

	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// instanceKey names one alert instance: the same label set firing since the
// same moment. Alerts are re-sent on every rule evaluation, so this is what
// makes the engine act once per incident rather than once per evaluation.
type instanceKey struct {
	fingerprint string
	startsAt    string // RFC 3339 in UTC, so a journal round trip keeps it equal
}

func keyOf(fingerprint string, startsAt time.Time) instanceKey {
	return instanceKey{fingerprint: fingerprint, startsAt: startsAt.UTC().Format(time.RFC3339Nano)}
}

// history is what the engine knows about one alert instance.
type history struct {
	state    journal.State // of the latest record; "" when none
	attempts int           // actions tried; skips do not count
	finished time.Time     // when the latest try ended
	// refused is set once a guard's refusal (breaker, pause, escalation)
	// is in the journal for this instance: such a refusal is not final,
	// the instance is acted on once the guard allows, but it is recorded
	// only once however often the alert is re-sent.
	refused bool
}

// guardRefusal reports whether a skipped record's reason is a guard's
// refusal rather than a final skip (dry run, missing labels): the guards
// write their sentences as "skipped: …" or "escalate: …".
func guardRefusal(reason string) bool {
	return strings.HasPrefix(reason, "skipped: ") || strings.HasPrefix(reason, "escalate: ")
}

// apply folds a journal record, oldest first, into the history.
func (h *history) apply(rec journal.Record) {
	if rec.State == journal.StateSkipped && guardRefusal(rec.Reason) {
		h.refused = true
		return
	}
	h.state = rec.State
	if rec.State == journal.StateSkipped {
		return
	}
	h.attempts = max(h.attempts, rec.Attempt)
	h.finished = rec.Finished
}

type verdict int

const (
	// verdictAct: try the action (again).
	verdictAct verdict = iota
	// verdictWait: not now — an action runs or a retry is not yet due.
	verdictWait
	// verdictDone: this instance needs nothing more from the engine.
	verdictDone
)

func (v verdict) String() string {
	switch v {
	case verdictAct:
		return "act"
	case verdictWait:
		return "wait"
	case verdictDone:
		return "done"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// decide is decideWith under the default guards.
func decide(h history, now time.Time) (verdict, string) {
	return decideWith(policy.DefaultGuards(), h, now)
}

// decideWith says what to do about an alert instance with history h at now
// under the guards g, and why. It keeps the per-instance rules: one action
// at a time, none after a success or an interruption, at most
// g.MaxAttempts tries, and no retry before the earliest time the target
// guard's backoff (with its jitter) could allow; that guard then holds the
// retry until its own time.
func decideWith(g policy.Guards, h history, now time.Time) (verdict, string) {
	maxAttempts := g.MaxAttempts
	switch h.state {
	case "":
		return verdictAct, "first action for this alert instance"
	case journal.StatePending, journal.StateRunning:
		return verdictWait, "an action for this alert instance is in flight"
	case journal.StateSucceeded:
		return verdictDone, "already healed"
	case journal.StateSkipped:
		return verdictDone, "already skipped"
	case journal.StateInterrupted:
		// The agent may have acted before the server stopped; doing it
		// again unseen could do harm, so a human looks first.
		return verdictDone, "an earlier action was interrupted; not retried automatically"
	case journal.StateFailed:
		if maxAttempts > 0 && h.attempts >= maxAttempts {
			return verdictDone, fmt.Sprintf("gave up after %d attempts", h.attempts)
		}
		if due := h.finished.Add(g.Target().Backoff(h.attempts, 0)); now.Before(due) {
			return verdictWait, fmt.Sprintf("retry %d of %d is due at %s", h.attempts+1, maxAttempts, due.Format(time.RFC3339))
		}
		return verdictAct, fmt.Sprintf("retry %d of %d", h.attempts+1, maxAttempts)
	}
	// A state this engine does not know was written by a newer one; leave
	// it alone rather than guess.
	return verdictDone, fmt.Sprintf("unknown journal state %q", h.state)
}
