package agent

import (
	"encoding/json"
	"errors"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"caretaker/internal/agentapi"
	"caretaker/internal/overlayspec"
)

func validNodeJSON(mod func(map[string]any)) string {
	m := map[string]any{
		"cluster": "c1", "name": "c1-w0", "role": "worker", "vcpus": 1,
		"memory_bytes": 64 << 20, "disk_bytes": 128 << 20, "bridge": "br-c1",
		"base_image": "base.qcow2", "user_data": "#cloud-config\n",
		"uuid": "0c000000-0000-4000-8000-000000000001",
	}
	if mod != nil {
		mod(m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// TestNodeAndOverlayRequests are the answers that need no guest or
// namespace: authentication, routing, methods, bodies, validation, and the
// missing storage pool (libvirt's test driver has none).
func TestNodeAndOverlayRequests(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{Token: token, DomainFilter: regexp.MustCompile(`^c1-`)})
	bearer := "Bearer " + token
	tests := []struct {
		name, method, path, auth, body string
		wantCode                       int
		wantMsg                        string
		wantAllow                      string
	}{
		{name: "put without token", method: "PUT", path: "/api/v1/nodes/c1-w0", body: validNodeJSON(nil), wantCode: 401, wantMsg: "missing bearer token"},
		{name: "delete with wrong token", method: "DELETE", path: "/api/v1/nodes/c1-w0?cluster=c1&uuid=0c000000-0000-4000-8000-000000000001", auth: "Bearer nope", wantCode: 401, wantMsg: "invalid bearer token"},
		// 401 comes before the body is read.
		{name: "bad body without token", method: "PUT", path: "/api/v1/overlays/c1", body: "{", wantCode: 401, wantMsg: "missing bearer token"},
		{name: "get node", method: "GET", path: "/api/v1/nodes/c1-w0", auth: bearer, wantCode: 405, wantMsg: "method GET not allowed on /api/v1/nodes/c1-w0, use PUT, DELETE", wantAllow: "PUT, DELETE"},
		{name: "post overlay", method: "POST", path: "/api/v1/overlays/c1", auth: bearer, wantCode: 405, wantMsg: "use PUT, DELETE", wantAllow: "PUT, DELETE"},
		{name: "no name", method: "PUT", path: "/api/v1/nodes/", auth: bearer, body: validNodeJSON(nil), wantCode: 404, wantMsg: "no API endpoint /api/v1/nodes/"},
		{name: "nested path", method: "DELETE", path: "/api/v1/nodes/c1-w0/disk", auth: bearer, wantCode: 404, wantMsg: "no API endpoint /api/v1/nodes/c1-w0/disk"},
		{name: "unknown field", method: "PUT", path: "/api/v1/nodes/c1-w0", auth: bearer, body: validNodeJSON(func(m map[string]any) { m["cpus"] = 2 }), wantCode: 400, wantMsg: `request body: unknown field "cpus"`},
		{name: "wrong type", method: "PUT", path: "/api/v1/nodes/c1-w0", auth: bearer, body: validNodeJSON(func(m map[string]any) { m["vcpus"] = "2" }), wantCode: 400, wantMsg: "request body: cannot unmarshal string into Go struct field NodeRequest.vcpus of type int"},
		{name: "empty body", method: "PUT", path: "/api/v1/nodes/c1-w0", auth: bearer, wantCode: 400, wantMsg: "request body: empty; want a JSON object"},
		{name: "two objects", method: "PUT", path: "/api/v1/nodes/c1-w0", auth: bearer, body: validNodeJSON(nil) + "{}", wantCode: 400, wantMsg: "request body: unexpected data after the JSON object"},
		{name: "too large", method: "PUT", path: "/api/v1/nodes/c1-w0", auth: bearer, body: validNodeJSON(func(m map[string]any) { m["user_data"] = strings.Repeat("x", maxNodeBody) }), wantCode: 413, wantMsg: "request body: larger than 4194304 bytes"},
		{name: "name differs", method: "PUT", path: "/api/v1/nodes/c1-w1", auth: bearer, body: validNodeJSON(nil), wantCode: 400, wantMsg: `body names node "c1-w0", the path "c1-w1"`},
		{name: "invalid node", method: "PUT", path: "/api/v1/nodes/c1-w0", auth: bearer, body: validNodeJSON(func(m map[string]any) { m["vcpus"] = 0 }), wantCode: 400, wantMsg: `node "c1-w0" of cluster "c1": vcpus 0: want at least 1`},
		{name: "no seed", method: "PUT", path: "/api/v1/nodes/c1-w0", auth: bearer, body: validNodeJSON(func(m map[string]any) { delete(m, "user_data") }), wantCode: 400, wantMsg: `node "c1-w0" of cluster "c1": neither user data nor ignition set: want one seed`},
		{name: "bad replace", method: "PUT", path: "/api/v1/nodes/c1-w0?replace=yes", auth: bearer, body: validNodeJSON(nil), wantCode: 400, wantMsg: `query parameter replace="yes": want true or false`},
		// A new node is the host's whatever the filter says: the server placed it there.
		{name: "new node filtered out", method: "PUT", path: "/api/v1/nodes/c2-w0", auth: bearer, body: validNodeJSON(func(m map[string]any) { m["name"] = "c2-w0" }), wantCode: 503, wantMsg: `storage pool "caretaker" does not exist on this host`},
		{name: "another host's domain", method: "PUT", path: "/api/v1/nodes/up?replace=true", auth: bearer, body: validNodeJSON(func(m map[string]any) { m["name"] = "up" }), wantCode: 409, wantMsg: `replace node up: a domain of that name exists and is not this agent's (domain filter ^c1-)`},
		{name: "delete filtered out", method: "DELETE", path: "/api/v1/nodes/c2-w0?cluster=c1&uuid=0c000000-0000-4000-8000-000000000001", auth: bearer, wantCode: 404, wantMsg: `no node "c2-w0" on this host: this agent's domain filter is ^c1-`},
		{name: "delete bad name", method: "DELETE", path: "/api/v1/nodes/C1_w0?cluster=c1&uuid=0c000000-0000-4000-8000-000000000001", auth: bearer, wantCode: 400, wantMsg: `node name "C1_w0": want 1-63 lowercase letters, digits and dashes, not starting or ending with a dash`},
		// The request names the UUID and the cluster it means.
		{name: "put without uuid", method: "PUT", path: "/api/v1/nodes/c1-w0", auth: bearer, body: validNodeJSON(func(m map[string]any) { delete(m, "uuid") }), wantCode: 400, wantMsg: `node "c1-w0": uuid: required`},
		{name: "delete without uuid", method: "DELETE", path: "/api/v1/nodes/c1-w0?cluster=c1", auth: bearer, wantCode: 400, wantMsg: `delete node c1-w0: query parameter uuid="": required`},
		{name: "delete bad uuid", method: "DELETE", path: "/api/v1/nodes/c1-w0?cluster=c1&uuid=x", auth: bearer, wantCode: 400, wantMsg: `delete node c1-w0: query parameter uuid="x": required`},
		{name: "delete without cluster", method: "DELETE", path: "/api/v1/nodes/c1-w0?uuid=0c000000-0000-4000-8000-000000000001", auth: bearer, wantCode: 400, wantMsg: `delete node c1-w0: query parameter cluster="": required`},
		// Bounds: the test driver's host has 16 CPUs and 8 GiB.
		{name: "too many vcpus", method: "PUT", path: "/api/v1/nodes/c1-w0", auth: bearer, body: validNodeJSON(func(m map[string]any) { m["vcpus"] = 17 }), wantCode: 400, wantMsg: `node "c1-w0" of cluster "c1": vcpus 17: want at most 16 (the host's CPUs; --guests.max-vcpus)`},
		{name: "too much memory", method: "PUT", path: "/api/v1/nodes/c1-w0", auth: bearer, body: validNodeJSON(func(m map[string]any) { m["memory_bytes"] = 1 << 40 }), wantCode: 400, wantMsg: `node "c1-w0" of cluster "c1": memory_bytes 1099511627776: want at most`},
		{name: "too large a disk", method: "PUT", path: "/api/v1/nodes/c1-w0", auth: bearer, body: validNodeJSON(func(m map[string]any) { m["disk_bytes"] = 2<<40 + 1 }), wantCode: 400, wantMsg: `node "c1-w0" of cluster "c1": disk_bytes 2199023255553: want at most 2199023255552 (--guests.max-disk-bytes)`},
		{name: "no pool", method: "PUT", path: "/api/v1/nodes/c1-w0", auth: bearer, body: validNodeJSON(nil), wantCode: 503, wantMsg: `storage pool "caretaker" does not exist on this host: define it (virsh pool-define-as) or set --guests.pool`},
		{name: "no pool named", method: "PUT", path: "/api/v1/nodes/c1-w0?replace=true", auth: bearer, body: validNodeJSON(func(m map[string]any) { m["pool"] = "fast" }), wantCode: 503, wantMsg: `storage pool "fast" does not exist on this host`},
		{name: "delete no pool", method: "DELETE", path: "/api/v1/nodes/c1-w0?cluster=c1&uuid=0c000000-0000-4000-8000-000000000001", auth: bearer, wantCode: 503, wantMsg: `storage pool "caretaker" does not exist on this host`},
		{name: "overlay unknown field", method: "PUT", path: "/api/v1/overlays/c1", auth: bearer, body: `{"device":"vx-c1","bridge":"br-c1","vni":7,"underlay":"eth0","peers":[{"address":"192.0.2.2","port":1}]}`, wantCode: 400, wantMsg: `request body: unknown field "port"`},
		{name: "overlay too large", method: "PUT", path: "/api/v1/overlays/c1", auth: bearer, body: `{"device":"` + strings.Repeat("x", maxOverlayBody) + `"}`, wantCode: 413, wantMsg: "request body: larger than 262144 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			rec := httptest.NewRecorder()
			a.Handler().ServeHTTP(rec, req)
			var body apiError
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Header().Get("Content-Type") != "application/json" {
				t.Fatalf("answer %d %q %s, want a JSON error", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
			}
			if rec.Code != tt.wantCode || !strings.Contains(body.Error, tt.wantMsg) {
				t.Errorf("%d %q, want %d with %q", rec.Code, body.Error, tt.wantCode, tt.wantMsg)
			}
			if rec.Header().Get("Allow") != tt.wantAllow {
				t.Errorf("Allow %q, want %q", rec.Header().Get("Allow"), tt.wantAllow)
			}
		})
	}
}

// The client's node and overlay errors say what was tried where and carry
// the agent's status and message.
func TestNodeClientErrors(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{Token: token})
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	c := agentapi.NewClient(srv.URL, token, srv.Client())
	var req agentapi.NodeRequest
	if err := json.Unmarshal([]byte(validNodeJSON(nil)), &req); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		call     func() error
		wantCode int
		wantErr  string
	}{
		{"put node", func() error { _, err := c.PutNode(t.Context(), req, true); return err }, 503, srv.URL + ": agent answered 503 Service Unavailable: storage pool \"caretaker\" does not exist"},
		{"delete node", func() error { return c.DeleteNode(t.Context(), "c1", "-bad", "0c000000-0000-4000-8000-000000000001") }, 400, srv.URL + ": agent answered 400 Bad Request: node name \"-bad\""},
		{"put overlay", func() error { _, err := c.PutOverlay(t.Context(), "c1", overlayspec.Overlay{}); return err }, 400, srv.URL + ": agent answered 400 Bad Request: overlay of cluster \"c1\": device: empty"},
		{"delete overlay", func() error { return agentapi.NewClient(srv.URL, "", srv.Client()).DeleteOverlay(t.Context(), "c1") }, 401, srv.URL + ": agent answered 401 Unauthorized: missing bearer token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var se *agentapi.StatusError
			if !errors.As(err, &se) || se.Code != tt.wantCode || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Errorf("got %v, want %d %q…", err, tt.wantCode, tt.wantErr)
			}
		})
	}
}

func TestNewGuestDomainType(t *testing.T) {
	t.Parallel()
	_, err := New(Config{LibvirtURI: "test:///default", GuestDomainType: "xen"})
	if want := `configure agent: guest domain type "xen": want "kvm" or "qemu"`; err == nil || err.Error() != want {
		t.Errorf("New with domain type xen: %v, want %q", err, want)
	}
}

// TestNewRemoteURI: the agent talks to its host's libvirtd over the unix
// socket; a remote URI is refused at start, naming the URI and what works.
func TestNewRemoteURI(t *testing.T) {
	t.Parallel()
	for _, uri := range []string{"qemu+ssh://root@hv-1/system", "qemu+tls://hv-1/system", "qemu+tcp://hv-1/system", "qemu://hv-1/system"} {
		_, err := New(Config{LibvirtURI: uri})
		if err == nil || !strings.Contains(err.Error(), "--libvirt.uri") || !strings.Contains(err.Error(), uri) || !strings.Contains(err.Error(), "qemu:///system") {
			t.Errorf("New with %s: %v, want an error naming the URI and what is supported", uri, err)
		}
	}
}
