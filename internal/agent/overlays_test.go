package agent

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"caretaker/internal/agentapi"
	"caretaker/internal/overlaynet/nstest"
	"caretaker/internal/overlayspec"
)

// prodRequest is prodOverlay as the server PUTs it.
func prodRequest() overlayspec.Overlay {
	return overlayspec.Overlay{
		Device: "vx-prod", Bridge: "br-prod", VNI: 100, Underlay: "u0",
		Peers: []overlayspec.Peer{{Host: "host2", Address: "192.0.2.2"}, {Address: "192.0.2.3"}},
	}
}

// overlayMetrics returns the lines of the overlay collector's scrape that
// start with prefix.
func overlayMetrics(t *testing.T, srv *httptest.Server, prefix string) []string {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL + "/metrics?collect[]=overlay")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return out
}

// TestPutOverlay: a PUT makes the overlay, a second changes nothing, and
// from then on the agent repairs it and the collector expects it; a DELETE
// removes both devices and the expectation.
func TestPutOverlay(t *testing.T) {
	t.Parallel()
	ns, srv := newRepairServer(t)
	c := agentapi.NewClient(srv.URL, token, srv.Client())

	if got := overlayMetrics(t, srv, `caretaker_overlay_vxlan_present{`); len(got) != 0 {
		t.Fatalf("before the PUT the collector expects %q", got)
	}
	got, err := c.PutOverlay(t.Context(), "prod", prodRequest())
	if err != nil {
		t.Fatalf("PutOverlay: %v", err)
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
		t.Errorf("PutOverlay from nothing:\n got %q\nwant %q", got, want)
	}
	if o := ns.Overlay(t, "vx-prod", "br-prod"); !reflect.DeepEqual(o, healthyProd) {
		t.Fatalf("after the PUT:\n got %+v\nwant %+v", o, healthyProd)
	}
	if got, err := c.PutOverlay(t.Context(), "prod", prodRequest()); err != nil || len(got) != 0 {
		t.Errorf("second PutOverlay: %q, %v; want no changes", got, err)
	}

	// The collector expects the PUT overlay, peers named by host or address.
	wantFDB := []string{
		`caretaker_overlay_peer_fdb_present{cluster="prod",device="vx-prod",peer="192.0.2.2",peer_host="host2"} 1`,
		`caretaker_overlay_peer_fdb_present{cluster="prod",device="vx-prod",peer="192.0.2.3",peer_host="192.0.2.3"} 1`,
	}
	if got := overlayMetrics(t, srv, "caretaker_overlay_peer_fdb_present{"); !reflect.DeepEqual(got, wantFDB) {
		t.Errorf("collector after the PUT:\n got %q\nwant %q", got, wantFDB)
	}

	// /repair knows the PUT overlay.
	ns.Bridge(t, "fdb", "del", "00:00:00:00:00:00", "dev", "vx-prod", "dst", "192.0.2.3", "self")
	if got, err := c.RepairOverlay(t.Context(), "prod"); err != nil || !reflect.DeepEqual(got, []string{"added fdb entry to 192.0.2.3"}) {
		t.Errorf("RepairOverlay after the PUT: %q, %v", got, err)
	}

	// A changed PUT replaces the overlay: one peer less.
	changed := prodRequest()
	changed.Peers = changed.Peers[:1]
	if got, err := c.PutOverlay(t.Context(), "prod", changed); err != nil || !reflect.DeepEqual(got, []string{"removed fdb entry to 192.0.2.3"}) {
		t.Errorf("PutOverlay with one peer less: %q, %v", got, err)
	}
	if got := overlayMetrics(t, srv, "caretaker_overlay_peer_fdb_present{"); !reflect.DeepEqual(got, wantFDB[:1]) {
		t.Errorf("collector after the changed PUT:\n got %q\nwant %q", got, wantFDB[:1])
	}

	if err := c.DeleteOverlay(t.Context(), "prod"); err != nil {
		t.Fatalf("DeleteOverlay: %v", err)
	}
	if o := ns.Overlay(t, "vx-prod", "br-prod"); !reflect.DeepEqual(o, nstest.Overlay{}) {
		t.Errorf("after the DELETE: %+v, want no bridge and no vxlan", o)
	}
	if got := overlayMetrics(t, srv, `caretaker_overlay_vxlan_present{`); len(got) != 0 {
		t.Errorf("after the DELETE the collector expects %q", got)
	}
	var se *agentapi.StatusError
	if _, err := c.RepairOverlay(t.Context(), "prod"); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Errorf("RepairOverlay after the DELETE: %v, want a 404", err)
	}
	if err := c.DeleteOverlay(t.Context(), "prod"); err != nil {
		t.Errorf("second DeleteOverlay: %v", err)
	}
}

