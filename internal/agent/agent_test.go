package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/agentapi"
	"caretaker/internal/golden"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
)

const (
	token = "s3cret-token"

	upUUID     = "0b000000-0000-4000-8000-000000000001"
	downUUID   = "0b000000-0000-4000-8000-000000000002"
	frozenUUID = "0b000000-0000-4000-8000-000000000003"
	noneUUID   = "0b000000-0000-4000-8000-0000000000ff"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newTestAgent returns an agent on its own copy of testdata/node.xml.
func newTestAgent(t *testing.T, cfg Config) *Agent {
	t.Helper()
	node, err := filepath.Abs(filepath.Join("testdata", "node.xml"))
	if err != nil {
		t.Fatal(err)
	}
	needs.Libvirtd(t)
	cfg.LibvirtURI = "test://" + node
	cfg.Logger = testLogger(t)
	// The host collector reads fixtures, not the machine the test runs on.
	if cfg.ProcFS == "" && cfg.SysFS == "" && cfg.RootFS == "" {
		cfg.ProcFS, cfg.SysFS = "../../collectors/host/testdata/proc", "../../collectors/host/testdata/sys"
		cfg.RootFS = t.TempDir()
	}
	if cfg.ScrapeTimeout == 0 {
		cfg.ScrapeTimeout = time.Minute
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// stateOf reads a domain's state through the agent's own libvirt
// connection: each connection to a test driver node file has its own copy
// of the domains.
func stateOf(t *testing.T, a *Agent, uuid string) libvirt.DomainState {
	t.Helper()
	conn, err := a.conn.Get()
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	dom, err := libvirtconn.LookupDomain(conn, uuid)
	if err != nil {
		t.Fatalf("look up %s: %v", uuid, err)
	}
	state, _, err := conn.DomainGetState(dom, 0)
	if err != nil {
		t.Fatalf("state of %s: %v", uuid, err)
	}
	return libvirt.DomainState(state)
}

func TestUnauthorized(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		agentToken  string
		method      string
		path        string
		auth        string // Authorization header; empty sends none
		wantMessage string
	}{
		{"no token", token, "POST", "/api/v1/domains/" + downUUID + "/start", "", "missing bearer token"},
		{"wrong token", token, "POST", "/api/v1/domains/" + downUUID + "/start", "Bearer nope", "invalid bearer token"},
		{"token prefix", token, "POST", "/api/v1/domains/" + downUUID + "/start", "Bearer " + token[:4], "invalid bearer token"},
		{"token as basic auth", token, "POST", "/api/v1/domains/" + downUUID + "/start", "Basic " + token, "missing bearer token"},
		{"empty bearer", token, "POST", "/api/v1/domains/" + downUUID + "/start", "Bearer ", "missing bearer token"},
		{"actions disabled", "", "POST", "/api/v1/domains/" + downUUID + "/start", "Bearer " + token, "actions are disabled"},
		{"actions disabled, empty bearer", "", "POST", "/api/v1/domains/" + downUUID + "/start", "Bearer ", "actions are disabled"},
		// Authentication comes before routing and lookups: nothing
		// about the host is revealed without the token.
		{"unknown uuid", token, "GET", "/api/v1/domains/" + noneUUID, "", "missing bearer token"},
		{"malformed uuid", token, "GET", "/api/v1/domains/nope", "Bearer nope", "invalid bearer token"},
		{"wrong method", token, "GET", "/api/v1/domains/" + downUUID + "/start", "", "missing bearer token"},
		{"unknown endpoint", token, "GET", "/api/v1/hosts", "", "missing bearer token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAgent(t, Config{Token: tt.agentToken})
			req := httptest.NewRequest(tt.method, tt.path, nil)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			rec := httptest.NewRecorder()
			a.Handler().ServeHTTP(rec, req)

			if rec.Code != http.StatusUnauthorized {
				t.Errorf("status %d, want 401", rec.Code)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			var body apiError
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || !strings.Contains(body.Error, tt.wantMessage) {
				t.Errorf("body %s, want a JSON error containing %q", rec.Body, tt.wantMessage)
			}
			if got := stateOf(t, a, downUUID); got != libvirt.DomainShutoff {
				t.Errorf("domain state %d after a refused request, want it still shut off (5)", got)
			}
		})
	}
}

func TestStartDomain(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{Token: token})
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	c := agentapi.NewClient(srv.URL, token, srv.Client())

	got, err := c.StartDomain(t.Context(), downUUID)
	if err != nil {
		t.Fatalf("StartDomain: %v", err)
	}
	want := agentapi.StartResult{Result: agentapi.ResultStarted, Domain: agentapi.Domain{
		UUID: downUUID, Name: "down", State: "running", StateCode: 1, ReasonCode: 1,
	}}
	if got != want {
		t.Errorf("StartDomain:\n got %+v\nwant %+v", got, want)
	}
	if state := stateOf(t, a, downUUID); state != libvirt.DomainRunning {
		t.Errorf("libvirt reports state %d after start, want running (1)", state)
	}

	got, err = c.StartDomain(t.Context(), downUUID)
	if err != nil {
		t.Fatalf("second StartDomain: %v", err)
	}
	want.Result = agentapi.ResultAlreadyRunning
	if got != want {
		t.Errorf("second StartDomain:\n got %+v\nwant %+v", got, want)
	}
}

func TestClientErrors(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{Token: token})
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)

	tests := []struct {
		name     string
		token    string
		call     func(*agentapi.Client) error
		wantCode int
		wantMsg  string
	}{
		{
			name:     "unknown uuid",
			token:    token,
			call:     func(c *agentapi.Client) error { _, err := c.Domain(t.Context(), noneUUID); return err },
			wantCode: http.StatusNotFound,
			wantMsg:  "no domain with uuid " + noneUUID,
		},
		{
			name:     "start unknown uuid",
			token:    token,
			call:     func(c *agentapi.Client) error { _, err := c.StartDomain(t.Context(), noneUUID); return err },
			wantCode: http.StatusNotFound,
			wantMsg:  "no domain with uuid",
		},
		{
			name:  "malformed uuid",
			token: token,
			call: func(c *agentapi.Client) error {
				_, err := c.Domain(t.Context(), "0b000000-0000-4000-8000-00000000000g")
				return err
			},
			wantCode: http.StatusBadRequest,
			wantMsg:  "malformed domain uuid",
		},
		{
			name:     "name instead of uuid",
			token:    token,
			call:     func(c *agentapi.Client) error { _, err := c.StartDomain(t.Context(), "down"); return err },
			wantCode: http.StatusBadRequest,
			wantMsg:  "malformed domain uuid",
		},
		{
			name:     "wrong token",
			token:    "nope",
			call:     func(c *agentapi.Client) error { _, err := c.Domain(t.Context(), upUUID); return err },
			wantCode: http.StatusUnauthorized,
			wantMsg:  "invalid bearer token",
		},
		{
			// A paused domain cannot be started, only resumed: libvirt
			// refuses, and its message reaches the caller.
			name:     "libvirt refuses",
			token:    token,
			call:     func(c *agentapi.Client) error { _, err := c.StartDomain(t.Context(), frozenUUID); return err },
			wantCode: http.StatusBadGateway,
			wantMsg:  "already running",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(agentapi.NewClient(srv.URL, tt.token, srv.Client()))
			var se *agentapi.StatusError
			if !errors.As(err, &se) {
				t.Fatalf("got %v, want a *StatusError", err)
			}
			if se.Code != tt.wantCode || !strings.Contains(se.Msg, tt.wantMsg) {
				t.Errorf("got %d %q, want %d with a message containing %q", se.Code, se.Msg, tt.wantCode, tt.wantMsg)
			}
		})
	}
	if state := stateOf(t, a, frozenUUID); state != libvirt.DomainPaused {
		t.Errorf("paused domain is in state %d after the refused start, want paused (3)", state)
	}
}

