package guards

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Threshold is how many hosts may be unhealthy before automation stops: an
// absolute count ("3") or a percentage of the fleet ("40%").
type Threshold struct {
	Value   int
	Percent bool
}

// ParseThreshold parses "3" or "40%". Percentages are whole numbers from 0
// to 100.
func ParseThreshold(s string) (Threshold, error) {
	num, pct := strings.CutSuffix(s, "%")
	if num == "" {
		return Threshold{}, fmt.Errorf("parse threshold %q: want a count like \"3\" or a percentage like \"40%%\"", s)
	}
	for _, r := range num {
		if r < '0' || r > '9' {
			return Threshold{}, fmt.Errorf("parse threshold %q: %q is not a whole number", s, num)
		}
	}
	v, err := strconv.Atoi(num)
	if err != nil {
		return Threshold{}, fmt.Errorf("parse threshold %q: %w", s, err)
	}
	if pct && v > 100 {
		return Threshold{}, fmt.Errorf("parse threshold %q: a percentage must be at most 100%%", s)
	}
	return Threshold{Value: v, Percent: pct}, nil
}

// String gives the threshold as ParseThreshold reads it.
func (t Threshold) String() string {
	if t.Percent {
		return strconv.Itoa(t.Value) + "%"
	}
	return strconv.Itoa(t.Value)
}

// MarshalText writes the threshold as "3" or "40%", the form operators
// configure.
func (t Threshold) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseThreshold.
func (t *Threshold) UnmarshalText(b []byte) error {
	p, err := ParseThreshold(string(b))
	if err != nil {
		return err
	}
	*t = p
	return nil
}

// Exceeded reports whether unhealthy of total hosts is over the threshold.
// Percentages compare exactly, without rounding: 4 of 10 is at 40%, not
// over it.
func (t Threshold) Exceeded(unhealthy, total int) bool {
	if t.Percent {
		return unhealthy*100 > t.Value*total
	}
	return unhealthy > t.Value
}

// Breaker is the fleet's circuit breaker: open while more hosts are
// unhealthy than the threshold allows, because many failures at once point
// to a shared cause (network, storage, the monitoring itself) that
// remediation would only make worse. It closes only after the fleet has
// been at or under the threshold for CloseAfter without a break, so a
// flapping fleet does not let a burst of actions through.
type Breaker struct {
	Threshold  Threshold     `json:"threshold"`
	CloseAfter time.Duration `json:"close_after"`
	State      BreakerState  `json:"state"`
}

// BreakerState is what the breaker exposes for a metric and an alert.
type BreakerState struct {
	Open  bool      `json:"open"`
	Since time.Time `json:"since,omitzero"` // when it last opened or closed
	Why   string    `json:"why,omitempty"`
	// CalmSince is when the fleet, with the breaker open, last came to
	// or under the threshold; zero while it is over.
	CalmSince time.Time `json:"calm_since,omitzero"`
	Unhealthy int       `json:"unhealthy"`
	Total     int       `json:"total"`
	Observed  time.Time `json:"observed,omitzero"`
}

func (b *Breaker) describe(unhealthy, total int) string {
	return fmt.Sprintf("%d of %d targets unhealthy (threshold %s)", unhealthy, total, b.Threshold)
}

// Observe takes one count of the fleet at now and returns the new state.
func (b *Breaker) Observe(unhealthy, total int, now time.Time) BreakerState {
	s := &b.State
	s.Unhealthy, s.Total, s.Observed = unhealthy, total, now
	over := b.Threshold.Exceeded(unhealthy, total)
	switch {
	case over:
		s.CalmSince = time.Time{}
		if !s.Open {
			s.Open, s.Since = true, now
		}
		s.Why = b.describe(unhealthy, total)
	case s.Open:
		if s.CalmSince.IsZero() {
			s.CalmSince = now
		}
		if now.Sub(s.CalmSince) >= b.CloseAfter {
			s.Open, s.Since, s.CalmSince = false, now, time.Time{}
			s.Why = fmt.Sprintf("%s, at or under it since %s", b.describe(unhealthy, total), stamp(now.Add(-b.CloseAfter)))
		}
	default:
		if s.Since.IsZero() {
			s.Since = now
		}
		s.Why = b.describe(unhealthy, total)
	}
	return *s
}

// Decide turns the breaker's state into a decision for one action.
func (s BreakerState) Decide() Decision {
	if !s.Open {
		if s.Why == "" {
			return allow(GuardBreaker, "circuit breaker closed, the fleet not yet observed")
		}
		return allow(GuardBreaker, "circuit breaker closed, %s", s.Why)
	}
	d := skip(GuardBreaker, "circuit breaker open, %s", s.Why)
	if !s.CalmSince.IsZero() {
		d.Reason += fmt.Sprintf("; at or under the threshold since %s", stamp(s.CalmSince))
	}
	return d
}
