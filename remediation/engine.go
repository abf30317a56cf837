// Package remediation is the engine that heals what the alerts report: it
// matches each firing alert to the policy, records its decision in the
// journal before acting, has the agent on the guest's host act, verifies the
// result and records the outcome.
//
// Alerts are re-sent on every rule evaluation, so the engine acts once per
// alert instance (its label set and the moment it started firing), and it
// remembers those instances across restarts through the journal.
package remediation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"

	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// Alert statuses, as Prometheus and Alertmanager send them.
const (
	StatusFiring   = "firing"
	StatusResolved = "resolved"
)

// ReasonDryRun is the Reason of records skipped because of Options.DryRun.
const ReasonDryRun = "dry-run"

// DefaultActionTimeout bounds one action, start and verification together,
// when Options.ActionTimeout is zero.
const DefaultActionTimeout = 2 * time.Minute

// Alert is one alert as the engine receives it, from the embedded rule
// manager or from an Alertmanager webhook.
type Alert struct {
	Name        string            // alertname
	Labels      map[string]string // includes alertname
	Annotations map[string]string
	Status      string // StatusFiring or StatusResolved
	StartsAt    time.Time
	EndsAt      time.Time
	Fingerprint string // stable id of the label set; computed from Labels if empty
}

// Hosts runs guest actions through the agent on the guest's host (the
// server wires agent HTTP clients behind it).
type Hosts interface {
	// StartGuest returns nil when the agent started the guest or it was
	// already running.
	StartGuest(ctx context.Context, host, uuid string) error
	// GuestRunning reports whether the guest runs, to verify an action.
	GuestRunning(ctx context.Context, host, uuid string) (bool, error)
}

// Options configure an Engine. Policy, Journal and Hosts are required.
type Options struct {
	Policy     *policy.Policy
	Journal    *journal.Journal
	Hosts      Hosts
	Logger     *slog.Logger          // nil discards
	Registerer prometheus.Registerer // nil registers nothing
	Now        func() time.Time      // nil is time.Now
	// ActionTimeout bounds one action; 0 is DefaultActionTimeout.
	ActionTimeout time.Duration
	// DryRun records what would be done, as skipped, and does nothing.
	DryRun bool
	// FleetSize returns the number of guests known, the total the circuit
	// breaker's percentage is taken of; 0 means unknown. When it is nil or
	// returns 0, the largest count seen stands in for it.
	FleetSize func() int
}

// Engine decides and runs remediation actions. It is safe for concurrent
// use.
type Engine struct {
	log     *slog.Logger
	journal *journal.Journal
	hosts   Hosts
	now     func() time.Time
	timeout time.Duration
	dryRun  bool
	actions map[string]action
	metrics *metrics
	fleet   func() int
	rnd     func() float64 // jitter samples

	mu        sync.Mutex
	policy    *policy.Policy
	instances map[instanceKey]*history
	busy      map[string]bool // target keys with an action in flight
	// The guards' state. targets holds the attempts on each target (by
	// target key); unhealthy the fingerprints of the firing alerts that
	// match a rule, by target key; largest the largest fleet count seen.
	targets   map[string]*guards.TargetHistory
	unhealthy map[string]map[string]bool
	largest   int
	breaker   *guards.Breaker
	// pauses live in memory only for now: a restart forgets them.
	// Persisting them, and the API and runbook commands that set them,
	// come later.
	pauses   guards.Pauses
	closed   bool
	inflight sync.WaitGroup // Add under mu, so Close cannot miss one
}

// New returns an engine. It marks the journal's unfinished records
// interrupted (the previous server stopped before their outcome was known)
// and learns from the journal which alert instances were already handled,
// so a restart never repeats an action.
func New(opts Options) (*Engine, error) {
	switch {
	case opts.Policy == nil:
		return nil, errors.New("new remediation engine: no policy")
	case opts.Journal == nil:
		return nil, errors.New("new remediation engine: no journal")
	case opts.Hosts == nil:
		return nil, errors.New("new remediation engine: no hosts")
	}
	e := &Engine{
		log:       opts.Logger,
		journal:   opts.Journal,
		hosts:     opts.Hosts,
		now:       opts.Now,
		timeout:   opts.ActionTimeout,
		dryRun:    opts.DryRun,
		actions:   actions(),
		policy:    opts.Policy,
		instances: map[instanceKey]*history{},
		busy:      map[string]bool{},
		fleet:     opts.FleetSize,
		rnd:       rand.Float64,
		targets:   map[string]*guards.TargetHistory{},
		unhealthy: map[string]map[string]bool{},
	}
	g := opts.Policy.GuardSettings()
	e.breaker = &guards.Breaker{Threshold: g.Threshold(), CloseAfter: g.BreakerCloseAfter}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.timeout <= 0 {
		e.timeout = DefaultActionTimeout
	}
	var err error
	if e.metrics, err = newMetrics(opts.Registerer, e.guardState); err != nil {
		return nil, fmt.Errorf("new remediation engine: %w", err)
	}
	if err := e.seed(); err != nil {
		return nil, fmt.Errorf("new remediation engine: %w", err)
	}
	return e, nil
}

