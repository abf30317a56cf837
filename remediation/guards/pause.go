package guards

import (
	"errors"
	"fmt"
	"time"
)

// Everything is the Pause target that pauses all remediation.
const Everything = "*"

// Pause is an operator's word to stop remediation of one target, or of
// everything, until a time. Author and comment are required so whoever
// finds the pause knows whom to ask and why.
type Pause struct {
	Target string `json:"target"` // a target key, or Everything
	// Author is the API token's name (the authenticated identity);
	// AuthorRole its role; OnBehalfOf whom the request said it was for.
	Author     string    `json:"author"`
	AuthorRole string    `json:"author_role,omitempty"`
	OnBehalfOf string    `json:"on_behalf_of,omitempty"`
	Comment    string    `json:"comment"`
	Since      time.Time `json:"since,omitzero"`
	Until      time.Time `json:"until"`
}

// Validate reports a pause that must not be stored.
func (p Pause) Validate() error {
	var errs []error
	if p.Target == "" {
		errs = append(errs, fmt.Errorf("no target (use %q to pause everything)", Everything))
	}
	if p.Author == "" {
		errs = append(errs, errors.New("no author"))
	}
	if p.Comment == "" {
		errs = append(errs, errors.New("no comment"))
	}
	if p.Until.IsZero() {
		// An open-ended pause is a forgotten pause.
		errs = append(errs, errors.New("no expiry"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pause %s: %w", p.Target, err)
	}
	return nil
}

// Pauses is the set of pauses in force or expired.
type Pauses []Pause

// Paused reports whether target is paused at now, by its own pause or a
// global one, and which pause. A pause ends at Until exactly; expired and
// invalid pauses are ignored. The global pause is reported first.
func (ps Pauses) Paused(target string, now time.Time) (bool, Pause) {
	var own *Pause
	for i := range ps {
		p := &ps[i]
		if p.Validate() != nil || !now.Before(p.Until) {
			continue
		}
		if p.Target == Everything {
			return true, *p
		}
		if p.Target == target && own == nil {
			own = p
		}
	}
	if own != nil {
		return true, *own
	}
	return false, Pause{}
}

// Decide turns Paused into a decision for one action.
func (ps Pauses) Decide(target string, now time.Time) Decision {
	ok, p := ps.Paused(target, now)
	if !ok {
		return allow(GuardPause, "%s is not paused", target)
	}
	what := target
	if p.Target == Everything {
		what = "all remediation"
	}
	return wait(GuardPause, p.Until, "%s paused by %s until %s: %s", what, DescribeAuthor(p.Author, p.AuthorRole, p.OnBehalfOf), stamp(p.Until), p.Comment)
}
