package agent

import (
	"fmt"
	"net/http"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/agentapi"
	"caretaker/internal/authlimit"
	"caretaker/internal/httpjson"
	"caretaker/internal/libvirtconn"
)

func (a *Agent) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/events", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			methodNotAllowed(w, r, http.MethodGet)
			return
		}
		a.events.ServeHTTP(w, r)
	})
	mux.HandleFunc("/api/v1/domains/{uuid}", a.handleDomain)
	mux.HandleFunc("/api/v1/domains/{uuid}/start", a.handleStart)
	mux.HandleFunc("/api/v1/overlays/{cluster}/repair", a.overlays.handleRepair)
	mux.HandleFunc("/api/v1/overlays/{cluster}", a.overlays.handleOverlay)
	mux.Handle("/api/v1/nodes/{name}", &nodes{a: a})
	// A new leader announces its epoch; the fence in front has recorded it.
	mux.HandleFunc("POST /api/v1/epoch", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Compact.Write(w, http.StatusOK, agentapi.Epoch{Epoch: a.fence.current()})
	})
	mux.HandleFunc("/api/v1/", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Compact.Error(w, http.StatusNotFound, fmt.Sprintf("no API endpoint %s", r.URL.Path))
	})
	return mux
}

// requireToken lets through only requests with the server's bearer token,
// before anything is looked up or routed, so that a request without it
// learns nothing and changes nothing. Failures are logged and counted
// (caretaker_agent_auth_failures_total); a client with too many of them
// gets 429 with Retry-After until its window ends (authlimit).
func (a *Agent) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.failures.Refuse(w, r, httpjson.Compact) {
			return
		}
		if msg, reason := a.unauthorized(r); msg != "" {
			if reason == authlimit.ReasonDisabled {
				a.failures.Count(r, reason) // no guess: not held against the client
			} else {
				a.failures.Fail(r, reason)
			}
			httpjson.Compact.Unauthorized(w, "caretaker-agent", msg)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// unauthorized returns why r may not use the API and the authlimit
// reason, or "" if it may.
func (a *Agent) unauthorized(r *http.Request) (msg, reason string) {
	if a.token == "" {
		return "host actions are disabled: the agent has no API token configured", authlimit.ReasonDisabled
	}
	token, ok := httpjson.BearerToken(r.Header.Get("Authorization"))
	if !ok {
		return "missing bearer token", authlimit.ReasonMissing
	}
	if !httpjson.TokenMatches(token, a.token) {
		return "invalid bearer token", authlimit.ReasonInvalid
	}
	return "", ""
}

// handleDomain answers GET /api/v1/domains/{uuid}.
func (a *Agent) handleDomain(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, r, http.MethodGet)
		return
	}
	uuid := r.PathValue("uuid")
	if !validUUID(uuid) {
		badUUID(w, uuid)
		return
	}
	a.withLibvirt(w, r.Context(), "look at domain "+uuid, 0, http.StatusBadGateway, func(w http.ResponseWriter, conn *libvirt.Libvirt) bool {
		dom, ok := a.lookup(w, conn, uuid)
		if !ok {
			return false
		}
		d, err := describe(conn, dom)
		if err != nil {
			httpjson.Compact.Error(w, http.StatusBadGateway, libvirtMessage(err))
			return false
		}
		httpjson.Compact.Write(w, http.StatusOK, d)
		return false
	})
}

