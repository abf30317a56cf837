package lab

// The game day's faults of the overlays, the hosts' daemons and the hosts
// themselves, and the guests' traffic across hosts that tells an overlay
// works.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"caretaker/internal/api"
	"caretaker/internal/guestos"
	"caretaker/internal/overlaynet"
	"caretaker/internal/overlayspec"
	"caretaker/provisioner/clusters"
	"caretaker/provisioner/hoststate"
	"caretaker/remediation/journal"
)

// Game day timings of the faults that wait on rules with long `for`s:
// overlay alerts fire after 2m (OverlayMTUMismatch 5m) and HostAgentDown
// after 2m, then the action runs.
const (
	overlayHealWithin = 4 * time.Minute
	mtuHealWithin     = 7 * time.Minute
	pageWithin        = 3 * time.Minute
	powerHealWithin   = 6 * time.Minute
	// serviceRestart is how long after a kill the lab's stand-in for
	// systemd (Restart=on-failure) starts libvirtd or the agent again.
	serviceRestart = 5 * time.Second
	// gameDayCluster is the guest cluster whose node power-loss moves.
	gameDayCluster = "gameday"
)

// labHas says why the lab lacks what a fault needs, "" when it has it.
func (g *gameDay) labHas(need string) string {
	switch need {
	case needNetwork:
		if g.r.net == nil {
			return "the lab's network: " + g.r.noNet
		}
	case needOS:
		if g.r.boot == nil {
			return g.r.noBoot
		}
	case needServers:
		if g.r.ha == nil {
			return "several servers (--servers 2 or more)"
		}
	case needBMC:
		switch {
		case g.r.power == nil && g.r.noPower != "":
			return g.r.noPower
		case g.r.power == nil:
			return "BMCs: they come with guest clusters (" + g.r.noClusters + ")"
		case len(g.hosts) < 2:
			return "a second host to move the node to"
		}
	}
	return ""
}

// labGuest finds a lab guest by name, with its host.
func (g *gameDay) labGuest(name string) (*host, guest, bool) {
	for _, h := range g.r.hosts {
		for _, gu := range h.guests {
			if gu.name == name {
				return h, gu, true
			}
		}
	}
	return nil, guest{}, false
}

// client is the HTTP client that asks guests from inside host h's
// namespace (newGameDay makes them).
func (g *gameDay) client(h *host) *http.Client { return g.clients[h.name] }

// peer is a guest of the same cluster as name on another host: the one
// whose traffic must cross the overlay.
func (g *gameDay) peer(name string) (guest, bool) {
	h, me, ok := g.labGuest(name)
	if !ok {
		return guest{}, false
	}
	for _, o := range g.r.hosts {
		if o == h {
			continue
		}
		for _, gu := range o.guests {
			if gu.cluster == me.cluster {
				return gu, true
			}
		}
	}
	return guest{}, false
}