// seed recovers the journal and loads the history of every alert instance.
func (e *Engine) seed() error {
	interrupted, err := e.journal.Recover(e.now())
	if err != nil {
		return err
	}
	for _, rec := range interrupted {
		e.log.Warn("remediation action interrupted by a restart; check the target by hand",
			recordAttrs(rec)...)
	}
	recs, err := e.journal.List(0)
	if err != nil {
		return err
	}
	for i := len(recs) - 1; i >= 0; i-- { // oldest first: the newest state wins
		rec := recs[i]
		if rec.Fingerprint == "" {
			continue
		}
		e.historyOf(keyOf(rec.Fingerprint, rec.AlertStartsAt)).apply(rec)
		e.applyTarget(rec)
	}
	e.log.Debug("remediation history loaded", "records", len(recs), "alert_instances", len(e.instances))
	return nil
}

func (e *Engine) historyOf(k instanceKey) *history {
	h := e.instances[k]
	if h == nil {
		h = &history{}
		e.instances[k] = h
	}
	return h
}

// applyTarget folds a journal record, oldest first, into the attempts on its
// target. An interrupted attempt counts as failed: it was tried.
func (e *Engine) applyTarget(rec journal.Record) {
	if rec.Host == "" || rec.UUID == "" {
		return
	}
	var out guards.Outcome
	at := rec.Finished
	switch rec.State {
	case journal.StateSucceeded:
		out = guards.Succeeded
	case journal.StateFailed:
		out = guards.Failed
	case journal.StateInterrupted:
		out, at = guards.Failed, rec.Started
	default:
		return
	}
	e.targetOf(target{Host: rec.Host, UUID: rec.UUID}.key()).Record(at, out, nil)
}

// maxTargetAttempts bounds the attempts remembered per target; the
// guards look at the latest ones only.
const maxTargetAttempts = 32

func (e *Engine) targetOf(key string) *guards.TargetHistory {
	th := e.targets[key]
	if th == nil {
		th = &guards.TargetHistory{Target: key}
		e.targets[key] = th
	}
	if n := len(th.Attempts); n > maxTargetAttempts {
		th.Attempts = append([]guards.Attempt(nil), th.Attempts[n-maxTargetAttempts:]...)
	}
	return th
}

// SetPolicy replaces the policy for alerts handled from now on; actions in
// flight finish under the old one. A nil policy matches nothing.
func (e *Engine) SetPolicy(p *policy.Policy) {
	if p == nil {
		e.log.Warn("remediation policy cleared: no alert will be acted on")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.policy = p
	g := p.GuardSettings()
	e.breaker.Threshold, e.breaker.CloseAfter = g.Threshold(), g.BreakerCloseAfter
}

// Pause stops remediation of p.Target (a target key "host/uuid", or
// guards.Everything) until p.Until. Pauses are kept in memory only for
// now: a restart forgets them.
func (e *Engine) Pause(p guards.Pause) error {
	now := e.now()
	if p.Since.IsZero() {
		p.Since = now
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("pause remediation: %w", err)
	}
	if !now.Before(p.Until) {
		return fmt.Errorf("pause remediation of %s: until %s is not in the future", p.Target, p.Until.UTC().Format(time.RFC3339))
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.pauses = append(e.activePauses(now), p)
	e.log.Info("remediation paused", "target", p.Target, "author", p.Author, "until", p.Until, "comment", p.Comment)
	return nil
}

// Resume ends every pause of target (a target key, or guards.Everything).
// Alerts refused during the pause are acted on when they are next re-sent.
func (e *Engine) Resume(target string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var kept guards.Pauses
	for _, p := range e.pauses {
		if p.Target != target {
			kept = append(kept, p)
		}
	}
	if len(kept) != len(e.pauses) {
		e.log.Info("remediation resumed", "target", target)
	}
	e.pauses = kept
}

// Pauses returns the pauses in force, oldest first.
func (e *Engine) Pauses() []guards.Pause {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]guards.Pause(nil), e.activePauses(e.now())...)
}

