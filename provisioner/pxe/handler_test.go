package pxe

import (
	"bytes"
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
)

func newTestHandler(t *testing.T, cfg *Config, onBooted func(Booted)) http.Handler {
	t.Helper()
	var logs bytes.Buffer
	t.Cleanup(func() {
		// The secret and the tokens derived from it must never reach the log.
		if bytes.Contains(logs.Bytes(), []byte("token=")) || bytes.Contains(logs.Bytes(), testSecret) {
			t.Errorf("log holds a callback token or the secret:\n%s", logs.String())
		}
	})
	return NewHandler(cfg, Options{
		BaseURL:  "http://10.0.0.1:9300/", // the trailing slash must not double up
		Secret:   testSecret,
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
		OnBooted: onBooted,
		Now:      func() time.Time { return testNow },
	})
}

func loadTest(t *testing.T, path string) *Config {
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
	full := newTestHandler(t, loadTest(t, "testdata/good/full.yml"), nil)
	noDefault := newTestHandler(t, loadTest(t, "testdata/good/minimal.yml"), nil)
	broken := newTestHandler(t, &Config{
		Profiles: []Profile{
			{ID: "missing-key", Kernel: "/k", Args: []string{"x={{ .Group.Metadata.absent }}"}},
			{ID: "bad-json", Kernel: "/k", Ignition: `{"ignition": {{ .MAC }}}`},
			{ID: "newline", Kernel: "/k", Args: []string{"a\nshell"}},
			{ID: "script-missing-key", Script: "echo {{ .Group.Metadata.absent }}"},
		},
		Groups: []Group{
			{ID: "a", Profile: "missing-key", Selector: map[string]string{"mac": "52:54:00:00:00:0a"}},
			{ID: "b", Profile: "bad-json", Selector: map[string]string{"mac": "52:54:00:00:00:0b"}},
			{ID: "c", Profile: "newline", Selector: map[string]string{"mac": "52:54:00:00:00:0c"}},
			{ID: "d", Profile: "script-missing-key", Selector: map[string]string{"mac": "52:54:00:00:00:0d"}},
		},
	}, nil)

	tests := []struct {
		name    string
		h       http.Handler
		method  string
		target  string
		code    int
		ctype   string
		golden  string // file under testdata/golden with the exact body
		contain string // else a substring of the body
	}{
		{"chain script", full, "GET", "/pxe/boot.ipxe", 200, "text/plain; charset=utf-8", "boot.ipxe", ""},
		{"ipxe by hyphenated upper-case mac", full, "GET", "/pxe/ipxe?mac=52-54-00-AA-BB-01&uuid=", 200, "text/plain; charset=utf-8", "hv-a1.ipxe", ""},
		{"ipxe by mac and uuid", full, "GET", "/pxe/ipxe?mac=52-54-00-aa-bb-01&uuid=4C4C4544-0031-3510-8052-B2C04F4A4E31", 200, "", "hv-a1-reinstall.ipxe", ""},
		{"ipxe of a script profile", full, "GET", "/pxe/ipxe?mac=52-54-00-aa-bb-5c", 200, "text/plain; charset=utf-8", "report-only.ipxe", ""},
		{"ipxe of an unknown host: default group", full, "GET", "/pxe/ipxe?mac=52:54:00:00:00:99", 200, "", "rescue.ipxe", ""},
		{"ipxe with no group matching", noDefault, "GET", "/pxe/ipxe?mac=52:54:00:00:00:99", 404, "text/plain; charset=utf-8", "", `no group matches mac="52:54:00:00:00:99" uuid=""`},
		{"ipxe with a malformed mac", full, "GET", "/pxe/ipxe?mac=52-54-00-aa-bb", 400, "text/plain; charset=utf-8", "", `query parameter "mac": invalid MAC address "52-54-00-aa-bb"`},
		{"ipxe with a malformed uuid", full, "GET", "/pxe/ipxe?mac=52:54:00:aa:bb:01&uuid=xyz", 400, "", "", `query parameter "uuid": invalid UUID "xyz"`},
		{"ipxe with a repeated mac", full, "GET", "/pxe/ipxe?mac=52:54:00:aa:bb:01&mac=52:54:00:aa:bb:02", 400, "", "", `query parameter "mac" given 2 times`},
		{"ipxe with a bad label name", full, "GET", "/pxe/ipxe?Rack=b", 400, "", "", `invalid label name "Rack"`},
		{"ignition", full, "GET", "/pxe/ignition?mac=52:54:00:aa:bb:01", 200, "application/vnd.coreos.ignition+json", "hv-a1.ign", ""},
		{"ignition of a profile without one", full, "GET", "/pxe/ignition?mac=52:54:00:aa:bb:01&uuid=4c4c4544-0031-3510-8052-b2c04f4a4e31", 404, "", "", `profile "debian-install" has no ignition config`},
		{"ignition with no group matching", noDefault, "GET", "/pxe/ignition?mac=52:54:00:aa:bb:01", 404, "", "", "no group matches"},
		{"ignition with a malformed mac", full, "GET", "/pxe/ignition?mac=zz", 400, "", "", "invalid MAC address"},
		{"cloud-config", full, "GET", "/pxe/cloud-config?mac=52:54:00:aa:bb:01&uuid=4c4c4544-0031-3510-8052-b2c04f4a4e31", 200, "text/plain; charset=utf-8", "hv-a1-reinstall.cloud-config", ""},
		{"cloud-config by uuid alone has no callback", full, "GET", "/pxe/cloud-config?uuid=00000000-0000-0000-0000-0000000000b2", 200, "", "hv-b2.cloud-config", ""},
		{"cloud-config of a profile without one", full, "GET", "/pxe/cloud-config?mac=52:54:00:aa:bb:01", 404, "", "", `profile "flatcar-install" has no cloud-config`},
		{"template names an absent key", broken, "GET", "/pxe/ipxe?mac=52:54:00:00:00:0a", 500, "", "", `render ipxe of profile "missing-key"`},
		{"script names an absent key", broken, "GET", "/pxe/ipxe?mac=52:54:00:00:00:0d", 500, "", "", `render ipxe of profile "script-missing-key"`},
		{"ignition renders to invalid JSON", broken, "GET", "/pxe/ignition?mac=52:54:00:00:00:0b", 500, "", "", "ignition renders to invalid JSON"},
		{"argument would inject an iPXE command", broken, "GET", "/pxe/ipxe?mac=52:54:00:00:00:0c", 500, "", "", "args[0] renders to a line break"},
		{"POST to a GET route", full, "POST", "/pxe/ipxe?mac=52:54:00:aa:bb:01", 405, "", "", ""},
		{"PUT of the callback", full, "PUT", "/pxe/booted?mac=52:54:00:aa:bb:01", 405, "", "", ""},
		{"unknown path", full, "GET", "/pxe/menu.ipxe", 404, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := do(tt.h, tt.method, tt.target)
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
		})
	}
}

