package api

import (
	"context"
	"net/http"
	"os"

	"caretaker/internal/httpjson"
)

// ServerStatus is one caretaker server of the deployment as the answering
// server sees it.
type ServerStatus struct {
	Name    string `json:"name"`
	Address string `json:"address"` // its API's base URL, e.g. https://10.0.0.1:9300; "" when unknown
	Leader  bool   `json:"leader"`  // it holds the leadership now and acts
	Epoch   int64  `json:"epoch"`   // the leadership epoch it holds or last saw; 0 when not clustered
	Healthy bool   `json:"healthy"`
}

// Servers lists the servers of a clustered (HA) deployment, the answering
// one among them; the server's cluster membership implements it.
type Servers interface {
	Servers(ctx context.Context) ([]ServerStatus, error)
}

// ServerList is the answer of GET /api/v1/servers.
type ServerList struct {
	Servers []ServerStatus `json:"servers"`
}

// soleServerName names the one server of a deployment that is not
// clustered: the machine's host name, or "caretaker" without one.
func soleServerName() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "caretaker"
}

// servers answers GET /api/v1/servers: every server and who leads. A server
// that is not clustered (Options.Servers nil) answers itself alone: named
// for its host, without an address (it does not know under which one its
// clients reach it), leading, at epoch 0, healthy — it answered. When the
// membership cannot be read (etcd out of reach) the answer is 503 with the
// reason.
func (h *handler) servers(w http.ResponseWriter, r *http.Request) {
	if h.Options.Servers == nil {
		httpjson.Write(w, http.StatusOK, ServerList{Servers: []ServerStatus{{Name: h.soleName, Leader: true, Healthy: true}}})
		return
	}
	ss, err := h.Options.Servers.Servers(r.Context())
	if err != nil {
		h.Logger.Warn("api: list servers", "err", err)
		httpjson.Error(w, http.StatusServiceUnavailable, "servers: "+err.Error())
		return
	}
	if ss == nil {
		ss = []ServerStatus{}
	}
	httpjson.Write(w, http.StatusOK, ServerList{Servers: ss})
}

// Servers fetches every server of the deployment and who leads (GET
// /api/v1/servers). A server older than this API answers 404: a
// *StatusError with Code 404.
func (c *Client) Servers(ctx context.Context) ([]ServerStatus, error) {
	var l ServerList
	if err := c.get(ctx, "/api/v1/servers", &l); err != nil {
		return nil, err
	}
	return l.Servers, nil
}
