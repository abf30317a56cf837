package remediation

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// Errors the engine's request methods wrap, so the API can answer with the
// right status.
var (
	// ErrInvalid: the request itself is wrong (400).
	ErrInvalid = errors.New("invalid request")
	// ErrConflict: the record is not in a state that allows the request,
	// e.g. approving an action that is not awaiting approval (409).
	ErrConflict = errors.New("conflict")
)

// ManualAlert is the alertname of the records of actions run by hand.
const ManualAlert = "ManualAction"

// ManualRequest asks the engine to run an action by hand (runbook run).
type ManualRequest struct {
	Action string `json:"action"` // one of policy.KnownActions but run-command
	// Target names what to act on: "host/uuid" for a guest action,
	// "host" for reprovision-host, "host/cluster" for repair-overlay;
	// notify-only takes any of these.
	Target string `json:"target"`
	// Labels are added to the record's labels.
	Labels map[string]string `json:"labels,omitempty"`
	DryRun bool              `json:"dry_run,omitempty"`
	// Author is who asks. Through the API it is the token's name and
	// AuthorRole the token's role, whatever the request says; what a
	// client sends as "author" (or "on_behalf_of") becomes OnBehalfOf.
	Author     string `json:"author"`
	AuthorRole string `json:"author_role,omitempty"`
	OnBehalfOf string `json:"on_behalf_of,omitempty"`
	Comment    string `json:"comment"`
}

func (req ManualRequest) who() guards.Who {
	return guards.Who{Name: req.Author, Role: req.AuthorRole, OnBehalfOf: req.OnBehalfOf}
}

