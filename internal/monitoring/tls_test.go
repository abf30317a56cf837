package monitoring

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"caretaker/internal/pki"
)

// tlsAgent serves /metrics over TLS with a certificate for sans, and
// requires a client certificate of the CA in caFile.
func tlsAgent(t *testing.T, ca *pki.CA, caFile string, served *atomic.Int64, sans ...string) string {
	t.Helper()
	dir := t.TempDir()
	crt, key, err := ca.Issue(dir, pki.Request{Name: sans[0], SANs: sans[1:], Usage: pki.Agent, Validity: time.Hour}, false)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		fmt.Fprint(w, "# TYPE caretaker_kvm_domain_state gauge\ncaretaker_kvm_domain_state{uuid=\"u1\"} 1\n")
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{kp}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "https://")
}

// With AgentTLS the agent job scrapes over mTLS: an agent whose
// certificate names its address is up; one whose certificate names another
// host is down and never served a scrape.
func TestScrapeAgentsOverMutualTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, err := pki.InitCA(dir, "", time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.Issue(dir, pki.Request{Name: "caretaker-server", Usage: pki.Server, Validity: time.Hour}, false); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	var goodServed, badServed atomic.Int64
	good := tlsAgent(t, ca, caFile, &goodServed, "kvm-1", "127.0.0.1")
	bad := tlsAgent(t, ca, caFile, &badServed, "kvm-9") // names another host, not 127.0.0.1
	m := startMonitor(t, Options{
		Targets:  []Target{{Host: "kvm-1", Address: good}, {Host: "kvm-2", Address: bad}},
		AgentTLS: &TLSFiles{CAFile: caFile, CertFile: filepath.Join(dir, "caretaker-server.crt"), KeyFile: filepath.Join(dir, "caretaker-server.key")},
	})
	deadline := time.Now().Add(waitLimit)
	for {
		ts := m.Targets()
		if len(ts) == 2 && ts[0].Health == "up" && ts[1].Health == "down" {
			if !strings.Contains(ts[1].LastError, "certificate") {
				t.Errorf("kvm-2's scrape error %q does not name the certificate", ts[1].LastError)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("targets %+v: want kvm-1 up, kvm-2 down", ts)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		vec, err := m.Query(t.Context(), `up{job="caretaker-agent"}`, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		up := map[string]float64{}
		for _, s := range vec {
			up[s.Metric.Get(HostLabel)] = s.F
		}
		if len(up) == 2 {
			if up["kvm-1"] != 1 || up["kvm-2"] != 0 {
				t.Errorf("up = %v, want kvm-1 1, kvm-2 0", up)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("up = %v", up)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := badServed.Load(); n != 0 {
		t.Errorf("the agent with another host's certificate served %d scrapes", n)
	}
}

// The agents' job gets scheme https and the TLS files; the server's own
// job stays plain http.
func TestPromConfigAgentTLS(t *testing.T) {
	t.Parallel()
	opts := &Options{ScrapeInterval: 5 * time.Second, ScrapeTimeout: 4 * time.Second, EvaluationInterval: 5 * time.Second,
		SelfAddress: "127.0.0.1:9300", AgentTLS: &TLSFiles{CAFile: "/pki/ca.crt", CertFile: "/pki/s.crt", KeyFile: "/pki/s.key"}}
	cfg, err := promConfig(opts, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	scs, err := cfg.GetScrapeConfigs()
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range scs {
		tc := sc.HTTPClientConfig.TLSConfig
		switch sc.JobName {
		case JobName:
			if sc.Scheme != "https" || tc.CAFile != "/pki/ca.crt" || tc.CertFile != "/pki/s.crt" || tc.KeyFile != "/pki/s.key" || tc.InsecureSkipVerify {
				t.Errorf("agents' job: scheme %s, tls %+v", sc.Scheme, tc)
			}
		case ServerJobName:
			if sc.Scheme != "http" || tc.CAFile != "" {
				t.Errorf("server's job: scheme %s, tls %+v", sc.Scheme, tc)
			}
		}
	}
}
