package guards

import (
	"errors"
	"fmt"
	"time"
)

// ApprovalState is where a request for approval stands.
type ApprovalState string

// Approval states.
const (
	Pending  ApprovalState = "pending"
	Approved ApprovalState = "approved"
	Denied   ApprovalState = "denied"
)

// Approval is a human's yes or no to one action the policy marks as needing
// one. A pending approval expires after its TTL, so a stale request is not
// approved long after the situation changed.
type Approval struct {
	Target    string        `json:"target"`
	Action    string        `json:"action"`
	State     ApprovalState `json:"state"`
	Requested time.Time     `json:"requested"`
	Expires   time.Time     `json:"expires"`
	// Author decided: the API token's name; AuthorRole its role;
	// OnBehalfOf whom the request said it was for.
	Author     string    `json:"author,omitempty"`
	AuthorRole string    `json:"author_role,omitempty"`
	OnBehalfOf string    `json:"on_behalf_of,omitempty"`
	Comment    string    `json:"comment,omitempty"`
	Decided    time.Time `json:"decided,omitzero"`
}

// NewApproval opens a pending approval for action on target.
func NewApproval(target, action string, ttl time.Duration, now time.Time) (Approval, error) {
	if ttl <= 0 {
		return Approval{}, fmt.Errorf("request approval of %s on %s: ttl %s is not positive", action, target, ttl)
	}
	return Approval{Target: target, Action: action, State: Pending, Requested: now, Expires: now.Add(ttl)}, nil
}

// Expired reports whether the approval is still pending at or after its
// expiry.
func (a Approval) Expired(now time.Time) bool {
	return a.State == Pending && !now.Before(a.Expires)
}

// Approve records a yes.
func (a *Approval) Approve(author, comment string, now time.Time) error {
	return a.decide(Approved, author, comment, now)
}

// Deny records a no.
func (a *Approval) Deny(author, comment string, now time.Time) error {
	return a.decide(Denied, author, comment, now)
}

func (a *Approval) decide(to ApprovalState, author, comment string, now time.Time) error {
	var err error
	switch {
	case author == "":
		err = errors.New("no author")
	case comment == "":
		err = errors.New("no comment")
	case a.State != Pending:
		err = fmt.Errorf("already %s by %s", a.State, a.Author)
	case a.Expired(now):
		err = fmt.Errorf("expired at %s", stamp(a.Expires))
	}
	if err != nil {
		verb := map[ApprovalState]string{Approved: "approve", Denied: "deny"}[to]
		return fmt.Errorf("%s %s on %s: %w", verb, a.Action, a.Target, err)
	}
	a.State, a.Author, a.Comment, a.Decided = to, author, comment, now
	return nil
}

// Decide turns the approval into a decision for its action. A nil approval
// means none was requested yet.
func (a *Approval) Decide(now time.Time) Decision {
	switch {
	case a == nil:
		return Decision{Guard: GuardApproval, Verdict: Wait, Reason: "waiting: the action needs approval; none requested yet"}
	case a.State == Approved:
		return allow(GuardApproval, "approved by %s at %s: %s", DescribeAuthor(a.Author, a.AuthorRole, a.OnBehalfOf), stamp(a.Decided), a.Comment)
	case a.State == Denied:
		return skip(GuardApproval, "denied by %s at %s: %s", DescribeAuthor(a.Author, a.AuthorRole, a.OnBehalfOf), stamp(a.Decided), a.Comment)
	case a.Expired(now):
		return Decision{Guard: GuardApproval, Verdict: Escalate,
			Reason: fmt.Sprintf("escalate: approval of %s on %s requested at %s expired at %s unanswered",
				a.Action, a.Target, stamp(a.Requested), stamp(a.Expires))}
	}
	return wait(GuardApproval, a.Expires, "approval of %s on %s pending since %s, expires at %s",
		a.Action, a.Target, stamp(a.Requested), stamp(a.Expires))
}