func TestDomain(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{Token: token})
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	c := agentapi.NewClient(srv.URL+"/", token, srv.Client())

	tests := []struct {
		uuid string
		want agentapi.Domain
	}{
		{upUUID, agentapi.Domain{UUID: upUUID, Name: "up", State: "running", StateCode: 1}},
		{downUUID, agentapi.Domain{UUID: downUUID, Name: "down", State: "shut off", StateCode: 5}},
		{strings.ToUpper(frozenUUID), agentapi.Domain{UUID: frozenUUID, Name: "frozen", State: "paused", StateCode: 3}},
	}
	for _, tt := range tests {
		got, err := c.Domain(t.Context(), tt.uuid)
		if err != nil {
			t.Errorf("Domain(%s): %v", tt.uuid, err)
			continue
		}
		if got != tt.want {
			t.Errorf("Domain(%s):\n got %+v\nwant %+v", tt.uuid, got, tt.want)
		}
	}
}

func TestDomainFilter(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{Token: token, DomainFilter: regexp.MustCompile(`^up$`)})
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	c := agentapi.NewClient(srv.URL, token, srv.Client())

	if _, err := c.Domain(t.Context(), upUUID); err != nil {
		t.Errorf("Domain of a matching domain: %v", err)
	}
	var se *agentapi.StatusError
	if _, err := c.Domain(t.Context(), downUUID); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Errorf("Domain of a filtered-out domain: got %v, want 404", err)
	}
	if _, err := c.StartDomain(t.Context(), downUUID); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Errorf("StartDomain of a filtered-out domain: got %v, want 404", err)
	}
	if state := stateOf(t, a, downUUID); state != libvirt.DomainShutoff {
		t.Errorf("filtered-out domain is in state %d, want it still shut off (5)", state)
	}

	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), "\ncaretaker_kvm_domains 1\n") {
		t.Errorf("/metrics does not count the one matching domain")
	}
}

