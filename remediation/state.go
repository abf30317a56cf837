package remediation

import (
	"fmt"
	"strings"
	"time"

	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
)

// pausesState names the pauses' document in the journal.
const pausesState = "pauses"

// Pause stops remediation of p.Target — a target key ("host/uuid"), a host
// (every target on it), or guards.Everything — until p.Until. Pauses are
// kept in the journal, so a restart keeps them.
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
	next := append(e.activePauses(now)[:len(e.pauses):len(e.pauses)], p)
	if err := e.journal.SaveState(pausesState, next); err != nil {
		return fmt.Errorf("pause remediation of %s: %w", p.Target, err)
	}
	e.pauses = next
	e.log.Info("remediation paused", "target", p.Target, "author", p.Author, "author_role", p.AuthorRole, "on_behalf_of", p.OnBehalfOf, "until", p.Until, "comment", p.Comment)
	return nil
}

// Resume ends every pause of target (a target key, a host, or
// guards.Everything). Actions held by the pause run when their alert is
// next looked at. Should the journal fail to keep the change, the pause
// ends now but comes back after a restart; the error is logged.
func (e *Engine) Resume(target string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var kept guards.Pauses
	for _, p := range e.pauses {
		if p.Target != target {
			kept = append(kept, p)
		}
	}
	if len(kept) == len(e.pauses) {
		return
	}
	if err := e.journal.SaveState(pausesState, kept); err != nil {
		e.log.Error("remediation: cannot record the end of a pause; it comes back after a restart", "target", target, "err", err)
	}
	e.pauses = kept
	e.log.Info("remediation resumed", "target", target)
}

// Pauses returns the pauses in force, oldest first.
func (e *Engine) Pauses() []guards.Pause {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]guards.Pause(nil), e.activePauses(e.now())...)
}

// activePauses drops the expired pauses (in memory; the journal's copy
// loses them at the next change) and returns the rest. Called with e.mu
// held.
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
	awaiting    int           // actions awaiting approval
	givenUp     int           // alert instances still firing that the engine gave up on
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
	for _, in := range e.instances {
		switch {
		case in.state == journal.StateAwaitingApproval && in.approval != nil && in.approval.State == guards.Pending:
			s.awaiting++
		case in.gaveUp && now.Sub(in.seen) < e.staleAfter:
			s.givenUp++
		}
	}
	return s
}

// observe counts the distinct targets with a firing alert that matches a
// rule, forgetting those whose alerts resolved, and feeds the count to the
// circuit breaker; it also follows the host alerts the dependency guard
// looks at. fleet is the number of guests known, 0 if unknown. Called with
// e.mu held.
func (e *Engine) observe(alerts []Alert, fleet int) {
	hostAlerts := map[string]bool{}
	for _, name := range e.policy.GuardSettings().HostAlerts {
		hostAlerts[name] = true
	}
	for _, a := range alerts {
		if host := a.Labels["host"]; hostAlerts[a.Name] && host != "" {
			was := len(e.hostAlerts[host]) > 0
			track(e.hostAlerts, host, a.Fingerprint, a.Name, a.Status == StatusFiring)
			if was && len(e.hostAlerts[host]) == 0 {
				e.hostEnded[host] = e.now()
			}
		}
		rule, ok := e.policy.Match(a.Labels)
		if !ok {
			continue
		}
		t, err := targetOf(rule.Action, e.actions[rule.Action], a.Labels)
		if err != nil {
			continue
		}
		k := e.keyFor(a)
		if in := e.instances[k]; in != nil {
			switch {
			case a.Status == StatusFiring && k != keyOf(a.Fingerprint, a.StartsAt) && in.resolved:
				// The rule's lagging report of a stop the event path
				// already saw end: the target is healthy.
				continue
			case a.Status == StatusResolved && e.doubted(in, a):
				continue // still down, as far as the stream knows
			}
		}
		if e.unhealthy[t.key()] == nil && a.Status == StatusFiring {
			e.unhealthy[t.key()] = map[string]bool{}
		}
		if a.Status == StatusFiring {
			e.unhealthy[t.key()][a.Fingerprint] = true
		} else if m := e.unhealthy[t.key()]; m != nil {
			delete(m, a.Fingerprint)
			if len(m) == 0 {
				delete(e.unhealthy, t.key())
			}
		}
	}
	n := len(e.unhealthy)
	e.largest = max(e.largest, fleet, n)
	if fleet <= 0 {
		fleet = e.largest
	}
	counted := e.failures()
	if e.breaker.Threshold.Percent && n < 2 {
		// One failing target is no sign of a shared cause, yet in a small
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

// hostAftermath is how long after its host alerts (HostAgentDown, …)
// resolved a host's failing guests count for the circuit breaker as one
// failure, the host's: they went down with it (a power loss, a reboot, a
// reprovisioning), and starting them again once it is back is no storm.
const hostAftermath = 10 * time.Minute

// failures is the circuit breaker's count: the unhealthy targets, where
// the guests of a host that has a host alert, or had one within
// hostAftermath, count once for their host, and so do a host's broken
// overlays, which share its underlay. Called with e.mu held.
func (e *Engine) failures() int {
	now := e.now()
	for host, ended := range e.hostEnded {
		if now.Sub(ended) >= hostAftermath {
			delete(e.hostEnded, host)
		}
	}
	seen := make(map[string]bool, len(e.unhealthy))
	for k := range e.unhealthy {
		host, rest, ok := strings.Cut(k, "/")
		overlay := ok && strings.HasPrefix(rest, "overlay/")
		guest := ok && !overlay && host != "alert"
		ended, had := e.hostEnded[host]
		switch {
		case overlay:
			k = "overlays " + host
		case guest && (len(e.hostAlerts[host]) > 0 || had && now.Sub(ended) < hostAftermath):
			k = "host " + host
		}
		seen[k] = true
	}
	return len(seen)
}

// track adds or removes fingerprint under key in m.
func track(m map[string]map[string]string, key, fingerprint, name string, firing bool) {
	if firing {
		if m[key] == nil {
			m[key] = map[string]string{}
		}
		m[key][fingerprint] = name
		return
	}
	delete(m[key], fingerprint)
	if len(m[key]) == 0 {
		delete(m, key)
	}
}
