package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"caretaker/internal/authlimit"
	"caretaker/internal/httpjson"
)

// Role is what a token may do; each role may do what the ones below it may.
type Role int

// Roles, least to most powerful.
const (
	// RoleViewer reads: status, history, alerts, pauses, the policy.
	RoleViewer Role = iota + 1
	// RoleOperator also approves, denies and runs actions and pauses
	// remediation.
	RoleOperator
	// RoleAdmin also reloads the policy.
	RoleAdmin
)

func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RoleOperator:
		return "operator"
	case RoleAdmin:
		return "admin"
	case RoleWebhook:
		return "webhook"
	}
	return fmt.Sprintf("role(%d)", int(r))
}

// ParseRole reads "viewer", "operator", "admin" or "webhook".
func ParseRole(s string) (Role, error) {
	for _, r := range []Role{RoleViewer, RoleOperator, RoleAdmin, RoleWebhook} {
		if r.String() == s {
			return r, nil
		}
	}
	return 0, fmt.Errorf("role %q: want viewer, operator, admin or webhook", s)
}

// Token is one bearer token the API accepts.
type Token struct {
	Name   string
	Role   Role
	Secret string
}

// Identity is who a request comes from: its token's name and role.
type Identity struct {
	Name string `json:"name"`
	Role Role   `json:"-"`
}

type identityKey struct{}

// IdentityFrom returns the identity the authenticator put in ctx.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// Authenticator tells who a request comes from by its bearer token.
type Authenticator struct {
	tokens []Token
	// failures logs, counts and limits failed authentications per client
	// address, once LimitFailures set it.
	failures *authlimit.Limiter
}

// NewAuthenticator accepts tokens. Names and secrets must be unique and
// not empty; errors name the token, never its secret.
func NewAuthenticator(tokens []Token) (*Authenticator, error) {
	if len(tokens) == 0 {
		return nil, errors.New("api tokens: none given; the API would refuse every request")
	}
	names := map[string]bool{}
	secrets := map[string]string{}
	for _, t := range tokens {
		switch {
		case t.Name == "":
			return nil, errors.New("api tokens: a token has no name")
		case names[t.Name]:
			return nil, fmt.Errorf("api token %q: name used twice", t.Name)
		case t.Secret == "":
			return nil, fmt.Errorf("api token %q: empty secret", t.Name)
		case (t.Role < RoleViewer || t.Role > RoleAdmin) && t.Role != RoleWebhook:
			return nil, fmt.Errorf("api token %q: invalid role %d", t.Name, int(t.Role))
		}
		if other, dup := secrets[t.Secret]; dup {
			return nil, fmt.Errorf("api token %q: same secret as token %q", t.Name, other)
		}
		names[t.Name], secrets[t.Secret] = true, t.Name
	}
	return &Authenticator{tokens: append([]Token(nil), tokens...)}, nil
}

// FailuresMetric counts the API's failed authentications by reason.
const FailuresMetric = "caretaker_api_auth_failures_total"

// LimitFailures makes the authenticator log every failed authentication
// to logger (client address, route, reason; never the token), count it in
// FailuresMetric, registered with reg, and answer a client with more than
// authlimit.DefaultMaxFailures failures within authlimit.DefaultWindow 429
// with Retry-After until the window ends, other clients unaffected. The
// server calls it before serving.
func (a *Authenticator) LimitFailures(logger *slog.Logger, reg prometheus.Registerer) error {
	c := authlimit.NewCounter(FailuresMetric,
		"Failed authentications of the API by reason: missing or invalid token, or rate_limited (a client with too many failures, refused with 429).")
	if reg != nil {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register %s: %w", FailuresMetric, err)
		}
	}
	a.failures = authlimit.New(authlimit.Options{Counter: c, Logger: logger})
	return nil
}

// identify compares the bearer token with every known one in constant time,
// and without stopping at a match, so response times tell nothing about
// which token or how much of it was right.
func (a *Authenticator) identify(header string) (Identity, bool, string) {
	got, ok := httpjson.BearerToken(header)
	if !ok {
		return Identity{}, false, authlimit.ReasonMissing
	}
	var id Identity
	found := false
	for _, t := range a.tokens {
		if httpjson.TokenMatches(got, t.Secret) {
			id, found = Identity{Name: t.Name, Role: t.Role}, true
		}
	}
	if !found {
		return id, false, authlimit.ReasonInvalid
	}
	return id, true, ""
}

// Authenticate serves next only to requests with a known bearer token,
// with their Identity in the context; the others get 401 and reach nothing.
// A client with too many failures (authlimit) gets 429 with Retry-After
// until its window ends, before its token is looked at.
func (a *Authenticator) Authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.failures.Refuse(w, r, httpjson.Indented) {
			return
		}
		id, ok, reason := a.identify(r.Header.Get("Authorization"))
		if !ok {
			a.failures.Fail(r, reason)
			httpjson.Unauthorized(w, "caretaker", "missing or invalid bearer token")
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey{}, id)))
	})
}

// Require is Authenticate, then 403 for a token whose role is below min.
// what names the deed in the refusal ("approving an action").
func (a *Authenticator) Require(min Role, what string, next http.Handler) http.Handler {
	return a.Authenticate(requireRole(min, what, next))
}

func requireRole(min Role, what string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := IdentityFrom(r.Context())
		if !id.Role.Allows(min) {
			httpjson.Error(w, http.StatusForbidden, fmt.Sprintf("token %q has role %s; %s needs %s", id.Name, id.Role, what, min))
			return
		}
		next.ServeHTTP(w, r)
	})
}