func TestCallback(t *testing.T) {
	t.Parallel()
	cfg := loadTest(t, "testdata/good/full.yml")
	const mac = "52:54:00:aa:bb:01"
	token, err := CallbackToken(testSecret, mac)
	if err != nil {
		t.Fatal(err)
	}
	otherToken, _ := CallbackToken(testSecret, "52:54:00:aa:bb:02")
	otherSecretToken, _ := CallbackToken([]byte("another-secret"), mac)

	tests := []struct {
		name   string
		query  url.Values
		code   int
		booted *Booted
	}{
		{"good token", url.Values{"mac": {mac}, "token": {token}}, 204,
			&Booted{MAC: mac, Group: "hv-a1", Profile: "flatcar-install", At: testNow}},
		{"good token, mac in iPXE's hyphenated upper case", url.Values{"mac": {"52-54-00-AA-BB-01"}, "token": {token}}, 204,
			&Booted{MAC: mac, Group: "hv-a1", Profile: "flatcar-install", At: testNow}},
		{"good token with uuid", url.Values{"mac": {mac}, "uuid": {"4C4C4544-0031-3510-8052-B2C04F4A4E31"}, "token": {token}}, 204,
			&Booted{MAC: mac, UUID: "4c4c4544-0031-3510-8052-b2c04f4a4e31", Group: "hv-a1-by-uuid-and-mac", Profile: "debian-install", At: testNow}},
		{"wrong token", url.Values{"mac": {mac}, "token": {strings.Repeat("0", 64)}}, 401, nil},
		{"no token", url.Values{"mac": {mac}}, 401, nil},
		{"other host's token", url.Values{"mac": {mac}, "token": {otherToken}}, 401, nil},
		{"token under another secret", url.Values{"mac": {mac}, "token": {otherSecretToken}}, 401, nil},
		{"token in upper case", url.Values{"mac": {mac}, "token": {strings.ToUpper(token)}}, 401, nil},
		{"no mac", url.Values{"token": {token}}, 400, nil},
		{"malformed mac", url.Values{"mac": {"52:54:00"}, "token": {token}}, 400, nil},
		{"malformed uuid", url.Values{"mac": {mac}, "uuid": {"u"}, "token": {token}}, 400, nil},
	}
	// GET is for iPXE builds that cannot POST; both check the token alike.
	for _, method := range []string{"POST", "GET"} {
		for _, tt := range tests {
			t.Run(method+" "+tt.name, func(t *testing.T) {
				var got []Booted
				h := newTestHandler(t, cfg, func(b Booted) { got = append(got, b) })
				rec := do(h, method, "/pxe/booted?"+tt.query.Encode())
				if rec.Code != tt.code {
					t.Fatalf("status %d, want %d; body %q", rec.Code, tt.code, rec.Body)
				}
				switch {
				case tt.booted == nil && len(got) > 0:
					t.Errorf("OnBooted called with %+v, want no call", got)
				case tt.booted != nil && (len(got) != 1 || got[0] != *tt.booted):
					t.Errorf("OnBooted calls %+v, want exactly %+v", got, *tt.booted)
				}
			})
		}
	}
}

