package remediation

import (
	"fmt"
	"time"

	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// instanceKey names one alert instance: the same label set firing since the
// same moment. Alerts are re-sent on every rule evaluation, so this is what
// makes the engine act once per incident rather than once per evaluation.
type instanceKey struct {
	fingerprint string
	startsAt    int64 // Unix seconds
}

// keyOf keeps the start to the second: Prometheus restores an alert's
// start after a restart in whole seconds, and that restored alert is the
// same instance as the one acted on before.
func keyOf(fingerprint string, startsAt time.Time) instanceKey {
	return instanceKey{fingerprint: fingerprint, startsAt: startsAt.Unix()}
}

// instance is what the engine knows about one alert instance: what its
// alert said when last received, and what its journal records say. The
// latter is only ever changed by apply, at load as after each write, so
// memory and journal cannot disagree.
type instance struct {
	alert Alert     // as last received; Labels nil when only the journal knew it
	seen  time.Time // when last received firing; zero when only the journal knew it
	// resolved: the alert stopped firing. Nothing more is started for
	// the instance; an action in flight finishes.
	resolved bool
	// resolvedByRule: a rule's alert resolved it, not the event path's
	// word that the guest runs (see keyFor).
	resolvedByRule bool

	// From the journal (apply):

	step     int           // place in the rule's escalation chain
	attempts int           // tries of the current step (the records' Attempt)
	state    journal.State // of the latest record; "" when none
	finished time.Time     // when the latest try ended

	// last is the latest record of the instance; 0 when none.
	last uint64
	// manual: run by hand (runbook run); never retried or escalated.
	manual bool
	// open is the record still waiting for its outcome (pending,
	// awaiting approval, running, verifying); 0 when none.
	open     uint64
	reason   string           // the guard that holds the open pending record, rewritten only when it changes
	approval *guards.Approval // the open record's, when one was requested
	verifyBy time.Time        // verifying by resolution: the deadline (set by Engine.apply)

	// done: the engine has nothing more to do for this instance. gaveUp:
	// done because every action of the chain failed.
	done, gaveUp bool
}

// apply folds a journal record, oldest first, into the instance.
func (in *instance) apply(rec journal.Record) {
	if rec.Step > in.step {
		in.step, in.attempts = rec.Step, 0
	}
	in.state, in.last = rec.State, rec.ID
	in.attempts = max(in.attempts, rec.Attempt)
	in.manual = rec.Author != ""
	if rec.Approval != nil { // it stands for the instance's later tries too
		in.approval = rec.Approval
	}
	in.open, in.reason, in.verifyBy = 0, "", time.Time{}
	switch rec.State {
	case journal.StatePending:
		in.open, in.reason = rec.ID, heldBy(rec.Decisions)
	case journal.StateAwaitingApproval, journal.StateRunning, journal.StateVerifying:
		in.open = rec.ID
	case journal.StateFailed:
		in.finished = rec.Finished
		// A failure ends what was run by hand; an automatic one is
		// retried or escalated unless it was the last.
		in.done = in.manual
	case journal.StateSucceeded, journal.StateSkipped, journal.StateInterrupted,
		journal.StateCancelled, journal.StateExpired:
		in.done = true
		in.finished = rec.Finished
	}
	if rec.GaveUp {
		in.done, in.gaveUp = true, true
	}
}

// heldBy names the guard whose refusal a pending record holds: the first
// one that did not allow.
func heldBy(ds []guards.Decision) string {
	for _, d := range ds {
		if !d.Allowed() {
			return d.Guard
		}
	}
	return ""
}

// settled reports whether the engine is finished with the instance.
func (in *instance) settled() bool {
	return in.open == 0 && (in.done || in.resolved)
}

type verdict int

const (
	// verdictAct: try the current step's action (again).
	verdictAct verdict = iota
	// verdictWait: not now — an action runs or a retry is not yet due.
	verdictWait
	// verdictEscalate: the current step spent its attempts; the next
	// action of the chain takes over, or a human when there is none.
	verdictEscalate
	// verdictDone: this instance needs nothing more from the engine.
	verdictDone
)

// decide says what to do about an alert instance at now under the guards
// g, and why. It keeps the per-instance rules: one action at a time, none
// after a success or an interruption, and no retry before the earliest
// time the target guard's backoff (with its jitter) could allow; that guard
// then holds the retry until its own time. Without a window it also keeps
// the attempt limit, g.MaxAttempts tries of each action of the chain for
// one alert instance; with one, the limit is the target guard's alone
// (attempts on the target within the window), so each configuration has
// one place that counts attempts against it.
func decide(g policy.Guards, in instance, now time.Time) (verdict, string) {
	if in.done {
		return verdictDone, "already handled"
	}
	if in.resolved && in.open == 0 {
		return verdictDone, "the alert resolved"
	}
	limit := g.MaxAttempts
	if g.Window > 0 {
		limit = 0 // the target guard's
	}
	retry := func() string {
		if limit > 0 {
			return fmt.Sprintf("retry %d of %d", in.attempts+1, limit)
		}
		return fmt.Sprintf("retry %d", in.attempts+1)
	}
	switch in.state {
	case "", journal.StatePending, journal.StateAwaitingApproval:
		if in.attempts == 0 {
			return verdictAct, "first action for this alert instance"
		}
		return verdictAct, retry()
	case journal.StateRunning, journal.StateVerifying:
		return verdictWait, "an action for this alert instance is in flight"
	case journal.StateFailed:
		if limit > 0 && in.attempts >= limit {
			return verdictEscalate, fmt.Sprintf("gave up after %d attempts", in.attempts)
		}
		if due := in.finished.Add(g.Target().Backoff(in.attempts, 0)); now.Before(due) {
			return verdictWait, fmt.Sprintf("%s is due at %s", retry(), due.Format(time.RFC3339))
		}
		return verdictAct, retry()
	}
	return verdictDone, fmt.Sprintf("journal state %q", in.state)
}
