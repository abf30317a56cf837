package agent

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"testing"
	"time"
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
	for _, req := range []string{"POST /api/v1/domains/" + downUUID + "/start", "POST /api/v1/overlays/c1/repair", "PUT /api/v1/nodes/n1"} {
		t.Run(req, func(t *testing.T) {
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte(req + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n" +
				"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(time.Minute)) // a bound on a failure only
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
