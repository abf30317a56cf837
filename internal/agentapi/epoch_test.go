package agentapi_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"caretaker/internal/agentapi"
	"caretaker/internal/overlayspec"
)

// recorder is an agent that records the epoch header of each request and
// answers with code and body.
type recorder struct {
	mu     sync.Mutex
	epochs map[string][]string // "METHOD path" → the header's values
	code   int
	body   string
}

func newRecorder(t *testing.T, code int, body string) (*recorder, *httptest.Server) {
	rec := &recorder{epochs: map[string][]string{}, code: code, body: body}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.epochs[r.Method+" "+r.URL.Path] = r.Header.Values(agentapi.EpochHeader)
		rec.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(rec.code)
		_, _ = w.Write([]byte(rec.body))
	}))
	t.Cleanup(srv.Close)
	return rec, srv
}

func (r *recorder) epoch(key string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.epochs[key]
}

// Every call that changes something carries the epoch of SetEpoch, from
// clients made before and after it; reads carry none, and neither does
// anything when the epoch is 0 (not clustered).
func TestEpochHeader(t *testing.T) {
	t.Parallel()
	const uuid = "0b000000-0000-4000-8000-000000000001"
	calls := []struct {
		key  string
		call func(ctx context.Context, c *agentapi.Client) error
	}{
		{"GET /api/v1/domains/" + uuid, func(ctx context.Context, c *agentapi.Client) error { _, err := c.Domain(ctx, uuid); return err }},
		{"POST /api/v1/domains/" + uuid + "/start", func(ctx context.Context, c *agentapi.Client) error { _, err := c.StartDomain(ctx, uuid); return err }},
		{"POST /api/v1/overlays/c1/repair", func(ctx context.Context, c *agentapi.Client) error { _, err := c.RepairOverlay(ctx, "c1"); return err }},
		{"PUT /api/v1/overlays/c1", func(ctx context.Context, c *agentapi.Client) error {
			_, err := c.PutOverlay(ctx, "c1", overlayspec.Overlay{})
			return err
		}},
		{"DELETE /api/v1/overlays/c1", func(ctx context.Context, c *agentapi.Client) error { return c.DeleteOverlay(ctx, "c1") }},
		{"PUT /api/v1/nodes/c1-w0", func(ctx context.Context, c *agentapi.Client) error {
			_, err := c.PutNode(ctx, agentapi.NodeRequest{Name: "c1-w0"}, false)
			return err
		}},
		{"DELETE /api/v1/nodes/c1-w0", func(ctx context.Context, c *agentapi.Client) error { return c.DeleteNode(ctx, "c1", "c1-w0", uuid) }},
	}
	for _, tt := range []struct {
		name  string
		epoch int64
		want  []string // on changes; reads never carry one
	}{
		{"not clustered", 0, nil},
		{"negative", -3, nil},
		{"leader", 57, []string{"57"}},
		{"largest", 9223372036854775807, []string{"9223372036854775807"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec, srv := newRecorder(t, 200, `{}`)
			hosts := agentapi.NewHosts("token")
			hosts.Add("before", strings.TrimPrefix(srv.URL, "http://"))
			hosts.SetEpoch(tt.epoch)
			hosts.Add("after", strings.TrimPrefix(srv.URL, "http://"))
			if got := hosts.Epoch(); got != tt.epoch {
				t.Errorf("Epoch() = %d, want %d", got, tt.epoch)
			}
			for _, host := range []string{"before", "after"} {
				c, err := hosts.Client(host)
				if err != nil {
					t.Fatal(err)
				}
				for _, call := range calls {
					if err := call.call(t.Context(), c); err != nil {
						t.Fatalf("%s: %v", call.key, err)
					}
					want := tt.want
					if strings.HasPrefix(call.key, "GET ") {
						want = nil
					}
					if got := rec.epoch(call.key); !equal(got, want) {
						t.Errorf("client made %s SetEpoch: %s sent %s %q, want %q", host, call.key, agentapi.EpochHeader, got, want)
					}
				}
			}
		})
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A 409 whose body says fenced is ErrFenced, with the agent's message; a
// 409 for another reason, or a fenced body with another status, is not.
func TestFencedAnswer(t *testing.T) {
	t.Parallel()
	const msg = "epoch 41 is older than 57, the highest this agent has seen: a newer leader has taken over"
	for _, tt := range []struct {
		name       string
		code       int
		body       string
		wantFenced bool
		wantMsg    string
	}{
		{"fenced", 409, `{"error":"` + msg + `","fenced":true}`, true, msg},
		{"other conflict", 409, `{"error":"a domain of that name exists"}`, false, "a domain of that name exists"},
		{"fenced false", 409, `{"error":"x","fenced":false}`, false, "x"},
		{"not a 409", 400, `{"error":"y","fenced":true}`, false, "y"},
		{"not JSON", 409, `fenced`, false, "fenced"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, srv := newRecorder(t, tt.code, tt.body)
			hosts := agentapi.NewHosts("token")
			hosts.SetEpoch(41)
			hosts.Add("host-a", strings.TrimPrefix(srv.URL, "http://"))
			err := hosts.StartGuest(t.Context(), "host-a", "0b000000-0000-4000-8000-000000000001")
			if errors.Is(err, agentapi.ErrFenced) != tt.wantFenced {
				t.Errorf("errors.Is(%v, ErrFenced) = %v, want %v", err, !tt.wantFenced, tt.wantFenced)
			}
			se, ok := errors.AsType[*agentapi.StatusError](err)
			if !ok || se.Code != tt.code || se.Msg != tt.wantMsg {
				t.Errorf("error %#v, want a StatusError %d with message %q", err, tt.code, tt.wantMsg)
			}
			if err != nil && !strings.HasSuffix(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not keep the agent's message %q", err, tt.wantMsg)
			}
		})
	}
}
