// Package remediation is the engine that heals what the alerts report: it
// matches each firing alert to the policy, asks the guards, records its
// decision in the journal before acting, has the agent on the target's host
// (or the provisioner, or a command) act, verifies the result, escalates
// along the rule's chain when it fails, and records every step.
//
// Alerts are re-sent on every rule evaluation, so the engine acts once per
// alert instance (its label set and the moment it started firing), and it
// remembers those instances across restarts through the journal.
package remediation

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
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

// Defaults of Options.
const (
	// DefaultActionTimeout bounds one action, start and direct
	// verification together.
	DefaultActionTimeout = 2 * time.Minute
	// DefaultStaleAfter: a pending action whose alert has not been
	// received for this long is cancelled. Alertmanager's repeat_interval
	// must be shorter for alerts that come only through it.
	DefaultStaleAfter = time.Hour
	// checkEvery spaces the direct checks of a target while verifying.
	checkEvery = time.Second
	// batchSize bounds the decisions written in one journal transaction.
	batchSize = 2000
	// maxStarts bounds the start times remembered per action for the
	// rate limit.
	maxStarts = 1024
)

// ReasonDryRun starts the Reason of records of a dry run.
const ReasonDryRun = "dry-run"

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
	// FromEvent: raised by the server from an agent's libvirt event, not
	// by a rule (GuestEvents).
	FromEvent bool
}

// Options configure an Engine. Policy, Journal and Hosts are required.
type Options struct {
	Policy  *policy.Policy
	Journal *journal.Journal
	Hosts   Hosts
	// Provisioner re-creates guests and reinstalls hosts; nil makes those
	// actions fail as not available.
	Provisioner Provisioner
	Logger      *slog.Logger          // nil discards
	Registerer  prometheus.Registerer // nil registers nothing
	Now         func() time.Time      // nil is time.Now
	// ActionTimeout bounds one action; 0 is DefaultActionTimeout.
	ActionTimeout time.Duration
	// DryRun decides and records everything, as skipped, and executes
	// nothing.
	DryRun bool
	// FleetSize returns the number of guests known, the total the circuit
	// breaker's percentage is taken of; 0 means unknown. When it is nil or
	// returns 0, the largest count seen stands in for it.
	FleetSize func() int
	// MayAct, when set, is asked right before each action reaches its
	// target: a clustered server's engine acts only while its term lasts.
	// The intent was recorded through a fenced store already; this closes
	// the gap between that write and the call.
	MayAct func() bool
	// Events, when set, is the agents' event path: it lets the engine
	// take a rule's alert and an event's for the same crash as one
	// instance, and verify a guest by its started event.
	Events GuestEvents
	// StaleAfter: 0 is DefaultStaleAfter.
	StaleAfter time.Duration
	// Retention: Tick deletes finished records older than this; 0 keeps
	// every record.
	Retention time.Duration
}

// Engine decides and runs remediation actions. It is safe for concurrent
// use.
type Engine struct {
	log         *slog.Logger
	journal     *journal.Journal
	hosts       Hosts
	provisioner Provisioner
	now         func() time.Time
	timeout     time.Duration
	dryRun      bool
	staleAfter  time.Duration
	retention   time.Duration
	actions     map[string]action
	metrics     *metrics
	fleet       func() int
	mayAct      func() bool
	events      GuestEvents

	mu        sync.Mutex
	policy    *policy.Policy
	windows   guards.Windows // the policy's, compiled
	instances map[instanceKey]*instance
	byRecord  map[uint64]instanceKey // open records
	busy      map[string]uint64      // target key → record in flight
	targets   map[string]*guards.TargetHistory
	starts    map[string][]time.Time // by action, for the rate limit
	// unhealthy holds the fingerprints of the firing alerts that match a
	// rule, by target key: the circuit breaker's count. hostAlerts holds
	// the firing host alerts (policy guards.host_alerts) by host and
	// fingerprint: the dependency guard's input.
	unhealthy  map[string]map[string]bool
	hostAlerts map[string]map[string]string
	// hostEnded is when each host's last host alert resolved: for
	// hostAftermath its guests' failures are the host's one (failures).
	hostEnded map[string]time.Time
	largest   int
	breaker   *guards.Breaker
	pauses    guards.Pauses
	// aliases and latest tie a rule's alert and an event's for the same
	// crash to one instance (keyFor).
	aliases  map[instanceKey]instanceKey
	latest   map[string]latest
	pruned   time.Time
	closed   bool
	inflight sync.WaitGroup // Add under mu, so Close cannot miss one
}

