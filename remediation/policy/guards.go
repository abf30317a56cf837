package policy

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"caretaker/internal/yamlfile"
	"caretaker/remediation/guards"
)

// Guards configures the engine's safety guards. Every field is optional;
// DefaultGuards gives the values used for what a file leaves out, which
// match the engine's behaviour before the guards could be configured.
type Guards struct {
	// Per target (a guest): quiet time after any attempt, the wait after
	// a failure (doubled after each further failure, capped by
	// backoff_max when set), its spread (0.2: ±20%), and at most
	// max_attempts attempts within window, after which the target is
	// escalated to a human. With no window, max_attempts counts the
	// attempts for one alert instance, as the engine did before.
	Cooldown    time.Duration `yaml:"cooldown"`
	BackoffBase time.Duration `yaml:"backoff_base"`
	BackoffMax  time.Duration `yaml:"backoff_max"`
	Jitter      float64       `yaml:"jitter"`
	MaxAttempts int           `yaml:"max_attempts"`
	Window      time.Duration `yaml:"window"`
	// MaxUnhealthy is the fleet's circuit breaker threshold, "40%" or "3":
	// above it the engine stops acting until the fleet has been at or
	// under it for BreakerCloseAfter.
	MaxUnhealthy      string        `yaml:"max_unhealthy"`
	BreakerCloseAfter time.Duration `yaml:"breaker_close_after"`
	// MaxConcurrent bounds the actions in flight across the fleet; 0 is
	// no limit.
	MaxConcurrent int `yaml:"max_concurrent"`
	// RateLimits bound the starts of each action over time, by action.
	RateLimits map[string]RateLimit `yaml:"rate_limits"`
	// Windows are maintenance windows and change freezes: no automatic
	// action on the hosts they select while one is active.
	Windows []Window `yaml:"windows"`
	// HostAlerts name the alerts that mark their host unhealthy: while
	// one fires, no guest or overlay action runs on that host.
	HostAlerts []string `yaml:"host_alerts"`
}

// RateLimit allows at most Max starts of an action within any Per.
type RateLimit struct {
	Max int           `yaml:"max"`
	Per time.Duration `yaml:"per"`
}

// Window is a maintenance window or change freeze: from each activation
// of a cron schedule (UTC), for Duration, over the hosts whose labels
// match Selector ("rack=r1,zone=a"; empty: the whole fleet).
type Window struct {
	Name     string            `yaml:"name"`
	Kind     guards.WindowKind `yaml:"kind"`
	Schedule string            `yaml:"schedule"`
	Duration time.Duration     `yaml:"duration"`
	Selector string            `yaml:"selector"`
}

// DefaultGuards returns the guards used when the policy has no guards
// section: a retry 10s after a failure, doubling, at most 3 attempts; the
// breaker opens above 40% of the fleet and closes after 5m; at most 10
// actions at once.
func DefaultGuards() Guards {
	return Guards{
		BackoffBase:       10 * time.Second,
		MaxAttempts:       3,
		MaxUnhealthy:      "40%",
		BreakerCloseAfter: 5 * time.Minute,
		MaxConcurrent:     10,
		HostAlerts:        []string{"HostAgentDown", "HostLibvirtdDown", "HostKVMDeviceMissing"},
	}
}

// CompiledWindows returns the windows as the guards take them; a window
// that does not compile (only possible in Guards built in code) is left
// out.
func (g Guards) CompiledWindows() guards.Windows {
	var ws guards.Windows
	for _, w := range g.Windows {
		if cw, err := guards.NewWindow(w.Name, w.Kind, w.Schedule, w.Duration, w.Selector); err == nil {
			ws = append(ws, cw)
		}
	}
	return ws
}

// Rate returns the rate limit of action (zero: none).
func (g Guards) Rate(action string) guards.RateLimit {
	r := g.RateLimits[action]
	return guards.RateLimit{Max: r.Max, Per: r.Per}
}

