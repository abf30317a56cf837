package remediation

import (
	"context"
	"errors"
	"fmt"
	"time"

	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// job is one action to run, its intent already on disk.
type job struct {
	rec    journal.Record
	rule   policy.Rule
	act    action
	t      target
	labels map[string]string
	// annotations are the alert's, for run-command's templates; a
	// resumed job has none, and never runs again.
	annotations map[string]string
	key         instanceKey
	// resume: the action was started before a restart of the server; it
	// is only verified, never run again.
	resume bool
}

// errAlreadyHealthy ends an action whose target turned out healthy before
// anything was done: an alert evaluated on data from before a restart, or a
// late copy from an Alertmanager.
var errAlreadyHealthy = errors.New("already healthy")

// errNotLeading ends an action whose server lost the lead between the
// record of its intent and the call: the next leader reconciles it.
var errNotLeading = errors.New("not done: this server no longer leads")

// execute runs the action, then verifies it: by a direct check of the
// target, or by waiting for the alert to resolve, or not at all.
func (e *Engine) execute(j job) {
	defer e.inflight.Done()
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	if j.resume {
		if !j.act.idempotent {
			e.finish(j, e.checkUntilHealthy(ctx, j), j.rec.Output)
			return
		}
		// Look, then act: the target healthy means the stopped server's
		// action took effect; else running it again cannot do harm (a
		// start of a guest that the old request started meanwhile finds
		// it running), and waiting out the verification would leave the
		// target down for nothing.
		if healthy, err := j.act.check(ctx, e, j.t); err == nil && healthy {
			e.finish(j, nil, j.rec.Output)
			return
		}
	} else if j.act.kind == kindGuest && j.act.check != nil {
		// Look before acting: a guest that runs needs nothing.
		if healthy, err := j.act.check(ctx, e, j.t); err == nil && healthy {
			e.finish(j, errAlreadyHealthy, "")
			return
		}
	}
	if e.mayAct != nil && !e.mayAct() {
		e.finish(j, errNotLeading, "")
		return
	}
	out, err := j.act.run(ctx, e, j.t, j.rule, j.labels, j.annotations)
	if err != nil {
		e.finish(j, err, out)
		return
	}
	if j.act.verify == verifyNone {
		e.finish(j, nil, out)
		return
	}
	now := e.now()
	note := "done; verifying that " + j.t.String() + " is healthy"
	if j.act.verify == verifyResolved {
		note = fmt.Sprintf("done; waiting up to %s for the alert to resolve", j.rule.VerifyWithin())
	}
	e.mu.Lock()
	err = e.write(func(w *writer) {
		e.save(w, e.jobInstance(j), j.rec.ID, journal.Record{}, func(r *journal.Record) {
			r.Output = out
			r.Move(journal.StateVerifying, now, note)
		})
	})
	e.mu.Unlock()
	if err != nil {
		e.finish(j, fmt.Errorf("record verification: %w", err), out)
		return
	}
	if j.act.verify == verifyResolved {
		// The action is done; the alert's resolution (or the tick,
		// past the instance's verifyBy) ends its verification.
		e.metrics.inflight.Dec()
		return
	}
	e.finish(j, e.checkUntilHealthy(ctx, j), out)
}

// checkUntilHealthy checks the target until it is healthy or the rule's
// verification timeout ends: the agent's word that it acted is not proof
// that the target stayed up.
func (e *Engine) checkUntilHealthy(ctx context.Context, j job) error {
	ctx, cancel := context.WithTimeout(ctx, j.rule.VerifyWithin())
	defer cancel()
	// With the host's event stream, the guest's started event is what
	// says when to look again; the poll stays, slower, in case it is lost.
	started, stop := e.startedEvent(j)
	defer func() { stop() }()
	every := checkEvery
	if started != nil {
		every = 5 * checkEvery
	}
	var lastErr error
	for {
		ok, err := j.act.check(ctx, e, j.t)
		if ok {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("verify %s: %w", j.t, lastErr)
			}
			return fmt.Errorf("verify %s: not healthy after the action", j.t)
		case <-started:
			stop()
			started, stop = e.startedEvent(j) // and for the next one
		case <-time.After(every):
		}
	}
}