// reaches asks guest from (over its host's namespace) to ping guest to.
func (g *gameDay) reaches(ctx context.Context, from, to string) (bool, error) {
	h, f, ok := g.labGuest(from)
	_, t, ok2 := g.labGuest(to)
	if !ok || !ok2 {
		return false, fmt.Errorf("no lab guest %s or %s", from, to)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ok, _, err := guestos.AskPing(ctx, g.client(h), f.addr.Addr(), t.addr.Addr())
	return ok, err
}

// trafficFlows tells whether each of doms reaches its peer on another
// host, and that peer it.
func (g *gameDay) trafficFlows(ctx context.Context, doms []string) (bool, error) {
	for _, d := range doms {
		p, ok := g.peer(d)
		if !ok {
			continue
		}
		for _, pair := range [][2]string{{d, p.name}, {p.name, d}} {
			if ok, err := g.reaches(ctx, pair[0], pair[1]); !ok {
				if err == nil {
					err = fmt.Errorf("%s does not reach %s", pair[0], pair[1])
				}
				return false, err
			}
		}
	}
	return true, nil
}

// checkOverlays is the game day's first check of the lab's overlays:
// every guest reaches its cluster's guests on the other hosts, and no
// guest of another cluster, on its host or another. The pairs are asked
// a few at a time: an unreachable one takes seconds.
func (g *gameDay) checkOverlays(ctx context.Context) (*OverlayCheck, error) {
	type pair struct {
		from, to guest
		same     bool
		ok       bool
		err      error
	}
	var pairs []*pair
	for _, h := range g.r.hosts {
		for _, from := range h.guests {
			for _, o := range g.r.hosts {
				for _, to := range o.guests {
					same := to.cluster == from.cluster
					if to.name != from.name && !(same && o == h) {
						pairs = append(pairs, &pair{from: from, to: to, same: same})
					}
				}
			}
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 6)
	for _, p := range pairs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			p.ok, p.err = g.reaches(ctx, p.from.name, p.to.name)
		})
	}
	wg.Wait()
	c := &OverlayCheck{Reach: []string{}, Isolated: []string{}}
	var errs []error
	for _, p := range pairs {
		name := p.from.name + "→" + p.to.name
		switch {
		case p.err != nil:
			errs = append(errs, p.err)
		case p.same && p.ok:
			c.Reach = append(c.Reach, name)
		case p.same:
			errs = append(errs, fmt.Errorf("%s (cluster %s) does not reach %s over the overlay", p.from.name, p.from.cluster, p.to.name))
		case p.ok:
			errs = append(errs, fmt.Errorf("%s (cluster %s) reaches %s of cluster %s", p.from.name, p.from.cluster, p.to.name, p.to.cluster))
		default:
			c.Isolated = append(c.Isolated, name)
		}
	}
	return c, errors.Join(errs...)
}

// restored waits for traffic of doms to flow again and notes when.
func (w *watch) restored(ctx context.Context, doms []string, within time.Duration) {
	if w.g.r.boot == nil {
		return
	}
	err := poll(ctx, within, func(ctx context.Context) (bool, error) {
		if _, err := w.observe(ctx); err != nil {
			return false, err
		}
		return w.g.trafficFlows(ctx, doms)
	})
	if err != nil {
		w.s.Notes = append(w.s.Notes, "traffic not restored: "+err.Error())
		return
	}
	d := seconds(time.Since(w.t0))
	w.s.TrafficAfter = &d
}

// guestPanic panics a guest's kernel (through its /cgi-bin/panic): the
// guest's pvpanic device has libvirt report it crashed.
func (g *gameDay) guestPanic(ctx context.Context, s *Score) error {
	dom := g.pickGuest()
	h, gu, _ := g.labGuest(dom)
	old := qemuPid(dom)
	w := g.watch(s, []string{dom}, false, s.Fault.Alert)
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	err := guestos.Panic(pctx, g.client(h), gu.addr.Addr())
	cancel()
	if err != nil {
		return fmt.Errorf("panic %s: %w", dom, err)
	}
	w.guestBack(ctx, dom, old)
	return nil
}