// A DELETE is refused while a guest's interface is on the bridge, and
// changes nothing; the overlay stays expected and repairable.
func TestDeleteOverlayWithGuest(t *testing.T) {
	t.Parallel()
	ns, srv := newRepairServer(t)
	c := agentapi.NewClient(srv.URL, token, srv.Client())
	if _, err := c.PutOverlay(t.Context(), "prod", prodRequest()); err != nil {
		t.Fatal(err)
	}
	// A veth stands for a guest's tap.
	ns.IP(t, "link", "add", "vnet7", "type", "veth", "peer", "name", "vnet7p")
	ns.IP(t, "link", "set", "vnet7", "master", "br-prod")

	err := c.DeleteOverlay(t.Context(), "prod")
	var se *agentapi.StatusError
	wantMsg := "delete overlay of cluster prod: bridge br-prod: conflict: it still has ports vnet7 besides the vxlan device (guests' interfaces?): delete the nodes first"
	if !errors.As(err, &se) || se.Code != http.StatusConflict || se.Msg != wantMsg {
		t.Fatalf("DeleteOverlay with a guest: %v, want 409 %q", err, wantMsg)
	}
	if o := ns.Overlay(t, "vx-prod", "br-prod"); !reflect.DeepEqual(o, healthyProd) {
		t.Errorf("a refused DELETE changed the host: %+v", o)
	}
	if got, err := c.RepairOverlay(t.Context(), "prod"); err != nil || len(got) != 0 {
		t.Errorf("RepairOverlay after the refused DELETE: %q, %v", got, err)
	}

	ns.IP(t, "link", "del", "vnet7")
	if err := c.DeleteOverlay(t.Context(), "prod"); err != nil {
		t.Fatalf("DeleteOverlay once the guest is gone: %v", err)
	}
	if o := ns.Overlay(t, "vx-prod", "br-prod"); !reflect.DeepEqual(o, nstest.Overlay{}) {
		t.Errorf("after the DELETE: %+v", o)
	}
}

