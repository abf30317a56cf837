package lab

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"

	"caretaker/internal/api"
	"caretaker/remediation/journal"
)

// watchedAlerts are the alerts whose activity keeps the lab from calm.
var watchedAlerts = []string{"GuestCrashed", "GuestShutOffUnexpectedly", "GuestPausedUnexpectedly",
	"HostLibvirtdDown", "HostAgentDown", "RemediationCircuitBreakerOpen",
	"OverlayVXLANDown", "OverlayVXLANMissing", "OverlayPeerFDBMissing", "OverlayMTUMismatch", "OverlayPeerUnreachable"}

// breakerAlert is the alert of an open circuit breaker.
const breakerAlert = "RemediationCircuitBreakerOpen"

// snapshot is what the server says at one moment.
type snapshot struct {
	status  api.Status
	alerts  []api.PromAlert
	records []journal.Record // since the fault's injection, newest first
}

func (g *gameDay) snap(ctx context.Context, since time.Time) (snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var s snapshot
	var err error
	if s.status, err = g.c.Status(ctx); err != nil {
		return s, fmt.Errorf("status: %w", err)
	}
	if s.alerts, err = g.c.Alerts(ctx); err != nil {
		return s, fmt.Errorf("alerts: %w", err)
	}
	if !since.IsZero() {
		h, err := g.c.History(ctx, api.HistoryFilter{Since: since, Limit: 500})
		if err != nil {
			return s, fmt.Errorf("history: %w", err)
		}
		s.records = h.Records
	}
	return s, nil
}

// guestState is a lab guest's state as the server reports it, "" when
// it does not know the guest.
func (s snapshot) guestState(domain string) string {
	for _, gu := range s.status.Guests {
		if gu.Domain == domain {
			return gu.State
		}
	}
	return ""
}

