package pxe

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"caretaker/internal/golden"
)

var (
	testSecret = []byte("test-secret-not-for-production")
	testNow    = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	testExp    = testNow.Add(DefaultTokenTTL)
)

// The attempts in flight in the handler tests: hv-a1 (two groups by
// UUID), hv-c5 (a script profile) and a host the default group serves.
var (
	attemptA1 = Attempt{Host: "hv-a1", MAC: "52:54:00:aa:bb:01", Number: 1, Nonce: "0123456789abcdef0123456789abcdef"}
	attemptC5 = Attempt{Host: "hv-c5", MAC: "52:54:00:aa:bb:5c", Number: 2, Nonce: "fedcba9876543210fedcba9876543210"}
	attempt99 = Attempt{Host: "spare", MAC: "52:54:00:00:00:99", Number: 1, Nonce: "00112233445566778899aabbccddeeff"}
)

func served(a Attempt) Attempt { a.ScriptServed = true; return a }

// tokenQuery is the query a rendered URL of a carries.
func tokenQuery(purpose string, a Attempt, exp time.Time) string {
	return fmt.Sprintf("mac=%s&attempt=%d&exp=%d&token=%s", a.MAC, a.Number, exp.Unix(), AttemptToken(testSecret, purpose, a, exp))
}

func newTestHandler(t testing.TB, cfg *Config, attempts Attempts) http.Handler {
	t.Helper()
	var logs bytes.Buffer
	t.Cleanup(func() {
		// The secret and the tokens derived from it must never reach the log.
		if bytes.Contains(logs.Bytes(), []byte("token=")) || bytes.Contains(logs.Bytes(), testSecret) {
			t.Errorf("log holds a token or the secret:\n%s", logs.String())
		}
	})
	return NewHandler(cfg, Options{
		BaseURL:  "http://10.0.0.1:9300/", // the trailing slash must not double up
		Secret:   testSecret,
		Attempts: attempts,
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
		Now:      func() time.Time { return testNow },
	})
}

