package lab

// Game day (issue #17): `caretaker lab --chaos NAME[,NAME…]|all|list`
// starts the lab as usual, waits until it is ready, injects each fault in
// turn, watches the server through its HTTP API (status, journal,
// Prometheus' alerts) and prints a scoreboard. It talks to libvirt with
// the virsh CLI and to processes with signals only.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"caretaker/internal/api"
	"caretaker/internal/guestos"
)

// Fault is one fault the game day can inject, and what it expects.
type Fault struct {
	Name string `json:"name"`
	// Kind is what is broken: guest, guests, overlay, host daemon, host
	// or server.
	Kind string `json:"kind"`
	// Alert is the alert expected to fire (or go pending, where its
	// `for` outlasts the fault).
	Alert string `json:"alert"`
	// Action is the remediation expected, or "page": nothing heals it
	// automatically and a human is paged.
	Action string `json:"action"`
	// Heal is the check that the fault is healed.
	Heal string `json:"heal_check"`
	// Heals is whether caretaker heals it with no human: a fault that
	// heals and does not within its deadline fails the game day.
	Heals bool `json:"heals"`
	// Needs is what of the lab the fault needs (see labHas).
	Needs []string `json:"needs,omitempty"`
}

// What a fault may need of the lab.
const (
	needNetwork = "network"  // the hosts' namespaces and overlays
	needOS      = "guest OS" // guests that boot Linux and answer
	needBMC     = "BMCs"     // hosts with BMCs and the provisioner
	needServers = "servers"  // several servers (--servers 2 or more)
)

// Faults are the faults this lab can inject, in the order `--chaos all`
// runs them (the storm last: it opens the circuit breaker).
var Faults = []Fault{
	{Name: "qemu-kill", Kind: "guest", Alert: "GuestCrashed", Action: "restart-vm",
		Heal: "the guest runs again (a new qemu process) and reaches its peers", Heals: true},
	{Name: "virsh-destroy", Kind: "guest", Alert: "GuestShutOffUnexpectedly", Action: "restart-vm",
		Heal: "the guest runs again (a new qemu process) and reaches its peers", Heals: true},
	{Name: "guest-panic", Kind: "guest", Alert: "GuestCrashed", Action: "restart-vm",
		Heal: "the guest's kernel runs again and reaches its peers", Heals: true, Needs: []string{needOS}},
	{Name: "guest-paused", Kind: "guest", Alert: "GuestPausedUnexpectedly", Action: "page",
		Heal: "the guest runs again (the runner resumes it, as the on-call would)"},
	{Name: "vxlan-delete", Kind: "overlay", Alert: "OverlayVXLANMissing", Action: "repair-overlay",
		Heal: "the VXLAN device is back and the guests reach their peers on the other hosts", Heals: true, Needs: []string{needNetwork}},
	{Name: "fdb-remove", Kind: "overlay", Alert: "OverlayPeerFDBMissing", Action: "repair-overlay",
		Heal: "the peer's flooding entry is back and the guests reach their peers", Heals: true, Needs: []string{needNetwork}},
	{Name: "vxlan-mtu", Kind: "overlay", Alert: "OverlayMTUMismatch", Action: "repair-overlay",
		Heal: "the VXLAN device's MTU fits its underlay (lowered by 100) again", Heals: true, Needs: []string{needNetwork}},
	{Name: "underlay-down", Kind: "overlay", Alert: "OverlayPeerUnreachable", Action: "page",
		Heal: "the runner brings the host's underlay link up; the guests reach their peers", Needs: []string{needNetwork, needOS}},
	{Name: "libvirtd-stop", Kind: "host daemon", Alert: "HostAgentDown or HostLibvirtdDown", Action: "page",
		Heal: "every host's libvirt answers again after SIGCONT"},
	{Name: "libvirtd-kill", Kind: "host daemon", Alert: "HostLibvirtdDown", Action: "none: its service manager restarts it",
		Heal: "libvirtd restarted (as systemd would) answers every host's agent; the guests ran on"},
	{Name: "agent-kill", Kind: "host daemon", Alert: "HostAgentDown, then GuestCrashed", Action: "restart-vm",
		Heal: "the agent restarted (as systemd would) and the guest that crashed meanwhile runs again", Heals: true},
	{Name: "power-loss", Kind: "host", Alert: "HostAgentDown", Action: "reprovision-host",
		Heal: "the host, fenced and reinstalled over PXE, is ready; its node was recreated on another host; its guests run", Heals: true, Needs: []string{needBMC}},
	{Name: "leader-kill", Kind: "server", Alert: "GuestCrashed (a guest killed at the same moment)", Action: "restart-vm, by the next leader",
		Heal: "another server leads within the lease and restarts the guest, once", Heals: true, Needs: []string{needServers}},
	{Name: "storm", Kind: "guests", Alert: "GuestCrashed, RemediationCircuitBreakerOpen", Action: "held by the breaker, page",
		Heal: "every guest runs again and the breaker closes"},
}

