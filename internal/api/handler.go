package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

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

// NewHandler serves /api/v1/ for b. Every request must carry token as a
// bearer token; an empty token refuses every request.
func NewHandler(b Backend, token string, logger *slog.Logger) http.Handler {
	h := &handler{backend: b, logger: logger}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/status", onlyGET(h.status))
	mux.HandleFunc("/api/v1/history", onlyGET(h.history))
	mux.HandleFunc("/api/v1/history/{id}", onlyGET(h.record))
	mux.HandleFunc("/api/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return RequireToken(token, mux)
}

type handler struct {
	backend Backend
	logger  *slog.Logger
}

// onlyGET answers other methods with 405; a method pattern in the mux
// would let the catch-all answer 404 instead.
func onlyGET(fn http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path)
			return
		}
		fn(w, r)
	}
}

// RequireToken serves next only to requests that carry token as a bearer
// token; the others get 401 and reach nothing. An empty token refuses all.
func RequireToken(token string, next http.Handler) http.Handler {
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !validBearer(r.Header.Get("Authorization"), want) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="caretaker"`)
			writeError(w, http.StatusUnauthorized, "missing or invalid bearer token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// validBearer compares in constant time so the token cannot be guessed
// byte by byte from response times.
func validBearer(header string, token []byte) bool {
	got, ok := strings.CutPrefix(header, "Bearer ")
	if !ok || len(token) == 0 {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), token) == 1
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	s, err := h.backend.Status(r.Context())
	if err != nil {
		h.logger.Error("status", "err", err)
		writeError(w, http.StatusInternalServerError, "status: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (h *handler) history(w http.ResponseWriter, r *http.Request) {
	f, err := parseHistoryFilter(r.URL.Query(), time.Now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	recs, err := h.backend.History(r.Context(), f)
	if err != nil {
		h.logger.Error("history", "err", err)
		writeError(w, http.StatusInternalServerError, "history: "+err.Error())
		return
	}
	if recs == nil {
		recs = []journal.Record{}
	}
	writeJSON(w, http.StatusOK, History{Records: recs})
}

func (h *handler) record(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		writeError(w, http.StatusBadRequest, "action id: want a positive integer, got "+strconv.Quote(r.PathValue("id")))
		return
	}
	rec, err := h.backend.Record(r.Context(), id)
	if errors.Is(err, journal.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no action %d in the journal", id))
		return
	}
	if err != nil {
		h.logger.Error("record", "id", id, "err", err)
		writeError(w, http.StatusInternalServerError, "record: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing to do
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}