// New returns an engine. It learns from the journal which alert instances
// were already handled, so a restart never repeats an action, and
// reconciles the actions a previous server left running by checking their
// targets' real state.
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
		log:         opts.Logger,
		journal:     opts.Journal,
		hosts:       opts.Hosts,
		provisioner: opts.Provisioner,
		now:         opts.Now,
		timeout:     opts.ActionTimeout,
		dryRun:      opts.DryRun,
		staleAfter:  opts.StaleAfter,
		retention:   opts.Retention,
		actions:     actions(),
		fleet:       opts.FleetSize,
		mayAct:      opts.MayAct,
		events:      opts.Events,
		breaker:     &guards.Breaker{},
		aliases:     map[instanceKey]instanceKey{},
		latest:      map[string]latest{},
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.timeout <= 0 {
		e.timeout = DefaultActionTimeout
	}
	if e.staleAfter <= 0 {
		e.staleAfter = DefaultStaleAfter
	}
	e.SetPolicy(opts.Policy)
	var err error
	if e.metrics, err = newMetrics(opts.Registerer, e.guardState); err != nil {
		return nil, fmt.Errorf("new remediation engine: %w", err)
	}
	if _, err := e.journal.LoadState(pausesState, &e.pauses); err != nil {
		return nil, fmt.Errorf("new remediation engine: %w", err)
	}
	if err := e.load(); err != nil {
		return nil, fmt.Errorf("new remediation engine: %w", err)
	}
	if err := e.reconcile(); err != nil {
		return nil, fmt.Errorf("new remediation engine: %w", err)
	}
	return e, nil
}

// load rebuilds the engine's memory from the journal: every alert
// instance's history, the attempts on each target, the recent starts.
// It keeps the alerts already received.
func (e *Engine) load() error {
	recs, err := e.journal.List(0)
	if err != nil {
		return err
	}
	old := e.instances
	e.instances = map[instanceKey]*instance{}
	e.byRecord = map[uint64]instanceKey{}
	e.busy = map[string]uint64{}
	e.targets = map[string]*guards.TargetHistory{}
	e.starts = map[string][]time.Time{}
	e.unhealthy = map[string]map[string]bool{}
	e.hostAlerts = map[string]map[string]string{}
	e.hostEnded = map[string]time.Time{}
	for i := len(recs) - 1; i >= 0; i-- { // oldest first: the newest state wins
		rec := recs[i]
		if rec.Fingerprint == "" {
			continue
		}
		in := e.instanceOf(keyOf(rec.Fingerprint, rec.AlertStartsAt))
		if in.alert.Labels == nil {
			in.alert = Alert{Name: rec.Alert, Labels: rec.Labels, Status: StatusFiring,
				StartsAt: rec.AlertStartsAt, Fingerprint: rec.Fingerprint, FromEvent: rec.FromEvent}
		}
		e.apply(in, rec)
	}
	for k, in := range old {
		if now := e.instances[k]; now != nil && in.alert.Labels != nil {
			now.alert, now.seen, now.resolved = in.alert, in.seen, in.resolved
		}
	}
	for _, in := range e.instances {
		if in.open != 0 && in.seen.IsZero() {
			// Held or awaiting since before a restart: the alert has
			// StaleAfter from now to be received again.
			in.seen = e.now()
		}
	}
	e.log.Debug("remediation history loaded", "records", len(recs), "alert_instances", len(e.instances))
	return nil
}

func (e *Engine) instanceOf(k instanceKey) *instance {
	in := e.instances[k]
	if in == nil {
		in = &instance{}
		e.instances[k] = in
	}
	return in
}