// finish records the outcome of a job that ran (err nil: verified).
func (e *Engine) finish(j job, err error, out string) {
	e.metrics.inflight.Dec()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.write(func(w *writer) {
		e.settle(w, e.jobInstance(j), j.rec, err, out, e.now())
	})
}

// jobInstance is the instance of a job's record. Called with e.mu held.
func (e *Engine) jobInstance(j job) *instance {
	if in := e.instances[j.key]; in != nil {
		return in
	}
	return &instance{} // forgotten while it ran: the record is still written
}

// verified ends a verifying record: healed when err is nil. Called with
// e.mu held.
func (e *Engine) verified(w *writer, in *instance, now time.Time, err error) {
	// Read in the batch's own transaction: bbolt must not have a read
	// transaction open beside the write one in the same goroutine.
	rec, gerr := w.b.Get(in.open)
	if gerr != nil {
		w.err = gerr
		return
	}
	e.settle(w, in, rec, err, rec.Output, now)
}

// settle writes the final state of a started record, which save applies to
// the engine's memory. Called with e.mu held.
func (e *Engine) settle(w *writer, in *instance, rec journal.Record, err error, out string, now time.Time) {
	if errors.Is(err, errAlreadyHealthy) {
		e.close(w, in, journal.StateSkipped, now, fmt.Sprintf("%s was already healthy: nothing done", rec.Target), nil)
		return
	}
	state, result := journal.StateSucceeded, resultSucceeded
	if err != nil {
		state, result = journal.StateFailed, resultFailed
	}
	note := "healthy again"
	if rec.Action == policy.ActionNotifyOnly {
		note = "recorded; nothing to do"
	}
	if err != nil {
		note = err.Error()
	}
	updated, ok := e.save(w, in, rec.ID, journal.Record{}, func(r *journal.Record) {
		r.Finished, r.Output = now, out
		if err != nil {
			r.Error = err.Error()
		} else if !r.AlertStartsAt.IsZero() && rec.Action != policy.ActionNotifyOnly {
			r.HealSeconds = now.Sub(r.AlertStartsAt).Seconds()
		}
		r.Move(state, now, note)
	})
	if !ok {
		return
	}
	e.metrics.actions.WithLabelValues(rec.Action, result).Inc()
	e.metrics.duration.WithLabelValues(rec.Action).Observe(now.Sub(rec.Started).Seconds())
	if err != nil {
		e.log.Warn("remediation action failed", "record", rec.ID, "action", rec.Action, "target", rec.Target, "attempt", rec.Attempt, "err", err)
		return
	}
	if updated.HealSeconds > 0 {
		e.metrics.heal.WithLabelValues(rec.Action).Observe(updated.HealSeconds)
	}
	e.log.Info("remediation action succeeded", "record", rec.ID, "action", rec.Action, "target", rec.Target, "heal_seconds", updated.HealSeconds)
}

// Tick does what time alone decides: it expires approvals past their TTL,
// fails verifications past their timeout, retries and escalates the
// actions whose alert still fires (so an alert that Alertmanager repeats
// only every few hours is not left waiting), cancels pending actions whose
// alert has not been received for StaleAfter, and prunes the journal. The
// server calls it every few seconds.
func (e *Engine) Tick(now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	e.write(func(w *writer) {
		for k, in := range e.instances {
			if in.settled() && now.Sub(in.finished) > forgetAfter && now.Sub(in.seen) > forgetAfter {
				// Long settled: only a very late copy of the alert
				// could still arrive. The journal keeps the record.
				delete(e.instances, k)
				e.forget(k)
				continue
			}
			e.tick(w, in, now)
		}
	})
	if e.retention > 0 && now.Sub(e.pruned) >= time.Hour {
		e.pruned = now
		if n, err := e.journal.Prune(now.Add(-e.retention)); err != nil {
			e.log.Error("remediation: cannot prune the journal", "err", err)
		} else if n > 0 {
			e.log.Info("remediation journal pruned", "records", n, "older_than", now.Add(-e.retention))
		}
	}
}

