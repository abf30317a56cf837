package lab

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/testdaemon"
	"caretaker/remediation/journal"
)

// amPolicy heals only the guests named prefix<n>: this test's.
func amPolicy(prefix string) string {
	return fmt.Sprintf(`rules:
  - name: restart-crashed
    match:
      alertname: GuestCrashed
    match_re:
      domain: %s[0-9]+
    action: restart-vm
`, regexp.QuoteMeta(prefix))
}

// TestAlertmanagerActsOnce has a real Alertmanager deliver one alert about
// a shut-off guest to the server's webhook again and again (group and
// repeat intervals of 200ms), and checks that the server acted once: one
// journal record, succeeded, for Alertmanager's fingerprint, and one real
// start of the guest (libvirt's lifecycle events) — also after the server
// was SIGKILLed and restarted while Alertmanager kept sending.
func TestAlertmanagerActsOnce(t *testing.T) {
	requireQEMU(t)
	bin := buildBinaries(t)
	dir := t.TempDir()
	// Meant to stay stopped, so the server's own rules leave it alone
	// and the only alert about it is the one Alertmanager sends.
	g := e2eGuests(t, "am", 1, guestmeta.IntentStopped, false)[0]
	starts := countStarts(t)

	agentAddr := testdaemon.FreePort(t)
	cfg, token := writeE2EConfig(t, dir, "host-am", agentAddr, amPolicy(ownPrefix("am")), "  webhook:\n    token_file: webhook.token\n")
	webhookToken := filepath.Join(dir, "webhook.token")
	if err := os.WriteFile(webhookToken, []byte(newToken()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	startAgent(t, bin, dir, agentAddr)
	srv := newE2EServer(t, bin, cfg, token)
	srv.start(t)

	amConfig := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(amConfig, []byte(fmt.Sprintf(`route:
  receiver: caretaker
  group_by: [alertname, host, uuid]
  group_wait: 0s
  group_interval: 200ms
  repeat_interval: 200ms
receivers:
  - name: caretaker
    webhook_configs:
      - url: http://%s/api/v1/alertmanager
        send_resolved: true
        http_config:
          authorization:
            credentials_file: %s
`, srv.addr, webhookToken)), 0o600); err != nil {
		t.Fatal(err)
	}
	am := testdaemon.Start(t, "prometheus-alertmanager", func(addr string) []string {
		return []string{"--config.file=" + amConfig, "--web.listen-address=" + addr,
			"--storage.path=" + filepath.Join(dir, "am"), "--cluster.listen-address="}
	})

	labels := map[string]string{"alertname": "GuestCrashed", "host": "host-am", "uuid": g.uuid,
		"domain": g.name, "cluster": "e2e", "role": "worker", "severity": "critical"}
	body, _ := json.Marshal([]map[string]any{{"labels": labels}})
	resp, err := http.Post(am+"/api/v2/alerts", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("post alert to Alertmanager: %s", resp.Status)
	}
	fp := amFingerprint(t, am, g.uuid)

	conn, err := libvirtconn.Dial(systemURI)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Disconnect()
	exited := srv.current().exited
	await(t, exited, time.Minute, "a succeeded restart of "+g.name, func() bool {
		recs, err := srv.records(g.uuid)
		return err == nil && len(recs) > 0 && recs[0].State == journal.StateSucceeded
	})
	// Three more deliveries after the success: each is the same alert
	// instance, which must not be acted on again.
	sent := amMetric(t, am, "alertmanager_notifications_total")
	await(t, exited, time.Minute, "Alertmanager to re-send the alert 3 times", func() bool {
		return amMetric(t, am, "alertmanager_notifications_total") >= sent+3
	})

	if n := amMetric(t, am, "alertmanager_notifications_failed_total"); n != 0 {
		t.Errorf("Alertmanager counts %v failed webhook deliveries, want 0 (the server must answer 2xx)", n)
	}
	// A restarted server remembers the instance from its journal: the
	// deliveries that follow change nothing either.
	srv.current().kill()
	srv.start(t)
	exited = srv.current().exited
	sent = amMetric(t, am, "alertmanager_notifications_total")
	await(t, exited, time.Minute, "Alertmanager to re-send the alert 3 times to the restarted server", func() bool {
		return amMetric(t, am, "alertmanager_notifications_total") >= sent+3
	})
	if !domainRunning(conn, g.uuid) {
		t.Errorf("%s does not run", g.name)
	}
	if n := starts.of(g.uuid); n != 1 {
		t.Errorf("libvirt started %s %d times, want exactly 1", g.name, n)
	}
	recs, err := srv.records(g.uuid)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		t.Fatalf("%d journal records for %s, want 1:\n%s", len(recs), g.name, describeRecords(recs))
	}
	r := recs[0]
	if r.State != journal.StateSucceeded || r.Action != "restart-vm" || r.Fingerprint != fp || r.Attempt != 1 {
		t.Errorf("record: want one succeeded restart-vm, attempt 1, for Alertmanager's fingerprint %s; got:\n%s", fp, describeRecords(recs))
	}
	t.Logf("Alertmanager delivered the alert %v times; one action:\n%s",
		amMetric(t, am, "alertmanager_notifications_total"), describeRecords(recs))
}

// amFingerprint returns the fingerprint Alertmanager gives the alert about
// uuid.
func amFingerprint(t *testing.T, am, uuid string) string {
	t.Helper()
	resp, err := http.Get(am + "/api/v2/alerts")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var alerts []struct {
		Fingerprint string            `json:"fingerprint"`
		Labels      map[string]string `json:"labels"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&alerts); err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		if a.Labels["uuid"] == uuid {
			return a.Fingerprint
		}
	}
	t.Fatalf("Alertmanager does not list the alert about %s: %+v", uuid, alerts)
	return ""
}

// amMetric reads name{integration="webhook"} from Alertmanager's /metrics,
// 0 when it is not there.
func amMetric(t *testing.T, am, name string) float64 {
	t.Helper()
	resp, err := http.Get(am + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") || !strings.Contains(line, `integration="webhook"`) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("Alertmanager metric line %q: %v", line, err)
		}
		return v
	}
	return 0
}