// calm holds when every lab guest runs, every host's agent and libvirt
// answer, none of the watched alerts is active for the lab and no action
// is open.
func (g *gameDay) calm(ctx context.Context) (bool, error) {
	s, err := g.snap(ctx, time.Time{})
	if err != nil {
		return false, err
	}
	for _, d := range g.guests {
		if st := s.guestState(d); st != "running" {
			return false, fmt.Errorf("guest %s is %q", d, st)
		}
	}
	for _, h := range g.hosts {
		i := slices.IndexFunc(s.status.Hosts, func(x api.Host) bool { return x.Name == h })
		if i < 0 || !s.status.Hosts[i].AgentUp || !s.status.Hosts[i].LibvirtUp {
			return false, fmt.Errorf("host %s is not up", h)
		}
	}
	for _, a := range s.alerts {
		if slices.Contains(watchedAlerts, a.Labels["alertname"]) && g.ours(a.Labels) {
			return false, fmt.Errorf("%s is %s", a.Labels["alertname"], a.State)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	open, err := g.c.History(ctx, api.HistoryFilter{Limit: 1, States: []journal.State{
		journal.StatePending, journal.StateRunning, journal.StateVerifying}})
	if err != nil {
		return false, err
	}
	if len(open.Records) > 0 {
		return false, fmt.Errorf("record %d is %s", open.Records[0].ID, open.Records[0].State)
	}
	return true, nil
}

// ours tells whether an alert is about the lab: one of its guests or
// hosts, or the appliance itself (no host or domain label).
func (g *gameDay) ours(l map[string]string) bool {
	if d, ok := l["domain"]; ok {
		return slices.Contains(g.guests, d)
	}
	if h, ok := l["host"]; ok {
		return slices.Contains(g.hosts, h)
	}
	return true
}

// watch follows one fault from its injection.
type watch struct {
	g        *gameDay
	s        *Score
	t0       time.Time
	domains  []string // the guests broken
	hosts    bool     // the fault is the hosts': their alerts count
	hostOnly []string // these hosts' alerts count (hostAlerts)
	expect   []string // alerts whose activity is the detection
	detected time.Time
	seen     map[string]string // alert → furthest state
	order    []string
	last     snapshot
}

func (g *gameDay) watch(s *Score, domains []string, hosts bool, expect ...string) *watch {
	s.Targets = append(s.Targets, domains...)
	if hosts {
		s.Targets = append(s.Targets, g.hosts...)
	}
	return &watch{g: g, s: s, t0: time.Now(), domains: domains, hosts: hosts, expect: expect, seen: map[string]string{}}
}

func (w *watch) about(l map[string]string) bool {
	if d, ok := l["domain"]; ok {
		return slices.Contains(w.domains, d)
	}
	if h, ok := l["host"]; ok {
		return w.hosts && slices.Contains(w.g.hosts, h) || slices.Contains(w.hostOnly, h)
	}
	return false
}

func (w *watch) recordAbout(r journal.Record) bool {
	if r.Domain != "" {
		return slices.Contains(w.domains, r.Domain)
	}
	return w.hosts && slices.Contains(w.g.hosts, r.Host) || slices.Contains(w.hostOnly, r.Host)
}

func (w *watch) detect(at time.Time) {
	if at.Before(w.t0) {
		at = w.t0
	}
	if w.detected.IsZero() || at.Before(w.detected) {
		w.detected = at
	}
}

// observe takes a snapshot and notes detection, alerts and pages.
func (w *watch) observe(ctx context.Context) (snapshot, error) {
	s, err := w.g.snap(ctx, w.t0.Add(-time.Second))
	if err != nil {
		return s, err
	}
	w.last = s
	now := time.Now()
	for _, a := range s.alerts {
		name := a.Labels["alertname"]
		about := w.about(a.Labels) || (name == breakerAlert && slices.Contains(w.expect, name))
		// An alert already active before the fault is not its doing.
		if a.ActiveAt != nil && a.ActiveAt.Before(w.t0.Add(-2*time.Second)) {
			continue
		}
		if about {
			if _, ok := w.seen[name]; !ok {
				w.order = append(w.order, name)
			}
			if w.seen[name] != "firing" {
				w.seen[name] = a.State
			}
			if slices.Contains(w.expect, name) {
				at := now
				if a.ActiveAt != nil {
					at = *a.ActiveAt
				}
				w.detect(at)
			}
		}
		if a.State == "firing" && (about || w.g.ours(a.Labels) && a.Labels["domain"] == "" && a.Labels["host"] == "") &&
			(a.Labels["severity"] == "critical" || a.Labels["severity"] == "page") {
			w.page(name, a.Annotations["runbook_url"])
		}
	}
	for _, r := range s.records {
		if w.recordAbout(r) && !r.Created.Before(w.t0.Add(-time.Second)) {
			w.detect(r.Created)
		}
	}
	return s, nil
}

func (w *watch) page(alert, runbook string) {
	if runbook == "" {
		runbook = "alerts/runbooks/" + alert + ".md"
	}
	if !slices.ContainsFunc(w.s.Pages, func(p Page) bool { return p.Alert == alert }) {
		w.s.Pages = append(w.s.Pages, Page{Alert: alert, Runbook: runbook})
	}
}

// until observes until cond holds on a snapshot, or within passes.
func (w *watch) until(ctx context.Context, within time.Duration, cond func(snapshot) bool) error {
	return poll(ctx, within, func(ctx context.Context) (bool, error) {
		s, err := w.observe(ctx)
		if err != nil {
			return false, err
		}
		return cond(s), nil
	})
}

func (w *watch) healed(by string) {
	d := seconds(time.Since(w.t0))
	w.s.HealedAfter, w.s.HealedBy = &d, by
}

// finish waits for the fault's records to settle, then fills in the
// score: detection, alerts, actions, doubled and held.
func (w *watch) finish(ctx context.Context) {
	err := w.until(ctx, 30*time.Second, func(s snapshot) bool {
		for _, r := range s.records {
			if w.recordAbout(r) && (r.State == journal.StatePending || r.State == journal.StateRunning || r.State == journal.StateVerifying) {
				return false
			}
		}
		return true
	})
	if err != nil && ctx.Err() == nil {
		w.s.Notes = append(w.s.Notes, "its actions had not settled: "+err.Error())
	}
	if !w.detected.IsZero() {
		d := seconds(w.detected.Sub(w.t0))
		w.s.DetectedAfter = &d
	}
	for _, name := range w.order {
		w.s.Alerts = append(w.s.Alerts, name+" "+w.seen[name])
	}
	var recs []journal.Record
	for _, r := range w.last.records {
		if w.recordAbout(r) && !r.Created.Before(w.t0.Add(-time.Second)) {
			recs = append(recs, r)
		}
	}
	w.s.Actions, w.s.Doubled, w.s.Held = tally(recs)
}

// tally sums up a fault's journal records (newest first, as the API
// lists them): the actions oldest first; how many executions repeated
// one that had succeeded on the same target (doubled: must be 0); and
// how many the circuit breaker held.
func tally(recs []journal.Record) (actions []TakenAction, doubled, held int) {
	actions = []TakenAction{}
	executed := map[string]int{}
	for i := len(recs) - 1; i >= 0; i-- {
		r := recs[i]
		actions = append(actions, TakenAction{ID: r.ID, Action: r.Action, Domain: r.Domain, Host: r.Host,
			State: string(r.State), Reason: r.Reason, FromEvent: r.FromEvent})
		if r.State == journal.StateSucceeded && r.Action != "notify-only" && r.Action != "run-command" {
			executed[r.Target+" "+r.Action]++
		}
		if r.State == journal.StateSkipped && strings.Contains(r.Reason, "circuit breaker") {
			held++
		}
	}
	for _, n := range executed {
		doubled += max(n-1, 0)
	}
	return actions, doubled, held
}

// guestDown kills a guest's qemu (qemu-kill) or destroys it
// (virsh-destroy) and waits for caretaker to start it again.
func (g *gameDay) guestDown(ctx context.Context, s *Score) error {
	dom := g.pickGuest()
	old := qemuPid(dom)
	if old == 0 {
		return fmt.Errorf("%s has no qemu pid", dom)
	}
	w := g.watch(s, []string{dom}, false, s.Fault.Alert)
	var err error
	if s.Fault.Name == "qemu-kill" {
		err = syscall.Kill(old, syscall.SIGKILL)
	} else {
		err = g.virshRun(ctx, "destroy", dom)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", s.Fault.Name, dom, err)
	}
	w.guestBack(ctx, dom, old)
	return nil
}

// guestBack waits for caretaker to start dom again (a qemu other than
// old, reported running), then for its traffic, and scores the fault.
func (w *watch) guestBack(ctx context.Context, dom string, old int) {
	err := w.until(ctx, healWithin, func(sn snapshot) bool {
		pid := qemuPid(dom)
		return pid != 0 && pid != old && sn.guestState(dom) == "running"
	})
	if err == nil {
		w.healed("caretaker")
	}
	w.restored(ctx, []string{dom}, healWithin)
	w.finish(ctx)
}

// guestPaused suspends a guest. No action of the lab's policy resumes a
// paused guest (GuestPausedUnexpectedly is a warning after 5 minutes):
// once it is detected the runner resumes it, as the on-call would.
func (g *gameDay) guestPaused(ctx context.Context, s *Score) error {
	dom := g.pickGuest()
	s.Runbook = "alerts/runbooks/GuestPausedUnexpectedly.md"
	w := g.watch(s, []string{dom}, false, s.Fault.Alert)
	if err := g.virshRun(ctx, "suspend", dom); err != nil {
		return err
	}
	defer func() { _ = g.virshRun(context.WithoutCancel(ctx), "resume", dom) }() // whatever happened
	if err := w.until(ctx, pausedDetect, func(snapshot) bool { return !w.detected.IsZero() }); err != nil {
		s.Notes = append(s.Notes, "not detected within "+pausedDetect.String())
	}
	healedBy := "runner"
	if w.last.guestState(dom) == "running" {
		healedBy = "caretaker"
	} else if err := g.virshRun(ctx, "resume", dom); err != nil {
		return err
	} else {
		s.Notes = append(s.Notes, "the runner resumed "+dom+" (virsh resume)")
	}
	if err := w.until(ctx, healWithin, func(sn snapshot) bool { return sn.guestState(dom) == "running" }); err == nil {
		w.healed(healedBy)
	}
	w.finish(ctx)
	return nil
}

// libvirtdStop stops libvirtd (SIGSTOP) for the hold, then lets it go on
// (SIGCONT): every host of the lab shares it. Nothing can heal a frozen
// libvirtd automatically; HostLibvirtdDown pages after 1 minute.
func (g *gameDay) libvirtdStop(ctx context.Context, s *Score) error {
	pid, err := libvirtdPid()
	if err != nil {
		return err
	}
	s.Runbook = "alerts/runbooks/HostLibvirtdDown.md"
	hold := g.r.o.ChaosHold
	w := g.watch(s, nil, true, "HostLibvirtdDown", "HostAgentDown")
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("SIGSTOP libvirtd (pid %d): %w", pid, err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	defer resume() // whatever happens, never leave libvirtd stopped
	holdCtx, cancel := context.WithTimeout(ctx, hold)
	_ = w.until(holdCtx, hold, func(snapshot) bool { return false })
	cancel()
	resume()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if w.detected.IsZero() {
		s.Notes = append(s.Notes, "no alert went active while libvirtd was stopped")
	}
	if hold < time.Minute {
		s.Notes = append(s.Notes, fmt.Sprintf("held %s: HostLibvirtdDown pages only after 1m (--chaos.hold 90s to see the page)", hold))
	}
	err = w.until(ctx, healWithin, func(sn snapshot) bool {
		for _, h := range g.hosts {
			i := slices.IndexFunc(sn.status.Hosts, func(x api.Host) bool { return x.Name == h })
			if i < 0 || !sn.status.Hosts[i].AgentUp || !sn.status.Hosts[i].LibvirtUp {
				return false
			}
		}
		return true
	})
	if err == nil {
		w.healed("SIGCONT")
	}
	w.finish(ctx)
	return nil
}

// storm kills a third of the guests (at least 2) at once: the circuit
// breaker must open, hold the actions above its threshold and page. The
// runner then starts the guests still down itself, as the paged human
// would, and waits for every guest to run and the breaker to close.
func (g *gameDay) storm(ctx context.Context, s *Score) error {
	// A third of the guests, at least 3: the agent's event of the first
	// crash may be acted on before the next crash is counted, so with the
	// chaos policy's threshold of 1, two kills open the breaker only
	// until the first guest runs again.
	n := min(len(g.guests), max(3, len(g.guests)/3))
	var doms []string
	pids := map[string]int{}
	// Spread over the hosts: every host's first guest, then the seconds.
	for i := 0; len(doms) < n && i < len(g.guests); i++ {
		per := len(g.guests) / len(g.hosts)
		d := g.guests[(i%len(g.hosts))*per+(i/len(g.hosts))%per]
		if !slices.Contains(doms, d) {
			doms = append(doms, d)
		}
	}
	for _, d := range doms {
		if pids[d] = qemuPid(d); pids[d] == 0 {
			return fmt.Errorf("%s has no qemu pid", d)
		}
	}
	s.Runbook = "alerts/runbooks/RemediationCircuitBreakerOpen.md"
	w := g.watch(s, doms, false, "GuestCrashed", breakerAlert)
	var errs []error
	for _, d := range doms {
		errs = append(errs, syscall.Kill(pids[d], syscall.SIGKILL))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("storm: %w", err)
	}
	g.log("storm: killed %s; waiting for %s to fire (for: 1m)", strings.Join(doms, " "), breakerAlert)
	// Until the page, or until the breaker closed again on its own with
	// every guest running (too soon for the alert's `for: 1m`).
	err := w.until(ctx, stormPageWithin, func(sn snapshot) bool {
		if w.seen[breakerAlert] == "firing" {
			return true
		}
		if w.seen[breakerAlert] == "" || slices.ContainsFunc(sn.alerts, func(a api.PromAlert) bool { return a.Labels["alertname"] == breakerAlert }) {
			return false
		}
		for _, d := range doms {
			if sn.guestState(d) != "running" || qemuPid(d) == pids[d] {
				return false
			}
		}
		return true
	})
	if err == nil && w.seen[breakerAlert] != "firing" {
		s.Notes = append(s.Notes, "the breaker closed again before "+breakerAlert+" fired (for: 1m): no page")
	}
	if err != nil {
		if w.seen[breakerAlert] == "" {
			s.Error = "the circuit breaker did not open"
		} else {
			s.Notes = append(s.Notes, breakerAlert+" did not fire within "+stormPageWithin.String())
		}
	}
	down := func(sn snapshot, d string) bool { return sn.guestState(d) != "running" || qemuPid(d) == pids[d] }
	var started []string
	for _, d := range doms {
		if down(w.last, d) {
			if err := g.virshRun(ctx, "start", d); err != nil {
				s.Notes = append(s.Notes, err.Error())
				continue
			}
			started = append(started, d)
		}
	}
	healedBy := "caretaker"
	if len(started) > 0 {
		healedBy = "runner"
		s.Notes = append(s.Notes, fmt.Sprintf("the runner started %s, held by the breaker (virsh start), as the paged human would", strings.Join(started, " ")))
	}
	err = w.until(ctx, healWithin, func(sn snapshot) bool {
		for _, d := range doms {
			if down(sn, d) {
				return false
			}
		}
		for _, a := range sn.alerts {
			if a.Labels["alertname"] == breakerAlert {
				return false
			}
		}
		return true
	})
	if err == nil {
		w.healed(healedBy)
	}
	w.finish(ctx)
	return nil
}