// overlayFault breaks the lab's overlay of cluster lab on the first host,
// waits for caretaker to repair it (or for the page, then repairs it as
// the on-call would, for underlay-down) and for the guests' traffic.
func (g *gameDay) overlayFault(ctx context.Context, s *Score) error {
	h := g.r.hosts[0]
	hn := g.r.net.host(h.name)
	o := g.r.net.labOverlay(labOverlays[0].cluster, labOverlays[0].vni, hn)
	doms := g.clusterGuests(o.Cluster, h)
	w := g.watch(s, doms, false, s.Fault.Alert)
	w.hostAlerts(h.name, s.Fault.Alert)
	s.Targets = append(s.Targets, h.name+"/"+o.Cluster)
	nl, err := overlaynet.Open(ctx, hn.path)
	if err != nil {
		return err
	}
	defer nl.Close()
	vx, err := nl.LinkByName(o.Device)
	if err != nil {
		return fmt.Errorf("look up %s on %s: %w", o.Device, h.name, err)
	}
	within := overlayHealWithin
	switch s.Fault.Name {
	case "vxlan-delete":
		err = nl.LinkDel(vx)
	case "fdb-remove":
		peer := g.r.net.hosts[1].addr
		err = nl.NeighDel(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: syscall.AF_BRIDGE,
			Flags: netlink.NTF_SELF, IP: peer.AsSlice(), HardwareAddr: make([]byte, 6), State: netlink.NUD_PERMANENT})
	case "vxlan-mtu":
		// The kernel refuses a VXLAN MTU above its underlay's minus the
		// overhead, but not an underlay whose MTU drops below it (a NIC
		// or switch reconfigured): the same mismatch.
		within = mtuHealWithin
		var ul netlink.Link
		if ul, err = nl.LinkByName(o.Underlay); err == nil {
			mtu := ul.Attrs().MTU
			err = nl.LinkSetMTU(ul, mtu-100)
			defer func() {
				// The runner puts the underlay back, and the VXLAN
				// devices' MTUs with it (both of the host's broke).
				_ = nl.LinkSetMTU(ul, mtu)
				for _, lo := range labOverlays {
					_ = g.r.net.ensureOverlay(context.WithoutCancel(ctx), hn, g.r.net.labOverlay(lo.cluster, lo.vni, hn))
				}
			}()
		}
	}
	if err != nil {
		return fmt.Errorf("%s on %s: %w", s.Fault.Name, h.name, err)
	}
	if s.Fault.Name == "vxlan-mtu" {
		s.Notes = append(s.Notes, fmt.Sprintf("%s's underlay MTU was lowered by 100: %s's no longer fits; the runner put both back afterwards", h.name, o.Device))
	}
	g.log("%s: %s of %s on %s; %s fires after its `for`, then repair-overlay", s.Fault.Name, o.Device, o.Cluster, h.name, s.Fault.Alert)
	err = w.until(ctx, within, func(snapshot) bool {
		return overlayMatches(ctx, hn, o) && w.repaired()
	})
	if err == nil {
		w.healed("caretaker")
	}
	w.restored(ctx, doms, healWithin)
	w.finish(ctx)
	return nil
}

// repaired tells whether a repair-overlay of the fault succeeded.
func (w *watch) repaired() bool {
	return slices.ContainsFunc(w.last.records, func(r journal.Record) bool {
		return w.recordAbout(r) && r.Action == "repair-overlay" && r.State == journal.StateSucceeded
	})
}

// hostAlerts makes the watch count alert's instances about host (not only
// its guests') as the fault's.
func (w *watch) hostAlerts(host string, alerts ...string) {
	w.hostOnly = append(w.hostOnly, host)
	w.expect = append(w.expect, alerts...)
}

// overlayMatches tells whether host hn has overlay o whole again: the
// VXLAN device, up, with the MTU that fits the underlay and a flooding
// entry for every peer.
func overlayMatches(ctx context.Context, hn *hostNet, o overlayspec.Overlay) bool {
	nl, err := overlaynet.Open(ctx, hn.path)
	if err != nil {
		return false
	}
	defer nl.Close()
	vx, err := nl.LinkByName(o.Device)
	if err != nil || vx.Type() != "vxlan" || vx.Attrs().OperState == netlink.OperDown {
		return false
	}
	ul, err := nl.LinkByName(o.Underlay)
	if err != nil || vx.Attrs().MTU != ul.Attrs().MTU-overlayspec.OverheadIPv4 {
		return false
	}
	fdb, err := nl.NeighList(vx.Attrs().Index, syscall.AF_BRIDGE)
	if err != nil {
		return false
	}
	for _, p := range o.Peers {
		if !slices.ContainsFunc(fdb, func(n netlink.Neigh) bool {
			return n.IP.String() == p.Address && overlayspec.IsFloodMAC(n.HardwareAddr)
		}) {
			return false
		}
	}
	return true
}

// clusterGuests are host h's lab guests of cluster.
func (g *gameDay) clusterGuests(cluster string, h *host) []string {
	var out []string
	for _, gu := range h.guests {
		if gu.cluster == cluster {
			out = append(out, gu.name)
		}
	}
	return out
}

