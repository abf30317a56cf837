package api

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"caretaker/remediation/journal"
)

// HistoryFilter selects journal records. Zero fields select everything.
type HistoryFilter struct {
	Limit  int
	Target string // a host, a guest's uuid or domain name, or host/uuid
	Action string
	Result string // the record's state: succeeded, failed, skipped, …
	// States selects records in any of these states (with Result, both
	// must pass).
	States []journal.State
	Since  time.Time
}

// States are the journal's record states, as ?state accepts them.
func States() []journal.State {
	return []journal.State{journal.StatePending, journal.StateAwaitingApproval, journal.StateRunning,
		journal.StateVerifying, journal.StateSucceeded, journal.StateFailed, journal.StateCancelled,
		journal.StateExpired, journal.StateSkipped, journal.StateInterrupted}
}

// Match tells whether rec passes the filter (Limit aside).
func (f HistoryFilter) Match(rec journal.Record) bool {
	switch {
	case f.Action != "" && rec.Action != f.Action:
		return false
	case f.Result != "" && string(rec.State) != f.Result:
		return false
	case len(f.States) > 0 && !slices.Contains(f.States, rec.State):
		return false
	case !f.Since.IsZero() && rec.Created.Before(f.Since):
		return false
	case f.Target != "" && f.Target != rec.Host && f.Target != rec.UUID && f.Target != rec.Domain &&
		f.Target != rec.Host+"/"+rec.UUID:
		return false
	}
	return true
}

// parseHistoryFilter reads ?limit, target, action, result, state
// (repeatable, or comma-separated) and since (a duration back from now, or
// an RFC 3339 time).
func parseHistoryFilter(q url.Values, now time.Time) (HistoryFilter, error) {
	f := HistoryFilter{Limit: DefaultHistoryLimit, Target: q.Get("target"), Action: q.Get("action"), Result: q.Get("result")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxHistoryLimit {
			return f, fmt.Errorf("limit: want an integer from 1 to %d, got %q", maxHistoryLimit, v)
		}
		f.Limit = n
	}
	for _, v := range q["state"] {
		for st := range strings.SplitSeq(v, ",") {
			st = strings.TrimSpace(st)
			if !slices.Contains(States(), journal.State(st)) {
				names := make([]string, 0, len(States()))
				for _, s := range States() {
					names = append(names, string(s))
				}
				return f, fmt.Errorf("state: unknown state %q; want one of %s", st, strings.Join(names, ", "))
			}
			f.States = append(f.States, journal.State(st))
		}
	}
	if v := q.Get("since"); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			f.Since = now.Add(-d)
		} else if t, err := time.Parse(time.RFC3339, v); err == nil {
			f.Since = t
		} else {
			return f, fmt.Errorf("since: want a duration such as 2h or an RFC 3339 time, got %q", v)
		}
	}
	return f, nil
}

func (f HistoryFilter) query() string {
	q := url.Values{"limit": {strconv.Itoa(f.Limit)}}
	for k, v := range map[string]string{"target": f.Target, "action": f.Action, "result": f.Result} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if len(f.States) > 0 {
		states := make([]string, 0, len(f.States))
		for _, s := range f.States {
			states = append(states, string(s))
		}
		q.Set("state", strings.Join(states, ","))
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.UTC().Format(time.RFC3339))
	}
	return q.Encode()
}
