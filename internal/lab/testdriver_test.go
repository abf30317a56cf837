package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"caretaker/internal/api"
	"caretaker/internal/config"
)

// TestLabTestDriver runs the lab on libvirt's test driver, as it does on a
// machine without libvirtd: the server scrapes both agents and reports
// every guest running; stopping the lab restores runbook's config.
func TestLabTestDriver(t *testing.T) {
	dir := t.TempDir()
	rbConfig := filepath.Join(dir, "runbook", "config.yml")
	const before = "url: http://elsewhere:9300\ntoken: mine\n"
	if err := os.MkdirAll(filepath.Dir(rbConfig), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rbConfig, []byte(before), 0o600); err != nil {
		t.Fatal(err)
	}

	o := DefaultOptions()
	o.Driver = "test"
	o.ListenAddress = "127.0.0.1:0"
	o.DataDir = filepath.Join(dir, "data")
	o.RunbookConfig = rbConfig
	o.Logger = slog.New(slog.DiscardHandler)
	var out syncBuffer
	o.Out = &out

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()

	var status api.Status
	var lastURL, lastToken string
	await(t, done, time.Minute, "6 running guests on 2 hosts", func() bool {
		b, err := os.ReadFile(rbConfig)
		if err != nil || !strings.HasPrefix(string(b), runbookMarker) {
			return false
		}
		var url, token string
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "url: "); ok {
				url = v
			}
			if v, ok := strings.CutPrefix(line, "token: "); ok {
				token = v
			}
		}
		lastURL, lastToken = url, token
		s, err := api.NewClient(url, token, nil).Status(context.Background())
		if err != nil {
			return false
		}
		running := 0
		for _, g := range s.Guests {
			if g.State == "running" && g.IntendedRunning && strings.HasPrefix(g.Domain, "lab-host-") {
				running++
			}
		}
		status = s
		return running == 6 && len(s.Hosts) == 2 && s.Hosts[0].AgentUp && s.Hosts[1].AgentUp
	})
	for _, h := range status.Hosts {
		if !h.LibvirtUp || h.Guests != 3 {
			t.Errorf("host %+v: want libvirt up and 3 guests", h)
		}
	}
	// The server also answers Prometheus' query API (Grafana, runbook
	// alerts and explain), behind the same token, and scrapes itself.
	c := api.NewClient(lastURL, lastToken, nil)
	groups, err := c.Rules(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for _, g := range groups {
		for _, r := range g.Rules {
			rules = append(rules, r.Name)
		}
	}
	if !slices.Contains(rules, "GuestCrashed") || !slices.Contains(rules, "HostAgentDown") {
		t.Errorf("rules = %v, want the embedded alert rules", rules)
	}
	if _, err := c.Alerts(context.Background()); err != nil {
		t.Errorf("alerts: %v", err)
	}
	await(t, done, time.Minute, "the server's self-scrape", func() bool {
		return queryValue(t, lastURL, lastToken, `up{job="caretaker-server"}`) == "1"
	})
	// The agents serve over TLS and take only the server's certificate:
	// the server's scrapes above went over mTLS, anything else is refused.
	checkAgentsTLS(t, filepath.Join(o.DataDir, "server.yml"))
	// A token per role, each known by its role's name; the summary shows
	// where to sign in to the console and with which token.
	for _, role := range []string{"operator", "viewer"} {
		tok, err := config.ReadSecret(filepath.Join(o.DataDir, role+".token"))
		if err != nil {
			t.Fatal(err)
		}
		if me, err := api.NewClient(lastURL, tok, nil).WhoAmI(context.Background()); err != nil || me != (api.WhoAmI{Name: role, Role: role}) {
			t.Errorf("%s.token: whoami = %+v, %v", role, me, err)
		}
	}
	if want := lastURL + "/console/  sign in with the admin token " + lastToken; !strings.Contains(out.String(), want) {
		t.Errorf("the lab's summary lacks %q:\n%s", want, out.String())
	}
	// The lab's guests are TCG by choice: its hosts declare they need no
	// /dev/kvm, so HostKVMDeviceMissing never fires for them.
	await(t, done, time.Minute, "both hosts reporting that KVM is not required", func() bool {
		return queryValue(t, lastURL, lastToken, `count(caretaker_host_kvm_required{job="caretaker-agent"} == 0)`) == "2"
	})
	if v := queryValue(t, lastURL, lastToken, `count(caretaker_host_kvm_required{job="caretaker-agent"} != 0)`); v != "" {
		t.Errorf("%s lab hosts report caretaker_host_kvm_required 1", v)
	}
	resp, err := http.Get(lastURL + "/api/v1/query?query=up")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("query without token: %d, want 401", resp.StatusCode)
	}

	// Pauses reach the real engine: author and comment required, listed,
	// resumed.
	if _, err := c.Pause(context.Background(), api.PauseRequest{Target: "*", Author: "alice", Duration: "1h"}); err == nil ||
		!strings.Contains(err.Error(), "comment") {
		t.Errorf("pause without a comment: %v, want a 400 naming the comment", err)
	}
	if _, err := c.Pause(context.Background(), api.PauseRequest{Target: "*", Author: "alice", Comment: "rack 3 maintenance", Duration: "1h"}); err != nil {
		t.Fatal(err)
	}
	// Recorded under the token's name (the lab's admin token), alice only on
	// whose behalf.
	if ps, err := c.Pauses(context.Background()); err != nil || len(ps) != 1 || ps[0].Author != "admin" || ps[0].OnBehalfOf != "alice" {
		t.Errorf("pauses = %+v, %v; want the admin token's, on behalf of alice", ps, err)
	}
	if err := c.Resume(context.Background(), "*"); err != nil {
		t.Fatal(err)
	}
	if ps, err := c.Pauses(context.Background()); err != nil || len(ps) != 0 {
		t.Errorf("pauses after resume = %+v, %v; want none", ps, err)
	}

	if !strings.Contains(out.String(), "test driver") {
		t.Errorf("the lab did not say it uses the test driver:\n%s", out.String())
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("lab: %v", err)
	}
	if b, err := os.ReadFile(rbConfig); err != nil || string(b) != before {
		t.Errorf("runbook config after the lab: %q, %v; want the original back", b, err)
	}
}