// apply folds a journal record into the engine's memory: the instance's
// state, the open and started records, the recent starts, the attempts on
// the target. It is how load rebuilds memory from the journal, and how
// every write on the live path reaches memory (save), so the two cannot
// disagree. A record may be applied again after each change: what it adds
// once (a start, an attempt) is added when it first gets there. Called
// with e.mu held.
func (e *Engine) apply(in *instance, rec journal.Record) {
	var prev journal.State // the record's state in memory; "" when new to it
	if in.last == rec.ID {
		prev = in.state
	}
	in.apply(rec)
	if act, ok := e.actions[rec.Action]; ok && rec.State == journal.StateVerifying && act.verify == verifyResolved {
		in.verifyBy = verifyingSince(rec).Add(e.ruleOf(rec).VerifyWithin())
	}
	if rec.State.Open() {
		e.byRecord[rec.ID] = keyOf(rec.Fingerprint, rec.AlertStartsAt)
	} else {
		delete(e.byRecord, rec.ID)
	}
	if rec.Target == "" {
		return
	}
	if rec.State.Started() {
		e.busy[rec.Target] = rec.ID
	} else if e.busy[rec.Target] == rec.ID {
		delete(e.busy, rec.Target)
	}
	if prev != "" && !prev.Open() {
		return // settled already: its start and outcome are known
	}
	if !rec.Started.IsZero() && !prev.Started() {
		e.noteStart(rec.Action, rec.Started)
	}
	// The outcome, as an attempt on the target. An interrupted attempt
	// counts as failed: it was tried.
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
	j := jitterOf(rec)
	e.historyOf(rec.Target, rec.Action).Record(at, out, func() float64 { return j })
}

// jitterOf is the backoff's jitter sample of an attempt, drawn from its
// record, so a retry is due at the same time before and after a restart.
func jitterOf(rec journal.Record) float64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%s/%d", rec.ID, rec.Fingerprint, rec.Started.UnixNano())
	return float64(h.Sum64()>>11) / (1 << 53)
}

// verifyingSince is when rec began to verify.
func verifyingSince(rec journal.Record) time.Time {
	for i := len(rec.Transitions) - 1; i >= 0; i-- {
		if rec.Transitions[i].State == journal.StateVerifying {
			return rec.Transitions[i].At
		}
	}
	return rec.Started
}

// ruleOf is the policy rule that decided rec, or one with its defaults
// when the policy no longer has it (a manual run, a changed policy).
func (e *Engine) ruleOf(rec journal.Record) policy.Rule {
	if r, ok := e.policy.Rule(rec.Rule); ok {
		return r
	}
	return policy.Rule{Name: rec.Rule, Action: rec.Action}
}

// maxTargetAttempts bounds the attempts remembered per target; the
// guards look at the latest ones only.
const maxTargetAttempts = 32

// historyOf returns the attempts of action on the target with key. They
// are kept per action, so that an escalation to the next action of a chain
// starts with its own attempt budget.
func (e *Engine) historyOf(key, action string) *guards.TargetHistory {
	th := e.targets[key+" "+action]
	if th == nil {
		th = &guards.TargetHistory{Target: key}
		e.targets[key+" "+action] = th
	}
	if n := len(th.Attempts); n > maxTargetAttempts {
		th.Attempts = append([]guards.Attempt(nil), th.Attempts[n-maxTargetAttempts:]...)
	}
	return th
}

func (e *Engine) noteStart(action string, at time.Time) {
	s := append(e.starts[action], at)
	if len(s) > maxStarts {
		s = s[len(s)-maxStarts:]
	}
	e.starts[action] = s
}

