package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"caretaker/internal/agent"
	"caretaker/internal/config"
	"caretaker/internal/pki"
	"caretaker/remediation/journal"
)

// downUUID is a shut-off domain of the agent's test-driver node.
const downUUID = "0b000000-0000-4000-8000-000000000002"

// startTLSAgent serves a real agent on libvirt's test driver over TLS with
// client certificates required (exporter-toolkit web config), and returns
// its address. Its certificate is issued for sans.
func startTLSAgent(t *testing.T, ca *pki.CA, dir, token string, sans ...string) string {
	t.Helper()
	crt, key, err := ca.Issue(dir, pki.Request{Name: sans[0], SANs: sans[1:], Usage: pki.Agent, Validity: time.Hour}, false)
	if err != nil {
		t.Fatal(err)
	}
	web := filepath.Join(dir, sans[0]+"-web.yml")
	writeFile(t, web, fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\n  client_auth_type: RequireAndVerifyClientCert\n"+
		"  client_ca_file: %s\n  client_allowed_sans: [caretaker-server]\n", crt, key, filepath.Join(dir, "ca.crt")), 0o600)
	node, err := filepath.Abs("../agent/testdata/node.xml")
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{LibvirtURI: "test://" + node, Token: token, WebConfigFile: web,
		ProcFS: "../../collectors/host/testdata/proc", SysFS: "../../collectors/host/testdata/sys", RootFS: t.TempDir(),
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done; a.Close() })
	return l.Addr().String()
}

func writeFile(t *testing.T, path, body string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
}

// A server with agents.tls scrapes a TLS agent (up 1) and heals through it
// over mTLS, sending host-a its own token; host-b, whose address answers
// with a certificate naming another host, is down and gets nothing.
func TestAgentsOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.InitCA(dir, "", time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.Issue(dir, pki.Request{Name: "caretaker-server", Usage: pki.Server, Validity: time.Hour}, false); err != nil {
		t.Fatal(err)
	}
	common, ownA := testToken("agents-common"), testToken("host-a-own")
	writeFile(t, filepath.Join(dir, "api.token"), testToken("api")+"\n", 0o600)
	writeFile(t, filepath.Join(dir, "webhook.token"), testToken("webhook")+"\n", 0o600)
	writeFile(t, filepath.Join(dir, "agent.token"), common+"\n", 0o600)
	writeFile(t, filepath.Join(dir, "host-a.token"), ownA+"\n", 0o600)
	// host-a's agent accepts only its own token: the common one would be 401.
	addrA := startTLSAgent(t, ca, dir, ownA, "host-a", "127.0.0.1")
	// "host-b" was added with an address whose agent holds the certificate
	// of host-z, which does not name 127.0.0.1.
	addrB := startTLSAgent(t, ca, dir, common, "host-z")
	writeFile(t, filepath.Join(dir, "server.yml"), fmt.Sprintf(`data_dir: data
api: {token_file: api.token}
remediation: {webhook: {token_file: webhook.token}}
prometheus: {scrape_interval: 200ms, scrape_timeout: 200ms, evaluation_interval: 200ms}
agents:
  token_file: agent.token
  tls: {ca_file: ca.crt, cert_file: caretaker-server.crt, key_file: caretaker-server.key}
hosts:
  - {name: host-a, agent: "%s", token_file: host-a.token}
  - {name: host-b, agent: "%s"}
`, addrA, addrB), 0o600)
	cfg, err := config.Load(filepath.Join(dir, "server.yml"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(context.Background(), Options{Config: cfg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	deadline := time.Now().Add(30 * time.Second)
	for {
		ts := s.monitor.Targets()
		if len(ts) == 2 && ts[0].Health == "up" && ts[1].Health == "down" {
			if !strings.Contains(ts[1].LastError, "certificate") {
				t.Errorf("host-b's scrape error %q does not name the certificate", ts[1].LastError)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("targets %+v: want host-a up, host-b down", ts)
		}
		time.Sleep(50 * time.Millisecond)
	}
	vec, err := s.monitor.Query(t.Context(), `caretaker_kvm_domain_state{host="host-a",uuid="`+downUUID+`"}`, time.Now())
	if err != nil || len(vec) != 1 {
		t.Fatalf("host-a's domain over TLS: %v, %v", vec, err)
	}

	// host-b: the handshake fails on its certificate, before any request
	// (and so the token) is written.
	if err := s.agents.StartGuest(t.Context(), "host-b", downUUID); err == nil || !strings.Contains(err.Error(), "failed to verify certificate") {
		t.Errorf("start a guest on host-b: %v, want a certificate error", err)
	}

	// host-a: a crashed guest is healed over mTLS, with host-a's token.
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	body := `{"version":"4","status":"firing","receiver":"caretaker","groupKey":"{}:{}","alerts":[{"status":"firing",
		"labels":{"alertname":"GuestCrashed","host":"host-a","uuid":"` + downUUID + `","domain":"down"},
		"annotations":{},"startsAt":"2026-11-25T12:00:00Z","endsAt":"0001-01-01T00:00:00Z"}]}`
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/v1/alertmanager", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testToken("webhook"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("webhook: %d", resp.StatusCode)
	}
	for {
		recs, err := s.journal.List(0)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 1 && (recs[0].State == journal.StateSucceeded || recs[0].State == journal.StateFailed) {
			if recs[0].State != journal.StateSucceeded {
				t.Errorf("host-a: restart %s: %s", recs[0].State, recs[0].Error)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal: %+v", recs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A host's own token comes from hosts[].token_file or, for hosts of the
// inventory or the API, from agents.tokens; the others get agents.token_file's.
func TestHostTokens(t *testing.T) {
	dir := t.TempDir()
	for name, tok := range map[string]string{"api.token": "api", "agent.token": "common", "a.token": "own-a", "b.token": "own-b"} {
		writeFile(t, filepath.Join(dir, name), testToken(tok)+"\n", 0o600)
	}
	writeFile(t, filepath.Join(dir, "server.yml"), `data_dir: data
api: {token_file: api.token}
agents:
  token_file: agent.token
  tokens: [{host: hv-b, token_file: b.token}]
hosts:
  - {name: hv-a, agent: "10.0.0.1:9301", token_file: a.token}
  - {name: hv-c, agent: "10.0.0.3:9301"}
`, 0o600)
	cfg, err := config.Load(filepath.Join(dir, "server.yml"))
	if err != nil {
		t.Fatal(err)
	}
	in, err := load(Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"hv-a": testToken("own-a"), "hv-b": testToken("own-b")}
	if len(in.hostTokens) != len(want) || in.hostTokens["hv-a"] != want["hv-a"] || in.hostTokens["hv-b"] != want["hv-b"] {
		t.Errorf("host tokens %v, want %v", in.hostTokens, want)
	}
	if in.agentToken != testToken("common") {
		t.Errorf("common token %q", in.agentToken)
	}
}