// activePauses drops the expired pauses and returns the rest. Called with
// e.mu held.
func (e *Engine) activePauses(now time.Time) guards.Pauses {
	var active guards.Pauses
	for _, p := range e.pauses {
		if now.Before(p.Until) {
			active = append(active, p)
		}
	}
	e.pauses = active
	return active
}

// guardState is what the guard metrics report.
type guardState struct {
	breakerOpen bool
	unhealthy   int
	paused      int
	pauseAge    time.Duration // of the oldest active pause
}

func (e *Engine) guardState() guardState {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	s := guardState{breakerOpen: e.breaker.State.Open, unhealthy: len(e.unhealthy)}
	for _, p := range e.activePauses(now) {
		s.paused++
		s.pauseAge = max(s.pauseAge, now.Sub(p.Since))
	}
	return s
}

// observe counts the distinct targets with a firing alert that matches a
// rule, forgetting those whose alerts resolved, and feeds the count to the
// circuit breaker. fleet is the number of guests known, 0 if unknown.
func (e *Engine) observe(alerts []Alert, fleet int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	for _, a := range alerts {
		rule, ok := e.policy.Match(a.Labels)
		if !ok {
			continue
		}
		act, known := e.actions[rule.Action]
		if !known {
			continue
		}
		t, err := act.target(a.Labels)
		if err != nil {
			continue
		}
		k := t.key()
		switch a.Status {
		case StatusFiring:
			if e.unhealthy[k] == nil {
				e.unhealthy[k] = map[string]bool{}
			}
			e.unhealthy[k][a.Fingerprint] = true
		case StatusResolved:
			delete(e.unhealthy[k], a.Fingerprint)
			if len(e.unhealthy[k]) == 0 {
				delete(e.unhealthy, k)
			}
		}
	}
	n := len(e.unhealthy)
	e.largest = max(e.largest, fleet, n)
	if fleet <= 0 {
		fleet = e.largest
	}
	counted := n
	if e.breaker.Threshold.Percent && n < 2 {
		// One failing guest is no sign of a shared cause, yet in a small
		// fleet it is over any percentage below 100%: a percentage
		// trips on two targets or more.
		counted = 0
	}
	was := e.breaker.State.Open
	s := e.breaker.Observe(counted, fleet, e.now())
	if s.Open != was {
		e.log.Warn("remediation circuit breaker "+map[bool]string{true: "opened", false: "closed"}[s.Open], "why", s.Why)
	}
}

// Close stops taking alerts and waits for the actions in flight, each of
// which ends within the action timeout.
func (e *Engine) Close() {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.inflight.Wait()
}

// Handle decides about each alert. It records every decision before
// returning and runs the actions in the background: the caller is a rule
// evaluation or a webhook, which must not wait for a guest to boot.
// Cancelling ctx does not cancel actions already started.
func (e *Engine) Handle(ctx context.Context, alerts []Alert) {
	fleet := 0
	if e.fleet != nil {
		fleet = e.fleet() // outside e.mu: it may query the monitor
	}
	norm := make([]Alert, len(alerts))
	for i, a := range alerts {
		norm[i] = normalize(a)
	}
	// The whole batch counts before any of it is acted on, so a burst
	// of alerts opens the breaker before its first action.
	e.observe(norm, fleet)
	for _, a := range norm {
		e.handle(ctx, a)
	}
}