// DefaultChaosHold is how long libvirtd-stop keeps libvirtd stopped.
const DefaultChaosHold = 30 * time.Second

// chaos deadlines: a guest runs again within healWithin of its fault; the
// lab is calm again within calmWithin; the storm's breaker pages within
// stormPageWithin (RemediationCircuitBreakerOpen has `for: 1m`).
const (
	healWithin      = 90 * time.Second
	calmWithin      = 90 * time.Second
	readyWithin     = 3 * time.Minute
	stormPageWithin = 100 * time.Second
	pausedDetect    = 20 * time.Second
	chaosPoll       = 200 * time.Millisecond
)

// PrintFaults writes the fault table of `--chaos list`.
func PrintFaults(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FAULT\tKIND\tEXPECTED ALERT\tEXPECTED ACTION\tNEEDS\tHEALED WHEN")
	for _, f := range Faults {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", f.Name, f.Kind, f.Alert, f.Action, orDash(strings.Join(f.Needs, ", ")), f.Heal)
	}
	return tw.Flush()
}

// parseChaos turns --chaos's value into the faults to run, in order.
func parseChaos(spec string) ([]Fault, error) {
	if spec == "all" {
		return slices.Clone(Faults), nil
	}
	var out []Fault
	for name := range strings.SplitSeq(spec, ",") {
		name = strings.TrimSpace(name)
		i := slices.IndexFunc(Faults, func(f Fault) bool { return f.Name == name })
		if i < 0 {
			var names []string
			for _, f := range Faults {
				names = append(names, f.Name)
			}
			return nil, fmt.Errorf("--chaos: no fault %q (want list, all or some of %s)", name, strings.Join(names, ", "))
		}
		out = append(out, Faults[i])
	}
	return out, nil
}

// chaosPolicy is the game day's remediation policy: the default's
// restarts, overlay repairs, and guards the storm exceeds (more than one
// guest broken at once opens the breaker) with a short calm to close it.
// The storm breaks at least 3 guests (see storm).
const chaosPolicy = `# written by caretaker lab --chaos: the game day's remediation policy
rules:
  - name: restart-crashed-guests
    match: {alertname: GuestCrashed}
    action: restart-vm
  - name: restart-guests-shut-off-unexpectedly
    match: {alertname: GuestShutOffUnexpectedly}
    action: restart-vm
  # Configuration drift a repair undoes; not OverlayVXLANDown, which is
  # mostly the underlay's link (underlay-down pages for it).
  - name: repair-overlays
    match_re: {alertname: "OverlayVXLANMissing|OverlayPeerFDBMissing|OverlayMTUMismatch"}
    action: repair-overlay
  # An agent that does not answer for 2 minutes: its host is fenced
  # (power-cycled through its BMC), its nodes recreated elsewhere, and it
  # is reinstalled over PXE.
  - name: reprovision-unreachable-hosts
    match: {alertname: HostAgentDown}
    action: reprovision-host
guards:
  max_unhealthy: "1"        # the storm breaks three or more guests at once
  breaker_close_after: 10s  # so the breaker closes soon after the storm
`

// ErrGameDayFailed is returned when a fault that should heal did not, or
// an action was doubled.
var ErrGameDayFailed = errors.New("game day failed")

