package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"caretaker/internal/httpjson"
	"caretaker/remediation"
	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
)

// Actor runs actions by hand and decides approvals; the remediation engine
// has it. Errors wrap journal.ErrNotFound, remediation.ErrConflict or
// remediation.ErrInvalid where those are the cause.
type Actor interface {
	Run(ctx context.Context, req remediation.ManualRequest) (journal.Record, error)
	// Answer approves (yes) or denies action id as by.
	Answer(id uint64, yes bool, by guards.Who, comment string) (journal.Record, error)
}

// RunRequest asks to run an action by hand: POST /api/v1/actions. It is
// recorded under the token's name and role; Author, when set, is kept as
// "on behalf of". Comment is required.
type RunRequest = remediation.ManualRequest

// DecisionRequest approves or denies an action awaiting approval. It is
// recorded under the token's name and role; Author, when set, is kept as
// "on behalf of". Comment is required.
type DecisionRequest struct {
	Author  string `json:"author,omitempty"`
	Comment string `json:"comment"`
}

func (h *handler) run(w http.ResponseWriter, r *http.Request) {
	var req RunRequest
	if err := httpjson.Decode(w, r, &req, maxBody); err != nil {
		httpjson.WriteDecodeError(w, err)
		return
	}
	var missing []string
	for _, f := range []struct{ name, v string }{{"action", req.Action}, {"target", req.Target}, {"comment", req.Comment}} {
		if strings.TrimSpace(f.v) == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		httpjson.Error(w, http.StatusBadRequest, strings.Join(missing, ", ")+": required")
		return
	}
	named := req.OnBehalfOf
	if named == "" {
		named = req.Author
	}
	for _, f := range []struct{ name, v string }{{"action", req.Action}, {"target", req.Target}, {"comment", req.Comment}, {"author", named}} {
		if !CheckText(w, f.name, f.v) {
			return
		}
	}
	if !MayRunAction(w, r, req.Action, "running") {
		return
	}
	by := Who(r, named)
	req.Author, req.AuthorRole, req.OnBehalfOf = by.Name, by.Role, by.OnBehalfOf
	rec, err := h.Actor.Run(r.Context(), req)
	if err != nil {
		h.fail(w, "run "+req.Action+" on "+req.Target, err)
		return
	}
	httpjson.Write(w, http.StatusAccepted, rec)
}

// decide serves approve (yes) and deny.
func (h *handler) decide(yes bool) http.HandlerFunc {
	verb := "deny"
	if yes {
		verb = "approve"
	}
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := pathID(w, r)
		if !ok {
			return
		}
		var req DecisionRequest
		if err := httpjson.Decode(w, r, &req, maxBody); err != nil {
			httpjson.WriteDecodeError(w, err)
			return
		}
		if strings.TrimSpace(req.Comment) == "" {
			httpjson.Error(w, http.StatusBadRequest, "comment: required, so the journal says why the action was "+verb+"d")
			return
		}
		if !CheckText(w, "comment", req.Comment) || !CheckText(w, "author", req.Author) {
			return
		}
		if yes {
			// Approving lets the action run: it needs the action's role.
			cur, err := h.Backend.Record(r.Context(), id)
			if err != nil {
				h.fail(w, verb+" action "+strconv.FormatUint(id, 10), err)
				return
			}
			if !MayRunAction(w, r, cur.Action, "approving") {
				return
			}
		}
		rec, err := h.Actor.Answer(id, yes, Who(r, req.Author), req.Comment)
		if err != nil {
			h.fail(w, verb+" action "+strconv.FormatUint(id, 10), err)
			return
		}
		httpjson.Write(w, http.StatusOK, rec)
	}
}

// Actions fetches the journal records f selects, newest first; unlike
// History it can select by several states.
func (c *Client) Actions(ctx context.Context, f HistoryFilter) (History, error) {
	var h History
	err := c.get(ctx, "/api/v1/actions?"+f.query(), &h)
	return h, err
}

// Run asks the server to run an action by hand; the record comes back as
// soon as the intent is in the journal.
func (c *Client) Run(ctx context.Context, req RunRequest) (journal.Record, error) {
	var rec journal.Record
	body, _ := json.Marshal(req)
	err := c.do(ctx, http.MethodPost, "/api/v1/actions", body, &rec)
	return rec, err
}

// Approve approves action id, which awaits approval.
func (c *Client) Approve(ctx context.Context, id uint64, req DecisionRequest) (journal.Record, error) {
	return c.decide(ctx, id, "approve", req)
}

// Deny denies action id, which awaits approval.
func (c *Client) Deny(ctx context.Context, id uint64, req DecisionRequest) (journal.Record, error) {
	return c.decide(ctx, id, "deny", req)
}

func (c *Client) decide(ctx context.Context, id uint64, verb string, req DecisionRequest) (journal.Record, error) {
	var rec journal.Record
	body, _ := json.Marshal(req)
	err := c.do(ctx, http.MethodPost, "/api/v1/actions/"+strconv.FormatUint(id, 10)+"/"+verb, body, &rec)
	return rec, err
}
