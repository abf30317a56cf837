package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"caretaker/internal/httpjson"
	"caretaker/remediation"
	"caretaker/remediation/journal"
)

// Backend answers the API's questions; the server implements it.
type Backend interface {
	Status(ctx context.Context) (Status, error)
	// History returns the records f selects, newest first, at most f.Limit.
	History(ctx context.Context, f HistoryFilter) ([]journal.Record, error)
	// Record returns one record, or an error wrapping journal.ErrNotFound.
	Record(ctx context.Context, id uint64) (journal.Record, error)
}

// DefaultHistoryLimit is how many records /history returns without ?limit.
const DefaultHistoryLimit = 50

// maxHistoryLimit caps ?limit so one request cannot read the whole journal.
const maxHistoryLimit = 10000

// maxBody caps a request body; every request the API takes is a few
// hundred bytes.
const maxBody = 64 << 10

// Options are what the API serves. Backend and Auth are required; an
// endpoint whose part is nil answers 404.
type Options struct {
	Backend Backend
	Pauser  Pauser         // /pauses
	Actor   Actor          // run, approve, deny
	Policy  PolicyReloader // /policy, /policy/reload
	Auth    *Authenticator
	Logger  *slog.Logger
	Now     func() time.Time // default time.Now
}

// NewHandler serves /api/v1/. A request without a known bearer token gets
// 401 before anything else; one whose token's role is below the endpoint's
// gets 403 and changes nothing.
func NewHandler(o Options) http.Handler {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	h := &handler{Options: o}
	mux := http.NewServeMux()
	for _, rt := range h.routes() {
		mux.Handle(rt.pattern, rt.methods)
	}
	mux.HandleFunc("/api/v1/", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Error(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return o.Auth.Authenticate(mux)
}

type handler struct {
	Options
}

// endpoint is one method of a route: the least role it needs, the deed in
// words for a 403, and the handler.
type endpoint struct {
	role Role
	what string
	fn   http.HandlerFunc
}

// methods dispatches by method itself: with method patterns in the mux,
// the catch-all would answer 404 instead of 405.
type methods map[string]endpoint

func (m methods) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	e, ok := m[method]
	if !ok {
		allow := make([]string, 0, len(m))
		for k := range m {
			allow = append(allow, k)
		}
		slices.Sort(allow)
		w.Header().Set("Allow", strings.Join(allow, ", "))
		httpjson.Error(w, http.StatusMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path)
		return
	}
	requireRole(e.role, e.what, e.fn).ServeHTTP(w, r)
}

type route struct {
	pattern string
	methods methods
}

// routes is the API's table: every endpoint and the role it needs.
func (h *handler) routes() []route {
	rs := []route{
		{"/api/v1/status", methods{"GET": {RoleViewer, "reading the status", h.status}}},
		{"/api/v1/history", methods{"GET": {RoleViewer, "reading the journal", h.history}}},
		{"/api/v1/history/{id}", methods{"GET": {RoleViewer, "reading the journal", h.record}}},
		{"/api/v1/actions/{id}", methods{"GET": {RoleViewer, "reading the journal", h.record}}},
	}
	actions := methods{"GET": {RoleViewer, "reading the journal", h.history}}
	if h.Actor != nil {
		actions["POST"] = endpoint{RoleOperator, "running an action", h.run}
		rs = append(rs,
			route{"/api/v1/actions/{id}/approve", methods{"POST": {RoleOperator, "approving an action", h.decide(true)}}},
			route{"/api/v1/actions/{id}/deny", methods{"POST": {RoleOperator, "denying an action", h.decide(false)}}})
	}
	rs = append(rs, route{"/api/v1/actions", actions})
	if h.Pauser != nil {
		rs = append(rs, route{"/api/v1/pauses", methods{
			"GET":    {RoleViewer, "reading the pauses", h.pauses},
			"POST":   {RoleOperator, "pausing remediation", h.pause},
			"DELETE": {RoleOperator, "resuming remediation", h.resume},
		}})
	}
	if h.Policy != nil {
		rs = append(rs,
			route{"/api/v1/policy", methods{"GET": {RoleViewer, "reading the policy", h.policy}}},
			route{"/api/v1/policy/reload", methods{"POST": {RoleAdmin, "reloading the policy", h.reload}}})
	}
	return rs
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	s, err := h.Backend.Status(r.Context())
	if err != nil {
		h.fail(w, "status", err)
		return
	}
	httpjson.Write(w, http.StatusOK, s)
}

func (h *handler) history(w http.ResponseWriter, r *http.Request) {
	f, err := parseHistoryFilter(r.URL.Query(), h.Now())
	if err != nil {
		httpjson.Error(w, http.StatusBadRequest, err.Error())
		return
	}
	recs, err := h.Backend.History(r.Context(), f)
	if err != nil {
		h.fail(w, "history", err)
		return
	}
	if recs == nil {
		recs = []journal.Record{}
	}
	httpjson.Write(w, http.StatusOK, History{Records: recs})
}

func (h *handler) record(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	rec, err := h.Backend.Record(r.Context(), id)
	if err != nil {
		h.fail(w, fmt.Sprintf("action %d", id), err)
		return
	}
	httpjson.Write(w, http.StatusOK, rec)
}

// pathID reads the {id} of the path, answering 400 for a bad one.
func pathID(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		httpjson.Error(w, http.StatusBadRequest, "action id: want a positive integer, got "+strconv.Quote(r.PathValue("id")))
		return 0, false
	}
	return id, true
}

// fail answers err with the status its cause calls for: 404 for an
// unknown record, 409 for a request the record's state does not allow,
// 400 for a bad request, 500 (logged) for the rest.
func (h *handler) fail(w http.ResponseWriter, op string, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, journal.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, remediation.ErrConflict):
		code = http.StatusConflict
	case errors.Is(err, remediation.ErrInvalid):
		code = http.StatusBadRequest
	default:
		h.Logger.Error("api request failed", "op", op, "err", err)
	}
	httpjson.Error(w, code, op+": "+err.Error())
}

// author is who a change is recorded under: the one the request names, or
// else the token's name.
func author(r *http.Request, named string) string {
	if a := strings.TrimSpace(named); a != "" {
		return a
	}
	id, _ := IdentityFrom(r.Context())
	return id.Name
}