// Target returns the per-target policy of the guards.
func (g Guards) Target() guards.TargetPolicy {
	return guards.TargetPolicy{
		Cooldown:    g.Cooldown,
		BackoffBase: g.BackoffBase,
		BackoffMax:  g.BackoffMax,
		Jitter:      g.Jitter,
		MaxAttempts: g.MaxAttempts,
		Window:      g.Window,
	}
}

// Threshold returns the parsed MaxUnhealthy; a value that does not parse
// (only possible in a Guards built in code) gives the default's.
func (g Guards) Threshold() guards.Threshold {
	t, err := guards.ParseThreshold(g.MaxUnhealthy)
	if err != nil {
		t, _ = guards.ParseThreshold(DefaultGuards().MaxUnhealthy)
	}
	return t
}

// validate reports every bad value, each with its field path.
func (g Guards) validate() []error {
	var errs []error
	for _, d := range []struct {
		field string
		v     time.Duration
	}{
		{"cooldown", g.Cooldown}, {"backoff_base", g.BackoffBase}, {"backoff_max", g.BackoffMax},
		{"window", g.Window}, {"breaker_close_after", g.BreakerCloseAfter},
	} {
		if d.v < 0 {
			errs = append(errs, yamlfile.Errorf("guards."+d.field, "%s is negative", d.v))
		}
	}
	if g.BackoffMax > 0 && g.BackoffBase > g.BackoffMax {
		errs = append(errs, yamlfile.Errorf("guards.backoff_base", "%s exceeds backoff_max %s", g.BackoffBase, g.BackoffMax))
	}
	if g.Jitter < 0 || g.Jitter > 1 || g.Jitter != g.Jitter {
		errs = append(errs, yamlfile.Errorf("guards.jitter", "%v is not within [0, 1]", g.Jitter))
	}
	if g.MaxAttempts < 0 {
		errs = append(errs, yamlfile.Errorf("guards.max_attempts", "%d is negative", g.MaxAttempts))
	}
	if _, err := guards.ParseThreshold(g.MaxUnhealthy); err != nil {
		errs = append(errs, yamlfile.Errorf("guards.max_unhealthy", "%v", err))
	}
	if g.MaxConcurrent < 0 {
		errs = append(errs, yamlfile.Errorf("guards.max_concurrent", "%d is negative", g.MaxConcurrent))
	}
	known := KnownActions()
	for _, a := range slices.Sorted(maps.Keys(g.RateLimits)) {
		r, field := g.RateLimits[a], "guards.rate_limits."+a
		switch {
		case !slices.Contains(known, a):
			errs = append(errs, yamlfile.Errorf(field, "unknown action %q (known: %s)", a, strings.Join(known, ", ")))
		case r.Max <= 0:
			errs = append(errs, yamlfile.Errorf(field+".max", "%d is not positive", r.Max))
		case r.Per <= 0:
			errs = append(errs, yamlfile.Errorf(field+".per", "%s is not positive", r.Per))
		}
	}
	names := map[string]int{}
	for i, w := range g.Windows {
		field := fmt.Sprintf("guards.windows[%d]", i)
		if prev, dup := names[w.Name]; dup && w.Name != "" {
			errs = append(errs, yamlfile.Errorf(field+".name", "%q is already used by guards.windows[%d]", w.Name, prev))
		}
		names[w.Name] = i
		if _, err := guards.NewWindow(w.Name, w.Kind, w.Schedule, w.Duration, w.Selector); err != nil {
			// NewWindow wraps its joined problems in the window's name;
			// the path names the window here, one problem a line.
			if inner := errors.Unwrap(err); inner != nil {
				err = inner
			}
			errs = append(errs, yamlfile.Within(field, err)...)
		}
	}
	for i, a := range g.HostAlerts {
		if !validLabelName(a) {
			errs = append(errs, yamlfile.Errorf(fmt.Sprintf("guards.host_alerts[%d]", i), "%q is not an alert name", a))
		}
	}
	return errs
}
