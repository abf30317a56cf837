package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"caretaker/internal/api"
	"caretaker/internal/httpjson"
	"caretaker/internal/who"
	"caretaker/provisioner/clusters"
	"caretaker/provisioner/hoststate"
	"caretaker/provisioner/inventory"
)

// Mount mounts the provisioner's API and PXE endpoints on mux: reading
// needs a viewer token, changing clusters an operator's, changing hosts
// an admin's. /pxe/ needs no API token: booting hosts have none; it
// serves only hosts with a provisioning attempt in flight, and the
// attempt's configs and callback carry its own token (README, "PXE trust
// model").
func (p *Provisioner) Mount(mux *http.ServeMux, auth *api.Authenticator) {
	// Each route needs the one role the API's route table gives it
	// (api.Permissions); every change is logged with its token, and
	// recorded with it (api.WhoBy): a cluster's created_by and
	// changed_by, an added host's added_by, a removed host's record
	// (GET /api/v1/hosts?removed=true), a provision's or reprovision's
	// journal entry.
	ch := auth.Guard(p.audit(clusters.Handler(p.clusters, p.rec.Notify, api.WhoBy, p.rec.Plan)))
	mux.Handle("/api/v1/clusters", ch)
	mux.Handle("/api/v1/clusters/", ch)
	ih := auth.Guard(p.audit(p.afterChange(inventory.Handler(p.inv, inventory.HandlerOptions{BMCView: bmcView, Who: api.WhoBy}))))
	mux.Handle("/api/v1/hosts", ih)
	mux.Handle("/api/v1/hosts/", ih)
	sh := auth.Guard(p.audit(p.stateHandler()))
	mux.Handle("/api/v1/provisioner/hosts", sh)
	mux.Handle("/api/v1/provisioner/hosts/", sh)
	if p.pxe != nil {
		mux.Handle("/pxe/", p.pxe)
	}
}

// bmcView is what of a host's BMC the request's token may see: viewers
// none of it, operators its address and user name, admins also the
// password file's path.
func bmcView(r *http.Request) inventory.BMCView {
	id, _ := api.IdentityFrom(r.Context())
	switch {
	case id.Role.Allows(api.RoleAdmin):
		return inventory.BMCAll
	case id.Role.Allows(api.RoleOperator):
		return inventory.BMCAddress
	}
	return inventory.BMCNone
}

// audit logs every change through the provisioner's API (clusters
// created, scaled, deleted; hosts added, removed, provisioned) with the
// name and role of the token that made it, and the answer's status.
func (p *Provisioner) audit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			next.ServeHTTP(w, r)
			return
		}
		sw := &auditWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		id, _ := api.IdentityFrom(r.Context())
		p.log.Info("provisioner API change", "method", r.Method, "path", r.URL.Path, "status", sw.status,
			"token", id.Name, "role", id.Role.String())
	})
}

type auditWriter struct {
	http.ResponseWriter
	status int
}

func (w *auditWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// afterChange syncs the inventory with the state machine and file_sd after
// a change through the API, without waiting for the tick.
func (p *Provisioner) afterChange(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r)
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			p.sync()
		}
	})
}

// stateHandler serves /api/v1/provisioner/hosts on the provisioner's
// state machine.
func (p *Provisioner) stateHandler() http.Handler { return StateHandler(p.machine, p.log) }

// StateHandler serves /api/v1/provisioner/hosts: the hosts' provisioning
// states and transitions on m, and provision and reprovision requests,
// logged to log. Authentication is the caller's wrapper's.
func StateHandler(m *hoststate.Machine, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/provisioner/hosts", func(w http.ResponseWriter, _ *http.Request) {
		hosts := m.Hosts()
		if hosts == nil {
			hosts = []hoststate.Host{}
		}
		httpjson.Write(w, http.StatusOK, api.HostStates{Hosts: hosts})
	})
	mux.HandleFunc("GET /api/v1/provisioner/hosts/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		h, ok := m.Host(name)
		if !ok {
			httpjson.Error(w, http.StatusNotFound, fmt.Sprintf("host %s is not known to the provisioner", name))
			return
		}
		hist, err := m.History(name)
		if err != nil {
			httpjson.Error(w, http.StatusInternalServerError, err.Error())
			return
		}
		httpjson.Write(w, http.StatusOK, api.HostStateDetail{Host: h, History: hist})
	})
	act := func(name string, do func(context.Context, string, *who.By) error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var req api.ProvisionRequest
			if err := httpjson.Decode(w, r, &req, 64<<10); err != nil {
				httpjson.WriteDecodeError(w, err)
				return
			}
			if strings.TrimSpace(req.Comment) == "" {
				httpjson.Error(w, http.StatusBadRequest, "comment: required, so the next on-call knows why")
				return
			}
			if !api.CheckText(w, "comment", req.Comment) || !api.CheckText(w, "author", req.Author) {
				return
			}
			host := r.PathValue("name")
			by := api.Who(r, req.Author)
			log.Info(name+" requested", "host", host, "token", by.Name, "role", by.Role,
				"on_behalf_of", by.OnBehalfOf, "comment", req.Comment)
			rec := api.WhoBy(r, req.Author, req.Comment)
			err := do(context.WithoutCancel(r.Context()), host, &rec)
			switch {
			case errors.Is(err, hoststate.ErrUnknownHost):
				httpjson.Error(w, http.StatusNotFound, err.Error())
			case errors.Is(err, hoststate.ErrWrongState):
				httpjson.Error(w, http.StatusConflict, err.Error())
			case err != nil:
				httpjson.Error(w, http.StatusInternalServerError, err.Error())
			default:
				h, _ := m.Host(host)
				httpjson.Write(w, http.StatusAccepted, map[string]any{"host": h})
			}
		}
	}
	mux.HandleFunc("POST /api/v1/provisioner/hosts/{name}/provision", act("provision", m.ProvisionBy))
	mux.HandleFunc("POST /api/v1/provisioner/hosts/{name}/reprovision", act("reprovision", m.ReprovisionBy))
	return mux
}
