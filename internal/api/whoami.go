package api

import (
	"context"
	"net/http"

	"caretaker/internal/httpjson"
)

// WhoAmI is what GET /api/v1/whoami answers: the request's token's name
// and role, so a client (the console, `runbook whoami`) can tell what it
// may do before it tries.
type WhoAmI struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

func whoami(w http.ResponseWriter, r *http.Request) {
	id, _ := IdentityFrom(r.Context())
	httpjson.Write(w, http.StatusOK, WhoAmI{Name: id.Name, Role: id.Role.String()})
}

// WhoAmI asks the server who the client's token is.
func (c *Client) WhoAmI(ctx context.Context) (WhoAmI, error) {
	var me WhoAmI
	err := c.get(ctx, "/api/v1/whoami", &me)
	return me, err
}