// queryValue runs an instant query through the server's Prometheus API and
// returns the first sample's value, or "" when there is none.
func queryValue(t *testing.T, base, token, expr string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/query?query="+url.QueryEscape(expr), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var r struct {
		Data struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if json.NewDecoder(resp.Body).Decode(&r) != nil || len(r.Data.Result) == 0 {
		return ""
	}
	v, _ := r.Data.Result[0].Value[1].(string)
	return v
}

// checkAgentsTLS checks that the lab's server.yml has agents.tls and that
// its agents refuse plain HTTP and TLS without the server's certificate.
func checkAgentsTLS(t *testing.T, serverYML string) {
	t.Helper()
	cfg, err := config.Load(serverYML)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Agents.TLS.Enabled() || len(cfg.Hosts) == 0 {
		t.Fatalf("the lab's server.yml: agents.tls %+v, %d hosts; want TLS to the agents", cfg.Agents.TLS, len(cfg.Hosts))
	}
	pem, err := os.ReadFile(cfg.Agents.TLS.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}, Timeout: 10 * time.Second}
	for _, h := range cfg.Hosts {
		if resp, err := http.Get("http://" + h.Agent + "/metrics"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Errorf("agent of %s answers plain HTTP", h.Name)
			}
		}
		if resp, err := noCert.Get("https://" + h.Agent + "/metrics"); err == nil {
			resp.Body.Close()
			t.Errorf("agent of %s answers TLS without a client certificate: %d", h.Name, resp.StatusCode)
		}
	}
}