// GameDay runs `caretaker lab --chaos`: o.Chaos names the faults ("list"
// prints them and starts nothing). The lab's summary goes to o.Out, or to
// summary with JSON output, so that stdout holds only the scoreboard.
func GameDay(ctx context.Context, o Options, summary io.Writer) error {
	out := o.Out
	if out == nil {
		out = io.Discard
	}
	if o.Chaos == "list" {
		return PrintFaults(out)
	}
	faults, err := parseChaos(o.Chaos)
	if err != nil {
		return err
	}
	switch o.ChaosOutput {
	case "", "table":
	case "json":
		o.Out = summary
	default:
		return fmt.Errorf("--output: want table or json, got %q", o.ChaosOutput)
	}
	if o.ChaosHold <= 0 {
		o.ChaosHold = DefaultChaosHold
	}
	if o.PolicyFile == "" {
		f, err := os.CreateTemp("", "caretaker-chaos-policy-*.yml")
		if err != nil {
			return fmt.Errorf("chaos policy: %w", err)
		}
		defer os.Remove(f.Name())
		if _, err := f.WriteString(chaosPolicy); err != nil {
			f.Close()
			return fmt.Errorf("chaos policy: %w", err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("chaos policy: %w", err)
		}
		o.PolicyFile = f.Name()
	}
	o.gameDay = func(ctx context.Context, r *labRun, urls []string, token string) error {
		if r.driver != "qemu" {
			return fmt.Errorf("--chaos needs real QEMU guests (%s)", r.why)
		}
		g := newGameDay(r, urls, token)
		board := g.run(ctx, faults)
		var werr error
		if o.ChaosOutput == "json" {
			werr = board.writeJSON(out)
		} else {
			fmt.Fprintln(out)
			werr = board.writeTable(out)
		}
		if werr != nil {
			return werr
		}
		if ctx.Err() != nil {
			return errors.New("game day interrupted")
		}
		if failed := board.failed(); len(failed) > 0 {
			return fmt.Errorf("%w: %s", ErrGameDayFailed, strings.Join(failed, "; "))
		}
		return nil
	}
	return Run(ctx, o)
}

// gameDay is one run of the faults against a ready lab.
type gameDay struct {
	r      *labRun
	c      *api.Client
	virsh  string
	uri    string
	guests []string // every lab guest, host by host
	hosts  []string
	next   int // the guest the next guest fault breaks
	log    func(format string, args ...any)
	// clients ask the guests, from each host's namespace (client).
	clients map[string]*http.Client
}

func newGameDay(r *labRun, urls []string, token string) *gameDay {
	// With several servers, the client goes on to the next when one
	// does not answer (leader-kill).
	g := &gameDay{r: r, c: api.NewClientURLs(urls, token, &http.Client{Timeout: 5 * time.Second}), virsh: "virsh", uri: r.o.LibvirtURI}
	g.clients = map[string]*http.Client{}
	for _, h := range r.hosts {
		g.hosts = append(g.hosts, h.name)
		if h.netns != "" {
			g.clients[h.name] = guestos.Client(h.netns)
		}
		for _, gu := range h.guests {
			g.guests = append(g.guests, gu.name)
		}
	}
	g.log = func(format string, args ...any) {
		fmt.Fprintf(r.o.Out, "chaos: "+format+"\n", args...)
	}
	return g
}

// run waits for the lab to be ready, then runs each fault and waits for
// calm after it.
func (g *gameDay) run(ctx context.Context, faults []Fault) *Scoreboard {
	board := &Scoreboard{Started: time.Now(), Hold: g.r.o.ChaosHold.String()}
	defer func() { board.DurationSeconds = seconds(time.Since(board.Started)) }()
	if len(g.guests) < 2 {
		board.Error = "the lab needs at least 2 guests (--guests-per-host)"
		return board
	}
	g.log("waiting for the lab to be ready (%d guests running, %d hosts up)", len(g.guests), len(g.hosts))
	if err := poll(ctx, readyWithin, g.calm); err != nil {
		board.Error = "the lab did not get ready: " + err.Error()
		return board
	}
	if g.r.boot != nil {
		g.log("waiting for the guests' Linux to answer ping")
		if err := poll(ctx, readyWithin, g.guestsAnswer); err != nil {
			board.Error = "the guests did not boot: " + err.Error()
			return board
		}
		g.log("checking the overlays: every guest reaches its cluster's guests on the other hosts, and no other cluster's")
		var err error
		board.Overlays, err = g.checkOverlays(ctx)
		if err != nil {
			board.Overlays.Error = err.Error()
		}
	}
	for _, f := range faults {
		if ctx.Err() != nil {
			break
		}
		var missing []string
		for _, n := range f.Needs {
			if why := g.labHas(n); why != "" {
				missing = append(missing, why)
			}
		}
		if len(missing) > 0 {
			s := newScore(f)
			s.Skipped = strings.Join(missing, "; ")
			s.judge()
			g.log("%s: %s", f.Name, s.summary())
			board.Faults = append(board.Faults, s)
			continue
		}
		g.log("injecting %s", f.Name)
		s := g.inject(ctx, f)
		g.log("%s: %s", f.Name, s.summary())
		if err := poll(ctx, calmWithin, g.calm); err != nil && ctx.Err() == nil {
			s.Notes = append(s.Notes, "the lab was not calm within "+calmWithin.String()+" after it: "+err.Error())
		}
		board.Faults = append(board.Faults, s)
	}
	return board
}

func (g *gameDay) inject(ctx context.Context, f Fault) *Score {
	s := newScore(f)
	var err error
	switch f.Name {
	case "qemu-kill", "virsh-destroy":
		err = g.guestDown(ctx, s)
	case "guest-paused":
		err = g.guestPaused(ctx, s)
	case "libvirtd-stop":
		err = g.libvirtdStop(ctx, s)
	case "guest-panic":
		err = g.guestPanic(ctx, s)
	case "vxlan-delete", "fdb-remove", "vxlan-mtu":
		err = g.overlayFault(ctx, s)
	case "underlay-down":
		err = g.underlayDown(ctx, s)
	case "libvirtd-kill":
		err = g.libvirtdKill(ctx, s)
	case "agent-kill":
		err = g.agentKill(ctx, s)
	case "power-loss":
		err = g.powerLoss(ctx, s)
	case "leader-kill":
		err = g.leaderKill(ctx, s)
	case "storm":
		err = g.storm(ctx, s)
	default:
		err = fmt.Errorf("fault %s has no injector", f.Name)
	}
	if err != nil {
		s.Error = err.Error()
	}
	s.judge()
	return s
}

// guestsAnswer tells whether every lab guest answers ping from its host.
func (g *gameDay) guestsAnswer(ctx context.Context) (bool, error) {
	for _, h := range g.r.hosts {
		for _, gu := range h.guests {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := guestos.Ping(pctx, h.netns, gu.addr.Addr())
			cancel()
			if err != nil {
				return false, fmt.Errorf("%s (%s): %w", gu.name, gu.addr.Addr(), err)
			}
		}
	}
	return true, nil
}

// pickGuest returns the next guest to break, round robin, so that one
// guest's cooldown or backoff never meets the next fault.
func (g *gameDay) pickGuest() string {
	name := g.guests[g.next%len(g.guests)]
	g.next++
	return name
}

// virshRun runs virsh with args against the lab's libvirtd.
func (g *gameDay) virshRun(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, g.virsh, append([]string{"-c", g.uri}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if len(out) > 512 {
			out = out[:512]
		}
		return fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// qemuPid reads the pid of a running guest's qemu; 0 when it has none.
func qemuPid(domain string) int {
	b, err := os.ReadFile(filepath.Join("/run/libvirt/qemu", domain+".pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return pid
}

// libvirtdPid reads libvirtd's pid file.
func libvirtdPid() (int, error) {
	for _, p := range []string{"/run/libvirtd.pid", "/var/run/libvirtd.pid"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err == nil && pid > 1 && syscall.Kill(pid, 0) == nil {
			return pid, nil
		}
	}
	return 0, errors.New("libvirtd is not running (no live pid in /run/libvirtd.pid)")
}

// poll calls cond every chaosPoll until it holds or within passes; the
// error then is cond's last, or the deadline.
func poll(ctx context.Context, within time.Duration, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	t := time.NewTicker(chaosPoll)
	defer t.Stop()
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("after %s: %w", within, last)
			}
			return fmt.Errorf("not within %s", within)
		case <-t.C:
		}
	}
}

func seconds(d time.Duration) float64 {
	return float64(d.Round(10*time.Millisecond)) / float64(time.Second)
}
