package clusters

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"caretaker/internal/httpjson"
	"caretaker/internal/who"
)

// maxBody caps a request body: a spec with a few pools is a few hundred
// bytes.
const maxBody = 64 << 10

// List is the body of GET /api/v1/clusters.
type List struct {
	Clusters []Cluster `json:"clusters"`
}

// ScaleRequest is the body of PATCH /api/v1/clusters/{name}/pools/{pool}.
type ScaleRequest struct {
	Count *int `json:"count"`
	// Author, when set, is kept only as "on behalf of" beside the token's
	// identity; Comment is kept as said.
	Author  string `json:"author,omitempty"`
	Comment string `json:"comment,omitempty"`
}

// CreateRequest is the body of POST /api/v1/clusters: a Spec, and
// optionally an author (kept only as "on behalf of" beside the token's
// identity, never as it) and a comment.
type CreateRequest struct {
	Spec
	Author  string `json:"author,omitempty"`
	Comment string `json:"comment,omitempty"`
}

// DeleteRequest is the optional body of DELETE /api/v1/clusters/{name}:
// an author (kept only as "on behalf of" beside the token's identity) and
// a comment, both recorded in the cluster's changed_by.
type DeleteRequest struct {
	Author  string `json:"author,omitempty"`
	Comment string `json:"comment,omitempty"`
}

// Handler serves the cluster API; authentication is the caller's wrapper's.
//
//	POST   /api/v1/clusters                      create (Spec) → 202 Cluster
//	GET    /api/v1/clusters                      → 200 List
//	GET    /api/v1/clusters/{name}               → 200 Cluster, progress per node
//	DELETE /api/v1/clusters/{name}               optional DeleteRequest → 202 Cluster, deleting
//	PATCH  /api/v1/clusters/{name}/pools/{pool}  {"count": n} → 202 Cluster
//	POST   /api/v1/clusters/plan                 create's body → 200 Plan: would it fit now, where
//
// Changes are asynchronous: notify (may be nil) tells the reconciler.
// by (may be nil: nothing recorded) tells who makes a request, from its
// authenticated token: it is recorded as the cluster's created_by or
// changed_by. Errors are {"error": "..."} with 400, 404, 409 or 413.
//
// plan (may be nil: 503) answers /plan, changing nothing.
func Handler(store *Store, notify func(), by who.Func, plan func(context.Context, Spec) (Plan, error)) http.Handler {
	if notify == nil {
		notify = func() {}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/clusters/plan", func(w http.ResponseWriter, r *http.Request) {
		var req CreateRequest // a create's body, author and comment unused
		if err := httpjson.Decode(w, r, &req, maxBody); err != nil {
			httpjson.WriteDecodeError(w, err)
			return
		}
		if plan == nil {
			httpjson.Error(w, http.StatusServiceUnavailable, "placement is not available on this server")
			return
		}
		p, err := plan(r.Context(), req.Spec)
		if err != nil {
			writeStoreError(w, err)
			return
		}
		httpjson.Write(w, http.StatusOK, p)
	})
	mux.HandleFunc("POST /api/v1/clusters", func(w http.ResponseWriter, r *http.Request) {
		var req CreateRequest
		if err := httpjson.Decode(w, r, &req, maxBody); err != nil {
			httpjson.WriteDecodeError(w, err)
			return
		}
		if !checkText(w, "author", req.Author) || !checkText(w, "comment", req.Comment) {
			return
		}
		c, err := store.CreateBy(req.Spec, by.Of(r, req.Author, req.Comment))
		if err != nil {
			writeStoreError(w, err)
			return
		}
		notify()
		w.Header().Set("Location", "/api/v1/clusters/"+c.Name)
		httpjson.Write(w, http.StatusAccepted, c)
	})
	mux.HandleFunc("GET /api/v1/clusters", func(w http.ResponseWriter, r *http.Request) {
		cs, err := store.List()
		if err != nil {
			writeStoreError(w, err)
			return
		}
		if cs == nil {
			cs = []Cluster{}
		}
		httpjson.Write(w, http.StatusOK, List{Clusters: cs})
	})
	mux.HandleFunc("GET /api/v1/clusters/{name}", func(w http.ResponseWriter, r *http.Request) {
		c, err := store.Get(r.PathValue("name"))
		if err != nil {
			writeStoreError(w, err)
			return
		}
		httpjson.Write(w, http.StatusOK, c)
	})
	mux.HandleFunc("DELETE /api/v1/clusters/{name}", func(w http.ResponseWriter, r *http.Request) {
		var req DeleteRequest
		if err := httpjson.Decode(w, r, &req, maxBody); err != nil && !errors.Is(err, httpjson.ErrEmpty) {
			httpjson.WriteDecodeError(w, err)
			return
		}
		if !checkText(w, "author", req.Author) || !checkText(w, "comment", req.Comment) {
			return
		}
		c, err := store.DeleteBy(r.PathValue("name"), by.Of(r, req.Author, req.Comment))
		if err != nil {
			writeStoreError(w, err)
			return
		}
		notify()
		httpjson.Write(w, http.StatusAccepted, c)
	})
	mux.HandleFunc("PATCH /api/v1/clusters/{name}/pools/{pool}", func(w http.ResponseWriter, r *http.Request) {
		var req ScaleRequest
		if err := httpjson.Decode(w, r, &req, maxBody); err != nil {
			httpjson.WriteDecodeError(w, err)
			return
		}
		if req.Count == nil {
			httpjson.Error(w, http.StatusBadRequest, `request body: "count" missing`)
			return
		}
		if !checkText(w, "author", req.Author) || !checkText(w, "comment", req.Comment) {
			return
		}
		c, err := store.ScaleBy(r.PathValue("name"), r.PathValue("pool"), *req.Count, by.Of(r, req.Author, req.Comment))
		if err != nil {
			writeStoreError(w, err)
			return
		}
		notify()
		httpjson.Write(w, http.StatusAccepted, c)
	})
	return mux
}

// checkText answers 400 naming field when v holds a control character or
// is not UTF-8: a recorded author or comment must print as one line.
func checkText(w http.ResponseWriter, field, v string) bool {
	if problem := who.TextProblem(v); problem != "" {
		httpjson.Error(w, http.StatusBadRequest, field+": "+problem)
		return false
	}
	return true
}

func writeStoreError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, ErrExists), errors.Is(err, ErrConflict):
		code = http.StatusConflict
	}
	// a joined validation error lists one problem per line
	httpjson.Error(w, code, strings.ReplaceAll(err.Error(), "\n", "; "))
}
