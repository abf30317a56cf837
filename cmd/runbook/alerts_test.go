package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"caretaker/internal/api"
)

func TestParseMatchers(t *testing.T) {
	l := map[string]string{"alertname": "GuestCrashed", "host": "host-a", "severity": "critical"}
	for _, tc := range []struct {
		args    []string
		match   bool
		wantErr string
	}{
		{args: nil, match: true},
		{args: []string{"GuestCrashed"}, match: true},
		{args: []string{"HostDown"}, match: false},
		{args: []string{"severity=critical", `host=~"host-(a|b)"`}, match: true},
		{args: []string{"host!=host-a"}, match: false},
		{args: []string{"host!~host-.*"}, match: false},
		{args: []string{"host=~host"}, match: false}, // anchored
		{args: []string{"host=~("}, wantErr: "matcher"},
		{args: []string{"not a matcher"}, wantErr: "want label=value"},
	} {
		ms, err := parseMatchers(tc.args)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err = %v, want %q", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if got := matchAll(ms, l); got != tc.match {
			t.Errorf("%q: match = %v, want %v", tc.args, got, tc.match)
		}
	}
}

// promAPI answers /api/v1/alerts and /api/v1/rules in Prometheus' JSON
// shape, as the server does.
func promAPI(t *testing.T) *httptest.Server {
	alert := `{"labels":{"alertname":"GuestCrashed","host":"host-a","domain":"lab-host-a-1","severity":"critical"},
		"annotations":{"summary":"Guest lab-host-a-1 on host-a crashed"},"state":"firing",
		"activeAt":"2026-11-25T12:00:00Z","value":"5e+00"}`
	other := `{"labels":{"alertname":"HostDown","host":"host-b","severity":"critical"},"annotations":{},"state":"pending",
		"activeAt":"2026-11-25T12:00:00Z","value":"0e+00"}`
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/alerts", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"status":"success","data":{"alerts":[` + other + `,` + alert + `]}}`))
	})
	mux.HandleFunc("/api/v1/rules", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"status":"success","data":{"groups":[{"name":"guests","file":"guests.rules.yml","rules":[
			{"name":"GuestCrashed","query":"caretaker_kvm_domain_state == 6","duration":0,
			 "labels":{"severity":"critical","remediation":"restart-vm"},"annotations":{},"alerts":[` + alert + `],
			 "health":"ok","type":"alerting"}]}]}}`))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestAlertsCommand(t *testing.T) {
	srv := promAPI(t)
	out, err := run(t, srv.URL, "alerts")
	if err != nil {
		t.Fatal(err)
	}
	if i, j := strings.Index(out, "GuestCrashed"), strings.Index(out, "HostDown"); i < 0 || j < 0 || i > j {
		t.Errorf("want both alerts, firing first:\n%s", out)
	}
	out, err = run(t, srv.URL, "alerts", "host=host-a", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var as []api.PromAlert
	if err := json.Unmarshal([]byte(out), &as); err != nil || len(as) != 1 || as[0].Labels["alertname"] != "GuestCrashed" {
		t.Fatalf("alerts host=host-a -o json = %s (%v)", out, err)
	}
}

func TestExplainCommand(t *testing.T) {
	srv := promAPI(t)
	out, err := run(t, srv.URL, "explain", "GuestCrashed")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"caretaker_kvm_domain_state == 6", "remediation: restart-vm", "INSTANCES (1)",
		"lab-host-a-1", "WHAT THE AUTOMATION DOES", "GUESTCRASHED"} {
		if !strings.Contains(strings.ToUpper(out), strings.ToUpper(want)) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "**") {
		t.Errorf("markdown emphasis not rendered:\n%s", out)
	}
	if _, err := run(t, srv.URL, "explain", "NoSuchAlert"); err == nil || !strings.Contains(err.Error(), "GuestCrashed") {
		t.Errorf("unknown alert: %v, want an error listing the known ones", err)
	}
}