func (e *Engine) handle(ctx context.Context, a Alert) {
	log := e.log.With("alert", a.Name, "fingerprint", a.Fingerprint, "alert_starts_at", a.StartsAt)
	switch a.Status {
	case StatusFiring:
	case StatusResolved:
		return // nothing to undo yet
	default:
		log.Warn("remediation ignores alert with unknown status", "status", a.Status)
		return
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		log.Warn("remediation engine closed; alert ignored")
		return
	}
	rule, ok := e.policy.Match(a.Labels)
	if !ok {
		log.Debug("no remediation rule matches alert")
		return
	}
	log = log.With("rule", rule.Name, "action", rule.Action)
	key := keyOf(a.Fingerprint, a.StartsAt)
	h := e.historyOf(key)
	now := e.now()
	g := e.policy.GuardSettings()
	v, why := decideWith(g, *h, now)
	if v != verdictAct {
		// The common path: the same alert re-sent every evaluation.
		log.Debug("remediation: nothing to do", "verdict", v, "reason", why)
		return
	}

	rec := journal.Record{
		Created:       now,
		Alert:         a.Name,
		Fingerprint:   a.Fingerprint,
		AlertStartsAt: a.StartsAt,
		Rule:          rule.Name,
		Action:        rule.Action,
	}
	act, known := e.actions[rule.Action]
	if !known {
		// Only a policy built in code, bypassing validation, gets here.
		e.skip(log, h, rec, fmt.Sprintf("action %q is not implemented", rule.Action))
		return
	}
	t, err := act.target(a.Labels)
	rec.Host, rec.UUID, rec.Domain = a.Labels["host"], a.Labels["uuid"], a.Labels["domain"]
	if err != nil {
		e.skip(log, h, rec, err.Error())
		return
	}
	log = log.With("target", t.String())
	if e.dryRun {
		e.skip(log, h, rec, ReasonDryRun)
		return
	}
	if e.busy[t.key()] {
		// Another alert about the same guest is being acted on; this one
		// is looked at again when it is re-sent.
		log.Debug("remediation: target busy with another action")
		return
	}
	if d, ok := e.guard(g, rule.Action, t, now); !ok {
		switch {
		case d.Verdict == guards.Wait && d.Guard != guards.GuardPause:
			// Cooldown, backoff, concurrency: looked at again when
			// the alert is re-sent, and not worth a record each time.
			log.Debug("remediation: guard says wait", "guard", d.Guard, "reason", d.Reason, "retry_at", d.RetryAt)
		case h.refused:
			log.Debug("remediation: guard refusal already recorded", "guard", d.Guard, "reason", d.Reason)
		default:
			e.refuse(log, h, rec, refusalReason(d))
		}
		return
	}

	rec.State = journal.StateRunning
	rec.Reason = why
	rec.Started = now
	rec.Attempt = h.attempts + 1
	rec, err = e.journal.Append(rec) // the intent is on disk before the agent hears of it
	if err != nil {
		log.Error("remediation: cannot record the decision, so not acting", "err", err)
		return
	}
	h.state = journal.StateRunning
	h.attempts = rec.Attempt
	e.busy[t.key()] = true
	e.metrics.inflight.Inc()
	e.inflight.Add(1)
	log = log.With("record", rec.ID, "attempt", rec.Attempt)
	log.Info("remediation action started", "reason", why)
	go e.run(context.WithoutCancel(ctx), log, h, rec, act, t, a, g)
}

// guard runs the guards for action on t at now and returns the first
// refusal, or ok. Called with e.mu held.
func (e *Engine) guard(g policy.Guards, action string, t target, now time.Time) (guards.Decision, bool) {
	tp := g.Target()
	if tp.Window == 0 {
		// With no window the attempt limit is per alert instance, as
		// decide keeps it; the target guard keeps cooldown and backoff.
		tp.MaxAttempts = 0
	}
	in := guards.Inputs{
		Pauses:      e.activePauses(now),
		Breaker:     e.breaker.State,
		Target:      tp,
		History:     *e.targetOf(t.key()),
		MaxInFlight: g.MaxConcurrent,
		InFlight:    len(e.busy),
	}
	res := guards.Check(guards.Candidate{Action: action, Target: t.key(), Host: t.Host}, in, now)
	if res.Verdict == guards.Allow {
		return guards.Decision{}, true
	}
	for _, d := range res.Decisions {
		if !d.Allowed() {
			return d, false
		}
	}
	return guards.Decision{Verdict: res.Verdict, Reason: res.Reason, RetryAt: res.RetryAt}, false
}

// refusalReason is the journal's sentence for a guard's refusal. A pause
// is a Wait to the guards (it ends by itself) but a skip to the journal;
// the breaker counts guests, which the guards call hosts.
func refusalReason(d guards.Decision) string {
	switch d.Guard {
	case guards.GuardPause:
		return "skipped: " + strings.TrimPrefix(d.Reason, "waiting: ")
	case guards.GuardBreaker:
		return strings.Replace(d.Reason, " hosts unhealthy", " guests unhealthy", 1)
	}
	return d.Reason
}

