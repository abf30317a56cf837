package hoststate

import (
	"context"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"caretaker/provisioner/bmc"
	"caretaker/provisioner/pxe"
)

// The PXE handler over the real state machine: what a stranger on the PXE
// network can read and cause, and what a replayed callback does.

const pxeMAC = "aa:bb:cc:dd:ee:01"

// pxeConfig has the host's root password in its group's metadata, as
// the probe found it.
var pxeConfig = &pxe.Config{
	Profiles: []pxe.Profile{{
		ID: "install", Kernel: "/vmlinuz",
		Args:        []string{"url={{ .CloudConfigURL }}"},
		CloudConfig: "#cloud-config\nchpasswd: {list: 'root:{{ .Group.Metadata.root_password }}'}\nruncmd: [[curl, -X, POST, '{{ .CallbackURL }}']]\n",
	}},
	Groups: []pxe.Group{{ID: "h1", Profile: "install", Selector: map[string]string{"mac": pxeMAC},
		Metadata: map[string]string{"root_password": "hunter2-root"}}},
}

var (
	cloudConfigURLRE = regexp.MustCompile(`http://pxe\.test/pxe/cloud-config\?\S+`)
	bootedURLRE      = regexp.MustCompile(`http://pxe\.test/pxe/booted\?[^' ]+`)
)

type pxeRig struct {
	*rig
	h http.Handler
}

func newPXERig(t *testing.T) *pxeRig {
	t.Helper()
	r := newRig(t, Config{})
	r.must(r.m.Register("h1", pxeMAC))
	return &pxeRig{rig: r, h: pxe.NewHandler(pxeConfig, pxe.Options{
		BaseURL: "http://pxe.test", Secret: []byte("test-secret-not-for-production"),
		Attempts: r.m, Now: r.clock.Now, TokenTTL: time.Hour,
	})}
}

// get sends method url (the rendered URLs name http://pxe.test) to the handler.
func (p *pxeRig) do(method, url string) (int, string) {
	p.t.Helper()
	rec := httptest.NewRecorder()
	p.h.ServeHTTP(rec, httptest.NewRequest(method, strings.TrimPrefix(url, "http://pxe.test"), nil))
	return rec.Code, rec.Body.String()
}

// pxeBooting provisions h1 up to the point where it fetches its script.
func (p *pxeRig) pxeBooting(reprovision bool) {
	p.t.Helper()
	start := p.m.Provision
	if reprovision {
		start = p.m.Reprovision
	}
	p.must(start(context.Background(), "h1"))
	p.fleet.setPower("h1", bmc.PowerOn)
	p.tick()
	p.wantState("h1", PXEBooting, 1)
}

// install fetches the script and the cloud-config as the host does and
// returns the callback URL.
func (p *pxeRig) install() string {
	p.t.Helper()
	code, script := p.do("GET", "/pxe/ipxe?mac="+strings.ReplaceAll(pxeMAC, ":", "-"))
	ccURL := cloudConfigURLRE.FindString(script)
	if code != 200 || ccURL == "" {
		p.t.Fatalf("ipxe: %d, no cloud-config URL in %q", code, script)
	}
	p.wantState("h1", Installing, 1)
	code, cc := p.do("GET", ccURL)
	cb := bootedURLRE.FindString(cc)
	if code != 200 || !strings.Contains(cc, "hunter2-root") || cb == "" {
		p.t.Fatalf("cloud-config: %d, %q", code, cc)
	}
	return cb
}

// refusedSince returns the refusals journaled after the first n entries.
func (p *pxeRig) refusedSince(n int) []string {
	p.t.Helper()
	ts, err := p.m.History("h1")
	p.must(err)
	var out []string
	for _, t := range ts[n:] {
		if t.Refused {
			if t.From != t.To {
				p.t.Errorf("refusal moved the host: %+v", t)
			}
			out = append(out, t.Reason)
		}
	}
	return out
}

func (p *pxeRig) historyLen() int {
	ts, err := p.m.History("h1")
	p.must(err)
	return len(ts)
}

func TestPXECallbackOnceForTheAttemptInFlight(t *testing.T) {
	p := newPXERig(t)
	p.pxeBooting(false)
	cb := p.install()

	// A forged token and a booted URL with its expiry moved are refused.
	n := p.historyLen()
	forged := regexp.MustCompile(`token=[0-9a-f]{8}`).ReplaceAllString(cb, "token=00000000")
	exp := regexp.MustCompile(`exp=(\d+)`).FindStringSubmatch(cb)[1]
	later := strings.Replace(cb, "exp="+exp, "exp=9"+exp, 1)
	for _, u := range []string{forged, later, strings.Replace(cb, "attempt=1", "attempt=2", 1)} {
		if code, _ := p.do("POST", u); code != http.StatusForbidden {
			t.Errorf("POST %s: %d, want 403", u, code)
		}
	}
	p.wantState("h1", Installing, 1)
	if got := p.refusedSince(n); len(got) != 1 || !strings.Contains(got[0], "invalid booted token for attempt 1") {
		// One a minute is journaled; every one is logged and counted.
		t.Errorf("refusals journaled: %q", got)
	}

	// The real one, once.
	if code, body := p.do("POST", cb); code != http.StatusNoContent {
		t.Fatalf("callback: %d %q", code, body)
	}
	p.wantState("h1", Ready, 1)
	p.clock.Advance(time.Minute)
	n = p.historyLen()
	for _, method := range []string{"POST", "GET"} {
		if code, _ := p.do(method, cb); code != http.StatusConflict {
			t.Errorf("replayed %s after success: %d, want 409", method, code)
		}
	}
	p.wantState("h1", Ready, 1)
	if got := p.refusedSince(n); len(got) != 1 || !strings.Contains(got[0], "boot callback with no provisioning in flight") {
		t.Errorf("replay journaled as %q", got)
	}

	// A reprovision cordons the host; the old URL neither readies nor
	// uncordons it, before the new attempt's script or during it.
	p.pxeBooting(true)
	for _, state := range []State{PXEBooting, Installing} {
		if state == Installing {
			if code, _ := p.do("GET", "/pxe/ipxe?mac="+pxeMAC); code != 200 {
				t.Fatalf("ipxe of the new attempt: %d", code)
			}
		}
		code, _ := p.do("POST", cb)
		if code != http.StatusConflict && code != http.StatusForbidden {
			t.Errorf("old callback while %s: %d, want 409 or 403", state, code)
		}
		if h := p.host("h1"); h.State != state || !h.Cordoned {
			t.Errorf("old callback while %s moved the host: %+v", state, h)
		}
	}
	if n := testutilCount(t, p); n < 5 {
		t.Errorf("caretaker_provisioner_pxe_refusals_total = %v, want every refusal counted", n)
	}
}