// underlayDown takes the first host's underlay link down at its "switch
// port" (the root namespace's end): its overlays cannot reach the other
// hosts, nothing caretaker does can bring a link up, and
// OverlayPeerUnreachable pages. The runner then brings it up.
func (g *gameDay) underlayDown(ctx context.Context, s *Score) error {
	h := g.r.hosts[0]
	hn := g.r.net.host(h.name)
	doms := g.clusterGuests(labOverlays[0].cluster, h)
	s.Runbook = "alerts/runbooks/OverlayPeerUnreachable.md"
	w := g.watch(s, doms, false, s.Fault.Alert)
	w.hostAlerts(h.name, s.Fault.Alert)
	for _, o := range g.r.hosts[1:] {
		w.hostAlerts(o.name)
	}
	s.Targets = append(s.Targets, h.name+"/underlay")
	port := g.r.net.underlayLink(hn)
	l, err := netlink.LinkByName(port)
	if err != nil {
		return fmt.Errorf("look up %s: %w", port, err)
	}
	if err := netlink.LinkSetDown(l); err != nil {
		return fmt.Errorf("take %s down: %w", port, err)
	}
	up := func() error { return netlink.LinkSetUp(l) }
	defer func() { _ = up() }() // whatever happens, never leave it down
	g.log("underlay-down: %s's underlay link down; the guests keep sending, so the peers' neighbour entries fail; OverlayPeerUnreachable pages after 2m", h.name)
	// The guests' traffic is what makes the kernel resolve the peers: ask
	// for it while waiting for the page.
	err = w.until(ctx, pageWithin, func(snapshot) bool {
		_, _ = g.reaches(ctx, doms[0], mustPeer(g, doms[0]))
		return len(w.s.Pages) > 0
	})
	if err != nil {
		s.Notes = append(s.Notes, "no page within "+pageWithin.String())
	}
	if err := up(); err != nil {
		return fmt.Errorf("bring %s up: %w", port, err)
	}
	s.Notes = append(s.Notes, "the runner brought "+h.name+"'s underlay link up, as the paged on-call would")
	w.restored(ctx, doms, healWithin)
	if s.TrafficAfter != nil {
		w.healed("runner")
	}
	w.finish(ctx)
	return nil
}

func mustPeer(g *gameDay, dom string) string {
	p, _ := g.peer(dom)
	return p.name
}

// libvirtdKill kills libvirtd; after serviceRestart the runner starts it
// again, as systemd would. The guests run on (QEMU does not need
// libvirtd), and the agents reconnect.
func (g *gameDay) libvirtdKill(ctx context.Context, s *Score) error {
	pid, err := libvirtdPid()
	if err != nil {
		return err
	}
	w := g.watch(s, nil, true, "HostLibvirtdDown")
	pids := map[string]int{}
	for _, d := range g.guests {
		pids[d] = qemuPid(d)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("SIGKILL libvirtd (pid %d): %w", pid, err)
	}
	holdCtx, cancel := context.WithTimeout(ctx, serviceRestart)
	_ = w.until(holdCtx, serviceRestart, func(snapshot) bool { return false })
	cancel()
	if err := runCommand(ctx, "libvirtd", "-d"); err != nil {
		return fmt.Errorf("start libvirtd again: %w", err)
	}
	s.Notes = append(s.Notes, fmt.Sprintf("the runner started libvirtd again after %s, as systemd (Restart=on-failure) would", serviceRestart))
	err = w.until(ctx, healWithin, func(sn snapshot) bool {
		if !g.hostsUp(sn) {
			return false
		}
		for _, d := range g.guests {
			if sn.guestState(d) != "running" {
				return false
			}
		}
		return true
	})
	if err == nil {
		w.healed("systemd (runner)")
		for d, p := range pids {
			if qemuPid(d) != p {
				s.Notes = append(s.Notes, d+" has a new qemu: it did not run on")
			}
		}
	}
	w.finish(ctx)
	return nil
}