func loadTest(t testing.TB, path string) *Config {
	t.Helper()
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func do(h http.Handler, method, target string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec
}

func TestHandler(t *testing.T) {
	t.Parallel()
	full := loadTest(t, "testdata/good/full.yml")
	noDefault := loadTest(t, "testdata/good/minimal.yml")
	broken := &Config{
		Profiles: []Profile{
			{ID: "missing-key", Kernel: "/k", Args: []string{"x={{ .Group.Metadata.absent }}"}},
			{ID: "bad-json", Kernel: "/k", Ignition: `{"ignition": {{ .MAC }}}`},
			{ID: "newline", Kernel: "/k", Args: []string{"a\nshell"}},
			{ID: "script-missing-key", Script: "echo {{ .Group.Metadata.absent }}"},
		},
		Groups: []Group{
			{ID: "a", Profile: "missing-key", Selector: map[string]string{"mac": "52:54:00:aa:bb:01"}},
			{ID: "b", Profile: "bad-json", Selector: map[string]string{"mac": "52:54:00:aa:bb:5c"}},
			{ID: "c", Profile: "newline", Selector: map[string]string{"mac": "52:54:00:00:00:99"}},
			{ID: "d", Profile: "script-missing-key", Selector: map[string]string{"mac": "52:54:00:00:00:0d"}},
		},
	}
	cfgToken := "&" + tokenQuery(purposeConfig, attemptA1, testExp)
	cfgTokenC5 := "&" + tokenQuery(purposeConfig, attemptC5, testExp)
	// The configs are the attempt's once its script was served.
	installing := []Attempt{served(attemptA1), served(attemptC5), served(attempt99)}

	tests := []struct {
		name     string
		cfg      *Config
		attempts []Attempt // in flight; default attemptA1, attemptC5, attempt99 before their scripts
		method   string
		target   string
		code     int
		ctype    string
		golden   string // file under testdata/golden with the exact body
		contain  string // else a substring of the body
	}{
		{"chain script", full, nil, "GET", "/pxe/boot.ipxe", 200, "text/plain; charset=utf-8", "boot.ipxe", ""},
		{"ipxe by hyphenated upper-case mac", full, nil, "GET", "/pxe/ipxe?mac=52-54-00-AA-BB-01&uuid=", 200, "text/plain; charset=utf-8", "hv-a1.ipxe", ""},
		{"ipxe by mac and uuid", full, nil, "GET", "/pxe/ipxe?mac=52-54-00-aa-bb-01&uuid=4C4C4544-0031-3510-8052-B2C04F4A4E31", 200, "", "hv-a1-reinstall.ipxe", ""},
		{"ipxe of a script profile", full, nil, "GET", "/pxe/ipxe?mac=52-54-00-aa-bb-5c", 200, "text/plain; charset=utf-8", "report-only.ipxe", ""},
		{"ipxe of a provisioning host no group selects: default group", full, nil, "GET", "/pxe/ipxe?mac=52:54:00:00:00:99", 200, "", "rescue.ipxe", ""},
		{"ipxe with no group matching", noDefault, nil, "GET", "/pxe/ipxe?mac=52:54:00:00:00:99", 404, "text/plain; charset=utf-8", "", `no group matches mac="52:54:00:00:00:99" uuid=""`},
		{"ipxe of a host not being provisioned", full, nil, "GET", "/pxe/ipxe?mac=52:54:00:00:00:42", 404, "", "", "no provisioning in flight for mac 52:54:00:00:00:42"},
		{"ipxe served once per attempt", full, installing, "GET", "/pxe/ipxe?mac=52:54:00:aa:bb:01", 409, "", "", "the iPXE script of attempt 1 was served already"},
		{"ipxe without a mac", full, nil, "GET", "/pxe/ipxe?uuid=00000000-0000-0000-0000-0000000000b2", 400, "", "", `query parameter "mac" is required`},
		{"ipxe with a malformed mac", full, nil, "GET", "/pxe/ipxe?mac=52-54-00-aa-bb", 400, "text/plain; charset=utf-8", "", `query parameter "mac": invalid MAC address "52-54-00-aa-bb"`},
		{"ipxe with a malformed uuid", full, nil, "GET", "/pxe/ipxe?mac=52:54:00:aa:bb:01&uuid=xyz", 400, "", "", `query parameter "uuid": invalid UUID "xyz"`},
		{"ipxe with a repeated mac", full, nil, "GET", "/pxe/ipxe?mac=52:54:00:aa:bb:01&mac=52:54:00:aa:bb:02", 400, "", "", `query parameter "mac" given 2 times`},
		{"ipxe with a bad label name", full, nil, "GET", "/pxe/ipxe?Rack=b", 400, "", "", `invalid label name "Rack"`},
		{"ignition", full, installing, "GET", "/pxe/ignition?" + cfgToken[1:], 200, "application/vnd.coreos.ignition+json", "hv-a1.ign", ""},
		{"ignition before the script was served", full, nil, "GET", "/pxe/ignition?" + cfgToken[1:], 409, "", "", "attempt 1 has not fetched its iPXE script"},
		{"ignition without a token", full, installing, "GET", "/pxe/ignition?mac=52:54:00:aa:bb:01", 401, "", "", "no attempt token"},
		{"ignition of a profile without one", full, installing, "GET", "/pxe/ignition?uuid=4c4c4544-0031-3510-8052-b2c04f4a4e31" + cfgToken, 404, "", "", `profile "debian-install" has no ignition config`},
		{"ignition with no group matching", noDefault, installing, "GET", "/pxe/ignition?" + cfgToken[1:], 404, "", "", "no group matches"},
		{"ignition with a malformed mac", full, installing, "GET", "/pxe/ignition?mac=zz", 400, "", "", "invalid MAC address"},
		{"ignition of a host not being provisioned", full, []Attempt{served(attemptC5)}, "GET", "/pxe/ignition?" + cfgToken[1:], 404, "", "", "no provisioning in flight"},
		{"cloud-config", full, installing, "GET", "/pxe/cloud-config?uuid=4c4c4544-0031-3510-8052-b2c04f4a4e31" + cfgToken, 200, "text/plain; charset=utf-8", "hv-a1-reinstall.cloud-config", ""},
		{"cloud-config with another host's token", full, installing, "GET", "/pxe/cloud-config?uuid=4c4c4544-0031-3510-8052-b2c04f4a4e31&" +
			strings.Replace(cfgTokenC5[1:], attemptC5.MAC, attemptA1.MAC, 1), 403, "", "", "token of attempt \"2\", but attempt 1 is in flight"},
		{"cloud-config by uuid alone", full, installing, "GET", "/pxe/cloud-config?uuid=00000000-0000-0000-0000-0000000000b2", 400, "", "", `query parameter "mac" is required`},
		{"cloud-config of a profile without one", full, installing, "GET", "/pxe/cloud-config?" + cfgToken[1:], 404, "", "", `profile "flatcar-install" has no cloud-config`},
		{"template names an absent key", broken, nil, "GET", "/pxe/ipxe?mac=52:54:00:aa:bb:01", 500, "", "", `render ipxe of profile "missing-key"`},
		{"script names an absent key", broken, []Attempt{{Host: "d", MAC: "52:54:00:00:00:0d", Number: 1, Nonce: "n"}}, "GET", "/pxe/ipxe?mac=52:54:00:00:00:0d", 500, "", "", `render ipxe of profile "script-missing-key"`},
		{"ignition renders to invalid JSON", broken, installing, "GET", "/pxe/ignition?" + cfgTokenC5[1:], 500, "", "", "ignition renders to invalid JSON"},
		{"argument would inject an iPXE command", broken, nil, "GET", "/pxe/ipxe?mac=52:54:00:00:00:99", 500, "", "", "args[0] renders to a line break"},
		{"POST to a GET route", full, nil, "POST", "/pxe/ipxe?mac=52:54:00:aa:bb:01", 405, "", "", ""},
		{"PUT of the callback", full, nil, "PUT", "/pxe/booted?mac=52:54:00:aa:bb:01", 405, "", "", ""},
		{"unknown path", full, nil, "GET", "/pxe/menu.ipxe", 404, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			as := tt.attempts
			if as == nil {
				as = []Attempt{attemptA1, attemptC5, attempt99}
			}
			f := newFakeAttempts(as...)
			rec := do(newTestHandler(t, tt.cfg, f), tt.method, tt.target)
			body := rec.Body.Bytes()
			if rec.Code != tt.code {
				t.Fatalf("status %d, want %d; body:\n%s", rec.Code, tt.code, body)
			}
			if ct := rec.Header().Get("Content-Type"); tt.ctype != "" && ct != tt.ctype {
				t.Errorf("Content-Type %q, want %q", ct, tt.ctype)
			}
			if tt.golden != "" {
				golden.Compare(t, "testdata/golden/"+tt.golden, body, *update)
			}
			if !strings.Contains(string(body), tt.contain) {
				t.Errorf("body %q does not contain %q", body, tt.contain)
			}
			// Only a 200 for an iPXE script takes the attempt's one serving.
			if wantServed := tt.code == 200 && strings.HasPrefix(tt.target, "/pxe/ipxe"); (len(f.served) == 1) != wantServed {
				t.Errorf("scripts served %v, want one: %v", f.served, wantServed)
			}
		})
	}
}

