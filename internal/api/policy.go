package api

import (
	"context"
	"net/http"
	"strings"
	"time"

	"caretaker/internal/httpjson"
	"caretaker/remediation/policy"
)

// PolicyStatus is the remediation policy in force.
type PolicyStatus struct {
	// File is the policy file, or "" for the embedded default.
	File     string       `json:"file"`
	LoadedAt time.Time    `json:"loaded_at"`
	Rules    []PolicyRule `json:"rules"`
	// LastError is the last reload that failed after this policy was
	// loaded; the policy above stayed in force.
	LastError *ReloadFailure `json:"last_error,omitempty"`
}

// PolicyRule is one rule of the policy, in short.
type PolicyRule struct {
	Name     string   `json:"name"`
	Action   string   `json:"action"`
	Escalate []string `json:"escalate,omitempty"`
	Approval bool     `json:"approval,omitempty"` // a human must approve
}

// ReloadFailure is a reload that did not take.
type ReloadFailure struct {
	At     time.Time `json:"at"`
	Errors []string  `json:"errors"` // "file:line: field: message", one per problem
}

// SummarizePolicy describes p, loaded from file ("" for the embedded
// default) at loadedAt.
func SummarizePolicy(file string, loadedAt time.Time, p *policy.Policy) PolicyStatus {
	s := PolicyStatus{File: file, LoadedAt: loadedAt, Rules: []PolicyRule{}}
	if p == nil {
		return s
	}
	for _, r := range p.Rules {
		s.Rules = append(s.Rules, PolicyRule{Name: r.Name, Action: r.Action, Escalate: r.Escalate, Approval: r.Approval.Required})
	}
	return s
}

// ErrorLines splits a loading error into its problems, one per line.
func ErrorLines(err error) []string {
	return strings.Split(strings.TrimSpace(err.Error()), "\n")
}

// PolicyReloader keeps the policy in force; the server has it.
type PolicyReloader interface {
	Policy() PolicyStatus
	// Reload loads the policy file again and puts it in force. On error the
	// old policy stays in force, and the returned status (with LastError
	// set) describes it.
	Reload() (PolicyStatus, error)
}

func (h *handler) policy(w http.ResponseWriter, _ *http.Request) {
	httpjson.Write(w, http.StatusOK, h.Policy.Policy())
}

func (h *handler) reload(w http.ResponseWriter, r *http.Request) {
	id, _ := IdentityFrom(r.Context())
	s, err := h.Policy.Reload()
	if err != nil {
		h.Logger.Warn("policy reload refused; the old policy stays in force", "token", id.Name, "err", err)
		httpjson.Write(w, http.StatusUnprocessableEntity, errorBody{
			Error:  "the policy did not load; the old one stays in force",
			Errors: ErrorLines(err),
			Policy: &s,
		})
		return
	}
	h.Logger.Info("policy reloaded", "token", id.Name, "file", s.File, "rules", len(s.Rules))
	httpjson.Write(w, http.StatusOK, s)
}

// Policy fetches the policy in force.
func (c *Client) Policy(ctx context.Context) (PolicyStatus, error) {
	var s PolicyStatus
	err := c.get(ctx, "/api/v1/policy", &s)
	return s, err
}

// ReloadPolicy has the server load its policy file again. When the file
// does not load, the error is a *StatusError (422) whose Details are the
// file's problems.
func (c *Client) ReloadPolicy(ctx context.Context) (PolicyStatus, error) {
	var s PolicyStatus
	err := c.do(ctx, http.MethodPost, "/api/v1/policy/reload", nil, &s)
	return s, err
}
