package agent

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"caretaker/collectors/overlay"
	"caretaker/internal/agentapi"
	"caretaker/internal/httpjson"
	"caretaker/internal/overlayspec"
)

// FuzzNodeRequest feeds PUT /api/v1/nodes bodies to the strict decoder: it
// must not panic, and what it accepts must encode and decode back the same.
func FuzzNodeRequest(f *testing.F) {
	f.Add([]byte(validNodeJSON(nil)))
	f.Add([]byte(`{"name":"a","vcpus":-1,"memory_bytes":1e3}`))
	f.Add([]byte(`{"name":"a"} {}`))
	f.Add([]byte(`{"nope":1}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var req agentapi.NodeRequest
		if err := httpjson.DecodeReader(bytes.NewReader(body), &req); err != nil {
			return
		}
		roundTrip(t, req, &agentapi.NodeRequest{})
		// Validation must not panic either, whatever it says.
		_ = nodeOf(req).Validate()
	})
}

// FuzzOverlayRequest does the same for PUT /api/v1/overlays bodies, and
// checks that an overlay putOverlay accepts is one the collector expects
// as is, every peer named.
func FuzzOverlayRequest(f *testing.F) {
	f.Add([]byte(`{"device":"vx-c1","bridge":"br-c1","vni":7,"underlay":"eth0","local":"10.0.0.1","peers":[{"host":"h2","address":"10.0.0.2"}]}`))
	f.Add([]byte(`{"device":"vx-c1","bridge":"vx-c1","vni":16777216,"peers":[{"address":"::ffff:1.2.3.4"},{"address":"1.2.3.4"}]}`))
	f.Add([]byte(`{"peers":[{"address":""}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var req overlayspec.Overlay
		if err := httpjson.DecodeReader(bytes.NewReader(body), &req); err != nil {
			return
		}
		roundTrip(t, req, &overlayspec.Overlay{})
		o, err := putOverlay("c1", req)
		if err != nil {
			return
		}
		if err := overlay.ValidateOverlays([]overlayspec.Overlay{o}); err != nil {
			t.Errorf("putOverlay accepted %s, the collector refuses it: %v", body, err)
		}
		if len(o.Peers) != len(req.Peers) || o.Device != req.Device || o.Cluster != "c1" {
			t.Errorf("overlay %+v differs from the body's %+v", o, req)
		}
		for i, p := range o.Peers {
			if p.Host == "" {
				t.Errorf("peer %d has no host: the collector would drop the overlay", i)
			}
		}
	})
}

func roundTrip[T any](t *testing.T, v T, back *T) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encode %+v: %v", v, err)
	}
	if err := httpjson.DecodeReader(bytes.NewReader(b), back); err != nil {
		t.Fatalf("decode own encoding %s: %v", b, err)
	}
	if !reflect.DeepEqual(*back, v) {
		t.Errorf("round trip: %+v, want %+v", *back, v)
	}
}
