package guards

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Selector picks hosts by labels: "rack=r1,role=kvm" matches hosts with all
// of those labels; the empty selector matches the whole fleet.
type Selector struct {
	pairs [][2]string // sorted by key
}

// ParseSelector parses comma-separated label=value pairs.
func ParseSelector(s string) (Selector, error) {
	var sel Selector
	if strings.TrimSpace(s) == "" {
		return sel, nil
	}
	seen := map[string]bool{}
	for part := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case !ok:
			return Selector{}, fmt.Errorf("parse selector %q: %q is not label=value", s, part)
		case !validLabelName(k):
			return Selector{}, fmt.Errorf("parse selector %q: %q is not a valid label name", s, k)
		case strings.ContainsAny(v, "=,"):
			return Selector{}, fmt.Errorf("parse selector %q: value %q of %s contains '=' or ','", s, v, k)
		case seen[k]:
			return Selector{}, fmt.Errorf("parse selector %q: label %s given twice", s, k)
		}
		seen[k] = true
		sel.pairs = append(sel.pairs, [2]string{k, v})
	}
	slices.SortFunc(sel.pairs, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return sel, nil
}

// validLabelName follows Prometheus: [a-zA-Z_][a-zA-Z0-9_]*.
func validLabelName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9' {
			continue
		}
		return false
	}
	return true
}

// Fleet reports whether the selector matches every host.
func (s Selector) Fleet() bool { return len(s.pairs) == 0 }

// Matches reports whether labels carry every pair of the selector.
func (s Selector) Matches(labels map[string]string) bool {
	for _, p := range s.pairs {
		if v, ok := labels[p[0]]; !ok || v != p[1] {
			return false
		}
	}
	return true
}

// String gives the selector in canonical form (sorted by label).
func (s Selector) String() string {
	parts := make([]string, len(s.pairs))
	for i, p := range s.pairs {
		parts[i] = p[0] + "=" + p[1]
	}
	return strings.Join(parts, ",")
}

// MarshalText implements encoding.TextMarshaler.
func (s Selector) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Selector) UnmarshalText(b []byte) error {
	p, err := ParseSelector(string(b))
	if err != nil {
		return err
	}
	*s = p
	return nil
}

// WindowKind says why a window stops remediation.
type WindowKind string

// Window kinds. Both refuse actions while active: in a maintenance window
// people work on the hosts and automation must not fight them; in a change
// freeze nothing changes that a human did not decide.
const (
	Maintenance WindowKind = "maintenance"
	Freeze      WindowKind = "freeze"
)

// Window is a recurring span of time, starting at each activation of a cron
// schedule and lasting Duration, in UTC, over the hosts its selector picks.
type Window struct {
	Name     string        `json:"name"`
	Kind     WindowKind    `json:"kind"`
	Schedule string        `json:"schedule"` // 5 fields or a descriptor like @daily
	Duration time.Duration `json:"duration"`
	Selector Selector      `json:"selector"`

	sched cron.Schedule
}

// NewWindow parses and validates a window; see ParseSchedule and
// ParseSelector for the forms accepted.
func NewWindow(name string, kind WindowKind, schedule string, duration time.Duration, selector string) (Window, error) {
	w := Window{Name: name, Kind: kind, Schedule: schedule, Duration: duration}
	if err := w.compile(selector); err != nil {
		return Window{}, err
	}
	return w, nil
}

func (w *Window) compile(selector string) error {
	var errs []error
	if w.Name == "" {
		errs = append(errs, errors.New("no name"))
	}
	if w.Kind != Maintenance && w.Kind != Freeze {
		errs = append(errs, fmt.Errorf("kind %q is not %q or %q", w.Kind, Maintenance, Freeze))
	}
	if w.Duration <= 0 {
		errs = append(errs, fmt.Errorf("duration %s is not positive", w.Duration))
	}
	sched, err := ParseSchedule(w.Schedule)
	if err != nil {
		errs = append(errs, err)
	}
	sel, err := ParseSelector(selector)
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("window %q: %w", w.Name, err)
	}
	w.sched, w.Selector = sched, sel
	return nil
}

// ParseSchedule parses a standard 5-field cron expression or a descriptor
// (@yearly, @monthly, @weekly, @daily, @hourly), read in UTC. Errors name
// the expression.
func ParseSchedule(expr string) (sched cron.Schedule, err error) {
	trimmed := strings.TrimSpace(expr)
	switch {
	case strings.HasPrefix(trimmed, "@every"):
		return nil, fmt.Errorf("parse schedule %q: @every has no fixed start; use a cron expression", expr)
	case strings.HasPrefix(trimmed, "TZ=") || strings.HasPrefix(trimmed, "CRON_TZ="):
		// UTC has no daylight saving: a window never skips or doubles.
		return nil, fmt.Errorf("parse schedule %q: time zones are not supported; windows are in UTC", expr)
	}
	// cron v3.0.1 panics on some malformed input; an expression from a
	// configuration file must not take the server down.
	defer func() {
		if r := recover(); r != nil {
			sched, err = nil, fmt.Errorf("parse schedule %q: malformed expression (%v)", expr, r)
		}
	}()
	sched, err = cron.ParseStandard(expr)
	if err != nil {
		return nil, fmt.Errorf("parse schedule %q: %w", expr, err)
	}
	return sched, nil
}

// UnmarshalJSON reads a window and parses its schedule and selector.
func (w *Window) UnmarshalJSON(b []byte) error {
	type plain Window
	var raw struct {
		plain
		Selector string `json:"selector"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("decode window: %w", err)
	}
	nw := Window(raw.plain)
	if err := nw.compile(raw.Selector); err != nil {
		return err
	}
	*w = nw
	return nil
}

// Covers reports whether the window applies to a host with labels at now,
// and when the current span ends. A span includes its start and excludes
// its end.
func (w Window) Covers(labels map[string]string, now time.Time) (bool, time.Time) {
	if w.sched == nil || !w.Selector.Matches(labels) {
		return false, time.Time{}
	}
	now = now.UTC()
	// The latest start in (now-Duration, now] is the only one that can
	// cover now; Next returns the first activation strictly after its
	// argument.
	start := w.sched.Next(now.Add(-w.Duration))
	if start.IsZero() || start.After(now) {
		return false, time.Time{}
	}
	return true, start.Add(w.Duration)
}

// Windows is a set of maintenance windows and change freezes.
type Windows []Window

// Active reports whether any window covers a host with labels at now, and
// which, in words.
func (ws Windows) Active(labels map[string]string, now time.Time) (bool, string) {
	ok, which, _ := ws.active(labels, now)
	return ok, which
}

func (ws Windows) active(labels map[string]string, now time.Time) (bool, string, time.Time) {
	for _, w := range ws {
		if ok, end := w.Covers(labels, now); ok {
			scope := "the fleet"
			if !w.Selector.Fleet() {
				scope = "hosts with " + w.Selector.String()
			}
			return true, fmt.Sprintf("%s %q (%s for %s) over %s until %s",
				w.Kind, w.Name, w.Schedule, human(w.Duration), scope, stamp(end)), end
		}
	}
	return false, "", time.Time{}
}

// Decide turns Active into a decision for one action on a host with labels.
func (ws Windows) Decide(labels map[string]string, now time.Time) Decision {
	// Wait rather than skip: the action may run once the window ends.
	if ok, which, end := ws.active(labels, now); ok {
		return wait(GuardWindow, end, "%s", which)
	}
	return allow(GuardWindow, "no maintenance window or change freeze active")
}