// A host that is not being provisioned gets no script and no config, so
// none of its group's metadata (all of which counts as secret).
func TestNothingForHostsNotProvisioning(t *testing.T) {
	t.Parallel()
	f := newFakeAttempts() // nothing in flight
	h := newTestHandler(t, loadTest(t, "testdata/good/full.yml"), f)
	for _, target := range []string{
		"/pxe/ipxe?mac=52:54:00:aa:bb:01",
		"/pxe/ipxe?mac=52:54:00:aa:bb:01&uuid=4c4c4544-0031-3510-8052-b2c04f4a4e31",
		"/pxe/cloud-config?mac=52:54:00:aa:bb:01&uuid=4c4c4544-0031-3510-8052-b2c04f4a4e31",
		"/pxe/cloud-config?uuid=4c4c4544-0031-3510-8052-b2c04f4a4e31&" + tokenQuery(purposeConfig, attemptA1, testExp),
		"/pxe/ignition?mac=52:54:00:aa:bb:01",
		"/pxe/ipxe?mac=52:54:00:aa:bb:5c",
	} {
		rec := do(h, "GET", target)
		if rec.Code != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", target, rec.Code)
		}
		for _, secret := range []string{"hv-a1", "ttyS0", "hv-c5", "token=", "/pxe/booted"} {
			if strings.Contains(rec.Body.String(), secret) {
				t.Errorf("GET %s: body holds %q:\n%s", target, secret, rec.Body)
			}
		}
	}
	if len(f.served) != 0 || len(f.refused) != 6 {
		t.Errorf("served %v, refused %q; want none served and every request recorded", f.served, f.refused)
	}
}

