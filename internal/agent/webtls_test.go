package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/agentapi"
	"caretaker/internal/pki"
)

// An agent whose web config requires client certificates of the fleet CA
// and allows only the server's: the server's certificate scrapes and
// acts; no certificate, another CA's, or another certificate of the same
// CA fails the TLS handshake, and nothing is done.
func TestActionsOnlyFromTheServersCertificate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, err := pki.InitCA(dir, "", time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *pki.CA, out, name string, u pki.Usage, sans ...string) {
		t.Helper()
		if _, _, err := ca.Issue(out, pki.Request{Name: name, SANs: sans, Usage: u, Validity: time.Hour}, false); err != nil {
			t.Fatal(err)
		}
	}
	issue(ca, dir, "caretaker-server", pki.Server)
	issue(ca, dir, "intruder", pki.Server) // same CA, not the server
	issue(ca, dir, "host-a", pki.Agent, "127.0.0.1")
	otherDir := t.TempDir()
	other, err := pki.InitCA(otherDir, "other", time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	issue(other, otherDir, "caretaker-server", pki.Server) // the right name, the wrong CA
	f := func(d, name string) string { return filepath.Join(d, name) }
	webCfg := f(dir, "web.yml")
	if err := os.WriteFile(webCfg, fmt.Appendf(nil, "tls_server_config:\n  cert_file: %s\n  key_file: %s\n"+
		"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: %s\n  client_allowed_sans: [caretaker-server]\n",
		f(dir, "host-a.crt"), f(dir, "host-a.key"), f(dir, "ca.crt")), 0o600); err != nil {
		t.Fatal(err)
	}
	if w := webTLSWarnings(webCfg); len(w) != 0 {
		t.Errorf("warnings for a complete web config: %q", w)
	}

	a := newTestAgent(t, Config{Token: token, WebConfigFile: webCfg})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-served })
	base := "https://" + l.Addr().String()

	pem, err := os.ReadFile(f(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	clientWith := func(d, name string) *http.Client {
		cfg := &tls.Config{RootCAs: roots}
		if name != "" {
			kp, err := tls.LoadX509KeyPair(f(d, name+".crt"), f(d, name+".key"))
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{kp}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 30 * time.Second}
	}
	for _, tt := range []struct{ name, dir, cert string }{
		{"no client certificate", dir, ""},
		{"another CA's certificate", otherDir, "caretaker-server"},
		{"another certificate of the CA", dir, "intruder"},
	} {
		c := agentapi.NewClient(base, token, clientWith(tt.dir, tt.cert))
		_, err := c.StartDomain(t.Context(), downUUID)
		var se *agentapi.StatusError
		if err == nil || errors.As(err, &se) || !strings.Contains(err.Error(), "tls") {
			t.Errorf("%s: %v, want a TLS handshake error", tt.name, err)
		}
		if got := stateOf(t, a, downUUID); got != libvirt.DomainShutoff {
			t.Fatalf("%s: the domain's state is %d, want it still shut off", tt.name, got)
		}
	}

	// The server's certificate scrapes and acts.
	serverTLS, err := agentapi.ClientTLS(f(dir, "ca.crt"), f(dir, "caretaker-server.crt"), f(dir, "caretaker-server.key"))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: serverTLS}, Timeout: 30 * time.Second}
	resp, err := hc.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("scrape with the server's certificate: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("scrape with the server's certificate: %d", resp.StatusCode)
	}
	res, err := agentapi.NewClient(base, token, hc).StartDomain(t.Context(), downUUID)
	if err != nil || res.Result != agentapi.ResultStarted {
		t.Fatalf("start with the server's certificate: %+v, %v", res, err)
	}
}

func TestWebTLSWarnings(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tt := range []struct{ name, body, want string }{
		{"basic auth only", "basic_auth_users: {u: $2y$10$x}\n", "plain HTTP"},
		{"TLS without client certificates", "tls_server_config: {cert_file: a, key_file: b}\n", "RequireAndVerifyClientCert"},
		{"any certificate of the CA", "tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAndVerifyClientCert, client_ca_file: c}\n", "client_allowed_sans"},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
		if err := os.WriteFile(p, []byte(tt.body), 0o600); err != nil {
			t.Fatal(err)
		}
		if w := webTLSWarnings(p); len(w) != 1 || !strings.Contains(w[0], tt.want) {
			t.Errorf("%s: %q, want a warning with %q", tt.name, w, tt.want)
		}
	}
	if w := webTLSWarnings(""); len(w) != 1 || !strings.Contains(w[0], "in clear") {
		t.Errorf("no web config: %q", w)
	}
}

// The example web config of deploy/ is the complete one.
func TestAgentWebConfigExample(t *testing.T) {
	t.Parallel()
	if w := webTLSWarnings("../../deploy/agent-web.example.yml"); len(w) != 0 {
		t.Errorf("deploy/agent-web.example.yml: %q", w)
	}
}
