package inventory

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"caretaker/internal/yamlfile"
)

// maxBody caps a POST body; a host is well under a kilobyte.
const maxBody = 64 << 10

// Handler serves the inventory:
//
//	GET    /api/v1/hosts         {"hosts": [...]}, file and API hosts by name
//	GET    /api/v1/hosts/{name}  one host
//	POST   /api/v1/hosts         add a host (JSON, the file's field names): 201
//	DELETE /api/v1/hosts/{name}  remove a host added through the API: 204
//
// Errors are {"error": "..."}: 400 for an invalid host, 404 for an unknown
// one, 409 for a conflict or a host of the file, 413 for a body over 64 KiB.
// It does no authentication: the server wraps it.
func Handler(store *Store) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/hosts", func(w http.ResponseWriter, r *http.Request) {
		hosts, err := store.All()
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		if hosts == nil {
			hosts = []Host{}
		}
		writeJSON(w, http.StatusOK, struct {
			Hosts []Host `json:"hosts"`
		}{hosts})
	})
	mux.HandleFunc("GET /api/v1/hosts/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if h, ok := store.inFile(name); ok {
			writeJSON(w, http.StatusOK, h)
			return
		}
		h, err := store.Get(name)
		switch {
		case errors.Is(err, ErrNotFound):
			writeError(w, http.StatusNotFound, fmt.Sprintf("host %s is not in the inventory", name))
		case err != nil:
			writeError(w, http.StatusInternalServerError, err.Error())
		default:
			writeJSON(w, http.StatusOK, h)
		}
	})
	mux.HandleFunc("POST /api/v1/hosts", func(w http.ResponseWriter, r *http.Request) {
		h, ok := decodeHost(w, r)
		if !ok {
			return
		}
		err := store.Add(h)
		var fe *yamlfile.FieldError
		switch {
		case errors.Is(err, ErrConflict):
			writeError(w, http.StatusConflict, err.Error())
			return
		case errors.As(err, &fe):
			writeError(w, http.StatusBadRequest, err.Error())
			return
		case err != nil:
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		// Answer with the host as stored: MACs normalised, Agent set.
		stored, err := store.Get(h.Name)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		w.Header().Set("Location", "/api/v1/hosts/"+url.PathEscape(h.Name))
		writeJSON(w, http.StatusCreated, stored)
	})
	mux.HandleFunc("DELETE /api/v1/hosts/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if _, ok := store.inFile(name); ok {
			writeError(w, http.StatusConflict, fmt.Sprintf("host %s is defined in the inventory file; remove it there", name))
			return
		}
		err := store.Remove(name)
		switch {
		case errors.Is(err, ErrNotFound):
			writeError(w, http.StatusNotFound, fmt.Sprintf("host %s is not in the inventory", name))
		case err != nil:
			writeError(w, http.StatusInternalServerError, err.Error())
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	return mux
}

// decodeHost reads the POST body, answering 400 or 413 itself when it
// cannot.
func decodeHost(w http.ResponseWriter, r *http.Request) (Host, bool) {
	var h Host
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	err := dec.Decode(&h)
	if err == nil {
		if _, terr := dec.Token(); !errors.Is(terr, io.EOF) {
			err = errors.New("unexpected data after the JSON object")
		}
	}
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		return h, true
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body: larger than %d bytes", maxBody))
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "request body: empty; want a host as a JSON object")
	case strings.Contains(err.Error(), `unknown field "password"`):
		writeError(w, http.StatusBadRequest, `request body: unknown field "password": put the password in a file on the server and give its path as bmc.password_file`)
	default:
		writeError(w, http.StatusBadRequest, "request body: "+strings.TrimPrefix(err.Error(), "json: "))
	}
	return Host{}, false
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing to do
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, struct {
		Error string `json:"error"`
	}{msg})
}
