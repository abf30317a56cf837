package lab

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"caretaker/internal/api"
	"caretaker/internal/config"
	"caretaker/internal/needs"
	"caretaker/remediation/journal"
)

var screenshots = flag.String("screenshots", "", "directory for TestConsoleInBrowser's screenshots of each page (default: a directory in the test's temporary directory, named in the log)")

// TestConsoleInBrowser drives the web console in a real headless Chromium
// against a real lab of QEMU guests, as its users would: an operator signs
// in, creates a 1 master + 1 worker cluster through the form (after
// asking placement) and sees both nodes run; a guest is killed and its
// record appears and turns to succeeded on the open page without a
// reload; a guest whose rule needs an approval is killed and the operator
// approves it with a comment; then a viewer sees no action buttons, and
// a POST it forges with a valid session and CSRF token is refused with 403
// and changes nothing. Every page is screenshotted for review.
func TestConsoleInBrowser(t *testing.T) {
	requireQEMU(t)
	if err := checkClusters(); err != nil {
		needs.Missing(t, "the lab makes no clusters here: %v", err)
	}
	chromium := needs.Program(t, "chromium")
	bin := buildBinaries(t)
	dir := t.TempDir()
	shots := *screenshots
	if shots == "" {
		shots = filepath.Join(dir, "screenshots")
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", shots)

	sweepStale(t, "web")
	prefix := ownPrefix("web")
	healed, approved := prefix+"host-a-1", prefix+"host-b-1"
	cluster := fmt.Sprintf("w%d", os.Getpid()%100000)
	policy := filepath.Join(dir, "policy.yml")
	if err := os.WriteFile(policy, []byte(fmt.Sprintf(`rules:
  - name: ask-first
    match: {alertname: GuestCrashed, domain: %s}
    action: restart-vm
    approval: {required: true}
  - name: restart-crashed-guests
    match: {alertname: GuestCrashed}
    action: restart-vm
`, approved)), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	lab := startLab(t, bin, nil, []string{prefix, cluster + "-"}, "--driver", "qemu",
		"--web.listen-address", "127.0.0.1:0", "--runbook.config", "", "--guest-prefix", prefix,
		"--hosts", "2", "--guests-per-host", "1", "--policy", policy, "--data.dir", data)
	exited := lab.exited

	// The summary names the console and the admin token.
	summary := regexp.MustCompile(`console +(http://\S+)/console/ +sign in with the admin token ([0-9a-f]+)`)
	var base, adminToken string
	await(t, exited, time.Minute, "the lab's summary", func() bool {
		m := summary.FindStringSubmatch(lab.out.String())
		if m != nil {
			base, adminToken = m[1], m[2]
		}
		return m != nil
	})
	admin := api.NewClient(base, adminToken, nil)
	token := func(role string) string {
		tok, err := config.ReadSecret(filepath.Join(data, role+".token"))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	await(t, exited, 3*time.Minute, "both guests running and both hosts ready", func() bool {
		s, err := admin.Status(context.Background())
		if err != nil {
			return false
		}
		running := 0
		for _, g := range s.Guests {
			if (g.Domain == healed || g.Domain == approved) && g.State == "running" {
				running++
			}
		}
		hosts, err := admin.HostStates(context.Background())
		ready := 0
		for _, h := range hosts {
			if h.Schedulable() {
				ready++
			}
		}
		return err == nil && running == 2 && ready == 2
	})

	alloc, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.WindowSize(1280, 900),
		chromedp.UserDataDir(filepath.Join(dir, "chromium")))...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(alloc, chromedp.WithErrorf(t.Logf))
	defer cancel()
	// The browser starts with the first action, and lives as long as that
	// action's context: start it on the tab's own, not on a step's.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	b := &browser{t: t, ctx: ctx, base: base, shots: shots}

	// An operator signs in and sees the fleet.
	b.signIn(token("operator"))
	b.run("fleet page", chromedp.Click(chromedp.CSS("#nav-fleet")), chromedp.WaitVisible(chromedp.CSS("main")))
	b.shot("fleet")
	// At a phone's width the page does not scroll sideways (wide tables
	// scroll in their own box).
	b.run("phone width", chromedp.EmulateViewport(390, 844))
	if w := get(b, "page width", chromedp.Evaluate[[]int](`[document.documentElement.scrollWidth, window.innerWidth]`)); len(w) != 2 || w[0] > w[1] {
		t.Errorf("at a phone's width the fleet page is %v px wide (page, window): it scrolls sideways", w)
	}
	b.shot("fleet-phone")
	b.run("desktop width", chromedp.EmulateViewport(1280, 900))

	// Create Cluster: placement's answer first, then the cluster, followed
	// live until both nodes run.
	b.run("clusters page", chromedp.Click(chromedp.CSS("#nav-clusters")), chromedp.WaitVisible(chromedp.CSS("#create-cluster")))
	b.fill("#create-cluster", map[string]string{"name": cluster, "masters": "1", "workers": "1", "vcpus": "1", "memory_mib": "64", "disk_gib": "1"})
	b.run("placement's answer", chromedp.Click(chromedp.CSS("#plan")), chromedp.WaitVisible(chromedp.CSS("#plan-result")))
	plan := get(b, "read the plan", chromedp.Text(chromedp.CSS("#plan-result")))
	if !strings.Contains(strings.ToLower(plan), "fits") || strings.Contains(strings.ToLower(plan), "does not fit") {
		t.Fatalf("placement's answer for 1 master + 1 worker on 2 hosts: %q, want it fits", plan)
	}
	b.shot("create-cluster")
	b.submit("create the cluster", chromedp.Click(chromedp.CSS("#create-submit")))
	b.run("the cluster's page", chromedp.WaitVisible(chromedp.CSS("#nodes")))
	b.waitJS("both nodes running", 4*time.Minute, `document.querySelectorAll('#nodes tr[data-state="running"]').length === 2`)
	b.shot("cluster")

	// A killed guest's record appears and succeeds on the open journal
	// page, which is not reloaded meanwhile.
	b.run("remediation page", chromedp.Click(chromedp.CSS("#nav-remediation")), chromedp.WaitVisible(chromedp.CSS("#journal")))
	get(b, "mark the page", chromedp.Evaluate[int](`window.caretakerTestMark = 1`))
	kill(t, healed)
	b.waitJS("the killed guest's record to succeed", 2*time.Minute, rowWith(healed, journal.StateSucceeded))
	if get(b, "check the mark", chromedp.Evaluate[int](`window.caretakerTestMark || 0`)) != 1 {
		t.Error("the journal page was reloaded while it followed the record: want live updates without a reload")
	}
	b.shot("remediation")

	// A guest whose rule asks first: the operator approves with a comment.
	kill(t, approved)
	b.waitJS("the record awaiting approval", 2*time.Minute, rowWith(approved, journal.StateAwaitingApproval))
	id := b.recordID(approved, journal.StateAwaitingApproval)
	b.shot("approval")
	form := fmt.Sprintf("#approve-%d", id)
	b.run("comment", chromedp.SetValue(chromedp.CSS(form+` textarea[name="comment"]`), "console test: go ahead"))
	b.submit("approve", chromedp.Click(chromedp.CSS(form+` [type="submit"]`)))
	b.waitJS("the approved record to succeed", 2*time.Minute, fmt.Sprintf(`(r => r !== null && r.dataset.state === %q)(document.getElementById("record-%d"))`, journal.StateSucceeded, id))
	rec, err := admin.Record(context.Background(), uint64(id))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Approval == nil || rec.Approval.Author != "operator" || rec.Approval.Comment != "console test: go ahead" {
		t.Errorf("record %d's approval = %+v, want by operator with the comment", id, rec.Approval)
	}
	b.run("hosts page", chromedp.Click(chromedp.CSS("#nav-hosts")), chromedp.WaitVisible(chromedp.CSS("main")))
	b.shot("hosts")

	// A viewer: no action buttons anywhere; a forged POST with a valid
	// session and CSRF token is refused and changes nothing.
	b.submit("sign out", chromedp.Click(chromedp.CSS(`#signout [type="submit"]`)))
	b.run("the sign-in page", chromedp.WaitVisible(chromedp.CSS("#signin")))
	b.signIn(token("viewer"))
	kill(t, approved)
	for _, page := range []string{"/console/", "/console/remediation", "/console/clusters", "/console/clusters/" + cluster, "/console/hosts"} {
		b.run("viewer's "+page, chromedp.Navigate(base+page), chromedp.WaitVisible(chromedp.CSS("main")))
		forms := get(b, "forms on "+page, chromedp.Evaluate[[]string](`[...document.querySelectorAll('form')].filter(f => f.method === 'post' && f.id !== 'signout').map(f => f.id || f.action)`))
		if len(forms) > 0 {
			t.Errorf("a viewer sees action forms on %s: %v", page, forms)
		}
	}
	b.run("journal page", chromedp.Navigate(base+"/console/remediation"), chromedp.WaitVisible(chromedp.CSS("#journal")))
	b.waitJS("the second record awaiting approval", 2*time.Minute, rowWith(approved, journal.StateAwaitingApproval))
	b.shot("remediation-viewer")
	id = b.recordID(approved, journal.StateAwaitingApproval)
	status := get(b, "forged approval", chromedp.Evaluate[int](fmt.Sprintf(`(async () => {
		const body = new URLSearchParams({csrf: document.querySelector('input[name="csrf"]').value, comment: "forged"});
		return (await fetch("/console/actions/%d/approve", {method: "POST", body})).status;
	})()`, id), chromedp.EvalAwaitPromise))
	if status != 403 {
		t.Errorf("a viewer's forged approval answered %d, want 403", status)
	}
	if rec, err := admin.Record(context.Background(), uint64(id)); err != nil || rec.State != journal.StateAwaitingApproval || rec.Approval != nil && rec.Approval.Author != "" {
		t.Errorf("after the forged approval, record %d = %s %+v (%v); want still awaiting approval", id, rec.State, rec.Approval, err)
	}
}

// browser is one headless Chromium tab on the console.
type browser struct {
	t     *testing.T
	ctx   context.Context
	base  string
	shots string
}

func (b *browser) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	get(b, what, chromedp.Steps(steps...))
}

// get runs a, within a minute, and returns its value.
func get[T any](b *browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.shot("failed")
		b.t.Fatalf("%s: %v", what, err)
	}
	return v
}

