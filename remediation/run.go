package remediation

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"caretaker/remediation/guards"
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
	key    instanceKey
}

// execute runs the action, then verifies it: by a direct check of the
// target, or by waiting for the alert to resolve, or not at all.
func (e *Engine) execute(j job) {
	defer e.inflight.Done()
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	out, err := j.act.run(ctx, e, j.t, j.rule, j.labels)
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
	if _, err := e.journal.Update(j.rec.ID, func(r *journal.Record) {
		r.Output = out
		r.Move(journal.StateVerifying, now, note)
	}); err != nil {
		e.finish(j, fmt.Errorf("record verification: %w", err), out)
		return
	}
	if j.act.verify == verifyResolved {
		e.mu.Lock()
		if in := e.instances[j.key]; in != nil {
			in.state, in.verifyBy = journal.StateVerifying, now.Add(j.rule.VerifyWithin())
		}
		e.mu.Unlock()
		e.metrics.inflight.Dec() // the action is done; its verification waits
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
		case <-time.After(checkEvery):
		}
	}
}

// finish records the outcome of a job that ran (err nil: verified).
func (e *Engine) finish(j job, err error, out string) {
	e.metrics.inflight.Dec()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.write(func(w *writer) {
		in := e.instances[j.key]
		if in == nil { // resolved and forgotten while it ran
			in = &instance{}
		}
		e.settle(w, in, j.rec, err, out, e.now())
	})
}

// verified ends a verifying record: healed when err is nil. Called with
// e.mu held.
func (e *Engine) verified(w *writer, in *instance, now time.Time, err error) {
	rec, gerr := e.journal.Get(in.open)
	if gerr != nil {
		w.err = gerr
		return
	}
	e.settle(w, in, rec, err, rec.Output, now)
}

// settle writes the final state of a started record and updates the
// engine's memory. Called with e.mu held.
func (e *Engine) settle(w *writer, in *instance, rec journal.Record, err error, out string, now time.Time) {
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
	updated := w.update(rec.ID, func(r *journal.Record) {
		r.Finished, r.Output = now, out
		if err != nil {
			r.Error = err.Error()
		} else if !r.AlertStartsAt.IsZero() && rec.Action != policy.ActionNotifyOnly {
			r.HealSeconds = now.Sub(r.AlertStartsAt).Seconds()
		}
		r.Move(state, now, note)
	})
	if w.err != nil {
		return
	}
	delete(e.byRecord, rec.ID)
	delete(e.busy, rec.Target)
	in.open, in.last, in.state, in.finished, in.verifyBy = 0, rec.ID, state, now, time.Time{}
	in.done = err == nil || in.manual
	outcome := guards.Succeeded
	if err != nil {
		outcome = guards.Failed
	}
	e.targetOf(rec.Target).Record(now, outcome, e.rnd)
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
		for _, in := range e.instances {
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

// reconcile settles the records a previous server left open. Actions that
// were running or verifying are checked against their target's real state
// where the action can be checked — a guest runs or not, an overlay is
// whole or not — and marked interrupted, never repeated, where it cannot.
// Pending and awaiting records stay open: they never started.
func (e *Engine) reconcile() error {
	open, err := e.journal.Unfinished()
	if err != nil {
		return err
	}
	type verdict struct {
		rec journal.Record
		err error // nil: healthy
		ok  bool  // the check answered
	}
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		out []verdict
	)
	for _, rec := range open {
		if !rec.State.Started() {
			continue
		}
		act, known := e.actions[rec.Action]
		if !known {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := verdict{rec: rec}
			if act.verify == verifyNone {
				v.ok = true
			} else if act.check != nil {
				labels := rec.Labels
				if labels == nil { // written before records kept the labels
					labels = map[string]string{"host": rec.Host, "uuid": rec.UUID, "cluster": rec.Cluster}
				}
				t, terr := targetOf(rec.Action, act, labels)
				if terr == nil {
					ctx, cancel := context.WithTimeout(context.Background(), reconcileTimeout)
					healthy, cerr := act.check(ctx, e, t)
					cancel()
					v.ok = cerr == nil
					if !healthy {
						v.err = fmt.Errorf("after a restart of the server, %s was found not healthy", t)
					}
				}
			}
			mu.Lock()
			out = append(out, v)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(out) == 0 {
		return nil
	}
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.write(func(w *writer) {
		for _, v := range out {
			k := keyOf(v.rec.Fingerprint, v.rec.AlertStartsAt)
			in := e.instanceOf(k)
			if v.ok {
				e.log.Warn("remediation action reconciled after a restart", "record", v.rec.ID, "action", v.rec.Action, "healthy", v.err == nil)
				e.settle(w, in, v.rec, v.err, v.rec.Output, now)
				continue
			}
			reason := "the server stopped before the outcome was known, and the target could not be checked; not retried automatically"
			w.update(v.rec.ID, func(r *journal.Record) {
				r.Reason, r.Finished = reason, now
				r.Move(journal.StateInterrupted, now, reason)
			})
			delete(e.byRecord, v.rec.ID)
			delete(e.busy, v.rec.Target)
			in.open, in.state, in.done = 0, journal.StateInterrupted, true
			e.log.Warn("remediation action interrupted by a restart; check the target by hand", "record", v.rec.ID,
				"action", v.rec.Action, "target", v.rec.Target)
		}
	})
	return nil
}

// reconcileTimeout bounds one check of a target at start.
const reconcileTimeout = 10 * time.Second