// An expired token is refused, however genuine.
func TestPXECallbackExpired(t *testing.T) {
	p := newPXERig(t)
	p.pxeBooting(false)
	cb := p.install()
	p.clock.Advance(time.Hour)
	if code, body := p.do("POST", cb); code != http.StatusForbidden || !strings.Contains(body, "expired") {
		t.Errorf("expired callback: %d %q", code, body)
	}
	p.wantState("h1", Installing, 1)
}

// A callback of an earlier attempt that timed out does not fit the retry.
func TestPXECallbackOfAnEarlierAttempt(t *testing.T) {
	p := newPXERig(t)
	p.pxeBooting(false)
	cb := p.install()
	p.clock.Advance(DefaultInstallingTimeout)
	p.tick() // attempt 1 times out
	p.clock.Advance(DefaultBackoff)
	p.tick() // attempt 2's commands
	p.tick()
	p.wantState("h1", PXEBooting, 2)
	if code, _ := p.do("GET", "/pxe/ipxe?mac="+pxeMAC); code != 200 {
		t.Fatalf("ipxe of attempt 2: %d", code)
	}
	if code, _ := p.do("POST", cb); code != http.StatusForbidden {
		t.Errorf("attempt 1's callback during attempt 2: %d, want 403", code)
	}
	p.wantState("h1", Installing, 2)
	// Its number would fit a later provisioning's attempt 1; its nonce not.
	if code, _ := p.do("POST", strings.Replace(cb, "attempt=1", "attempt=2", 1)); code != http.StatusForbidden {
		t.Errorf("attempt 1's callback renumbered: %d, want 403", code)
	}
	p.wantState("h1", Installing, 2)
}

// A stranger asking for a host that is not being provisioned gets nothing
// and moves nothing; asking for one that is gets its script only if the
// host has not had it, and then the host's own fetch is refused, visibly.
func TestPXEStranger(t *testing.T) {
	p := newPXERig(t)
	for _, state := range []State{Registered, Ready} {
		if state == Ready {
			p.must(p.m.Booted("h1"))
		}
		n := p.historyLen()
		for _, u := range []string{"/pxe/ipxe?mac=" + pxeMAC, "/pxe/cloud-config?mac=" + pxeMAC, "/pxe/ignition?mac=" + pxeMAC} {
			code, body := p.do("GET", u)
			if code != http.StatusNotFound || strings.Contains(body, "hunter2") || strings.Contains(body, "token") {
				t.Errorf("%s host: GET %s: %d %q, want 404 and no secret", state, u, code, body)
			}
		}
		p.wantState("h1", state, 0)
		if got := p.refusedSince(n); len(got) != 1 {
			t.Errorf("%s host: refusals journaled %q, want one (a minute)", state, got)
		}
		p.clock.Advance(time.Minute)
	}

	// Mid-reprovision, before the BMC reported power: the config needs
	// the attempt's token, which only the script carries.
	p.must(p.m.Reprovision(context.Background(), "h1"))
	for _, u := range []string{"/pxe/cloud-config?mac=" + pxeMAC, "/pxe/cloud-config?mac=" + pxeMAC + "&attempt=1&exp=9999999999&token=00"} {
		if code, body := p.do("GET", u); code/100 != 4 || strings.Contains(body, "hunter2") {
			t.Errorf("GET %s while powering on: %d %q", u, code, body)
		}
	}
	p.wantState("h1", PoweringOn, 1)
	// The script once; the second fetch is refused and journaled.
	if code, _ := p.do("GET", "/pxe/ipxe?mac="+pxeMAC); code != 200 {
		t.Fatalf("first fetch: %d", code)
	}
	p.wantState("h1", Installing, 1)
	p.clock.Advance(time.Minute)
	n := p.historyLen()
	if code, body := p.do("GET", "/pxe/ipxe?mac="+pxeMAC); code != http.StatusConflict || strings.Contains(body, "token") {
		t.Errorf("second fetch: %d %q, want 409 without a token", code, body)
	}
	p.wantState("h1", Installing, 1)
	if got := p.refusedSince(n); len(got) != 1 || !strings.Contains(got[0], "served already") {
		t.Errorf("second fetch journaled as %q", got)
	}
	if h := p.host("h1"); !h.Cordoned {
		t.Errorf("cordon lifted: %+v", h)
	}
}

func testutilCount(t *testing.T, p *pxeRig) float64 {
	t.Helper()
	mfs, err := p.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "caretaker_provisioner_pxe_refusals_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}