// refuse records a guard's refusal, once per alert instance; unlike skip,
// the instance is acted on once the guards allow. Called with e.mu held.
func (e *Engine) refuse(log *slog.Logger, h *history, rec journal.Record, reason string) {
	rec.State = journal.StateSkipped
	rec.Reason = reason
	rec, err := e.journal.Append(rec)
	if err != nil {
		log.Error("remediation: cannot record a guard's refusal", "reason", reason, "err", err)
		return
	}
	h.refused = true
	e.metrics.actions.WithLabelValues(rec.Action, resultSkipped).Inc()
	log.Info("remediation action refused by a guard", "record", rec.ID, "reason", reason)
}

// skip records a decision not to act. Called with e.mu held.
func (e *Engine) skip(log *slog.Logger, h *history, rec journal.Record, reason string) {
	rec.State = journal.StateSkipped
	rec.Reason = reason
	rec, err := e.journal.Append(rec)
	if err != nil {
		log.Error("remediation: cannot record a skipped action", "reason", reason, "err", err)
		return
	}
	h.state = journal.StateSkipped
	e.metrics.actions.WithLabelValues(rec.Action, resultSkipped).Inc()
	log.Info("remediation action skipped", "record", rec.ID, "reason", reason)
}

// run performs one action and records its outcome.
func (e *Engine) run(ctx context.Context, log *slog.Logger, h *history, rec journal.Record, act action, t target, a Alert, g policy.Guards) {
	defer e.inflight.Done()
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	err := act.run(ctx, e.hosts, t)
	cancel()
	finished := e.now()

	state, result := journal.StateSucceeded, resultSucceeded
	if err != nil {
		state, result = journal.StateFailed, resultFailed
	}
	updated, uerr := e.journal.Update(rec.ID, func(r *journal.Record) {
		r.State = state
		r.Finished = finished
		if err != nil {
			r.Error = err.Error()
		} else if !a.StartsAt.IsZero() {
			r.HealSeconds = finished.Sub(a.StartsAt).Seconds()
		}
	})
	if uerr != nil {
		// The record stays "running"; the next start marks it
		// interrupted, which is the truth as far as the journal knows.
		log.Error("remediation: cannot record the outcome", "state", state, "err", uerr)
	}

	outcome := guards.Succeeded
	if err != nil {
		outcome = guards.Failed
	}
	e.mu.Lock()
	h.state = state
	h.finished = finished
	e.targetOf(t.key()).Record(finished, outcome, e.rnd)
	delete(e.busy, t.key())
	e.mu.Unlock()

	e.metrics.inflight.Dec()
	e.metrics.actions.WithLabelValues(rec.Action, result).Inc()
	e.metrics.duration.WithLabelValues(rec.Action).Observe(finished.Sub(rec.Started).Seconds())
	if err != nil {
		attrs := []any{"err", err}
		if v, why := decideWith(g, history{state: state, attempts: rec.Attempt, finished: finished}, finished); v == verdictDone {
			attrs = append(attrs, "giving_up", why)
		}
		log.Warn("remediation action failed", attrs...)
		return
	}
	log.Info("remediation action succeeded", "heal_seconds", updated.HealSeconds)
}

// normalize fills what a sender may leave out, so that alerts from the rule
// manager and from Alertmanager look alike to the engine.
func normalize(a Alert) Alert {
	if a.Name == "" {
		a.Name = a.Labels["alertname"]
	}
	if a.Labels["alertname"] == "" && a.Name != "" {
		labels := make(map[string]string, len(a.Labels)+1)
		for k, v := range a.Labels {
			labels[k] = v
		}
		labels["alertname"] = a.Name
		a.Labels = labels
	}
	if a.Fingerprint == "" {
		a.Fingerprint = fingerprint(a.Labels)
	}
	return a
}

// fingerprint is Alertmanager's fingerprint of a label set, so journal
// records can be matched with what Alertmanager shows.
func fingerprint(labels map[string]string) string {
	ls := make(model.LabelSet, len(labels))
	for k, v := range labels {
		ls[model.LabelName(k)] = model.LabelValue(v)
	}
	return ls.Fingerprint().String()
}

func recordAttrs(rec journal.Record) []any {
	return []any{
		"record", rec.ID, "alert", rec.Alert, "fingerprint", rec.Fingerprint,
		"rule", rec.Rule, "action", rec.Action, "host", rec.Host, "uuid", rec.UUID,
		"domain", rec.Domain, "attempt", rec.Attempt, "started", rec.Started,
	}
}
