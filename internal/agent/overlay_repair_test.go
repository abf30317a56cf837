package agent

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"caretaker/internal/agentapi"
	"caretaker/internal/overlaynet/nstest"
	"caretaker/internal/overlayspec"
)

// prodOverlay is the overlay the repair tests configure: underlay u0 with
// 192.0.2.1/24 (TEST-NET-1, inside the test's namespace only), two peers.
func prodOverlay() overlayspec.Overlay {
	return overlayspec.Overlay{
		Cluster:  "prod",
		Device:   "vx-prod",
		Bridge:   "br-prod",
		VNI:      100,
		Underlay: "u0",
		Peers:    []overlayspec.Peer{{Host: "host2", Address: "192.0.2.2"}, {Host: "host3", Address: "192.0.2.3"}},
	}
}

var healthyProd = nstest.Overlay{
	Bridge: "up",
	VXLAN:  "vni 100 local 192.0.2.1 port 4789 underlay u0 mtu 1450 master br-prod up",
	Flood:  []string{"192.0.2.2", "192.0.2.3"},
}

// newRepairHost returns a namespace with the underlay u0 only, and a client
// of an agent, served over HTTP, that repairs overlays in it.
func newRepairHost(t *testing.T, overlays ...overlayspec.Overlay) (nstest.NS, *agentapi.Client) {
	ns, srv := newRepairServer(t, overlays...)
	return ns, agentapi.NewClient(srv.URL, token, srv.Client())
}

func newRepairServer(t *testing.T, overlays ...overlayspec.Overlay) (nstest.NS, *httptest.Server) {
	t.Helper()
	ns := nstest.New(t)
	ns.IP(t, "link", "add", "u0", "type", "veth", "peer", "name", "u0p")
	ns.IP(t, "addr", "add", "192.0.2.1/24", "dev", "u0")
	ns.IP(t, "link", "set", "u0", "up")
	a := newTestAgent(t, Config{Token: token, NetNS: ns.Path, OverlayRepairs: overlays})
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	return ns, srv
}

func TestRepairOverlay(t *testing.T) {
	t.Parallel()
	ns, c := newRepairHost(t, prodOverlay())

	got, err := c.RepairOverlay(t.Context(), "prod")
	if err != nil {
		t.Fatalf("RepairOverlay from nothing: %v", err)
	}
	want := []string{
		"created bridge br-prod",
		"created vxlan vx-prod (vni 100, local 192.0.2.1, port 4789, underlay u0)",
		"enslaved vxlan vx-prod to bridge br-prod",
		"set vxlan vx-prod up",
		"set bridge br-prod up",
		"added fdb entry to 192.0.2.2",
		"added fdb entry to 192.0.2.3",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("RepairOverlay from nothing:\n got %q\nwant %q", got, want)
	}
	if o := ns.Overlay(t, "vx-prod", "br-prod"); !reflect.DeepEqual(o, healthyProd) {
		t.Fatalf("after the first repair:\n got %+v\nwant %+v", o, healthyProd)
	}

	tests := []struct {
		name   string
		damage func(t *testing.T)
		want   []string
	}{
		{"nothing broken", func(t *testing.T) {}, []string{}},
		{
			"fdb entry deleted and stale peer",
			func(t *testing.T) {
				ns.Bridge(t, "fdb", "del", "00:00:00:00:00:00", "dev", "vx-prod", "dst", "192.0.2.2", "self")
				ns.Bridge(t, "fdb", "append", "00:00:00:00:00:00", "dev", "vx-prod", "dst", "192.0.2.9", "self", "permanent")
			},
			[]string{"added fdb entry to 192.0.2.2", "removed fdb entry to 192.0.2.9"},
		},
		{
			"vxlan down and out of the bridge",
			func(t *testing.T) {
				ns.IP(t, "link", "set", "vx-prod", "down")
				ns.IP(t, "link", "set", "vx-prod", "nomaster")
			},
			[]string{"enslaved vxlan vx-prod to bridge br-prod", "set vxlan vx-prod up"},
		},
		{
			"wrong vni",
			func(t *testing.T) {
				ns.IP(t, "link", "del", "vx-prod")
				ns.IP(t, "link", "add", "vx-prod", "type", "vxlan", "id", "101", "local", "192.0.2.1", "dstport", "4789", "dev", "u0")
			},
			[]string{
				"re-created vxlan vx-prod (vni 100, local 192.0.2.1, port 4789, underlay u0): vni was 101",
				"enslaved vxlan vx-prod to bridge br-prod",
				"set vxlan vx-prod up",
				"added fdb entry to 192.0.2.2",
				"added fdb entry to 192.0.2.3",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.damage(t)
			got, err := c.RepairOverlay(t.Context(), "prod")
			if err != nil {
				t.Fatalf("RepairOverlay: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("RepairOverlay:\n got %q\nwant %q", got, tt.want)
			}
			if o := ns.Overlay(t, "vx-prod", "br-prod"); !reflect.DeepEqual(o, healthyProd) {
				t.Errorf("after the repair:\n got %+v\nwant %+v", o, healthyProd)
			}
		})
	}
}

// A request without the token is refused before anything is looked at, and
// leaves a broken overlay broken.
func TestRepairOverlayUnauthorized(t *testing.T) {
	t.Parallel()
	ns, srv := newRepairServer(t, prodOverlay())
	for _, c := range []*agentapi.Client{
		agentapi.NewClient(srv.URL, "", srv.Client()),
		agentapi.NewClient(srv.URL, "wrong", srv.Client()),
	} {
		_, err := c.RepairOverlay(t.Context(), "prod")
		var se *agentapi.StatusError
		if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
			t.Errorf("RepairOverlay without the token: %v, want a 401", err)
		}
	}
	if o := ns.Overlay(t, "vx-prod", "br-prod"); !reflect.DeepEqual(o, nstest.Overlay{}) {
		t.Errorf("a refused repair changed the host: %+v", o)
	}
}