// handleStart answers POST /api/v1/domains/{uuid}/start. Starting a running
// domain is not an error, so the server may retry a start whose answer it
// did not get. The look at the domain is bounded by the libvirt timeout,
// the start by the longer workBound.
func (a *Agent) handleStart(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, r, http.MethodPost)
		return
	}
	uuid := r.PathValue("uuid")
	if !validUUID(uuid) {
		badUUID(w, uuid)
		return
	}
	var before agentapi.Domain
	goOn := a.withLibvirt(w, r.Context(), "look at domain "+uuid, 0, http.StatusBadGateway, func(w http.ResponseWriter, conn *libvirt.Libvirt) bool {
		dom, ok := a.lookup(w, conn, uuid)
		if !ok {
			return false
		}
		var err error
		if before, err = describe(conn, dom); err != nil {
			httpjson.Compact.Error(w, http.StatusBadGateway, libvirtMessage(err))
			return false
		}
		if before.StateCode == int(libvirt.DomainRunning) {
			a.logger.Info("domain already running", "action", "start", "uuid", before.UUID, "domain", before.Name)
			httpjson.Compact.Write(w, http.StatusOK, agentapi.StartResult{Result: agentapi.ResultAlreadyRunning, Domain: before})
			return false
		}
		return true
	})
	if !goOn {
		return
	}
	logger := a.logger.With("action", "start", "uuid", before.UUID, "domain", before.Name)
	a.withLibvirt(w, r.Context(), "start domain "+uuid, a.workBound(), http.StatusBadGateway, func(w http.ResponseWriter, conn *libvirt.Libvirt) bool {
		dom, ok := a.lookup(w, conn, uuid)
		if !ok {
			return false
		}
		logger.Info("starting domain", "state", before.State, "reason_code", before.ReasonCode)
		createErr := conn.DomainCreate(dom)
		after, err := describe(conn, dom)
		switch {
		case createErr != nil && err == nil && after.StateCode == int(libvirt.DomainRunning):
			// Someone else (a concurrent request, an operator with virsh)
			// started it between our look and our start.
			logger.Info("domain already running", "err", createErr)
			httpjson.Compact.Write(w, http.StatusOK, agentapi.StartResult{Result: agentapi.ResultAlreadyRunning, Domain: after})
		case createErr != nil:
			logger.Warn("start domain failed", "err", createErr)
			httpjson.Compact.Error(w, http.StatusBadGateway, libvirtMessage(createErr))
		case err != nil:
			logger.Warn("read domain state after start", "err", err)
			httpjson.Compact.Error(w, http.StatusBadGateway, libvirtMessage(err))
		case after.StateCode != int(libvirt.DomainRunning):
			logger.Warn("domain not running after start", "state", after.State, "reason_code", after.ReasonCode)
			httpjson.Compact.Error(w, http.StatusBadGateway, fmt.Sprintf("domain %s is %s after start, not running", after.UUID, after.State))
		default:
			logger.Info("domain started", "reason_code", after.ReasonCode)
			httpjson.Compact.Write(w, http.StatusOK, agentapi.StartResult{Result: agentapi.ResultStarted, Domain: after})
		}
		return false
	})
}

func badUUID(w http.ResponseWriter, uuid string) {
	httpjson.Compact.Error(w, http.StatusBadRequest, fmt.Sprintf("malformed domain uuid %q, want the form 8-4-4-4-12 hex digits", uuid))
}

// lookup finds the domain named by a request's (valid) uuid, or answers the
// request (404, 502) and returns false.
func (a *Agent) lookup(w http.ResponseWriter, conn *libvirt.Libvirt, uuid string) (libvirt.Domain, bool) {
	dom, err := libvirtconn.LookupDomain(conn, uuid)
	switch {
	case libvirtconn.IsCode(err, libvirt.ErrNoDomain):
		httpjson.Compact.Error(w, http.StatusNotFound, fmt.Sprintf("no domain with uuid %s", uuid))
		return dom, false
	case err != nil:
		httpjson.Compact.Error(w, http.StatusBadGateway, libvirtMessage(err))
		return dom, false
	}
	if a.cfg.DomainFilter != nil && !a.owns(dom.Name) {
		httpjson.Compact.Error(w, http.StatusNotFound, fmt.Sprintf("no domain with uuid %s", uuid))
		return dom, false
	}
	return dom, true
}

// describe reads the domain's state; its UUID and name come with dom.
func describe(conn *libvirt.Libvirt, dom libvirt.Domain) (agentapi.Domain, error) {
	uuid := libvirtconn.UUIDString(dom.UUID)
	state, reason, err := conn.DomainGetState(dom, 0)
	if err != nil {
		return agentapi.Domain{}, fmt.Errorf("read state of domain %s: %w", uuid, err)
	}
	return agentapi.Domain{
		UUID:       uuid,
		Name:       dom.Name,
		State:      stateName(libvirt.DomainState(state)),
		StateCode:  int(state),
		ReasonCode: int(reason),
	}, nil
}

// stateName returns virsh's word for a domain state, the one operators know.
func stateName(s libvirt.DomainState) string {
	switch s {
	case libvirt.DomainNostate:
		return "no state"
	case libvirt.DomainRunning:
		return "running"
	case libvirt.DomainBlocked:
		return "idle"
	case libvirt.DomainPaused:
		return "paused"
	case libvirt.DomainShutdown:
		return "in shutdown"
	case libvirt.DomainShutoff:
		return "shut off"
	case libvirt.DomainCrashed:
		return "crashed"
	case libvirt.DomainPmsuspended:
		return "pmsuspended"
	default:
		return fmt.Sprintf("unknown (%d)", int(s))
	}
}

func validUUID(s string) bool { return agentapi.ValidUUID(s) }

// libvirtMessage returns libvirt's own message for err, without what
// wraps it, for the API's error field.
func libvirtMessage(err error) string { return libvirtconn.Message(err) }

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	httpjson.Compact.Error(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s, use %s", r.Method, r.URL.Path, allow))
}
