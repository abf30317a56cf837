package agentapi_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"caretaker/internal/agentapi"
	"caretaker/internal/pki"
)

// fleetPKI is a CA with the server's client certificate.
type fleetPKI struct {
	dir string
	ca  *pki.CA
}

func newFleetPKI(t *testing.T) fleetPKI {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.InitCA(dir, "", time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.Issue(dir, pki.Request{Name: "caretaker-server", Usage: pki.Server, Validity: time.Hour}, false); err != nil {
		t.Fatal(err)
	}
	return fleetPKI{dir: dir, ca: ca}
}

func (p fleetPKI) file(name string) string { return filepath.Join(p.dir, name) }

func (p fleetPKI) clientTLS(t *testing.T) *tls.Config {
	t.Helper()
	c, err := agentapi.ClientTLS(p.file("ca.crt"), p.file("caretaker-server.crt"), p.file("caretaker-server.key"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tlsAgent is an agent's TLS listener that requires a client certificate
// of the fleet's CA and records the tokens the requests carried.
type tlsAgent struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []string // Authorization headers received
}

func (a *tlsAgent) addr() string { return strings.TrimPrefix(a.srv.URL, "https://") }
func (a *tlsAgent) received() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.got...)
}

// startTLSAgent serves with a certificate for name and sans issued by
// issuer, trusting client certificates of clientCA.
func startTLSAgent(t *testing.T, issuer *pki.CA, clientCA fleetPKI, name string, sans ...string) *tlsAgent {
	t.Helper()
	dir := t.TempDir()
	crt, key, err := issuer.Issue(dir, pki.Request{Name: name, SANs: sans, Usage: pki.Agent, Validity: time.Hour}, false)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(clientCA.file("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	a := &tlsAgent{}
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.got = append(a.got, r.Header.Get("Authorization"))
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"uuid":"u","name":"g","state":"running"}`))
	}))
	a.srv.TLS = &tls.Config{Certificates: []tls.Certificate{kp}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	a.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake errors are the point
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	return a
}

// Over TLS each host's agent gets its own token, or the common one, and
// only once its certificate verified.
func TestHostsOverTLSSendOwnTokens(t *testing.T) {
	p := newFleetPKI(t)
	agentA := startTLSAgent(t, p.ca, p, "host-a", "127.0.0.1")
	agentB := startTLSAgent(t, p.ca, p, "host-b", "127.0.0.1")
	hosts := agentapi.NewHostsWith(agentapi.HostsOptions{Token: "common", Tokens: map[string]string{"host-a": "own-a"}, TLS: p.clientTLS(t)})
	hosts.Add("host-a", agentA.addr())
	hosts.Add("host-b", agentB.addr())
	for _, h := range []string{"host-a", "host-b"} {
		if running, err := hosts.GuestRunning(t.Context(), h, "u"); err != nil || !running {
			t.Fatalf("%s over TLS: running %v, %v", h, running, err)
		}
	}
	if got := agentA.received(); len(got) != 1 || got[0] != "Bearer own-a" {
		t.Errorf("host-a received %q, want its own token", got)
	}
	if got := agentB.received(); len(got) != 1 || got[0] != "Bearer common" {
		t.Errorf("host-b received %q, want the common token", got)
	}
}

// An address whose certificate names another host, or comes from another
// CA, gets no request and so no token: the handshake fails first.
func TestHostsOverTLSRefuseOtherCertificates(t *testing.T) {
	p := newFleetPKI(t)
	other, err := pki.InitCA(t.TempDir(), "other", time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		agent *tlsAgent
		want  string
	}{
		// An admin adds host "evil" with an address whose agent holds
		// host-b's certificate (not naming that address).
		{"certificate of another host", startTLSAgent(t, p.ca, p, "host-b"), "failed to verify certificate: x509: cannot validate certificate for 127.0.0.1"},
		{"certificate of another CA", startTLSAgent(t, other, p, "evil", "127.0.0.1"), "failed to verify certificate: x509: certificate signed by unknown authority"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hosts := agentapi.NewHostsWith(agentapi.HostsOptions{Token: "secret-token", TLS: p.clientTLS(t)})
			hosts.Add("evil", tt.agent.addr())
			err := hosts.StartGuest(t.Context(), "evil", "u")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("start guest on evil: %v, want an error with %q", err, tt.want)
			}
			if got := tt.agent.received(); len(got) != 0 {
				t.Errorf("the agent received requests %q", got)
			}
		})
	}
}

// Without TLS configured, Hosts speak plain http, as before.
func TestHostsWithoutTLSUseHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"state":"running"}`))
	}))
	defer srv.Close()
	hosts := agentapi.NewHosts("t")
	hosts.Add("h", strings.TrimPrefix(srv.URL, "http://"))
	if ok, err := hosts.GuestRunning(t.Context(), "h", "u"); err != nil || !ok {
		t.Fatalf("plain http: %v, %v", ok, err)
	}
}

func TestClientTLSErrorsNameTheFile(t *testing.T) {
	p := newFleetPKI(t)
	if _, err := agentapi.ClientTLS(p.file("missing.crt"), p.file("caretaker-server.crt"), p.file("caretaker-server.key")); err == nil || !strings.Contains(err.Error(), "missing.crt") {
		t.Errorf("missing CA: %v", err)
	}
	if _, err := agentapi.ClientTLS(p.file("caretaker-server.key"), p.file("caretaker-server.crt"), p.file("caretaker-server.key")); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("key as CA: %v", err)
	}
	if _, err := agentapi.ClientTLS(p.file("ca.crt"), p.file("caretaker-server.crt"), p.file("ca.key")); err == nil {
		t.Error("mismatched key: no error")
	}
}