func TestMethodNotAllowed(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{Token: token})
	tests := []struct {
		method, path, allow string
	}{
		{"GET", "/api/v1/domains/" + downUUID + "/start", "POST"},
		{"PUT", "/api/v1/domains/" + downUUID + "/start", "POST"},
		{"POST", "/api/v1/domains/" + downUUID, "GET"},
		{"DELETE", "/api/v1/domains/" + downUUID, "GET"},
	}
	for _, tt := range tests {
		req := httptest.NewRequest(tt.method, tt.path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != tt.allow {
			t.Errorf("%s %s: status %d, Allow %q; want 405, Allow %q", tt.method, tt.path, rec.Code, rec.Header().Get("Allow"), tt.allow)
		}
	}
	if state := stateOf(t, a, downUUID); state != libvirt.DomainShutoff {
		t.Errorf("domain state %d, want it still shut off (5)", state)
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{Token: token})
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d: %s", rec.Code, rec.Body)
	}
	body := rec.Body.String()
	for _, want := range []string{
		"\ncaretaker_kvm_up 1\n",
		"\ncaretaker_kvm_domains 3\n",
		"\ncaretaker_scrape_collector_success{collector=\"kvm\"} 1\n",
		"\ncaretaker_scrape_collector_duration_seconds{collector=\"kvm\"} ",
		"\ngo_goroutines ",
		"\nprocess_start_time_seconds ",
		"\npromhttp_metric_handler_requests_total{code=\"200\"} ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
		}
	}
	t.Run("promtool", func(t *testing.T) { golden.CheckMetrics(t, rec.Body.Bytes()) })
}

// TestHostKVM: the host collector looks for the KVM device under
// --path.rootfs, not at the machine's /dev/kvm, and a host whose guests
// are of domain type qemu (TCG) declares it needs no KVM.
func TestHostKVM(t *testing.T) {
	t.Parallel()
	withKVM := t.TempDir()
	if err := os.Mkdir(filepath.Join(withKVM, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A character device every Linux machine has, standing in for kvm.
	if err := os.Symlink("/dev/null", filepath.Join(withKVM, "dev", "kvm")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, root, domainType string
		present, required      string
	}{
		{"kvm host without /dev/kvm", t.TempDir(), "kvm", "0", "1"},
		{"kvm host with /dev/kvm", withKVM, "kvm", "1", "1"},
		{"TCG host without /dev/kvm", t.TempDir(), "qemu", "0", "0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestAgent(t, Config{
				ProcFS: "../../collectors/host/testdata/proc", SysFS: "../../collectors/host/testdata/sys",
				RootFS: tt.root, GuestDomainType: tt.domainType,
			})
			rec := httptest.NewRecorder()
			a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics?collect[]=host", nil))
			body := rec.Body.String()
			for _, want := range []string{
				"\ncaretaker_host_kvm_device_present " + tt.present + "\n",
				"\ncaretaker_host_kvm_required " + tt.required + "\n",
			} {
				if !strings.Contains(body, want) {
					t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
				}
			}
		})
	}
}

func TestLandingPage(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{})
	for path, want := range map[string]int{"/": 200, "/nope": 404} {
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != want {
			t.Errorf("GET %s: status %d, want %d", path, rec.Code, want)
		}
	}
}

func TestNewRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"negative scrape timeout", Config{ScrapeTimeout: -time.Second}, "scrape timeout -1s is negative"},
		{"missing web config", Config{WebConfigFile: "/nonexistent/web.yml"}, "/nonexistent/web.yml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(tt.cfg)
			if err == nil {
				a.Close()
				t.Fatalf("New succeeded, want an error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestServe serves on a real listener, acts through it, and shuts down when
// the context is cancelled.
func TestServe(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{Token: token})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx, l) }()

	base := "http://" + l.Addr().String()
	c := agentapi.NewClient(base, token, nil)
	res, err := c.StartDomain(t.Context(), downUUID)
	if err != nil || res.Result != agentapi.ResultStarted {
		t.Fatalf("StartDomain over the listener: %+v, %v", res, err)
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /metrics: status %d", resp.StatusCode)
	}

	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
	if _, err := http.Get(base + "/metrics"); err == nil {
		t.Errorf("listener still answers after Serve returned")
	}
}

// TestServeWebConfig serves with an exporter-toolkit web config: TLS and
// basic auth on /metrics.
func TestServeWebConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certPEM := writeSelfSignedCert(t, dir)
	webConfig := filepath.Join(dir, "web.yml")
	// The password is "scrape-secret" (bcrypt, cost 4).
	err := os.WriteFile(webConfig, []byte(`tls_server_config:
  cert_file: `+filepath.Join(dir, "cert.pem")+`
  key_file: `+filepath.Join(dir, "key.pem")+`
basic_auth_users:
  prometheus: $2a$04$DzMoT4tO9ZvJxtyOFw0vq.8TJ82VZDFNZZTTW/2AKbrZtq8gV2hxq
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	a := newTestAgent(t, Config{WebConfigFile: webConfig})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	url := "https://" + l.Addr().String() + "/metrics"

	tests := []struct {
		name     string
		user     string
		password string
		want     int
	}{
		{"no credentials", "", "", http.StatusUnauthorized},
		{"wrong password", "prometheus", "nope", http.StatusUnauthorized},
		{"right password", "prometheus", "scrape-secret", http.StatusOK},
	}
	for _, tt := range tests {
		req, err := http.NewRequestWithContext(t.Context(), "GET", url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if tt.user != "" {
			req.SetBasicAuth(tt.user, tt.password)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s: GET /metrics over TLS: %v", tt.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, resp.StatusCode, tt.want)
		}
		if tt.want == http.StatusOK && !bytes.Contains(body, []byte("caretaker_kvm_up 1")) {
			t.Errorf("%s: /metrics lacks caretaker_kvm_up 1", tt.name)
		}
	}
}

// writeSelfSignedCert writes cert.pem and key.pem for 127.0.0.1 into dir
// and returns the certificate's PEM.
func writeSelfSignedCert(t *testing.T, dir string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "caretaker agent test"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certPEM
}

func TestStateName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		state libvirt.DomainState
		want  string
	}{
		{libvirt.DomainNostate, "no state"},
		{libvirt.DomainRunning, "running"},
		{libvirt.DomainBlocked, "idle"},
		{libvirt.DomainPaused, "paused"},
		{libvirt.DomainShutdown, "in shutdown"},
		{libvirt.DomainShutoff, "shut off"},
		{libvirt.DomainCrashed, "crashed"},
		{libvirt.DomainPmsuspended, "pmsuspended"},
		{libvirt.DomainState(42), "unknown (42)"},
	}
	for _, tt := range tests {
		if got := stateName(tt.state); got != tt.want {
			t.Errorf("stateName(%d) = %q, want %q", tt.state, got, tt.want)
		}
	}
}

func TestValidUUID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want bool
	}{
		{"0b000000-0000-4000-8000-000000000001", true},
		{"0B0000AF-0000-4000-8000-00000000000F", true},
		{"0b000000000040008000000000000001", false},
		{"0b000000-0000-4000-8000-00000000000", false},
		{"0b000000-0000-4000-8000-0000000000011", false},
		{"0b000000-0000-4000-8000_000000000001", false},
		{"0b000000-0000-4000-8000-00000000000g", false},
		{"", false},
		{"../../../../etc/passwd-aaaaaaaaaaaaaa", false},
	}
	for _, tt := range tests {
		if got := validUUID(tt.in); got != tt.want {
			t.Errorf("validUUID(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
