package agent

import (
	"context"
	"net"
	"net/http"
	"testing"

	"caretaker/internal/httpjson/httpjsontest"
)

// A request with a wrong token is answered 401 at once, before its body
// arrives: a client that announces a body and never sends it holds no
// answer and no connection. Through Serve, so the real http.Server runs.
func TestUnauthenticatedBodyNotAwaited(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{Token: token})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx, l) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	for _, req := range []struct{ method, path string }{
		{"POST", "/api/v1/domains/" + downUUID + "/start"},
		{"POST", "/api/v1/overlays/c1/repair"},
		{"PUT", "/api/v1/nodes/n1"},
	} {
		if code := httpjsontest.StatusWithoutBody(t, l.Addr().String(), req.method, req.path); code != http.StatusUnauthorized {
			t.Errorf("%s %s: status %d, want 401", req.method, req.path, code)
		}
	}
}