// hostsUp tells whether every host's agent and libvirt answer.
func (g *gameDay) hostsUp(sn snapshot) bool {
	for _, h := range g.hosts {
		i := slices.IndexFunc(sn.status.Hosts, func(x api.Host) bool { return x.Name == h })
		if i < 0 || !sn.status.Hosts[i].AgentUp || !sn.status.Hosts[i].LibvirtUp {
			return false
		}
	}
	return true
}

// agentKill stops a host's agent as a kill would, and while it is down a
// guest of that host crashes; after serviceRestart the runner starts the
// agent again, as systemd would. caretaker must then see the crash it
// missed and start the guest, once.
func (g *gameDay) agentKill(ctx context.Context, s *Score) error {
	dom := g.pickGuest()
	h, _, _ := g.labGuest(dom)
	old := qemuPid(dom)
	if old == 0 {
		return fmt.Errorf("%s has no qemu pid", dom)
	}
	w := g.watch(s, []string{dom}, false, "GuestCrashed", "GuestShutOffUnexpectedly")
	w.hostAlerts(h.name, "HostAgentDown")
	s.Targets = append(s.Targets, h.name+"/agent")
	if err := h.agent.stop(); err != nil {
		return fmt.Errorf("stop the agent of %s: %w", h.name, err)
	}
	restarted := false
	defer func() {
		if !restarted {
			_ = h.agent.start(g.r.ctx)
		}
	}()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %s: %w", dom, err)
	}
	holdCtx, cancel := context.WithTimeout(ctx, serviceRestart)
	_ = w.until(holdCtx, serviceRestart, func(snapshot) bool { return false })
	cancel()
	if err := h.agent.start(g.r.ctx); err != nil {
		return fmt.Errorf("start the agent of %s again: %w", h.name, err)
	}
	restarted = true
	s.Notes = append(s.Notes, fmt.Sprintf("%s crashed while %s's agent was down; the runner started the agent after %s, as systemd would", dom, h.name, serviceRestart))
	w.guestBack(ctx, dom, old)
	return nil
}

// ensureGameDayCluster creates the game day's one-node guest cluster
// unless it exists, and waits for it to run; it returns its node's host.
func (g *gameDay) ensureGameDayCluster(ctx context.Context) (clusters.Cluster, error) {
	c, err := g.c.Cluster(ctx, gameDayCluster)
	if err != nil {
		spec := clusters.Spec{Name: gameDayCluster, Pools: []clusters.Pool{{Name: "worker", Role: "worker", Count: 1,
			VCPUs: 1, MemoryBytes: 64 << 20, DiskBytes: 64 << 20}}}
		if _, err := g.c.CreateCluster(ctx, spec); err != nil {
			return c, fmt.Errorf("create cluster %s: %w", gameDayCluster, err)
		}
	}
	err = poll(ctx, readyWithin, func(ctx context.Context) (bool, error) {
		var err error
		c, err = g.c.Cluster(ctx, gameDayCluster)
		return err == nil && c.Phase == clusters.PhaseReady && len(c.Nodes) == 1 && c.Nodes[0].Host != "", err
	})
	if err != nil {
		return c, fmt.Errorf("cluster %s not ready: %w", gameDayCluster, err)
	}
	return c, nil
}