// Without a secret every token could be computed by anyone: refuse all.
func TestCallbackWithoutSecret(t *testing.T) {
	t.Parallel()
	called := false
	h := NewHandler(loadTest(t, "testdata/good/full.yml"), Options{BaseURL: "http://10.0.0.1:9300", OnBooted: func(Booted) { called = true }})
	token, _ := CallbackToken(nil, "52:54:00:aa:bb:01")
	rec := do(h, "POST", "/pxe/booted?mac=52:54:00:aa:bb:01&token="+token)
	if rec.Code != http.StatusUnauthorized || called {
		t.Errorf("status %d, OnBooted called %v; want 401 and no call", rec.Code, called)
	}
	ign := do(h, "GET", "/pxe/ignition?mac=52:54:00:aa:bb:01")
	if strings.Contains(ign.Body.String(), "/pxe/booted") {
		t.Errorf("ignition carries a callback URL without a secret:\n%s", ign.Body)
	}
}

var callbackURLRE = regexp.MustCompile(`http://10\.0\.0\.1:9300/pxe/booted\?[^" \\]+`)

// The callback URL a host finds in its rendered config is accepted as is,
// over a real HTTP server.
func TestCallbackURLFromRenderedConfig(t *testing.T) {
	t.Parallel()
	var got []Booted
	srv := httptest.NewServer(newTestHandler(t, loadTest(t, "testdata/good/full.yml"), func(b Booted) { got = append(got, b) }))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/pxe/ignition?mac=52-54-00-aa-bb-01")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("ignition: status %d, %v", resp.StatusCode, err)
	}
	cb := callbackURLRE.FindString(string(body))
	if cb == "" {
		t.Fatalf("no callback URL in ignition:\n%s", body)
	}
	// The rendered URL names the base URL hosts use; send it to the test server.
	post, err := http.Post(strings.Replace(cb, "http://10.0.0.1:9300", srv.URL, 1), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusNoContent || len(got) != 1 || got[0].Group != "hv-a1" {
		t.Errorf("callback %s: status %d, OnBooted %+v; want 204 and one call for hv-a1", cb, post.StatusCode, got)
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
	h := NewHandler(loadTestF(f), Options{BaseURL: "http://10.0.0.1:9300", Secret: testSecret})
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
		// Whatever the query, the handler answers 200, 400 or 404, never 500.
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, &http.Request{Method: "GET", URL: &url.URL{Path: "/pxe/ipxe", RawQuery: raw}})
		if rec.Code != 200 && rec.Code != 400 && rec.Code != 404 {
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
	h := NewHandler(cfg, Options{BaseURL: "http://10.0.0.1:9300", Secret: testSecret})
	req := httptest.NewRequest("GET", "/pxe/ipxe?mac=52-54-00-AA-BB-01&uuid=4C4C4544-0031-3510-8052-B2C04F4A4E31", nil)
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatalf("status %d", rec.Code)
		}
	}
}
