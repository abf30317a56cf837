package intake

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"caretaker/internal/authlimit"
	"caretaker/remediation"
)

const testToken = "s3cret-token"

// serve runs Handler on a real listener.
func serve(t testing.TB, opts Options) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(Handler(opts))
	t.Cleanup(srv.Close)
	return srv
}

type reply struct {
	code int
	body string
	hdr  http.Header
}

func post(t testing.TB, client *http.Client, url, method, auth string, body io.Reader) reply {
	t.Helper()
	req, err := http.NewRequest(method, url+Path, body)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return reply{resp.StatusCode, string(b), resp.Header}
}

// handled collects what the handler hands to the engine.
type handled struct {
	mu     sync.Mutex
	alerts []remediation.Alert
}

func (h *handled) handle(_ context.Context, as []remediation.Alert) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.alerts = append(h.alerts, as...)
}

func TestHandlerRefuses(t *testing.T) {
	in, _ := openInbox(t)
	var got handled
	m := newTestMetrics(t)
	srv := serve(t, Options{Inbox: in, Token: testToken, BodyLimit: 4096, OnAlerts: got.handle, Metrics: m})
	good := string(readTestdata(t, "good/firing.json"))
	for _, tc := range []struct {
		name, method, auth string
		body               io.Reader
		code               int
		want               string
	}{
		{"no token", "POST", "", strings.NewReader(good), 401, `{"error":"missing or invalid bearer token or client certificate"}`},
		{"wrong token", "POST", "Bearer nope", strings.NewReader(good), 401, `{"error":"missing or invalid bearer token or client certificate"}`},
		{"token prefix", "POST", "Bearer " + testToken[:5], strings.NewReader(good), 401, `{"error":"missing or invalid bearer token or client certificate"}`},
		{"basic auth", "POST", "Basic " + testToken, strings.NewReader(good), 401, `{"error":"missing or invalid bearer token or client certificate"}`},
		{"no token, wrong method", "GET", "", nil, 401, `{"error":"missing or invalid bearer token or client certificate"}`},
		{"GET", "GET", "Bearer " + testToken, nil, 405, `{"error":"GET is not allowed on /api/v1/alertmanager"}`},
		{"PUT", "PUT", "Bearer " + testToken, strings.NewReader(good), 405, `{"error":"PUT is not allowed on /api/v1/alertmanager"}`},
		{"too large, by length", "POST", "Bearer " + testToken, strings.NewReader(good + strings.Repeat(" ", 4096)), 413,
			`{"error":"alertmanager webhook: request body too large: over 4096 bytes"}`},
		// Without a Content-Length the limit is found while reading.
		{"too large, chunked", "POST", "Bearer " + testToken, io.MultiReader(strings.NewReader(good), strings.NewReader(strings.Repeat(" ", 4096))), 413,
			`{"error":"alertmanager webhook: request body too large: over 4096 bytes"}`},
		{"malformed", "POST", "Bearer " + testToken, strings.NewReader(`{"version":`), 400,
			`{"error":"invalid alertmanager webhook: malformed JSON: unexpected end of JSON input"}`},
		{"version 3", "POST", "Bearer " + testToken, strings.NewReader(strings.Replace(good, `"version": "4"`, `"version": "3"`, 1)), 400,
			`{"error":"invalid alertmanager webhook: version: got \"3\", want \"4\""}`},
		{"bad alert", "POST", "Bearer " + testToken, bytes.NewReader(readTestdata(t, "bad/zero-startsat.json")), 400,
			`{"error":"invalid alertmanager webhook: alerts[2].startsAt: missing"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := post(t, srv.Client(), srv.URL, tc.method, tc.auth, tc.body)
			if r.code != tc.code || strings.TrimSpace(r.body) != tc.want {
				t.Errorf("answer %d %s\nwant %d %s", r.code, r.body, tc.code, tc.want)
			}
			if tc.code == 401 && r.hdr.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			if tc.code == 405 && r.hdr.Get("Allow") != "POST" {
				t.Errorf("405 with Allow %q", r.hdr.Get("Allow"))
			}
		})
	}
	// Nothing was recorded, nothing was seen: the good payload is new.
	if s := summary(t, in); s != nil || len(got.alerts) != 0 {
		t.Fatalf("refused requests left %q pending, %d handled", s, len(got.alerts))
	}
	r := post(t, srv.Client(), srv.URL, "POST", "Bearer "+testToken, strings.NewReader(good))
	if r.code != 200 || strings.TrimSpace(r.body) != `{"status":"success","recorded":2}` {
		t.Errorf("after the refusals: %d %s", r.code, r.body)
	}
	for code, want := range map[string]float64{"200": 1, "400": 3, "401": 5, "405": 2, "413": 2, "500": 0} {
		if n := testutil.ToFloat64(m.deliveries.WithLabelValues(code)); n != want {
			t.Errorf("deliveries with code %s = %v, want %v", code, n, want)
		}
	}
}

func newTestMetrics(t *testing.T) *Metrics {
	t.Helper()
	m, err := NewMetrics(prometheus.NewPedanticRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestNewMetricsTwice(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if _, err := NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	_, err := NewMetrics(reg)
	if err == nil || !strings.HasPrefix(err.Error(), "register intake metrics: ") {
		t.Fatalf("second NewMetrics on one registry = %v, want a registration error", err)
	}
	// The metrics lint clean and all exist from the start.
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) != 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 18 {
		t.Errorf("%d series at start (%v), want 18", n, err)
	}
}

func TestHandlerRecordsOnce(t *testing.T) {
	in, _ := openInbox(t)
	m := newTestMetrics(t)
	srv := serve(t, Options{Inbox: in, Token: testToken, Metrics: m})
	body := readTestdata(t, "good/firing.json")
	for i, want := range []string{`{"status":"success","recorded":2}`, `{"status":"success","recorded":0}`,
		`{"status":"success","recorded":0}`, `{"status":"success","recorded":0}`, `{"status":"success","recorded":0}`} {
		// The scheme is case-insensitive.
		r := post(t, srv.Client(), srv.URL, "POST", "bearer "+testToken, bytes.NewReader(body))
		if r.code != 200 || strings.TrimSpace(r.body) != want || r.hdr.Get("Content-Type") != "application/json" {
			t.Errorf("post %d: %d %s %s, want 200 %s", i, r.code, r.hdr.Get("Content-Type"), r.body, want)
		}
	}
	// Without OnAlerts the entries wait for Replay.
	want := []string{"kvm-1 firing 2026-11-25T14:00:00Z", "kvm-2 firing 2026-11-25T13:00:30Z"}
	got := summary(t, in)
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("pending %q, want %q", got, want)
	}
	if r, d := testutil.ToFloat64(m.alerts.WithLabelValues("recorded")), testutil.ToFloat64(m.alerts.WithLabelValues("duplicate")); r != 2 || d != 8 {
		t.Errorf("alerts recorded %v duplicate %v, want 2 and 8", r, d)
	}
}

func TestHandlerHandsToEngineAndAcks(t *testing.T) {
	in, _ := openInbox(t)
	var got handled
	srv := serve(t, Options{Inbox: in, Token: testToken, OnAlerts: got.handle})
	firing := readTestdata(t, "good/firing.json")
	for range 3 {
		if r := post(t, srv.Client(), srv.URL, "POST", "Bearer "+testToken, bytes.NewReader(firing)); r.code != 200 {
			t.Fatalf("%d %s", r.code, r.body)
		}
	}
	// Every delivery reaches the engine (it retries failed actions on
	// re-sends and acts once per instance); the inbox holds nothing.
	if len(got.alerts) != 6 {
		t.Errorf("engine got %d alerts, want 2 per delivery", len(got.alerts))
	}
	if s := summary(t, in); s != nil {
		t.Errorf("pending after handling: %q", s)
	}
	got.alerts = nil
	if r := post(t, srv.Client(), srv.URL, "POST", "Bearer "+testToken, bytes.NewReader(readTestdata(t, "good/resolved.json"))); r.code != 200 {
		t.Fatalf("%d %s", r.code, r.body)
	}
	if len(got.alerts) != 1 || got.alerts[0].Status != "resolved" || got.alerts[0].Fingerprint != "5f2b1b9a0c3d4e6f" {
		t.Errorf("engine got %+v, want the resolution", got.alerts)
	}
}

// A delivery that cannot be recorded gets 5xx, so Alertmanager retries.
func TestHandlerRecordFails(t *testing.T) {
	in, _ := openInbox(t)
	var got handled
	srv := serve(t, Options{Inbox: in, Token: testToken, OnAlerts: got.handle})
	in.Close()
	r := post(t, srv.Client(), srv.URL, "POST", "Bearer "+testToken, bytes.NewReader(readTestdata(t, "good/firing.json")))
	if r.code != 500 || !strings.Contains(r.body, "record 2 alerts in the intake inbox: database not open") {
		t.Errorf("answer %d %s, want 500 naming the failure", r.code, r.body)
	}
	if len(got.alerts) != 0 {
		t.Errorf("engine got %d alerts that were not recorded", len(got.alerts))
	}
}

func TestHandlerClientCertificate(t *testing.T) {
	ca, caKey := newCA(t)
	in, _ := openInbox(t)
	srv := httptest.NewUnstartedServer(Handler(Options{Inbox: in, Token: testToken, ClientCerts: true, ClientSubjects: []string{"alertmanager-1", "am.example.org"}}))
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv.TLS = &tls.Config{ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	clientWith := func(cert *tls.Certificate) *http.Client {
		c := srv.Client()
		tr := c.Transport.(*http.Transport).Clone()
		if cert != nil {
			tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
		}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr}
	}
	body := readTestdata(t, "good/firing.json")
	for _, tc := range []struct {
		name   string
		client *http.Client
		auth   string
		code   int
	}{
		{"no certificate, no token", clientWith(nil), "", 401},
		{"no certificate, token", clientWith(nil), "Bearer " + testToken, 200},
		{"certificate of another CN", clientWith(newLeaf(t, ca, caKey, "grafana")), "", 401},
		{"allowed certificate", clientWith(newLeaf(t, ca, caKey, "alertmanager-1")), "", 200},
		{"allowed DNS name", clientWith(newLeaf(t, ca, caKey, "someone", "am.example.org")), "", 200},
		{"other DNS name", clientWith(newLeaf(t, ca, caKey, "someone", "grafana.example.org")), "", 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := post(t, tc.client, srv.URL, "POST", tc.auth, bytes.NewReader(body)); r.code != tc.code {
				t.Errorf("answer %d %s, want %d", r.code, r.body, tc.code)
			}
		})
	}
}

// Without configured subjects no client certificate is taken, however
// good its CA: the same CA signs other clients.
func TestHandlerClientCertificateNeedsSubjects(t *testing.T) {
	ca, caKey := newCA(t)
	in, _ := openInbox(t)
	srv := httptest.NewUnstartedServer(Handler(Options{Inbox: in, ClientCerts: true}))
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv.TLS = &tls.Config{ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	tr := srv.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.Certificates = []tls.Certificate{*newLeaf(t, ca, caKey, "alertmanager-1")}
	t.Cleanup(tr.CloseIdleConnections)
	if r := post(t, &http.Client{Transport: tr}, srv.URL, "POST", "", bytes.NewReader(readTestdata(t, "good/firing.json"))); r.code != 401 {
		t.Errorf("answer %d %s, want 401", r.code, r.body)
	}
}

// Each of the webhook's tokens is taken; an empty one never matches.
func TestHandlerTokens(t *testing.T) {
	in, _ := openInbox(t)
	srv := serve(t, Options{Inbox: in, Tokens: []string{"", "am-token-1", "am-token-2"}})
	for _, tc := range []struct {
		auth string
		code int
	}{{"Bearer am-token-1", 200}, {"Bearer am-token-2", 200}, {"Bearer ", 401}, {"Bearer " + testToken, 401}} {
		if r := post(t, srv.Client(), srv.URL, "POST", tc.auth, bytes.NewReader(readTestdata(t, "good/firing.json"))); r.code != tc.code {
			t.Errorf("%q: answer %d %s, want %d", tc.auth, r.code, r.body, tc.code)
		}
	}
}

// An alert that starts far in the future (year 9999) or before alerting
// existed is refused, the delivery with it, naming each such alert; a few
// seconds of clock skew are fine.
func TestHandlerStartsAtBounds(t *testing.T) {
	in, _ := openInbox(t)
	now := time.Date(2026, 11, 25, 14, 0, 0, 0, time.UTC)
	m := newTestMetrics(t)
	srv := serve(t, Options{Inbox: in, Token: testToken, Now: func() time.Time { return now }, Metrics: m})
	body := func(starts ...string) string {
		var as []string
		for i, s := range starts {
			as = append(as, fmt.Sprintf(`{"status":"firing","labels":{"alertname":"A%d"},"annotations":{},"startsAt":%q,"endsAt":"0001-01-01T00:00:00Z","fingerprint":"%016x"}`, i, s, i+1))
		}
		return `{"version":"4","status":"firing","receiver":"r","groupKey":"g","alerts":[` + strings.Join(as, ",") + `]}`
	}
	for _, tc := range []struct {
		body string
		code int
		want string
	}{
		{body("9999-01-01T00:00:00Z", "2026-11-25T13:00:00Z"), 400,
			`{"error":"invalid alertmanager webhook: alerts[0].startsAt: 9999-01-01T00:00:00Z (alert A0) is more than 5m0s ahead of this server's clock (2026-11-25T14:00:00Z)"}`},
		{body("2026-11-25T13:00:00Z", "1970-01-01T00:00:01Z", "2026-11-25T14:06:00Z"), 400,
			`{"error":"invalid alertmanager webhook: alerts[1].startsAt: 1970-01-01T00:00:01Z (alert A1) is before 2015-01-01: a broken clock; alerts[2].startsAt: 2026-11-25T14:06:00Z (alert A2) is more than 5m0s ahead of this server's clock (2026-11-25T14:00:00Z)"}`},
		{body("2026-11-25T14:04:00Z", "2016-01-01T00:00:00Z"), 200, ""},
	} {
		r := post(t, srv.Client(), srv.URL, "POST", "Bearer "+testToken, strings.NewReader(tc.body))
		if r.code != tc.code || (tc.want != "" && strings.TrimSpace(r.body) != tc.want) {
			t.Errorf("answer %d %s\nwant %d %s", r.code, r.body, tc.code, tc.want)
		}
	}
	if n := len(summary(t, in)); n != 2 {
		t.Errorf("inbox holds %d entries, want the 2 of the good delivery", n)
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca, key
}

func newLeaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, dnsNames ...string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn}, DNSNames: dnsNames,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// A full inbox refuses a delivery with 503 and Retry-After, so
// Alertmanager retries it; nothing reaches the engine.
func TestHandlerInboxFull(t *testing.T) {
	in, _ := openInbox(t)
	in.SetMaxEntries(1)
	var got handled
	m := newTestMetrics(t)
	srv := serve(t, Options{Inbox: in, Token: testToken, OnAlerts: got.handle, Metrics: m})
	r := post(t, srv.Client(), srv.URL, "POST", "Bearer "+testToken, bytes.NewReader(readTestdata(t, "good/firing.json")))
	if r.code != 503 || r.hdr.Get("Retry-After") == "" || !strings.Contains(r.body, "the intake inbox is full") {
		t.Errorf("answer %d (Retry-After %q) %s, want 503 saying the inbox is full", r.code, r.hdr.Get("Retry-After"), r.body)
	}
	if len(got.alerts) != 0 || in.Len() != 0 {
		t.Errorf("engine got %d alerts, inbox holds %d; want none", len(got.alerts), in.Len())
	}
	if n := testutil.ToFloat64(m.deliveries.WithLabelValues("503")); n != 1 {
		t.Errorf("deliveries with code 503 = %v, want 1", n)
	}
}

// Failed authentications are counted by reason; a client that keeps
// failing gets 429 with Retry-After, even with the right token.
func TestHandlerAuthFailuresLimited(t *testing.T) {
	in, _ := openInbox(t)
	m := newTestMetrics(t)
	srv := serve(t, Options{Inbox: in, Token: testToken, Metrics: m})
	good := readTestdata(t, "good/firing.json")
	if r := post(t, srv.Client(), srv.URL, "POST", "", bytes.NewReader(good)); r.code != 401 {
		t.Fatalf("no token: %d", r.code)
	}
	for i := 1; i < authlimit.DefaultMaxFailures; i++ {
		if r := post(t, srv.Client(), srv.URL, "POST", "Bearer nope", bytes.NewReader(good)); r.code != 401 {
			t.Fatalf("failure %d: %d, want 401", i+1, r.code)
		}
	}
	r := post(t, srv.Client(), srv.URL, "POST", "Bearer "+testToken, bytes.NewReader(good))
	if r.code != 429 || r.hdr.Get("Retry-After") == "" {
		t.Errorf("good token after %d failures: %d (Retry-After %q) %s, want 429", authlimit.DefaultMaxFailures, r.code, r.hdr.Get("Retry-After"), r.body)
	}
	if s := summary(t, in); s != nil {
		t.Errorf("a refused delivery was recorded: %q", s)
	}
	for reason, want := range map[string]float64{"missing": 1, "invalid": float64(authlimit.DefaultMaxFailures - 1), "rate_limited": 1} {
		if got := testutil.ToFloat64(m.authFailed.WithLabelValues(reason)); got != want {
			t.Errorf("auth failures{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	if n := testutil.ToFloat64(m.deliveries.WithLabelValues("429")); n != 1 {
		t.Errorf("deliveries with code 429 = %v, want 1", n)
	}
}
