package server

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"caretaker/internal/api"
	"caretaker/internal/config"
	"caretaker/remediation/policy"
)

// policyHolder keeps the remediation policy in force and reloads it from
// its file on request (API, SIGHUP). A file that does not load leaves the
// old policy in force; the failure is logged and shown by GET /api/v1/policy.
type policyHolder struct {
	path   string // "" for the embedded default
	apply  func(*policy.Policy)
	logger *slog.Logger
	now    func() time.Time

	// mu orders reloads, so the policy last loaded is the one applied.
	mu     sync.Mutex
	status api.PolicyStatus
}

// newPolicyHolder holds p, already loaded from path ("" for the embedded
// default) and in force; apply puts a reloaded policy in force.
func newPolicyHolder(path string, p *policy.Policy, apply func(*policy.Policy), logger *slog.Logger, now func() time.Time) *policyHolder {
	return &policyHolder{path: path, apply: apply, logger: logger, now: now,
		status: api.SummarizePolicy(path, now(), p)}
}

// Policy describes the policy in force.
func (h *policyHolder) Policy() api.PolicyStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.status
}

// Reload loads the policy file again and puts it in force; on error the
// old policy stays, and the returned status says so.
func (h *policyHolder) Reload() (api.PolicyStatus, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, err := h.load()
	if err != nil {
		h.status.LastError = &api.ReloadFailure{At: h.now(), Errors: api.ErrorLines(err)}
		h.logger.Error("policy reload failed; the old policy stays in force", "file", h.path, "err", err)
		return h.status, err
	}
	h.apply(p)
	h.status = api.SummarizePolicy(h.path, h.now(), p)
	h.logger.Info("policy reloaded", "file", h.source(), "rules", len(p.Rules))
	return h.status, nil
}

func (h *policyHolder) load() (*policy.Policy, error) {
	if h.path == "" {
		return policy.Default(), nil
	}
	return policy.Load(h.path)
}

func (h *policyHolder) source() string {
	if h.path == "" {
		return "embedded default"
	}
	return h.path
}

// ReloadPolicy loads the policy file again and puts it in force (the
// caretaker server does this on SIGHUP). On error the old policy stays in
// force, and the error names the file, line and field of each problem.
func (s *Server) ReloadPolicy() error {
	if _, err := s.policy.Reload(); err != nil {
		return fmt.Errorf("reload policy: %w", err)
	}
	return nil
}

// apiTokens reads the API's token files into the tokens the API accepts.
func apiTokens(creds []config.Credential) ([]api.Token, error) {
	toks := make([]api.Token, 0, len(creds))
	for _, c := range creds {
		role, err := api.ParseRole(c.Role)
		if err != nil {
			return nil, fmt.Errorf("api token %q: %w", c.Name, err)
		}
		toks = append(toks, api.Token{Name: c.Name, Role: role, Secret: c.Secret})
	}
	return toks, nil
}