// labels turns the request's target into the labels an alert about it
// would carry.
func (req ManualRequest) labels() (map[string]string, error) {
	labels := maps.Clone(req.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels["alertname"] = ManualAlert
	first, rest, two := strings.Cut(req.Target, "/")
	if first == "" || (two && (rest == "" || strings.Contains(rest, "/"))) {
		return nil, fmt.Errorf("%w: target %q: want host, host/uuid or host/cluster", ErrInvalid, req.Target)
	}
	labels["host"] = first
	switch {
	case !two:
	case req.Action == policy.ActionRepairOverlay:
		labels["cluster"] = rest
	default:
		labels["uuid"] = rest
	}
	return labels, nil
}

// Run records and runs an action by hand. It returns the record once the
// intent is on disk; the action runs in the background (follow it with the
// record's ID). A human's explicit request is not held by the automatic
// guards (pauses, windows, breaker, backoff, approval), but their word is
// recorded with it; a dry run records them and executes nothing. Errors
// wrap ErrInvalid or ErrConflict (the target is busy).
func (e *Engine) Run(_ context.Context, req ManualRequest) (journal.Record, error) {
	req.Author, req.Comment = strings.TrimSpace(req.Author), strings.TrimSpace(req.Comment)
	switch {
	case req.Author == "" || req.Comment == "":
		return journal.Record{}, fmt.Errorf("%w: author and comment are both required", ErrInvalid)
	case req.Action == policy.ActionRunCommand:
		return journal.Record{}, fmt.Errorf("%w: run-command runs the command of a policy rule when its alert fires; it cannot be run by hand", ErrInvalid)
	}
	act, known := e.actions[req.Action]
	if !known {
		return journal.Record{}, fmt.Errorf("%w: unknown action %q (known: %s)", ErrInvalid, req.Action, strings.Join(policy.KnownActions(), ", "))
	}
	labels, err := req.labels()
	if err != nil {
		return journal.Record{}, err
	}
	t, err := targetOf(req.Action, act, labels)
	if err != nil {
		return journal.Record{}, fmt.Errorf("%w: target %q: %v", ErrInvalid, req.Target, err)
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return journal.Record{}, errors.New("run: the remediation engine is shutting down")
	}
	if id, busy := e.busy[t.key()]; busy {
		return journal.Record{}, fmt.Errorf("%w: action %d is already working on %s", ErrConflict, id, t)
	}
	now := e.now()
	labels["requested_at"] = now.UTC().Format("2006-01-02T15:04:05.000000000Z") // each run its own instance
	a := normalize(Alert{Name: ManualAlert, Labels: labels, Status: StatusFiring, StartsAt: now})
	in := e.instanceOf(keyOf(a.Fingerprint, a.StartsAt))
	in.alert, in.seen = a, now // manual once its record, which has an author, is applied
	rule := policy.Rule{Name: "manual", Action: req.Action}
	base := e.newRecord(in, rule, req.Action, now)
	base.Author, base.Comment, base.DryRun = req.Author, req.Comment, req.DryRun
	base.AuthorRole, base.OnBehalfOf = req.AuthorRole, req.OnBehalfOf
	base.Target, base.Host, base.UUID, base.Cluster = t.key(), t.Host, t.UUID, t.Cluster
	g := e.policy.GuardSettings()
	res := guards.Check(e.candidate(req.Action, t, in), e.inputs(g, rule, req.Action, t, in, now), now)
	var rec journal.Record
	e.write(func(w *writer) {
		if req.DryRun {
			base.Decisions = res.Decisions
			e.close(w, in, journal.StateSkipped, now,
				fmt.Sprintf("%s: would run %s on %s, asked by %s: %s; the automatic guards say: %s", ReasonDryRun, req.Action, t, req.who(), req.Comment, res.Reason), &base)
			rec = journal.Record{ID: in.last}
			return
		}
		why := fmt.Sprintf("run by hand by %s: %s (the automatic guards say: %s)", req.who(), req.Comment, res.Reason)
		e.start(w, in, 1, rule, req.Action, act, t, base, res, why, now)
		rec = journal.Record{ID: in.open}
	})
	if rec.ID == 0 {
		return journal.Record{}, errors.New("run: the journal could not record the request")
	}
	return e.journal.Get(rec.ID)
}

// Approve records a human's yes to an action awaiting approval and starts
// it at once if the other guards allow; otherwise it starts when they do.
// Errors wrap journal.ErrNotFound, ErrConflict (not awaiting approval,
// already decided, expired) or ErrInvalid (no author or comment).
func (e *Engine) Approve(id uint64, author, comment string) (journal.Record, error) {
	return e.Answer(id, true, guards.Who{Name: author}, comment)
}

// Deny records a human's no: the action is cancelled. Errors as Approve.
func (e *Engine) Deny(id uint64, author, comment string) (journal.Record, error) {
	return e.Answer(id, false, guards.Who{Name: author}, comment)
}

// Answer approves (yes) or denies action id as by, whose name, role and
// "on behalf of" the approval and the journal keep. Errors as Approve.
func (e *Engine) Answer(id uint64, yes bool, by guards.Who, comment string) (journal.Record, error) {
	verb := map[bool]string{true: "approve", false: "deny"}[yes]
	by.Name, comment = strings.TrimSpace(by.Name), strings.TrimSpace(comment)
	author := by.Name
	if author == "" || comment == "" {
		return journal.Record{}, fmt.Errorf("%s action %d: %w: author and comment are both required", verb, id, ErrInvalid)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	in := e.instances[e.byRecord[id]]
	if in == nil || in.open != id || in.state != journal.StateAwaitingApproval || in.approval == nil {
		rec, err := e.journal.Get(id)
		if err != nil {
			return journal.Record{}, fmt.Errorf("%s action %d: %w", verb, id, err)
		}
		return journal.Record{}, fmt.Errorf("%s action %d: %w: it is %s, not awaiting approval", verb, id, ErrConflict, rec.State)
	}
	now := e.now()
	a := *in.approval
	var err error
	if yes {
		err = a.Approve(author, comment, now)
	} else {
		err = a.Deny(author, comment, now)
	}
	if err != nil {
		return journal.Record{}, fmt.Errorf("%w: %v", ErrConflict, err)
	}
	a.AuthorRole, a.OnBehalfOf = by.Role, by.OnBehalfOf
	e.write(func(w *writer) {
		if !yes {
			e.close(w, in, journal.StateCancelled, now, fmt.Sprintf("denied by %s: %s", by, comment), nil)
			return
		}
		note := fmt.Sprintf("approved by %s: %s", by, comment)
		if _, ok := e.save(w, in, id, journal.Record{}, func(r *journal.Record) {
			r.Approval = &a
			r.Transitions = append(r.Transitions, journal.Transition{State: r.State, At: now, Note: note})
		}); !ok {
			return
		}
		e.log.Info("remediation action approved", "record", id, "author", author, "author_role", by.Role, "on_behalf_of", by.OnBehalfOf, "comment", comment)
		if rule, ok := e.policy.Match(in.alert.Labels); ok {
			e.advance(w, in, rule, now)
		}
	})
	return e.journal.Get(id)
}