func (b *browser) signIn(token string) {
	b.t.Helper()
	b.run("the sign-in page", chromedp.Navigate(b.base+"/console/"), chromedp.WaitVisible(chromedp.CSS("#signin")),
		chromedp.SetValue(chromedp.CSS("#token"), token))
	b.submit("sign in", chromedp.Click(chromedp.CSS("#signin-submit")))
	b.run("signed in", chromedp.WaitVisible(chromedp.CSS("#nav-fleet")))
}

// submit runs steps that submit a form and waits for the page it leads
// to, which must not be an error.
func (b *browser) submit(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	resp, err := chromedp.RunResponse(ctx, steps...)
	if err != nil {
		b.shot("failed")
		b.t.Fatalf("%s: %v", what, err)
	}
	if resp.Status >= 400 {
		b.shot("failed")
		b.t.Fatalf("%s: %d %s", what, resp.Status, resp.StatusText)
	}
}

// fill sets the named inputs of the form.
func (b *browser) fill(form string, values map[string]string) {
	b.t.Helper()
	for name, v := range values {
		b.run("fill "+name, chromedp.SetValue(chromedp.CSS(fmt.Sprintf(`%s [name=%q]`, form, name)), v))
	}
}

// waitJS waits until the expression holds in the page, as the page is
// now: it neither navigates nor reloads.
func (b *browser) waitJS(what string, within time.Duration, expr string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, within)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(within))); err != nil {
		b.shot("failed")
		b.t.Fatalf("waiting for %s: %v", what, err)
	}
}

// recordID is the id of the journal row of domain in state.
func (b *browser) recordID(domain string, state journal.State) int {
	b.t.Helper()
	id := get(b, "record id", chromedp.Evaluate[int](fmt.Sprintf(`(() => {
		const r = [...document.querySelectorAll('#journal tr[data-state=%q]')].find(r => r.textContent.includes(%q));
		return r ? parseInt(r.id.replace("record-", ""), 10) : 0;
	})()`, state, domain)))
	if id == 0 {
		b.t.Fatalf("no journal row of %s in state %s", domain, state)
	}
	return id
}

func (b *browser) shot(name string) {
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return
	}
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644); err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
	}
}

// rowWith is a JS expression: the journal shows a row of domain in state.
func rowWith(domain string, state journal.State) string {
	return fmt.Sprintf(`[...document.querySelectorAll('#journal tr[data-state=%q]')].some(r => r.textContent.includes(%q))`, state, domain)
}

// kill SIGKILLs the guest's qemu, as a crash would.
func kill(t *testing.T, domain string) {
	t.Helper()
	if err := syscall.Kill(qemuPID(t, domain), syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s's qemu: %v", domain, err)
	}
}