func TestCallback(t *testing.T) {
	t.Parallel()
	cfg := loadTest(t, "testdata/good/full.yml")
	a := attemptA1
	earlier := a
	earlier.Nonce = "ffffffffffffffffffffffffffffffff" // the same number in an earlier provisioning
	other := attemptC5
	other.MAC = a.MAC
	forged := func(q string) string { return strings.Replace(q, "token=", "token=00", 1)[:len(q)] }

	tests := []struct {
		name  string
		query string
		code  int
		ok    bool
	}{
		{"good token", tokenQuery(purposeBooted, a, testExp), 204, true},
		{"good token, mac in iPXE's hyphenated upper case, uuid",
			strings.Replace(tokenQuery(purposeBooted, a, testExp), "mac="+a.MAC, "mac=52-54-00-AA-BB-01&uuid=4C4C4544-0031-3510-8052-B2C04F4A4E31", 1), 204, true},
		{"forged token", forged(tokenQuery(purposeBooted, a, testExp)), 403, false},
		{"token of an earlier attempt (nonce)", tokenQuery(purposeBooted, earlier, testExp), 403, false},
		{"token of another attempt number", tokenQuery(purposeBooted, other, testExp), 403, false},
		{"config token", tokenQuery(purposeConfig, a, testExp), 403, false},
		{"expired token", tokenQuery(purposeBooted, a, testNow), 403, false},
		{"expiry moved later", strings.Replace(tokenQuery(purposeBooted, a, testExp), fmt.Sprint(testExp.Unix()), fmt.Sprint(testExp.Unix()+3600), 1), 403, false},
		{"token under another secret", strings.Replace(tokenQuery(purposeBooted, a, testExp), AttemptToken(testSecret, purposeBooted, a, testExp),
			AttemptToken([]byte("another-secret"), purposeBooted, a, testExp), 1), 403, false},
		{"token in upper case", strings.Replace(tokenQuery(purposeBooted, a, testExp), AttemptToken(testSecret, purposeBooted, a, testExp),
			strings.ToUpper(AttemptToken(testSecret, purposeBooted, a, testExp)), 1), 403, false},
		{"no token", "mac=" + a.MAC, 401, false},
		{"no mac", "token=" + AttemptToken(testSecret, purposeBooted, a, testExp), 400, false},
		{"malformed mac", "mac=52:54:00&token=x&exp=1", 400, false},
		{"malformed uuid", tokenQuery(purposeBooted, a, testExp) + "&uuid=u", 400, false},
		{"host not being provisioned", strings.Replace(tokenQuery(purposeBooted, a, testExp), a.MAC, "52:54:00:00:00:42", 1), 409, false},
	}
	// GET is for iPXE builds that cannot POST; both check the token alike.
	for _, method := range []string{"POST", "GET"} {
		for _, tt := range tests {
			t.Run(method+" "+tt.name, func(t *testing.T) {
				f := newFakeAttempts(served(a))
				h := newTestHandler(t, cfg, f)
				rec := do(h, method, "/pxe/booted?"+tt.query)
				if rec.Code != tt.code {
					t.Fatalf("status %d, want %d; body %q", rec.Code, tt.code, rec.Body)
				}
				if got := len(f.completed); got != map[bool]int{true: 1}[tt.ok] {
					t.Errorf("%d completions, want ok %v", got, tt.ok)
				}
				if !tt.ok && tt.code != 400 && len(f.refused) != 1 {
					t.Errorf("refusals recorded %q, want one", f.refused)
				}
				if tt.ok {
					// One time: the replay finds no attempt in flight.
					if rec := do(h, method, "/pxe/booted?"+tt.query); rec.Code != http.StatusConflict {
						t.Errorf("replay: status %d, want 409", rec.Code)
					}
				}
			})
		}
	}
	// Before the script was served the callback is not expected.
	f := newFakeAttempts(a)
	if rec := do(newTestHandler(t, cfg, f), "POST", "/pxe/booted?"+tokenQuery(purposeBooted, a, testExp)); rec.Code != http.StatusConflict || len(f.completed) != 0 {
		t.Errorf("callback before the script: status %d, %d completions; want 409 and none", rec.Code, len(f.completed))
	}
}

