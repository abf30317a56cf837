package agentapi_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"caretaker/internal/agentapi"
	"caretaker/remediation"
	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// A failed restart reads as one sentence that says each thing once: the
// engine names the operation and the guest, the client the agent's address,
// the agent its answer.
func TestFailedRestartErrorSaysEachThingOnce(t *testing.T) {
	const (
		uuid = "0b000000-0000-4000-8000-0000000000ff"
		host = "host-am"
	)
	// Answers as an agent that does not know the guest.
	agentSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":"no domain with uuid ` + uuid + `"}`))
	}))
	defer agentSrv.Close()

	j, err := journal.Open(filepath.Join(t.TempDir(), "journal.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	hosts := agentapi.NewHosts("token")
	hosts.Add(host, strings.TrimPrefix(agentSrv.URL, "http://"))
	e, err := remediation.New(remediation.Options{Policy: policy.Default(), Journal: j, Hosts: hosts,
		FleetSize: func() int { return 10 }})
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"alertname": "GuestCrashed", "host": host, "uuid": uuid, "domain": "lab-am-1"}
	e.Handle(context.Background(), []remediation.Alert{{Name: "GuestCrashed", Labels: labels,
		Status: remediation.StatusFiring, StartsAt: time.Now().Add(-time.Minute)}})
	e.Close() // waits for the action

	recs, err := j.List(0)
	if err != nil || len(recs) != 1 {
		t.Fatalf("journal = %+v, %v; want one record", recs, err)
	}
	want := "start guest lab-am-1 (" + uuid + ") on " + host + ": " + agentSrv.URL +
		": agent answered 404 Not Found: no domain with uuid " + uuid
	if got := recs[0].Error; got != want {
		t.Errorf("error of the failed restart:\n got %s\nwant %s", got, want)
	}
}

// A failed overlay repair says each thing once too: the engine names the
// operation, the cluster and the host, the client the agent's address, the
// agent its answer. It once read "repair overlay of cluster lab on host-ov:
// repair overlay of cluster lab on agent …: agent answered …".
func TestFailedRepairOverlayErrorSaysEachThingOnce(t *testing.T) {
	const host = "host-ov"
	// Answers as an agent whose underlay device is missing.
	agentSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusConflict)
		_, _ = w.Write([]byte(`{"error":"repair overlay of cluster lab: look up underlay eth9: conflict: no such device"}`))
	}))
	defer agentSrv.Close()

	j, err := journal.Open(filepath.Join(t.TempDir(), "journal.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	hosts := agentapi.NewHosts("token")
	hosts.Add(host, strings.TrimPrefix(agentSrv.URL, "http://"))
	pol, err := policy.Parse("policy.yml", []byte(`
rules:
  - name: repair-overlays
    match: {alertname: OverlayVXLANMissing}
    action: repair-overlay
`))
	if err != nil {
		t.Fatal(err)
	}
	e, err := remediation.New(remediation.Options{Policy: pol, Journal: j, Hosts: hosts,
		FleetSize: func() int { return 10 }})
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"alertname": "OverlayVXLANMissing", "host": host, "cluster": "lab", "device": "vx-lab"}
	e.Handle(context.Background(), []remediation.Alert{{Name: "OverlayVXLANMissing", Labels: labels,
		Status: remediation.StatusFiring, StartsAt: time.Now().Add(-time.Minute)}})
	e.Close() // waits for the action

	recs, err := j.List(0)
	if err != nil || len(recs) != 1 {
		t.Fatalf("journal = %+v, %v; want one record", recs, err)
	}
	want := "repair overlay of cluster lab on " + host + ": " + agentSrv.URL +
		": agent answered 409 Conflict: repair overlay of cluster lab: look up underlay eth9: conflict: no such device"
	if got := recs[0].Error; got != want {
		t.Errorf("error of the failed repair:\n got %s\nwant %s", got, want)
	}
}