// powerLoss powers off the host of the game day cluster's node through its
// BMC, as a lost feed would. HostAgentDown fires after 2m, and the
// chaos policy's reprovision-host fences the host (power cycle), moves
// its node to another host (recreate) and reinstalls it over PXE; the lab
// host boots (labbmc.Firmware) and its agent answers again.
func (g *gameDay) powerLoss(ctx context.Context, s *Score) error {
	c, err := g.ensureGameDayCluster(ctx)
	if err != nil {
		return err
	}
	node, from := c.Nodes[0].Name, c.Nodes[0].Host
	h := g.r.host(from)
	doms := append([]string{}, guestNames(h)...)
	w := g.watch(s, doms, false, "HostAgentDown")
	w.hostAlerts(from, "HostAgentDown")
	s.Targets = append(s.Targets, from+" (node "+node+")")
	boots := g.r.power.pxeBoots(from)
	bmcAddr := g.r.power.bmcs.Addr(from)
	if err := runCommand(ctx, "ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", strings.TrimPrefix(bmcAddr, "127.0.0.1:"),
		"-U", bmcUser, "-f", g.r.power.bmcs.PasswordFile(), "chassis", "power", "off"); err != nil {
		return fmt.Errorf("power off %s through its BMC: %w", from, err)
	}
	g.log("power-loss: %s is off (its agent and guests stopped); HostAgentDown fires after 2m, then reprovision-host", from)
	err = w.until(ctx, powerHealWithin, func(sn snapshot) bool {
		if g.r.power.pxeBoots(from) == boots || !g.hostsUp(sn) {
			return false
		}
		st, _, err := g.c.HostState(ctx, from)
		if err != nil || st.State != hoststate.Ready || st.Cordoned {
			return false
		}
		cl, err := g.c.Cluster(ctx, gameDayCluster)
		if err != nil || len(cl.Nodes) != 1 || cl.Nodes[0].Host == from || cl.Nodes[0].State != "running" {
			return false
		}
		for _, d := range doms {
			if sn.guestState(d) != "running" {
				return false
			}
		}
		return true
	})
	if err == nil {
		w.healed("caretaker")
		if cl, err := g.c.Cluster(ctx, gameDayCluster); err == nil && len(cl.Nodes) == 1 {
			s.Notes = append(s.Notes, fmt.Sprintf("node %s was recreated on %s; %s booted over PXE and is ready", node, cl.Nodes[0].Host, from))
		}
	}
	w.restored(ctx, doms, healWithin)
	w.finish(ctx)
	return nil
}

func guestNames(h *host) []string {
	var out []string
	for _, gu := range h.guests {
		out = append(out, gu.name)
	}
	return out
}

// leaderKill kills the leading server (SIGKILL) and, at the same moment, a
// guest's qemu: another server must lead within the lease and restart the
// guest, exactly once. The lab starts the killed server again after
// serverRestartDelay, as its service manager would.
func (g *gameDay) leaderKill(ctx context.Context, s *Score) error {
	ss, err := g.c.Servers(ctx)
	if err != nil {
		return fmt.Errorf("servers: %w", err)
	}
	i := slices.IndexFunc(ss, func(x api.ServerStatus) bool { return x.Leader })
	if i < 0 {
		return errors.New("no server leads")
	}
	old := ss[i].Name
	j := slices.IndexFunc(g.r.ha.servers, func(p *serverProc) bool { return p.name == old })
	if j < 0 {
		return fmt.Errorf("the leader %s is none of the lab's servers", old)
	}
	pid := g.r.ha.servers[j].Pid()
	dom := g.pickGuest()
	qpid := qemuPid(dom)
	if pid == 0 || qpid == 0 {
		return fmt.Errorf("no pid for the leader %s (%d) or for %s (%d)", old, pid, dom, qpid)
	}
	w := g.watch(s, []string{dom}, false, "GuestCrashed", "GuestShutOffUnexpectedly")
	s.Targets = append(s.Targets, "server "+old)
	if err := errors.Join(syscall.Kill(pid, syscall.SIGKILL), syscall.Kill(qpid, syscall.SIGKILL)); err != nil {
		return fmt.Errorf("leader-kill: %w", err)
	}
	g.log("leader-kill: killed the leader %s (pid %d) and %s's qemu", old, pid, dom)
	var next string
	err = w.until(ctx, healWithin, func(sn snapshot) bool {
		ss, err := g.c.Servers(ctx)
		if err != nil {
			return false
		}
		next = ""
		for _, x := range ss {
			if x.Leader && x.Name != old {
				next = x.Name
			}
		}
		p := qemuPid(dom)
		return next != "" && p != 0 && p != qpid && sn.guestState(dom) == "running"
	})
	if err == nil {
		w.healed("caretaker")
		s.Notes = append(s.Notes, fmt.Sprintf("%s leads now; the lab started %s again after %s", next, old, serverRestartDelay))
	}
	w.restored(ctx, []string{dom}, healWithin)
	w.finish(ctx)
	return nil
}
