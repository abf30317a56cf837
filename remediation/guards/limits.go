package guards

import (
	"fmt"
	"slices"
	"time"
)

// Concurrency refuses an action while limit actions are in flight across
// the fleet; a limit of 0 is no limit.
func Concurrency(limit, inFlight int) Decision {
	if limit > 0 && inFlight >= limit {
		return Decision{Guard: GuardConcurrency, Verdict: Wait,
			Reason: fmt.Sprintf("waiting: %s in flight (limit %d)", count(inFlight, "action"), limit)}
	}
	if limit <= 0 {
		return allow(GuardConcurrency, "%s in flight (no limit)", count(inFlight, "action"))
	}
	return allow(GuardConcurrency, "%s in flight (limit %d)", count(inFlight, "action"), limit)
}

// RateLimit allows at most Max starts of one action within any Per: a
// sliding window over the recorded starts, evaluated at now, so it needs no
// timer. Max 0 is no limit.
type RateLimit struct {
	Max int           `json:"max"`
	Per time.Duration `json:"per"`
}

// Decide says whether action may start at now given its earlier starts
// (any order). A start exactly Per ago has left the window.
func (r RateLimit) Decide(action string, starts []time.Time, now time.Time) Decision {
	if r.Max <= 0 || r.Per <= 0 {
		return allow(GuardRate, "%s has no rate limit", action)
	}
	from := now.Add(-r.Per)
	var in []time.Time
	for _, s := range starts {
		if s.After(from) && !s.After(now) {
			in = append(in, s)
		}
	}
	slices.SortFunc(in, time.Time.Compare)
	if n := len(in); n >= r.Max {
		// Below the limit again once n-Max+1 starts have left the window.
		next := in[n-r.Max].Add(r.Per)
		return wait(GuardRate, next, "%s started %s in the last %s (limit %d), next at %s",
			action, count(n, "time"), human(r.Per), r.Max, stamp(next))
	}
	return allow(GuardRate, "%s started %s in the last %s (limit %d)", action, count(len(in), "time"), human(r.Per), r.Max)
}

// Dependency refuses a guest action while the guest's host is unhealthy or
// unreachable: healing the host heals or moves its guests, and acting on a
// guest through a sick host fails or fights the host's repair. unhealthy
// maps a host to its condition ("unreachable"; empty reads "unhealthy").
func Dependency(host string, unhealthy map[string]string) Decision {
	if host == "" {
		return allow(GuardDependency, "the action has no host")
	}
	if cond, ok := unhealthy[host]; ok {
		if cond == "" {
			cond = "unhealthy"
		}
		return skip(GuardDependency, "host %s is %s: the host is handled first", host, cond)
	}
	return allow(GuardDependency, "host %s is healthy", host)
}
