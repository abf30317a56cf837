package server

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"caretaker/internal/config"
)

// A request without a valid token is answered 401 at once, before its body
// arrives: a client that announces a body and never sends it holds no
// answer and no connection. Through Serve, so the real http.Server runs.
func TestUnauthenticatedBodyNotAwaited(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "api.token"), []byte(testToken("tok")+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "am.token"), []byte(testToken("am")+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "server.yml"), []byte("data_dir: data\napi: {token_file: api.token}\nremediation: {webhook: {token_file: am.token}}\n"), 0o600)
	cfg, err := config.Load(filepath.Join(dir, "server.yml"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(context.Background(), Options{Config: cfg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
		t.Run(path, func(t *testing.T) {
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// A wrong token, and a body of 1000 bytes that never comes.
			if _, err := c.Write([]byte("POST " + path + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n" +
				"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")); err != nil {
				t.Fatal(err)
			}
			// Only a bound on a failure: the answer is due without
			// waiting for anything.
			c.SetReadDeadline(time.Now().Add(time.Minute))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no answer while the body is missing: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("status %d, want 401", resp.StatusCode)
			}
		})
	}
}
