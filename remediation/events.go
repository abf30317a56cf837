package remediation

import (
	"time"
)

// GuestEvents is the engine's view of the agents' libvirt event streams
// (the server's event path): an alert raised from an event reaches the
// engine as an Alert with FromEvent set, with the labels the rule would
// give it, seconds before the rule fires for the same crash.
type GuestEvents interface {
	// SameOutage reports whether a rule's alert for the guest that first
	// fired at alertAt can only have seen the outage an event reported at
	// eventAt: the host's stream is connected and has delivered every
	// event of its agent since eventAt, and did not report the guest
	// running again early enough for the rule's data to be from after it.
	// When it is not, why says which of these failed.
	SameOutage(host, uuid string, eventAt, alertAt time.Time) (same bool, why string)
	// Started returns a channel closed when host's agent next reports the
	// guest with uuid started, and what stops the wait; a nil channel
	// when no stream of host is connected.
	Started(host, uuid string) (<-chan struct{}, func())
}

// eventSkew is the difference tolerated between an agent's clock, which
// dates its events, and the server's, which dates the rules' alerts.
const eventSkew = 2 * time.Second

// latest are the newest alert instances of one label set: the one an event
// raised and the one a rule (or an Alertmanager) raised.
type latest struct {
	event, rule *instanceKey
}

// keyFor is the instance an alert belongs to. It is the alert's own (its
// label set and start) except where the event path and the rules report the
// same crash, each with its own start:
//
//   - a rule's alert whose label set has an instance raised from an event
//     that started no later than it, when the event path says the rule can
//     only have seen that event's outage (GuestEvents.SameOutage);
//   - an event's alert whose label set has an instance raised by a rule
//     that started no earlier than the event: the rule saw this crash
//     first (the stream was down, or lagged).
//
// The aliases live in memory only: after a restart a rule's copy of a
// healed crash is a new instance again, which the look before acting
// settles as "already healthy". Called with e.mu held.
func (e *Engine) keyFor(a Alert) instanceKey {
	k := keyOf(a.Fingerprint, a.StartsAt)
	if e.events == nil {
		return k
	}
	if _, ok := e.instances[k]; ok {
		return k
	}
	if to, ok := e.aliases[k]; ok {
		return to
	}
	l := e.latest[a.Fingerprint]
	var to *instanceKey
	switch {
	case a.FromEvent && l.rule != nil && l.rule.startsAt >= a.StartsAt.Add(-eventSkew).Unix():
		to = l.rule
	case !a.FromEvent && l.event != nil && l.event.startsAt <= a.StartsAt.Add(eventSkew).Unix():
		// The event's own start, not the key's whole second: the
		// stream may have been known whole from within that second.
		// An instance a rule's alert resolved is no outage the stream
		// saw end: the rule firing again is a new instance (else it would
		// count as a lagging copy of an outage that ended, and nothing
		// would start the guest).
		if ev := e.instances[*l.event]; ev != nil && !ev.resolvedByRule {
			same, why := e.events.SameOutage(a.Labels["host"], a.Labels["uuid"], ev.alert.StartsAt, a.StartsAt)
			if same {
				to = l.event
			} else {
				e.log.Info("remediation: a rule's alert after an event's for the same guest is a new instance",
					"alert", a.Name, "fingerprint", a.Fingerprint, "starts_at", a.StartsAt, "event_starts_at", ev.alert.StartsAt, "why", why)
			}
		}
	}
	if to == nil || e.instances[*to] == nil {
		return k
	}
	e.aliases[k] = *to
	e.metrics.sameIncident.Inc()
	e.log.Debug("remediation: the rules and an event report the same crash: one alert instance",
		"alert", a.Name, "fingerprint", a.Fingerprint, "from_event", a.FromEvent,
		"starts_at", a.StartsAt, "instance_starts_at", time.Unix(to.startsAt, 0))
	return *to
}

// doubted reports whether a rule's alert a that resolved says nothing of
// in, an instance the event path opened: the host's stream has delivered
// every event since and has not reported the guest running, so the rule
// stopped firing for want of data (a failed scrape, a stale series), not
// because the guest runs — the stream would have said so, and resolved it.
// Called with e.mu held.
func (e *Engine) doubted(in *instance, a Alert) bool {
	if e.events == nil || a.FromEvent || !in.alert.FromEvent || in.resolved {
		return false
	}
	same, _ := e.events.SameOutage(a.Labels["host"], a.Labels["uuid"], in.alert.StartsAt, e.now())
	if same {
		e.log.Info("remediation: a rule's alert resolved while the event stream still sees the guest stopped: the instance stays open",
			"alert", a.Name, "fingerprint", a.Fingerprint, "instance_starts_at", in.alert.StartsAt)
	}
	return same
}

// noteNew remembers k, a new instance of a's label set, as the newest of
// its origin. Called with e.mu held.
func (e *Engine) noteNew(k instanceKey, a Alert) {
	if e.events == nil {
		return
	}
	l := e.latest[a.Fingerprint]
	if a.FromEvent {
		if l.event == nil || l.event.startsAt <= k.startsAt {
			l.event = &k
		}
	} else if l.rule == nil || l.rule.startsAt <= k.startsAt {
		l.rule = &k
	}
	e.latest[a.Fingerprint] = l
}

// forget drops what keyFor remembers of an instance the engine forgets.
// Called with e.mu held.
func (e *Engine) forget(k instanceKey) {
	if l, ok := e.latest[k.fingerprint]; ok {
		if l.event != nil && *l.event == k {
			l.event = nil
		}
		if l.rule != nil && *l.rule == k {
			l.rule = nil
		}
		if l.event == nil && l.rule == nil {
			delete(e.latest, k.fingerprint)
		} else {
			e.latest[k.fingerprint] = l
		}
	}
	for from, to := range e.aliases {
		if to == k || from == k {
			delete(e.aliases, from)
		}
	}
}

// startedEvent is the channel that closes when the job's guest is next
// reported started, nil when there is no such report to wait for.
func (e *Engine) startedEvent(j job) (<-chan struct{}, func()) {
	if e.events == nil || j.t.Kind != kindGuest {
		return nil, func() {}
	}
	ch, stop := e.events.Started(j.t.Host, j.t.UUID)
	if ch == nil {
		return nil, func() {}
	}
	return ch, stop
}
