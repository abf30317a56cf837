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
	"caretaker/internal/who"
	"caretaker/remediation"
	"caretaker/remediation/guards"
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
	// Servers lists the servers of a clustered deployment (/servers); nil
	// for a single server, which then answers itself alone.
	Servers Servers
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
	h := &handler{Options: o, soleName: soleServerName()}
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
	soleName string // the server's name when Servers is nil
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

// ep is the endpoint of method on pattern: its role and deed from the
// route table (permissions), fn serving it.
func ep(method, pattern string, fn http.HandlerFunc) endpoint {
	p := permissionOf(method, pattern)
	return endpoint{p.Role, p.What, fn}
}

// routes are the API's endpoints; the role each needs is the route
// table's (permissions).
func (h *handler) routes() []route {
	rs := []route{
		{"/api/v1/status", methods{"GET": ep("GET", "/api/v1/status", h.status)}},
		{"/api/v1/whoami", methods{"GET": ep("GET", "/api/v1/whoami", whoami)}},
		{"/api/v1/servers", methods{"GET": ep("GET", "/api/v1/servers", h.servers)}},
		{"/api/v1/history", methods{"GET": ep("GET", "/api/v1/history", h.history)}},
		{"/api/v1/history/{id}", methods{"GET": ep("GET", "/api/v1/history/{id}", h.record)}},
		{"/api/v1/actions/{id}", methods{"GET": ep("GET", "/api/v1/actions/{id}", h.record)}},
	}
	actions := methods{"GET": ep("GET", "/api/v1/actions", h.history)}
	if h.Actor != nil {
		actions["POST"] = ep("POST", "/api/v1/actions", h.run)
		rs = append(rs,
			route{"/api/v1/actions/{id}/approve", methods{"POST": ep("POST", "/api/v1/actions/{id}/approve", h.decide(true))}},
			route{"/api/v1/actions/{id}/deny", methods{"POST": ep("POST", "/api/v1/actions/{id}/deny", h.decide(false))}})
	}
	rs = append(rs, route{"/api/v1/actions", actions})
	if h.Pauser != nil {
		rs = append(rs, route{"/api/v1/pauses", methods{
			"GET":    ep("GET", "/api/v1/pauses", h.pauses),
			"POST":   ep("POST", "/api/v1/pauses", h.pause),
			"DELETE": ep("DELETE", "/api/v1/pauses", h.resume),
		}})
	}
	if h.Policy != nil {
		rs = append(rs,
			route{"/api/v1/policy", methods{"GET": ep("GET", "/api/v1/policy", h.policy)}},
			route{"/api/v1/policy/reload", methods{"POST": ep("POST", "/api/v1/policy/reload", h.reload)}})
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

// Who is who a change is recorded under: always the authenticated token's
// name and role; what the request names as its author is kept only as
// "on behalf of".
func Who(r *http.Request, named string) guards.Who {
	id, _ := IdentityFrom(r.Context())
	return guards.Who{Name: id.Name, Role: id.Role.String(), OnBehalfOf: strings.TrimSpace(named)}
}

// CheckText answers 400 naming field and returns false when v holds a
// control character (C0, DEL, C1), a Unicode line or paragraph separator,
// a bidirectional control or bytes that are not UTF-8: text a human
// records (targets, comments, authors) must print as one honest line.
func CheckText(w http.ResponseWriter, field, v string) bool {
	if err := who.TextProblem(v); err != "" {
		httpjson.Error(w, http.StatusBadRequest, field+": "+err)
		return false
	}
	return true
}

// WhoBy is who.Func for the provisioner's handlers: the request's
// authenticated identity, the client's author only as on behalf of.
func WhoBy(r *http.Request, author, comment string) who.By {
	w := Who(r, author)
	return who.By{Name: w.Name, Role: w.Role, OnBehalfOf: w.OnBehalfOf, Comment: strings.TrimSpace(comment), At: time.Now().UTC()}
}