// Without a secret every token could be computed by anyone, without the
// state machine nothing is known to be provisioning: serve only the chain.
func TestHandlerNotConfigured(t *testing.T) {
	t.Parallel()
	cfg := loadTest(t, "testdata/good/full.yml")
	f := newFakeAttempts(attemptA1)
	for name, h := range map[string]http.Handler{
		"no secret":   NewHandler(cfg, Options{BaseURL: "http://10.0.0.1:9300", Attempts: f}),
		"no attempts": NewHandler(cfg, Options{BaseURL: "http://10.0.0.1:9300", Secret: testSecret}),
	} {
		for _, target := range []string{"/pxe/ipxe?mac=52:54:00:aa:bb:01", "/pxe/booted?" + tokenQuery(purposeBooted, attemptA1, testExp)} {
			if rec := do(h, "GET", target); rec.Code != http.StatusServiceUnavailable || strings.Contains(rec.Body.String(), "hv-a1") {
				t.Errorf("%s: GET %s: status %d, body %q; want 503", name, target, rec.Code, rec.Body)
			}
		}
		if rec := do(h, "GET", "/pxe/boot.ipxe"); rec.Code != 200 {
			t.Errorf("%s: chain script: status %d", name, rec.Code)
		}
	}
	if len(f.served) != 0 {
		t.Errorf("served %v", f.served)
	}
}

var (
	ignitionURLRE = regexp.MustCompile(`http://10\.0\.0\.1:9300/pxe/ignition\?[^" \\]+`)
	callbackURLRE = regexp.MustCompile(`http://10\.0\.0\.1:9300/pxe/booted\?[^" \\]+`)
)

