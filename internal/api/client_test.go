package api

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// deadURL is the URL of a port nothing listens on: a listener's, closed.
func deadURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

// countingServer answers /api/v1/status and counts the requests it got.
func countingServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"time":"2026-11-25T12:00:00Z","hosts":[],"guests":[],"alerts":[]}`))
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// dialCounter is a transport that counts its dials by address.
type dialCounter struct {
	mu    sync.Mutex
	dials map[string]int
}

func (d *dialCounter) client() *http.Client {
	d.dials = map[string]int{}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	var dialer net.Dialer
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		d.mu.Lock()
		d.dials[addr]++
		d.mu.Unlock()
		return dialer.DialContext(ctx, network, addr)
	}
	return &http.Client{Transport: tr}
}

func (d *dialCounter) count(url string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dials[strings.TrimPrefix(url, "http://")]
}

// A server whose port is closed is skipped; the next one answers, and is
// asked first from then on.
func TestClientSkipsDeadServer(t *testing.T) {
	dead := deadURL(t)
	live, n := countingServer(t)
	var d dialCounter
	c := NewClientURLs([]string{dead, live.URL + "/"}, "tok", d.client())
	for i := range 3 {
		if _, err := c.Status(t.Context()); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if got := n.Load(); got != 3 {
		t.Errorf("the live server got %d requests, want 3", got)
	}
	if got := d.count(dead); got != 1 {
		t.Errorf("%d dials to the dead server, want 1: the one that worked is remembered", got)
	}
	if c.URL() != live.URL {
		t.Errorf("URL() = %s, want %s", c.URL(), live.URL)
	}
}

// A server whose TLS handshake fails (here: a certificate the client does
// not trust) is skipped, and the request never reaches its handler.
func TestClientSkipsTLSFailure(t *testing.T) {
	var reached atomic.Int64
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached.Add(1) }))
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake
	defer tlsSrv.Close()
	live, n := countingServer(t)
	c := NewClientURLs([]string{tlsSrv.URL, live.URL}, "tok", nil)
	if _, err := c.Status(t.Context()); err != nil {
		t.Fatal(err)
	}
	if reached.Load() != 0 || n.Load() != 1 {
		t.Errorf("TLS server reached %d times, live server %d; want 0 and 1", reached.Load(), n.Load())
	}
}

// A server that took the connection and then failed may have got the
// request: it is not sent to the next server, whatever its method.
func TestClientDoesNotResendAfterConnecting(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(*Client) error
	}{
		{"GET", func(c *Client) error { _, err := c.Status(context.Background()); return err }},
		{"POST", func(c *Client) error {
			_, err := c.Run(context.Background(), RunRequest{Action: "restart-vm", Target: "host-a/u1", Comment: "x"})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var seen atomic.Int64
			broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen.Add(1)
				conn, _, err := w.(http.Hijacker).Hijack()
				if err != nil {
					t.Error(err)
					return
				}
				conn.Close() // read the request, answer nothing
			}))
			defer broken.Close()
			live, n := countingServer(t)
			c := NewClientURLs([]string{broken.URL, live.URL}, "tok", nil)
			err := tc.call(c)
			if err == nil || !strings.Contains(err.Error(), "the caretaker server at "+broken.URL+" took") ||
				!strings.Contains(err.Error(), "not retried on another server") {
				t.Errorf("err = %v, want the broken server named and no retry", err)
			}
			if seen.Load() != 1 || n.Load() != 0 {
				t.Errorf("the broken server saw the request %d times, the next server %d; want 1 and 0", seen.Load(), n.Load())
			}
			if c.URL() != broken.URL {
				t.Errorf("URL() = %s, want still %s", c.URL(), broken.URL)
			}
		})
	}
}

// When no server takes the connection the error names each URL and its
// error; with one URL it is the single server's message.
func TestClientAllServersDown(t *testing.T) {
	a, b := deadURL(t), deadURL(t)
	_, err := NewClientURLs([]string{a, b}, "tok", nil).Status(t.Context())
	want := "cannot reach any of the 2 caretaker servers:\n  " + a + ": dial tcp " + strings.TrimPrefix(a, "http://") + ": connect: connection refused\n  " +
		b + ": dial tcp " + strings.TrimPrefix(b, "http://") + ": connect: connection refused"
	if err == nil || err.Error() != want {
		t.Errorf("err = %v\nwant %s", err, want)
	}
	_, err = NewClient(a, "tok", nil).Status(t.Context())
	if err == nil || !strings.HasPrefix(err.Error(), "cannot reach the caretaker server at "+a+": dial tcp") {
		t.Errorf("one URL: err = %v", err)
	}
}
