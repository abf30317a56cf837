package server

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"caretaker/internal/httpjson/httpjsontest"
)

// A request without a valid token is answered 401 at once, before its body
// arrives: a client that announces a body and never sends it holds no
// answer and no connection. Through Serve, so the real http.Server runs.
func TestUnauthenticatedBodyNotAwaited(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "api.token"), []byte(testToken("tok")+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "am.token"), []byte(testToken("am")+"\n"), 0o600)
	s := startServer(t, dir, "data_dir: data\napi: {token_file: api.token}\nremediation: {webhook: {token_file: am.token}}\n", nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, l) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	for _, path := range []string{"/api/v1/actions", "/api/v1/alertmanager", "/api/v1/query", "/api/v1/policy/reload"} {
		if code := httpjsontest.StatusWithoutBody(t, l.Addr().String(), "POST", path); code != http.StatusUnauthorized {
			t.Errorf("POST %s: status %d, want 401", path, code)
		}
	}
}
