package clusters

import (
	"errors"
	"net/http"
	"strings"

	"caretaker/internal/httpjson"
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
}

// Handler serves the cluster API; authentication is the caller's wrapper's.
//
//	POST   /api/v1/clusters                      create (Spec) → 202 Cluster
//	GET    /api/v1/clusters                      → 200 List
//	GET    /api/v1/clusters/{name}               → 200 Cluster, progress per node
//	DELETE /api/v1/clusters/{name}               → 202 Cluster, deleting
//	PATCH  /api/v1/clusters/{name}/pools/{pool}  {"count": n} → 202 Cluster
//
// Changes are asynchronous: notify (may be nil) tells the reconciler.
// Errors are {"error": "..."} with 400, 404, 409 or 413.
func Handler(store *Store, notify func()) http.Handler {
	if notify == nil {
		notify = func() {}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/clusters", func(w http.ResponseWriter, r *http.Request) {
		var spec Spec
		if err := httpjson.Decode(w, r, &spec, maxBody); err != nil {
			httpjson.WriteDecodeError(w, err)
			return
		}
		c, err := store.Create(spec)
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
		c, err := store.Delete(r.PathValue("name"))
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
		c, err := store.Scale(r.PathValue("name"), r.PathValue("pool"), *req.Count)
		if err != nil {
			writeStoreError(w, err)
			return
		}
		notify()
		httpjson.Write(w, http.StatusAccepted, c)
	})
	return mux
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