// A host follows the URLs in what it is served, over a real HTTP server:
// the iPXE script names the Ignition config, which names the callback,
// which is taken once.
func TestURLsFromRenderedConfigs(t *testing.T) {
	t.Parallel()
	f := newFakeAttempts(attemptA1)
	srv := httptest.NewServer(newTestHandler(t, loadTest(t, "testdata/good/full.yml"), f))
	defer srv.Close()
	local := func(u string) string { return strings.Replace(u, "http://10.0.0.1:9300", srv.URL, 1) }
	get := func(u string) (int, string) {
		t.Helper()
		resp, err := http.Get(local(u))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}

	code, script := get("http://10.0.0.1:9300/pxe/ipxe?mac=52-54-00-aa-bb-01")
	ign := ignitionURLRE.FindString(script)
	if code != 200 || ign == "" {
		t.Fatalf("ipxe: status %d, no ignition URL in:\n%s", code, script)
	}
	code, body := get(ign)
	cb := callbackURLRE.FindString(body)
	if code != 200 || cb == "" {
		t.Fatalf("ignition: status %d, no callback URL in:\n%s", code, body)
	}
	for i, want := range []int{http.StatusNoContent, http.StatusConflict} {
		post, err := http.Post(local(cb), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		post.Body.Close()
		if post.StatusCode != want {
			t.Errorf("callback %d: status %d, want %d", i+1, post.StatusCode, want)
		}
	}
	if len(f.completed) != 1 {
		t.Errorf("%d completions, want 1", len(f.completed))
	}
	// The attempt is over: its configs are no longer served.
	if code, body := get(ign); code != http.StatusNotFound || strings.Contains(body, "hv-a1") {
		t.Errorf("ignition after completion: status %d, body %q", code, body)
	}
}

func FuzzParseLabels(f *testing.F) {
	for _, q := range []string{
		"mac=${net0/mac:hexhyp}&uuid=${uuid}",
		"mac=52-54-00-AA-BB-01&uuid=",
		"mac=52:54:00:aa:bb:01&uuid=4C4C4544-0031-3510-8052-B2C04F4A4E31",
		"uuid=00000000-0000-0000-0000-0000000000b2",
		"rack=b&mac=5254.00aa.bb01",
		"mac=a&mac=b",
		"%zz",
	} {
		f.Add(q)
	}
	h := NewHandler(loadTestF(f), Options{BaseURL: "http://10.0.0.1:9300", Secret: testSecret,
		Attempts: newFakeAttempts(attemptA1, attemptC5, attempt99)})
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err == nil {
			labels, err := ParseLabels(q)
			if err == nil {
				if m, ok := labels["mac"]; ok {
					if n, err := NormalizeMAC(m); err != nil || n != m {
						t.Errorf("mac label %q is not canonical (%q, %v)", m, n, err)
					}
				}
				if u, ok := labels["uuid"]; ok && u != strings.ToLower(u) {
					t.Errorf("uuid label %q is not lower case", u)
				}
			}
		}
		// Whatever the query, the handler answers 200, 400, 404 or 409
		// (the script was served), never 500.
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, &http.Request{Method: "GET", URL: &url.URL{Path: "/pxe/ipxe", RawQuery: raw}})
		if rec.Code != 200 && rec.Code != 400 && rec.Code != 404 && rec.Code != 409 {
			t.Errorf("GET /pxe/ipxe?%s: status %d: %s", raw, rec.Code, rec.Body)
		}
	})
}

func loadTestF(f *testing.F) *Config {
	cfg, err := Load("testdata/good/full.yml")
	if err != nil {
		f.Fatal(err)
	}
	return cfg
}

// BenchmarkIPXE measures one boot script request: parse, match, render.
func BenchmarkIPXE(b *testing.B) {
	cfg, err := Load("testdata/good/full.yml")
	if err != nil {
		b.Fatal(err)
	}
	f := newFakeAttempts(attemptA1)
	h := NewHandler(cfg, Options{BaseURL: "http://10.0.0.1:9300", Secret: testSecret, Attempts: f})
	req := httptest.NewRequest("GET", "/pxe/ipxe?mac=52-54-00-AA-BB-01&uuid=4C4C4544-0031-3510-8052-B2C04F4A4E31", nil)
	for b.Loop() {
		f.attempts[attemptA1.MAC].ScriptServed = false // served once per attempt
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatalf("status %d", rec.Code)
		}
	}
}