// forgetAfter is how long the engine keeps a settled alert instance in
// memory, to recognise copies of its alert.
const forgetAfter = 24 * time.Hour

func (e *Engine) tick(w *writer, in *instance, now time.Time) {
	if in.done || in.manual || in.alert.Labels == nil {
		return
	}
	switch in.state {
	case journal.StateVerifying:
		if !in.verifyBy.IsZero() && !now.Before(in.verifyBy) {
			e.verified(w, in, now, errors.New("the alert did not resolve within the verification timeout"))
		}
		return
	case journal.StateRunning:
		return
	}
	if in.open != 0 && now.Sub(in.seen) >= e.staleAfter {
		e.close(w, in, journal.StateCancelled, now,
			fmt.Sprintf("the alert was not received for %s: presumed resolved", e.staleAfter), nil)
		return
	}
	if now.Sub(in.seen) >= e.staleAfter {
		return // a failed try of an alert that is no longer sent
	}
	if rule, ok := e.policy.Match(in.alert.Labels); ok {
		e.advance(w, in, rule, now)
	}
}

// reconcile settles the records a previous server (or leader) left open.
// Actions that were running or verifying are checked again, in the
// background, against their target's real state where the action can be
// checked — a guest runs or not, an overlay is whole or not. An idempotent
// one (a start, an overlay repair) whose target is still unhealthy is run
// again at once: repeating it cannot do harm, even if the agent is still
// carrying out the request of the server that died. Another is only
// verified, within the rule's verification timeout; one that cannot be
// checked is marked interrupted, never repeated. Pending and awaiting records stay open: they
// never started. Called by New, before the engine is shared.
func (e *Engine) reconcile() error {
	open, err := e.journal.Unfinished()
	if err != nil {
		return err
	}
	now := e.now()
	var resume []job
	e.mu.Lock()
	defer e.mu.Unlock()
	e.write(func(w *writer) {
		for _, rec := range open {
			act, known := e.actions[rec.Action]
			if !rec.State.Started() || !known {
				continue
			}
			in := e.instanceOf(keyOf(rec.Fingerprint, rec.AlertStartsAt))
			labels := rec.Labels
			if labels == nil { // written before records kept the labels
				labels = map[string]string{"host": rec.Host, "uuid": rec.UUID, "cluster": rec.Cluster}
			}
			t, terr := targetOf(rec.Action, act, labels)
			switch {
			case act.verify == verifyNone:
				e.settle(w, in, rec, nil, rec.Output, now)
			case act.check != nil && terr == nil:
				rule, ok := e.policy.Rule(rec.Rule)
				if !ok {
					rule = policy.Rule{Name: rec.Rule, Action: rec.Action}
				}
				resume = append(resume, job{rec: rec, rule: rule, act: act, t: t, labels: labels,
					key: keyOf(rec.Fingerprint, rec.AlertStartsAt), resume: true})
				how := "verifying it"
				if act.idempotent {
					how = "checking it, and running it again if its target is still unhealthy"
				}
				e.log.Warn("remediation action left running by a restart or a lost leader; "+how, "record", rec.ID,
					"action", rec.Action, "target", rec.Target)
			default:
				reason := "the server stopped before the outcome was known, and the action cannot be checked; not retried automatically"
				e.save(w, in, rec.ID, journal.Record{}, func(r *journal.Record) {
					r.Reason, r.Finished = reason, now
					r.Move(journal.StateInterrupted, now, reason)
				})
				e.log.Warn("remediation action interrupted by a restart; check the target by hand", "record", rec.ID,
					"action", rec.Action, "target", rec.Target)
			}
		}
		w.jobs = append(w.jobs, resume...)
	})
	return nil
}
