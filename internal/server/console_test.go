package server

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The server serves the console under /console/, sends browsers there
// from /, and signs a user in through its own API; console.enabled: false
// leaves /console/ unserved.
func TestConsoleServed(t *testing.T) {
	for _, enabled := range []bool{true, false} {
		dir := t.TempDir()
		tok := testToken("tok")
		os.WriteFile(filepath.Join(dir, "api.token"), []byte(tok+"\n"), 0o600)
		yml := "data_dir: data\napi: {token_file: api.token}\n"
		if !enabled {
			yml += "console: {enabled: false}\n"
		}
		srv := httptest.NewServer(startServer(t, dir, yml, nil).Handler())
		defer srv.Close()
		noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		get := func(path, accept string) *http.Response {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
			if accept != "" {
				req.Header.Set("Accept", accept)
			}
			resp, err := noRedirect.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp
		}

		resp := get("/", "text/html,application/xhtml+xml")
		if got := resp.Header.Get("Location"); enabled != (resp.StatusCode == http.StatusSeeOther && got == "/console/") {
			t.Errorf("console enabled %v: a browser's GET / = %d to %q", enabled, resp.StatusCode, got)
		}
		if resp := get("/", ""); resp.StatusCode != http.StatusOK {
			t.Errorf("GET / without text/html = %d, want 200 and the text", resp.StatusCode)
		}
		resp = get("/console/", "text/html")
		if !enabled {
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("console disabled: GET /console/ = %d, want 404", resp.StatusCode)
			}
			continue
		}
		if loc := resp.Header.Get("Location"); resp.StatusCode/100 != 3 || !strings.HasPrefix(loc, "/console/signin") {
			t.Fatalf("GET /console/ signed out = %d to %q, want the sign-in page", resp.StatusCode, loc)
		}

		// Signing in goes through the server's API (whoami): the admin
		// token opens a session, a wrong one does not.
		jar, _ := cookiejar.New(nil)
		c := &http.Client{Jar: jar}
		page, err := c.Get(srv.URL + "/console/signin")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(page.Body)
		page.Body.Close()
		csrf := hiddenValue(string(body), "csrf")
		for _, tc := range []struct {
			token  string
			signed bool
		}{{"wrong-" + tok, false}, {tok, true}} {
			resp, err := c.PostForm(srv.URL+"/console/signin", url.Values{"token": {tc.token}, "csrf": {csrf}})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if signed := strings.Contains(string(b), `id="nav-fleet"`); signed != tc.signed {
				t.Errorf("sign in with a token that is right %v: signed in %v (%d)", tc.signed, signed, resp.StatusCode)
			}
		}
	}
}

// hiddenValue is the value of the page's first hidden input named name.
func hiddenValue(page, name string) string {
	_, rest, ok := strings.Cut(page, `name="`+name+`" value="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}
