package fleet

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"caretaker/internal/agentapi"
	"caretaker/provisioner/clusters"
)

// A node is created on the default image or a declared one; a record
// naming any other (made before base images were declared, or whose image
// was since dropped) never reaches the agent.
func TestCreateNodeBaseImages(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req agentapi.NodeRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, req.BaseImage)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(agentapi.NodeResponse{Name: req.Name, UUID: req.UUID, State: "running"})
	}))
	defer srv.Close()
	hosts := agentapi.NewHosts("agent-token-0123456789abcdef")
	hosts.Add("hv-1", strings.TrimPrefix(srv.URL, "http://"))
	p := &Provisioner{log: slog.New(slog.DiscardHandler), agents: hosts,
		images: clusters.BaseImages{Default: "base.qcow2", Declared: []string{"rocky-9.qcow2"}}}
	spec := func(image string) clusters.NodeSpec {
		return clusters.NodeSpec{Cluster: "c1", Name: "c1-w-0", Role: clusters.RoleWorker, VCPUs: 1, MemoryBytes: 64 << 20,
			DiskBytes: 64 << 20, Bridge: "br-c1", MAC: "52:54:00:00:00:01", BaseImage: image, UUID: "4b7f2a4e-0c1d-4e5f-8a9b-0c1d2e3f4a5b"}
	}
	for _, image := range []string{"", "rocky-9.qcow2"} {
		if _, err := (nodes{p}).CreateNode(t.Context(), "hv-1", spec(image)); err != nil {
			t.Errorf("base image %q: %v", image, err)
		}
	}
	for _, image := range []string{"../../etc/shadow", "c2-worker-0.qcow2"} {
		_, err := (nodes{p}).CreateNode(t.Context(), "hv-1", spec(image))
		if err == nil || !strings.Contains(err.Error(), "not a declared base image") {
			t.Errorf("base image %q: %v, want not declared", image, err)
		}
	}
	if want := []string{"base.qcow2", "rocky-9.qcow2"}; !slices.Equal(got, want) {
		t.Errorf("the agent was asked for %q, want %q", got, want)
	}
}
