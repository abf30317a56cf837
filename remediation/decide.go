package remediation

import (
	"fmt"
	"time"

	"caretaker/remediation/journal"
)

// Retries of a failed action for one alert instance. A later issue replaces
// these constants with configurable guards.
const (
	maxAttempts  = 3
	retryBackoff = 10 * time.Second // doubled after every failure
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
}

// apply folds a journal record, oldest first, into the history.
func (h *history) apply(rec journal.Record) {
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

// decide says what to do about an alert instance with history h at now, and
// why.
func decide(h history, now time.Time) (verdict, string) {
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
		if h.attempts >= maxAttempts {
			return verdictDone, fmt.Sprintf("gave up after %d attempts", h.attempts)
		}
		if due := h.finished.Add(backoff(h.attempts)); now.Before(due) {
			return verdictWait, fmt.Sprintf("retry %d of %d is due at %s", h.attempts+1, maxAttempts, due.Format(time.RFC3339))
		}
		return verdictAct, fmt.Sprintf("retry %d of %d", h.attempts+1, maxAttempts)
	}
	// A state this engine does not know was written by a newer one; leave
	// it alone rather than guess.
	return verdictDone, fmt.Sprintf("unknown journal state %q", h.state)
}

// backoff is the wait after the given number of failed attempts.
func backoff(attempts int) time.Duration {
	if attempts < 1 {
		return 0
	}
	return retryBackoff << (attempts - 1)
}