func TestRepairOverlayErrors(t *testing.T) {
	t.Parallel()
	missingUnderlay := prodOverlay()
	missingUnderlay.Cluster, missingUnderlay.Underlay = "lab", "eth9"
	ns, c := newRepairHost(t, prodOverlay(), missingUnderlay)

	gone := newTestAgent(t, Config{Token: token, NetNS: ns.Path + "-gone", OverlayRepairs: []overlayspec.Overlay{prodOverlay()}})
	goneSrv := httptest.NewServer(gone.Handler())
	t.Cleanup(goneSrv.Close)

	tests := []struct {
		name     string
		c        *agentapi.Client
		cluster  string
		wantCode int
		wantMsg  string
	}{
		{"not configured", c, "nope", http.StatusNotFound, `no overlay for cluster "nope" in the agent's configuration`},
		{"underlay missing", c, "lab", http.StatusConflict, "repair overlay of cluster lab: look up underlay eth9: conflict: no such device"},
		{
			"namespace gone", agentapi.NewClient(goneSrv.URL, token, goneSrv.Client()), "prod", http.StatusInternalServerError,
			"repair overlay of cluster prod: open network namespace " + ns.Path + "-gone: no such file or directory",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.c.RepairOverlay(t.Context(), tt.cluster)
			var se *agentapi.StatusError
			if !errors.As(err, &se) || se.Code != tt.wantCode || se.Msg != tt.wantMsg {
				t.Fatalf("RepairOverlay: %v, want %d %q", err, tt.wantCode, tt.wantMsg)
			}
			// The client names the agent; its caller says what it tried.
			if !strings.HasPrefix(err.Error(), "http://127.0.0.1:") || !strings.Contains(err.Error(), ": agent answered ") {
				t.Errorf("client error %q does not name the agent and its answer", err)
			}
		})
	}
	if o := ns.Overlay(t, "vx-prod", "br-prod"); !reflect.DeepEqual(o, nstest.Overlay{}) {
		t.Errorf("failed repairs changed the host: %+v", o)
	}
}

// Methods other than POST get 405 with Allow, and change nothing; the
// route does not need a namespace to answer them.
func TestRepairOverlayMethods(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{Token: token, OverlayRepairs: []overlayspec.Overlay{prodOverlay()}})
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
		req := httptest.NewRequest(method, "/api/v1/overlays/prod/repair", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, req)
		var body apiError
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != http.MethodPost ||
			json.Unmarshal(rec.Body.Bytes(), &body) != nil || !strings.Contains(body.Error, "use POST") {
			t.Errorf("%s: %d Allow %q %s, want 405 Allow POST and a JSON error", method, rec.Code, rec.Header().Get("Allow"), rec.Body)
		}
	}
}

// The answer's changes are a JSON array, empty and not null when nothing
// was needed, so that clients in other languages need no special case.
func TestRepairOverlayJSON(t *testing.T) {
	t.Parallel()
	ns := nstest.New(t)
	ns.IP(t, "link", "add", "u0", "type", "veth", "peer", "name", "u0p")
	ns.IP(t, "addr", "add", "192.0.2.1/24", "dev", "u0")
	a := newTestAgent(t, Config{Token: token, NetNS: ns.Path, OverlayRepairs: []overlayspec.Overlay{prodOverlay()}})
	var bodies []string
	for range 2 {
		req := httptest.NewRequest(http.MethodPost, "/api/v1/overlays/prod/repair", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("repair: %d %q %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
		}
		bodies = append(bodies, rec.Body.String())
	}
	if want := `{"cluster":"prod","changes":[]}` + "\n"; bodies[1] != want {
		t.Errorf("second repair answered %q, want %q", bodies[1], want)
	}
	if !strings.HasPrefix(bodies[0], `{"cluster":"prod","changes":["created bridge br-prod",`) {
		t.Errorf("first repair answered %q", bodies[0])
	}
}