// An overlay of the configuration file can be deleted too; one the agent
// never heard of is deleted by the provisioner's names, vx-/br-<cluster>,
// and a device of another kind under such a name is left alone.
func TestDeleteOverlayNames(t *testing.T) {
	t.Parallel()
	configured := prodOverlay()
	configured.Cluster = "conf"
	ns, srv := newRepairServer(t, configured)
	c := agentapi.NewClient(srv.URL, token, srv.Client())
	if _, err := c.RepairOverlay(t.Context(), "conf"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteOverlay(t.Context(), "conf"); err != nil {
		t.Fatalf("DeleteOverlay of the configured overlay: %v", err)
	}
	if o := ns.Overlay(t, "vx-prod", "br-prod"); !reflect.DeepEqual(o, nstest.Overlay{}) {
		t.Errorf("after deleting the configured overlay: %+v", o)
	}

	ns.IP(t, "link", "add", "br-lab", "type", "bridge")
	ns.IP(t, "link", "add", "vx-lab", "type", "vxlan", "id", "7", "dstport", "4789", "dev", "u0")
	ns.IP(t, "link", "set", "vx-lab", "master", "br-lab")
	if err := c.DeleteOverlay(t.Context(), "lab"); err != nil {
		t.Fatalf("DeleteOverlay of an unknown overlay: %v", err)
	}
	if o := ns.Overlay(t, "vx-lab", "br-lab"); !reflect.DeepEqual(o, nstest.Overlay{}) {
		t.Errorf("after deleting lab: %+v", o)
	}

	ns.IP(t, "link", "add", "vx-odd", "type", "veth", "peer", "name", "vx-oddp")
	err := c.DeleteOverlay(t.Context(), "odd")
	var se *agentapi.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusConflict || !strings.Contains(se.Msg, "vxlan vx-odd: conflict: it is a veth device, not a vxlan; left alone") {
		t.Errorf("DeleteOverlay over a veth: %v, want a 409", err)
	}
	if o := ns.Overlay(t, "vx-odd", "br-odd"); o.VXLAN != "veth down" {
		t.Errorf("the veth: %+v, want it kept", o)
	}
}

func TestPutOverlayErrors(t *testing.T) {
	t.Parallel()
	ns, srv := newRepairServer(t)
	c := agentapi.NewClient(srv.URL, token, srv.Client())
	if _, err := c.PutOverlay(t.Context(), "prod", prodRequest()); err != nil {
		t.Fatal(err)
	}
	mod := func(f func(*overlayspec.Overlay)) overlayspec.Overlay {
		r := prodRequest()
		f(&r)
		return r
	}
	tests := []struct {
		name     string
		cluster  string
		req      overlayspec.Overlay
		wantCode int
		wantMsg  string
	}{
		{"bad local", "lab", mod(func(r *overlayspec.Overlay) { r.Local = "nope" }), 400, `overlay of cluster "lab": local: "nope" is not an IP address`},
		{"bad peer", "lab", mod(func(r *overlayspec.Overlay) { r.Peers[1].Address = "192.0.2" }), 400, `overlay of cluster "lab": peers[1].address: "192.0.2" is not an IP address`},
		{"vni", "lab", mod(func(r *overlayspec.Overlay) { r.VNI = 1 << 24 }), 400, `overlay of cluster "lab": vni: 16777216: out of range 0-16777215`},
		{"no device", "lab", mod(func(r *overlayspec.Overlay) { r.Device = "" }), 400, `overlay of cluster "lab": device: empty`},
		{"peer twice", "lab", mod(func(r *overlayspec.Overlay) { r.Peers[1].Address = "192.0.2.2" }), 400, `overlay of cluster "lab": peers[1].address: 192.0.2.2: listed twice`},
		{
			"device of another cluster", "lab", prodRequest(), 409,
			`overlay of cluster "lab" conflicts with the overlays this host has: overlay 1 (cluster "lab"): device: "vx-prod" is also the device of overlay 0`,
		},
		{
			"underlay missing", "lab", mod(func(r *overlayspec.Overlay) { r.Device, r.Bridge, r.Underlay = "vx-lab", "br-lab", "eth9" }), 409,
			"ensure overlay of cluster lab: look up underlay eth9: conflict: no such device",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.PutOverlay(t.Context(), tt.cluster, tt.req)
			var se *agentapi.StatusError
			if !errors.As(err, &se) || se.Code != tt.wantCode || se.Msg != tt.wantMsg {
				t.Fatalf("PutOverlay: %v, want %d %q", err, tt.wantCode, tt.wantMsg)
			}
			// The client names the agent; its caller says what it tried.
			if want := srv.URL + ": agent answered "; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("client error %q does not start with %q", err, want)
			}
		})
	}
	if o := ns.Overlay(t, "vx-lab", "br-lab"); !reflect.DeepEqual(o, nstest.Overlay{}) {
		t.Errorf("refused PUTs made devices: %+v", o)
	}
	if o := ns.Overlay(t, "vx-prod", "br-prod"); !reflect.DeepEqual(o, healthyProd) {
		t.Errorf("refused PUTs changed prod: %+v", o)
	}
}
