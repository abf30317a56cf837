package monitoring

import (
	"bytes"
	"caretaker/internal/testdaemon"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// These tests run the server's outputs against the real programs: a real
// Alertmanager receives the forwarded alerts, a real Prometheus receives the
// remote write. They skip when the program is not installed; CI installs it.

// pollJSON GETs url into v until done(v) holds. External programs offer no
// signal for "received", so the test polls their API with a deadline.
func pollJSON[T any](t *testing.T, what, u string, done func(T) bool) T {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitLimit)
	var last string
	for {
		var v T
		resp, err := client.Get(u)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = string(b)
			if err := json.Unmarshal(b, &v); err == nil && done(v) {
				return v
			}
		} else {
			last = err.Error()
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("waited %s for %s at %s; last answer: %s", waitLimit, what, u, last)
		}
	}
}

type amAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Status       struct {
		State string `json:"state"`
	} `json:"status"`
}

func TestForwardToAlertmanager(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfg, []byte("route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	am := testdaemon.Start(t, "prometheus-alertmanager", func(addr string) []string {
		return []string{"--config.file=" + cfg, "--storage.path=" + filepath.Join(dir, "data"),
			"--web.listen-address=" + addr, "--cluster.listen-address="}
	})

	ag := newAgent(t, 1)
	got := newNotifications()
	startMonitor(t, Options{
		Targets:       []Target{{Host: "kvm-1", Address: ag.address()}},
		Rules:         os.DirFS("testdata/rules"),
		Notify:        got.notify,
		Alertmanagers: []string{am},
	})

	ag.state.Store(6) // crashed
	// Notify still gets the alert: forwarding is in addition.
	firing := got.await(t, "GuestCrashed firing", func(a Alert) bool { return a.Name == "GuestCrashed" && a.State == "firing" })

	isGuestCrashed := func(a amAlert) bool { return a.Labels["alertname"] == "GuestCrashed" }
	alerts := pollJSON(t, "GuestCrashed in Alertmanager", am+"/api/v2/alerts", func(as []amAlert) bool {
		for _, a := range as {
			if isGuestCrashed(a) {
				return true
			}
		}
		return false
	})
	for _, a := range alerts {
		if !isGuestCrashed(a) {
			t.Errorf("Alertmanager has an unexpected alert: %+v", a)
			continue
		}
		if fmt.Sprint(a.Labels) != fmt.Sprint(firing.Labels) {
			t.Errorf("Alertmanager alert labels = %v, want Notify's %v", a.Labels, firing.Labels)
		}
		if a.Annotations["summary"] != "Guest u1 on kvm-1 crashed" {
			t.Errorf("Alertmanager alert annotations = %v", a.Annotations)
		}
		// Alertmanager keeps times to the millisecond.
		if a.Status.State != "active" || !a.StartsAt.Equal(firing.FiredAt.Truncate(time.Millisecond)) {
			t.Errorf("Alertmanager alert state %q starts %v, want active from %v", a.Status.State, a.StartsAt, firing.FiredAt)
		}
		if !strings.Contains(a.GeneratorURL, url.QueryEscape("caretaker_kvm_domain_state == 6")) {
			t.Errorf("generatorURL %q does not carry the expression", a.GeneratorURL)
		}
	}

	// Resolved: the alert is sent with an end time, and Alertmanager no
	// longer lists it as active.
	ag.state.Store(1)
	pollJSON(t, "GuestCrashed resolved in Alertmanager", am+"/api/v2/alerts?active=true", func(as []amAlert) bool {
		for _, a := range as {
			if isGuestCrashed(a) {
				return false
			}
		}
		return true
	})
}

func TestRemoteWrite(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte("global: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	receiver := testdaemon.Start(t, "prometheus", func(addr string) []string {
		return []string{"--web.enable-remote-write-receiver", "--config.file=" + cfg,
			"--storage.tsdb.path=" + filepath.Join(dir, "data"), "--web.listen-address=" + addr}
	})

	ag := newAgent(t, 6)
	reg := newRegistry()
	m := startMonitor(t, Options{
		Targets:     []Target{{Host: "kvm-1", Address: ag.address()}},
		RemoteWrite: []RemoteWriteConfig{{URL: receiver + "/api/v1/write", Name: "receiver"}},
		Registerer:  reg,
	})
	ag.awaitScrapes(t, 2)

	type queryResult struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	q := url.Values{"query": {`caretaker_kvm_domain_state{host="kvm-1"}`}}
	res := pollJSON(t, "the scraped series at the receiver", receiver+"/api/v1/query?"+q.Encode(), func(r queryResult) bool {
		return r.Status == "success" && len(r.Data.Result) > 0
	})
	if len(res.Data.Result) != 1 {
		t.Fatalf("receiver has %d series, want 1: %+v", len(res.Data.Result), res.Data.Result)
	}
	s := res.Data.Result[0]
	for name, want := range map[string]string{"host": "kvm-1", "job": JobName, "instance": ag.address(), "uuid": "u1"} {
		if s.Metric[name] != want {
			t.Errorf("remote series label %s = %q, want %q (%v)", name, s.Metric[name], want, s.Metric)
		}
	}
	if s.Value[1] != "6" {
		t.Errorf("remote sample value = %v, want 6", s.Value[1])
	}

	// Stop sends what is queued; nothing was refused or dropped.
	if err := m.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	var out bytes.Buffer
	for _, name := range []string{"caretaker_remote_write_samples_failed_total", "caretaker_remote_write_samples_dropped_total"} {
		if v := counterValue(t, reg, name, "receiver"); v != 0 {
			fmt.Fprintf(&out, "%s = %v; ", name, v)
		}
	}
	if sent := counterValue(t, reg, "caretaker_remote_write_samples_sent_total", "receiver"); sent == 0 {
		out.WriteString("no samples counted as sent")
	}
	if out.Len() > 0 {
		t.Error(out.String())
	}
}
