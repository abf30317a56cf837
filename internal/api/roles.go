package api

import (
	"fmt"
	"net/http"
	"slices"

	"caretaker/internal/httpjson"
	"caretaker/remediation/policy"
)

// RoleWebhook is Alertmanager's: it may deliver alerts to the webhook
// (POST /api/v1/alertmanager) and nothing else, and no other role may
// deliver them. It stands outside the viewer < operator < admin order.
const RoleWebhook Role = 100

// Allows reports whether a token of role r may call what needs role need:
// a higher role may do what a lower one may, but the webhook role and the
// others never stand in for each other.
func (r Role) Allows(need Role) bool {
	if r == RoleWebhook || need == RoleWebhook {
		return r == need
	}
	return r >= need
}

// actionRoles is the one table of which role may cause which remediation
// action, by hand (POST /api/v1/actions), by approving it, or through the
// provisioner's routes that do the same (provision, reprovision). What
// restarts or repairs in place is an operator's; what destroys, re-creates
// or runs arbitrary programs is an admin's.
var actionRoles = map[string]Role{
	policy.ActionRestartVM:       RoleOperator,
	policy.ActionRepairOverlay:   RoleOperator,
	policy.ActionNotifyOnly:      RoleOperator,
	policy.ActionRecreateVM:      RoleAdmin,
	policy.ActionReprovisionHost: RoleAdmin,
	policy.ActionRunCommand:      RoleAdmin,
}

// ActionRole is the least role that may run action by hand or approve it;
// an action the table does not know needs admin.
func ActionRole(action string) Role {
	if r, ok := actionRoles[action]; ok {
		return r
	}
	return RoleAdmin
}

// Permission is one route of the server's API and the one role that may
// call it (and every role above it; see Role.Allows).
type Permission struct {
	Method  string // GET, POST, PATCH, DELETE; GET also covers HEAD
	Pattern string // as http.ServeMux spells it: /api/v1/actions/{id}
	Role    Role
	What    string // the deed in words, for a 403: "running an action"
}

// permissions is the server's route table: every route under /api/v1/
// that caretaker serves (Prometheus' query API aside, which is read-only
// and a viewer's), and the one role that may call it. The API's handler,
// the provisioner's routes (Guard) and the webhook all take their role
// from here; a route missing from it is not served.
var permissions = []Permission{
	{"GET", "/api/v1/status", RoleViewer, "reading the status"},
	{"GET", "/api/v1/whoami", RoleViewer, "reading who you are"},
	{"GET", "/api/v1/servers", RoleViewer, "reading the servers"},
	{"GET", "/api/v1/history", RoleViewer, "reading the journal"},
	{"GET", "/api/v1/history/{id}", RoleViewer, "reading the journal"},
	{"GET", "/api/v1/actions", RoleViewer, "reading the journal"},
	{"GET", "/api/v1/actions/{id}", RoleViewer, "reading the journal"},
	// Running and approving also need the action's own role (ActionRole).
	{"POST", "/api/v1/actions", RoleOperator, "running an action"},
	{"POST", "/api/v1/actions/{id}/approve", RoleOperator, "approving an action"},
	{"POST", "/api/v1/actions/{id}/deny", RoleOperator, "denying an action"},
	{"GET", "/api/v1/pauses", RoleViewer, "reading the pauses"},
	{"POST", "/api/v1/pauses", RoleOperator, "pausing remediation"},
	{"DELETE", "/api/v1/pauses", RoleOperator, "resuming remediation"},
	{"GET", "/api/v1/policy", RoleViewer, "reading the policy"},
	{"POST", "/api/v1/policy/reload", RoleAdmin, "reloading the policy"},

	{"POST", "/api/v1/alertmanager", RoleWebhook, "delivering alerts"},

	{"GET", "/api/v1/clusters", RoleViewer, "reading guest clusters"},
	{"GET", "/api/v1/clusters/{name}", RoleViewer, "reading guest clusters"},
	{"POST", "/api/v1/clusters", RoleOperator, "creating a guest cluster"},
	{"POST", "/api/v1/clusters/plan", RoleOperator, "planning a guest cluster"},
	{"PATCH", "/api/v1/clusters/{name}/pools/{pool}", RoleOperator, "scaling a guest cluster"},
	// Deleting destroys every guest of the cluster: more than recreate-vm.
	{"DELETE", "/api/v1/clusters/{name}", RoleAdmin, "deleting a guest cluster"},

	{"GET", "/api/v1/hosts", RoleViewer, "reading the inventory"},
	{"GET", "/api/v1/hosts/{name}", RoleViewer, "reading the inventory"},
	{"POST", "/api/v1/hosts", RoleAdmin, "adding a host"},
	{"DELETE", "/api/v1/hosts/{name}", RoleAdmin, "removing a host"},

	{"GET", "/api/v1/provisioner/hosts", RoleViewer, "reading hosts' provisioning"},
	{"GET", "/api/v1/provisioner/hosts/{name}", RoleViewer, "reading hosts' provisioning"},
	{"POST", "/api/v1/provisioner/hosts/{name}/provision", ActionRole(policy.ActionReprovisionHost), "provisioning a host"},
	{"POST", "/api/v1/provisioner/hosts/{name}/reprovision", ActionRole(policy.ActionReprovisionHost), "reprovisioning a host"},
}

// RoleFor returns the one role that may call method on pattern (as the
// table spells it: /api/v1/actions/{id}/approve), false for a route the
// table lacks: what a client such as the console shows a button by.
func RoleFor(method, pattern string) (Role, bool) {
	p, ok := lookup(method, pattern)
	return p.Role, ok
}

func lookup(method, pattern string) (Permission, bool) {
	i := slices.IndexFunc(permissions, func(p Permission) bool { return p.Method == method && p.Pattern == pattern })
	if i < 0 {
		return Permission{}, false
	}
	return permissions[i], true
}

// permissionOf returns the table's entry for method and pattern. A route
// the table lacks is a wiring error: it panics, as http.Handle does.
func permissionOf(method, pattern string) Permission {
	if p, ok := lookup(method, pattern); ok {
		return p
	}
	panic(fmt.Sprintf("api: route %s %s is not in the route table", method, pattern))
}

// Guard serves next the routes of the table, each only to a token whose
// role allows it (401 without a known token, 403 with too small a role),
// and answers 404 for every other path, so a route next serves but the
// table lacks is never reached. The provisioner's routes are served
// through it.
func (a *Authenticator) Guard(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	for _, p := range permissions {
		mux.Handle(p.Method+" "+p.Pattern, requireRole(p.Role, p.What, next))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Error(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return a.Authenticate(mux)
}

// MayRunAction answers 403 and returns false when the request's token may
// not run, or approve, action (ActionRole).
func MayRunAction(w http.ResponseWriter, r *http.Request, action, what string) bool {
	id, _ := IdentityFrom(r.Context())
	need := ActionRole(action)
	if id.Role.Allows(need) {
		return true
	}
	httpjson.Error(w, http.StatusForbidden, fmt.Sprintf("token %q has role %s; %s %s needs %s", id.Name, id.Role, what, action, need))
	return false
}
