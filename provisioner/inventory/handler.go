package inventory

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"caretaker/internal/httpjson"
	"caretaker/internal/who"
	"caretaker/internal/yamlfile"
	"caretaker/provisioner/bmc"
)

// maxBody caps a POST body; a host is well under a kilobyte.
const maxBody = 64 << 10

// Handler serves the inventory:
//
//	GET    /api/v1/hosts               {"hosts": [...]}, file and API hosts by name
//	GET    /api/v1/hosts?removed=true  {"removed": [...]}, hosts removed through the API, oldest first
//	GET    /api/v1/hosts/{name}        one host
//	POST   /api/v1/hosts               add a host (JSON, the file's field names): 201
//	DELETE /api/v1/hosts/{name}        remove a host added through the API: 204;
//	                                   optional body RemoveRequest
//
// Errors are {"error": "..."}: 400 for an invalid host, 404 for an unknown
// one, 409 for a conflict or a host of the file, 413 for a body over 64 KiB.
// It does no authentication: the server wraps it, and tells through
// opts.BMCView how much of a host's BMC each request may see.
func Handler(store *Store, opts ...HandlerOptions) http.Handler {
	var o HandlerOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	view := func(r *http.Request, h Host) Host {
		if o.BMCView == nil {
			return h
		}
		return h.WithBMC(o.BMCView(r))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/hosts", func(w http.ResponseWriter, r *http.Request) {
		if v := r.URL.Query().Get("removed"); v != "" {
			removed, err := strconv.ParseBool(v)
			if err != nil {
				httpjson.Error(w, http.StatusBadRequest, fmt.Sprintf("removed: %q is not true or false", v))
				return
			}
			if removed {
				writeRemoved(w, store)
				return
			}
		}
		hosts, err := store.All()
		if err != nil {
			httpjson.Error(w, http.StatusInternalServerError, err.Error())
			return
		}
		if hosts == nil {
			hosts = []Host{}
		}
		for i := range hosts {
			hosts[i] = view(r, hosts[i])
		}
		httpjson.Write(w, http.StatusOK, struct {
			Hosts []Host `json:"hosts"`
		}{hosts})
	})
	mux.HandleFunc("GET /api/v1/hosts/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if h, ok := store.inFile(name); ok {
			httpjson.Write(w, http.StatusOK, view(r, h))
			return
		}
		h, err := store.Get(name)
		switch {
		case errors.Is(err, ErrNotFound):
			httpjson.Error(w, http.StatusNotFound, fmt.Sprintf("host %s is not in the inventory", name))
		case err != nil:
			httpjson.Error(w, http.StatusInternalServerError, err.Error())
		default:
			httpjson.Write(w, http.StatusOK, view(r, h))
		}
	})
	mux.HandleFunc("POST /api/v1/hosts", func(w http.ResponseWriter, r *http.Request) {
		h, ok := decodeHost(w, r)
		if !ok {
			return
		}
		// who added it is the token's, never the client's say
		h.AddedBy = o.Who.Of(r, "", "")
		err := store.Add(h)
		var fe *yamlfile.FieldError
		switch {
		case errors.Is(err, ErrConflict):
			httpjson.Error(w, http.StatusConflict, err.Error())
			return
		case errors.As(err, &fe):
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		case err != nil:
			httpjson.Error(w, http.StatusInternalServerError, err.Error())
			return
		}
		// Answer with the host as stored: MACs normalised, Agent set.
		stored, err := store.Get(h.Name)
		if err != nil {
			httpjson.Error(w, http.StatusInternalServerError, err.Error())
			return
		}
		w.Header().Set("Location", "/api/v1/hosts/"+url.PathEscape(h.Name))
		httpjson.Write(w, http.StatusCreated, view(r, stored))
	})
	mux.HandleFunc("DELETE /api/v1/hosts/{name}", func(w http.ResponseWriter, r *http.Request) {
		var req RemoveRequest
		if err := httpjson.Decode(w, r, &req, maxBody); err != nil && !errors.Is(err, httpjson.ErrEmpty) {
			httpjson.WriteDecodeError(w, err)
			return
		}
		for _, f := range []struct{ name, v string }{{"author", req.Author}, {"comment", req.Comment}} {
			if p := who.TextProblem(f.v); p != "" {
				httpjson.Error(w, http.StatusBadRequest, f.name+": "+p)
				return
			}
		}
		name := r.PathValue("name")
		if _, ok := store.inFile(name); ok {
			httpjson.Error(w, http.StatusConflict, fmt.Sprintf("host %s is defined in the inventory file; remove it there", name))
			return
		}
		// who removed it is the token's; the client's author is kept only
		// as on behalf of
		err := store.RemoveBy(name, o.Who.Of(r, req.Author, req.Comment))
		switch {
		case errors.Is(err, ErrNotFound):
			httpjson.Error(w, http.StatusNotFound, fmt.Sprintf("host %s is not in the inventory", name))
		case err != nil:
			httpjson.Error(w, http.StatusInternalServerError, err.Error())
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	return mux
}

// RemoveRequest is the optional body of DELETE /api/v1/hosts/{name}: an
// author, kept only as "on behalf of" beside the token's identity, and a
// comment, both recorded in the host's Removed record.
type RemoveRequest struct {
	Author  string `json:"author,omitempty"`
	Comment string `json:"comment,omitempty"`
}

// writeRemoved answers the records of the hosts removed through the API.
func writeRemoved(w http.ResponseWriter, store *Store) {
	recs, err := store.Removed()
	if err != nil {
		httpjson.Error(w, http.StatusInternalServerError, err.Error())
		return
	}
	if recs == nil {
		recs = []Removed{}
	}
	httpjson.Write(w, http.StatusOK, struct {
		Removed []Removed `json:"removed"`
	}{recs})
}

// HandlerOptions configure Handler.
type HandlerOptions struct {
	// BMCView tells how much of a host's BMC a request may see; nil
	// shows all of it (the server always sets it).
	BMCView func(*http.Request) BMCView
	// Who tells who makes a request, from its token: recorded as an
	// added host's added_by and a removed host's removed_by. nil records
	// no one.
	Who who.Func
}

// BMCView is how much of a host's BMC the API shows.
type BMCView int

const (
	// BMCNone shows the BMC's type only: no address, user name or
	// password file (a viewer's view).
	BMCNone BMCView = iota
	// BMCAddress also shows its address, user name and settings, not the
	// password file's path (an operator's view).
	BMCAddress
	// BMCAll shows everything the inventory holds but the password, which
	// it never holds (an admin's view).
	BMCAll
)

// WithBMC returns h with what v may not see of its BMC left out.
func (h Host) WithBMC(v BMCView) Host {
	switch v {
	case BMCAll:
	case BMCAddress:
		h.BMC.PasswordFile = ""
	default:
		h.BMC = bmc.Config{Type: h.BMC.Type}
	}
	return h
}

// decodeHost reads the POST body, answering 400 or 413 itself when it
// cannot.
func decodeHost(w http.ResponseWriter, r *http.Request) (Host, bool) {
	var h Host
	err := httpjson.Decode(w, r, &h, maxBody)
	switch {
	case err == nil:
		return h, true
	case errors.Is(err, httpjson.ErrEmpty):
		httpjson.Error(w, http.StatusBadRequest, "request body: empty; want a host as a JSON object")
	case strings.Contains(err.Error(), `unknown field "password"`):
		httpjson.Error(w, http.StatusBadRequest, `request body: unknown field "password": put the password in a file in the server's BMC secrets directory (provisioner.bmc.secrets_dir) and give its name as bmc.password_file`)
	default:
		httpjson.WriteDecodeError(w, err)
	}
	return Host{}, false
}