// SetPolicy replaces the policy for alerts handled from now on; actions in
// flight finish under the old one. A nil policy matches nothing.
func (e *Engine) SetPolicy(p *policy.Policy) {
	if p == nil {
		e.log.Warn("remediation policy cleared: no alert will be acted on")
	}
	g := p.GuardSettings()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.policy = p
	e.windows = g.CompiledWindows()
	e.breaker.Threshold, e.breaker.CloseAfter = g.Threshold(), g.BreakerCloseAfter
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
func (e *Engine) Handle(_ context.Context, alerts []Alert) {
	fleet := 0
	if e.fleet != nil {
		fleet = e.fleet() // outside e.mu: it may query the monitor
	}
	norm := make([]Alert, len(alerts))
	for i, a := range alerts {
		norm[i] = normalize(a)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		e.log.Warn("remediation engine closed; alerts ignored", "alerts", len(alerts))
		return
	}
	// The whole batch counts before any of it is acted on, so a burst
	// of alerts opens the breaker before its first action.
	e.observe(norm, fleet)
	for len(norm) > 0 {
		chunk := norm[:min(len(norm), batchSize)]
		norm = norm[len(chunk):]
		e.write(func(w *writer) {
			for _, a := range chunk {
				switch a.Status {
				case StatusFiring:
					e.firing(w, a)
				case StatusResolved:
					e.resolved(w, a)
				default:
					e.log.Warn("remediation ignores alert with unknown status", "alert", a.Name, "status", a.Status)
				}
			}
		})
	}
}

// writer collects one transaction's records and the actions to start once
// they are on disk.
type writer struct {
	b    *journal.Batch
	jobs []job
	err  error
}

func (w *writer) append(rec journal.Record) journal.Record {
	if w.err != nil {
		return rec
	}
	rec, w.err = w.b.Append(rec)
	return rec
}

// save applies fill to the open record id, or, when id is 0, to base as
// a new record.
func (w *writer) save(id uint64, base journal.Record, fill func(*journal.Record)) journal.Record {
	if id != 0 {
		return w.update(id, fill)
	}
	fill(&base)
	return w.append(base)
}

func (w *writer) update(id uint64, fn func(*journal.Record)) journal.Record {
	if w.err != nil {
		return journal.Record{}
	}
	rec, err := w.b.Update(id, fn)
	w.err = err
	return rec
}

// write runs fn in one journal transaction and starts the actions it
// decided once their intent is on disk. When the transaction fails,
// nothing starts and the engine's memory is rebuilt from the journal,
// which is the truth; the error is returned. Called with e.mu held.
func (e *Engine) write(fn func(*writer)) error {
	var w writer
	err := e.journal.Batch(func(b *journal.Batch) error {
		w.b = b
		fn(&w)
		return w.err
	})
	if err != nil {
		e.log.Error("remediation: cannot record decisions, so not acting on them", "err", err)
		if lerr := e.load(); lerr != nil {
			e.log.Error("remediation: cannot reload the journal", "err", lerr)
		}
		return err
	}
	for _, j := range w.jobs {
		e.metrics.inflight.Inc()
		e.inflight.Add(1)
		go e.execute(j)
	}
	return nil
}

// save writes a record of the instance — fill applied to the record id, or
// to base as a new record when id is 0 — and applies what it wrote to
// memory, as load applies the journal. Every change the engine makes to
// an instance's record goes through it. ok is false when the write failed
// (w.err says why); memory is then unchanged. It counts an escalation when
// the first record of the next action of the chain is written, and the
// escalation to a human when a record says the engine gave up. Called with
// e.mu held.
func (e *Engine) save(w *writer, in *instance, id uint64, base journal.Record, fill func(*journal.Record)) (journal.Record, bool) {
	rec := w.save(id, base, fill)
	if w.err != nil {
		return rec, false
	}
	step, gaveUp := in.step, in.gaveUp
	e.apply(in, rec)
	if rec.Step > step {
		e.metrics.escalations.WithLabelValues(rec.Action).Inc()
		e.log.Warn("remediation escalates", "alert", rec.Alert, "to", rec.Action, "step", rec.Step, "reason", rec.Reason)
	}
	if rec.GaveUp && !gaveUp {
		e.metrics.escalations.WithLabelValues(escalateHuman).Inc()
		e.log.Error("remediation gave up: a human must take over", "alert", rec.Alert, "labels", rec.Labels, "record", rec.ID)
	}
	return rec, true
}

// firing decides about one firing alert. Called with e.mu held.
func (e *Engine) firing(w *writer, a Alert) {
	rule, ok := e.policy.Match(a.Labels)
	if !ok {
		return
	}
	k := e.keyFor(a)
	if _, known := e.instances[k]; !known {
		e.noteNew(k, a)
	}
	in := e.instanceOf(k)
	if in.manual {
		return
	}
	if k != keyOf(a.Fingerprint, a.StartsAt) {
		// Another report of the instance's crash: its labels are the
		// same, the first report's start stays.
		a.StartsAt, a.FromEvent = in.alert.StartsAt, in.alert.FromEvent
	}
	in.alert, in.seen = a, e.now()
	e.advance(w, in, rule, e.now())
}

// resolved ends what waits for an alert that stopped firing: a pending
// action that has not started is cancelled, one verifying by resolution
// has healed. Called with e.mu held.
func (e *Engine) resolved(w *writer, a Alert) {
	in := e.instances[e.keyFor(a)]
	if in == nil || e.doubted(in, a) {
		return
	}
	now := e.now()
	switch in.state {
	case journal.StatePending, journal.StateAwaitingApproval:
		e.close(w, in, journal.StateCancelled, now, "the alert resolved before the action started", nil)
	case journal.StateVerifying:
		if !in.verifyBy.IsZero() {
			e.verified(w, in, now, nil)
		}
	}
	// Healthy again: no retry, and a late copy of the firing alert (a
	// lagging Alertmanager of an HA pair) changes nothing; an action in
	// flight finishes, but is not retried (decide).
	in.resolved = true
	in.resolvedByRule = !a.FromEvent
}

// advance takes an alert instance as far as the guards allow now: it
// starts an action, asks for an approval, records what holds the action
// back, escalates or gives up. It decides on cur, a copy of the instance
// that an escalation moves along the chain; the instance itself moves only
// with the records written. Called with e.mu held.
func (e *Engine) advance(w *writer, in *instance, rule policy.Rule, now time.Time) {
	g := e.policy.GuardSettings()
	chain := rule.Chain()
	cur := *in
	why := ""
	for {
		v, reason := decide(g, cur, now)
		switch v {
		case verdictDone, verdictWait:
			return
		case verdictAct:
			if why == "" {
				why = reason
			}
		case verdictEscalate:
			if !e.escalate(w, in, &cur, rule, chain, reason, now) {
				return
			}
			why = fmt.Sprintf("escalated from %s, which %s", chain[cur.step-1], reason)
			continue
		}
		name := chain[cur.step]
		act := e.actions[name]
		base := e.newRecord(&cur, rule, name, now)
		t, err := targetOf(name, act, cur.alert.Labels)
		if err != nil {
			e.close(w, in, journal.StateSkipped, now, err.Error(), &base)
			return
		}
		base.Target, base.Host, base.UUID, base.Cluster = t.key(), t.Host, t.UUID, t.Cluster
		if id, busy := e.busy[t.key()]; busy && id != in.open {
			return // another alert's action works on it; looked at again later
		}
		res := guards.Check(e.candidate(name, t, &cur), e.inputs(g, rule, name, t, &cur, now), now)
		if e.dryRun {
			base.DryRun, base.Decisions = true, res.Decisions
			e.close(w, in, journal.StateSkipped, now, fmt.Sprintf("%s: would run %s on %s; %s", ReasonDryRun, name, t, res.Reason), &base)
			return
		}
		refusal := firstRefusal(res)
		switch {
		case refusal == nil:
			e.start(w, in, cur.attempts+1, rule, name, act, t, base, res, why, now)
		case refusal.Guard == guards.GuardTarget && refusal.Verdict == guards.Escalate:
			// The target's attempt budget in its window is spent.
			if !e.escalate(w, in, &cur, rule, chain, refusal.Reason, now) {
				return
			}
			why = fmt.Sprintf("escalated from %s: %s", chain[cur.step-1], refusal.Reason)
			continue
		case refusal.Guard == guards.GuardApproval:
			e.approval(w, in, rule, name, t, base, res, *refusal, now)
		case quietWait(*refusal):
			// Cooldown, backoff, concurrency, rate: looked at again
			// when the alert is re-sent, and not worth a record each
			// time.
			e.log.Debug("remediation: guard says wait", "alert", in.alert.Name, "guard", refusal.Guard, "reason", refusal.Reason)
		default:
			e.hold(w, in, base, res, *refusal, now)
		}
		return
	}
}

// escalate is where the engine escalates, whether the current action spent
// its attempts on the instance (decide) or on the target within the
// guards' window (the target guard). It moves cur to the next action of
// the chain and reports whether there is one; the escalation is counted
// when that action's first record is written (save). At the end of the
// chain it gives up, which pages a human through
// CaretakerRemediationFailed: the open record, else the latest, says so —
// or a new one when the instance has none (its target's budget was spent
// by other alerts). Called with e.mu held.
func (e *Engine) escalate(w *writer, in, cur *instance, rule policy.Rule, chain []string, reason string, now time.Time) bool {
	if cur.step+1 < len(chain) {
		cur.step, cur.attempts, cur.state = cur.step+1, 0, ""
		return true
	}
	note := fmt.Sprintf("gave up: %s; every action of the chain (%v) was tried; escalated to a human", reason, chain)
	switch {
	case in.open != 0: // held or awaiting approval: it will not run
		e.save(w, in, in.open, journal.Record{}, func(r *journal.Record) {
			r.GaveUp, r.Reason, r.Finished = true, note, now
			r.Move(journal.StateSkipped, now, note)
		})
	case in.last != 0:
		e.save(w, in, in.last, journal.Record{}, func(r *journal.Record) {
			r.GaveUp = true
			r.Transitions = append(r.Transitions, journal.Transition{State: r.State, At: now, Note: note})
		})
	default:
		base := e.newRecord(cur, rule, chain[cur.step], now)
		e.save(w, in, 0, base, func(r *journal.Record) {
			r.GaveUp, r.Reason, r.Finished = true, note, now
			r.Move(journal.StateSkipped, now, note)
		})
	}
	return false
}

// escalateHuman is the escalations counter's "to" when the chain is spent.
const escalateHuman = "human"

func firstRefusal(res guards.Result) *guards.Decision {
	for i, d := range res.Decisions {
		if !d.Allowed() {
			return &res.Decisions[i]
		}
	}
	return nil
}

// quietWait tells the refusals that pass by themselves and are looked at
// again on the next evaluation from those an operator must see.
func quietWait(d guards.Decision) bool {
	if d.Verdict != guards.Wait {
		return false
	}
	switch d.Guard {
	case guards.GuardTarget, guards.GuardConcurrency, guards.GuardRate:
		return true
	}
	return false
}

// newRecord is the record of an action of rule for the instance, before
// any state.
func (e *Engine) newRecord(in *instance, rule policy.Rule, name string, now time.Time) journal.Record {
	a := in.alert
	return journal.Record{
		Created: now, Alert: a.Name, Fingerprint: a.Fingerprint, AlertStartsAt: a.StartsAt, FromEvent: a.FromEvent,
		Labels: a.Labels, Rule: rule.Name, Action: name, Step: in.step,
		Domain: a.Labels["domain"],
	}
}

func (e *Engine) candidate(name string, t target, in *instance) guards.Candidate {
	c := guards.Candidate{Action: name, Target: t.key(), HostLabels: in.alert.Labels}
	if t.Kind == kindGuest || t.Kind == kindOverlay {
		c.Host = t.Host // the dependency guard: its host comes first
	}
	return c
}

// inputs gathers what the guards look at. Called with e.mu held.
func (e *Engine) inputs(g policy.Guards, rule policy.Rule, name string, t target, in *instance, now time.Time) guards.Inputs {
	tp := g.Target()
	if tp.Window == 0 {
		// Attempts are counted once, in the journal: a started record
		// carries its Attempt, and the target's history is made of the
		// same records (apply). The limit has one keeper: without a
		// window it is per alert instance, and decide keeps it; with
		// one, the target guard counts the target's attempts in it.
		tp.MaxAttempts = 0
	}
	pauses := e.activePauses(now)
	if t.Host != "" && t.Host != t.key() {
		// A pause of a host holds every guest and overlay on it.
		for _, p := range pauses {
			if p.Target == t.Host {
				p.Target = t.key()
				pauses = append(pauses[:len(pauses):len(pauses)], p)
			}
		}
	}
	sick := make(map[string]string, len(e.hostAlerts))
	for host, firing := range e.hostAlerts {
		for _, name := range firing {
			sick[host] = "unhealthy (" + name + " firing)"
			break
		}
	}
	history := guards.TargetHistory{Target: t.key()}
	if th := e.targets[t.key()+" "+name]; th != nil { // read only: most targets have none
		history = *th
	}
	return guards.Inputs{
		Pauses:         pauses,
		Windows:        e.windows,
		Breaker:        e.breaker.State,
		UnhealthyHosts: sick,
		Target:         tp,
		History:        history,
		MaxInFlight:    g.MaxConcurrent,
		InFlight:       len(e.busy),
		Rate:           g.Rate(name),
		Starts:         e.starts[name],
		NeedsApproval:  rule.Approval.Required,
		Approval:       in.approval,
	}
}

// start records the intent, as the instance's attempt-th try, and queues
// the action to run once it is on disk. Called with e.mu held.
func (e *Engine) start(w *writer, in *instance, attempt int, rule policy.Rule, name string, act action, t target, base journal.Record, res guards.Result, why string, now time.Time) {
	rec, ok := e.save(w, in, in.open, base, func(r *journal.Record) {
		r.Reason, r.Decisions = why, res.Decisions
		r.Started, r.Attempt = now, attempt
		r.Target, r.Host, r.UUID, r.Cluster = base.Target, base.Host, base.UUID, base.Cluster
		r.Move(journal.StateRunning, now, why)
	})
	if !ok {
		return
	}
	w.jobs = append(w.jobs, job{rec: rec, rule: rule, act: act, t: t, labels: in.alert.Labels, annotations: in.alert.Annotations, key: keyOf(rec.Fingerprint, rec.AlertStartsAt)})
	e.log.Info("remediation action started", "record", rec.ID, "action", name, "target", t.String(), "attempt", rec.Attempt, "reason", why)
}

// approval asks for a human's yes, or notes an expired request. Called
// with e.mu held.
func (e *Engine) approval(w *writer, in *instance, rule policy.Rule, name string, t target, base journal.Record, res guards.Result, d guards.Decision, now time.Time) {
	if in.approval != nil {
		if d.Verdict == guards.Escalate { // expired unanswered
			e.close(w, in, journal.StateExpired, now, d.Reason, nil)
			e.metrics.approvalsExpired.Inc()
		}
		return
	}
	a, err := guards.NewApproval(t.key(), name, rule.ApprovalTTL(), now)
	if err != nil {
		e.log.Error("remediation: cannot request an approval", "err", err)
		return
	}
	note := fmt.Sprintf("approval of %s on %s requested; expires at %s", name, t, a.Expires.UTC().Format(time.RFC3339))
	rec, ok := e.save(w, in, in.open, base, func(r *journal.Record) {
		r.Reason, r.Decisions, r.Approval = note, res.Decisions, &a
		r.Move(journal.StateAwaitingApproval, now, note)
	})
	if ok {
		e.log.Info("remediation action awaits approval", "record", rec.ID, "action", name, "target", t.String(), "expires", a.Expires)
	}
}

// hold records what keeps the action from running — a pause, a window,
// the breaker, the host — as a pending record, rewritten only when another
// guard holds it. Called with e.mu held.
func (e *Engine) hold(w *writer, in *instance, base journal.Record, res guards.Result, d guards.Decision, now time.Time) {
	if in.open != 0 && in.state == journal.StatePending && in.reason == d.Guard {
		return
	}
	rec, ok := e.save(w, in, in.open, base, func(r *journal.Record) {
		r.Reason, r.Decisions = d.Reason, res.Decisions
		r.Move(journal.StatePending, now, d.Reason)
	})
	if ok {
		e.metrics.actions.WithLabelValues(rec.Action, resultHeld).Inc()
		e.log.Info("remediation action held by a guard", "record", rec.ID, "guard", d.Guard, "reason", d.Reason)
	}
}

// close ends the instance's open record (or base, when none is open) in a
// final state without running anything. Called with e.mu held.
func (e *Engine) close(w *writer, in *instance, state journal.State, now time.Time, reason string, base *journal.Record) {
	if in.open == 0 && base == nil {
		return
	}
	if base == nil {
		base = &journal.Record{}
	}
	rec, ok := e.save(w, in, in.open, *base, func(r *journal.Record) {
		r.Reason, r.Finished = reason, now
		r.Move(state, now, reason)
	})
	if !ok {
		return
	}
	e.metrics.actions.WithLabelValues(rec.Action, string(state)).Inc()
	e.log.Info("remediation action "+string(state), "record", rec.ID, "action", rec.Action, "reason", reason)
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
