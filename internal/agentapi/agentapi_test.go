package agentapi

import (
	"bytes"
	"encoding/json"
	"flag"
	"reflect"
	"testing"

	"caretaker/internal/golden"
	"caretaker/internal/httpjson"
	"caretaker/internal/overlayspec"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestRequestJSON pins the wire shapes of the request bodies: the server's
// adapter and the agent must agree on every tag.
func TestRequestJSON(t *testing.T) {
	t.Parallel()
	node := NodeRequest{
		Cluster: "prod", Name: "prod-workers-0", Role: "worker", VCPUs: 2,
		MemoryBytes: 4 << 30, DiskBytes: 40 << 30, Bridge: "br-prod",
		MAC: "52:54:00:12:34:56", BaseImage: "rhel9.qcow2", Pool: "caretaker",
		UserData: "#cloud-config\n", MetaData: "instance-id: prod-workers-0\n",
		UUID: "0b000000-0000-4000-8000-000000000001",
	}
	ov := overlayspec.Overlay{
		Device: "vx-prod", Bridge: "br-prod", VNI: 100, Underlay: "eth1", Local: "10.0.0.11", Port: 4789, MTU: 1450,
		Peers: []overlayspec.Peer{{Host: "host2", Address: "10.0.0.12"}, {Address: "10.0.0.13"}},
	}
	for _, tt := range []struct {
		file string
		v    any
		back any
	}{
		{"testdata/api/node-request.json", node, &NodeRequest{}},
		{"testdata/api/overlay-request.json", ov, &overlayspec.Overlay{}},
		{"testdata/api/node-response.json", NodeResponse{Name: "prod-workers-0", UUID: node.UUID, State: "running"}, &NodeResponse{}},
	} {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetIndent("", "  ")
		if err := enc.Encode(tt.v); err != nil {
			t.Fatal(err)
		}
		golden.Compare(t, tt.file, buf.Bytes(), *update)
		if err := httpjson.DecodeReader(&buf, tt.back); err != nil || !reflect.DeepEqual(reflect.ValueOf(tt.back).Elem().Interface(), tt.v) {
			t.Errorf("%s does not decode back strictly: %v", tt.file, err)
		}
	}
}
