package policy

import (
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
	}
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
	return errs
}
