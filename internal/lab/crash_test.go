package lab

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"syscall"
	"testing"
	"time"

	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/testdaemon"
	"caretaker/remediation/journal"
)

// crashPolicy restarts only the guests named prefix<n>, this test's: the
// libvirtd is shared, and the agent reports every domain on it.
func crashPolicy(prefix string) string {
	return fmt.Sprintf(`rules:
  - name: restart-crashed
    match_re:
      alertname: GuestCrashed|GuestShutOffUnexpectedly
      domain: %s[0-9]+
    action: restart-vm
guards:
  backoff_base: 1s
  max_unhealthy: "100%%"
`, regexp.QuoteMeta(prefix))
}

// TestCrashSafety SIGKILLs the server at many points of running
// remediations — before the alert fired, at random moments, while the
// start runs, while it is verified, after it succeeded — restarts it on
// the same data directory and checks that no crash is left unhealed, no
// record is left open, and no guest was started twice for one crash.
// Real starts are counted from libvirt's own lifecycle events.
func TestCrashSafety(t *testing.T) {
	requireQEMU(t)
	const guestsN = 4
	bin := buildBinaries(t)
	dir := t.TempDir()
	guests := e2eGuests(t, "crash", guestsN, guestmeta.IntentRunning, true)
	prefix := ownPrefix("crash")
	starts := countStarts(t)

	agentAddr := testdaemon.FreePort(t)
	cfg, token := writeE2EConfig(t, dir, "host-crash", agentAddr, crashPolicy(prefix), "")
	startAgent(t, bin, dir, agentAddr)
	srv := newE2EServer(t, bin, cfg, token)
	srv.start(t)

	conn, err := libvirtconn.Dial(systemURI)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Disconnect()

	// Where in a remediation each kill lands, with SIGKILL (even) and
	// virsh destroy (odd) in turn: every point once, and a random moment
	// with each way of breaking the guest. Guests 1 and 2 crash twice,
	// so a crash also follows a healed one of the same guest.
	points := []string{"at-once", "running", "random", "verifying", "succeeded", "random"}
	type crash struct {
		g      guest
		at     time.Time
		point  string
		hit    string // the state seen when the server was killed
		starts int    // libvirt starts of the guest before the crash
	}
	var crashes []crash
	for i, point := range points {
		g := guests[i%len(guests)]
		c := crash{g: g, point: point, starts: starts.of(g.uuid)}
		srvp := srv.current()

		// Break the guest: SIGKILL of QEMU (GuestCrashed) and virsh
		// destroy (GuestShutOffUnexpectedly) in turn.
		c.at = time.Now()
		if i%2 == 0 {
			if err := syscall.Kill(qemuPID(t, g.name), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		} else {
			d, err := libvirtconn.LookupDomain(conn, g.uuid)
			if err != nil {
				t.Fatal(err)
			}
			if err := conn.DomainDestroy(d); err != nil {
				t.Fatal(err)
			}
		}

		switch point {
		case "at-once":
			c.hit = "none yet"
		case "random":
			d := rand.N(3 * time.Second)
			<-time.After(d) // the point of this kill is an arbitrary moment
			c.hit = fmt.Sprintf("after %s: %s", d.Round(time.Millisecond), latestState(srv, g.uuid, c.at))
		default:
			want := journal.State(point)
			await(t, srvp.exited, time.Minute, fmt.Sprintf("a %s record for %s", point, g.name), func() bool {
				st := latestState(srv, g.uuid, c.at)
				c.hit = st
				return st == string(want) || laterThan(journal.State(st), want)
			})
		}
		srvp.kill()
		t.Logf("crash %d: %s of %s; server killed at %s (seen: %s)", i+1, map[bool]string{true: "SIGKILL", false: "virsh destroy"}[i%2 == 0], g.name, point, c.hit)
		crashes = append(crashes, c)

		srv.start(t)
		// Settled: the guest runs again, libvirt saw it start, and no
		// record of it is open.
		await(t, srv.current().exited, 2*time.Minute, g.name+" healed and its records closed", func() bool {
			if !domainRunning(conn, g.uuid) || starts.of(g.uuid) <= c.starts {
				return false
			}
			recs, err := srv.records(g.uuid)
			if err != nil {
				return false
			}
			n := 0
			for _, r := range recs {
				if r.Created.Before(c.at) {
					continue
				}
				if r.State.Open() {
					return false
				}
				n++
			}
			return n > 0
		})
	}

	// The end: every guest runs, Prometheus sees them all running, and
	// nothing is open.
	await(t, srv.current().exited, time.Minute, "the server to see every guest running", func() bool {
		return queryValue(t, "http://"+srv.addr, token, `count(caretaker_kvm_domain_state == 1 and on (uuid) caretaker_kvm_domain_info{domain=~"`+regexp.QuoteMeta(prefix)+`[0-9]+"})`) == fmt.Sprint(guestsN)
	})
	for _, g := range guests {
		if !domainRunning(conn, g.uuid) {
			t.Errorf("%s does not run at the end", g.name)
		}
	}

	for i, c := range crashes {
		var until time.Time // the next crash of the same guest
		for _, n := range crashes[i+1:] {
			if n.g.uuid == c.g.uuid {
				until = n.at
				break
			}
		}
		after := starts.of(c.g.uuid)
		if !until.IsZero() {
			for _, n := range crashes[i+1:] {
				if n.g.uuid == c.g.uuid {
					after = n.starts
					break
				}
			}
		}
		all, err := srv.records(c.g.uuid)
		if err != nil {
			t.Fatal(err)
		}
		var recs []journal.Record
		for _, r := range all {
			if !r.Created.Before(c.at) && (until.IsZero() || r.Created.Before(until)) {
				recs = append(recs, r)
			}
		}
		what := fmt.Sprintf("crash %d of %s (killed at %s, seen %s)", i+1, c.g.name, c.point, c.hit)
		if n := after - c.starts; n != 1 {
			t.Errorf("%s: libvirt started the guest %d times, want exactly 1; records:\n%s", what, n, describeRecords(recs))
		}
		if len(recs) == 0 {
			t.Errorf("%s: no journal record: the action was lost", what)
			continue
		}
		// One crash needs one restart: a failed or interrupted try (the
		// guest was found down after the kill) may precede it, but once
		// a restart succeeded, another one is an action done twice, even
		// when the agent found the guest already running.
		succeeded, requested := 0, 0
		for _, r := range recs {
			switch {
			case r.State.Open():
				t.Errorf("%s: record %d is still %s", what, r.ID, r.State)
			case r.State == journal.StateSucceeded:
				succeeded++
			case r.Reason == "" && r.Error == "":
				t.Errorf("%s: record %d is %s with no reason", what, r.ID, r.State)
			}
			if !r.Started.IsZero() {
				requested++
			}
		}
		if succeeded != 1 {
			t.Errorf("%s: %d succeeded restart-vm records, want exactly 1:\n%s", what, succeeded, describeRecords(recs))
		}
		if requested == 0 {
			t.Errorf("%s: no record shows the restart was started, yet the guest runs", what)
		}
		t.Logf("%s: %d records, %d started actions, 1 real start:\n%s", what, len(recs), requested, describeRecords(recs))
	}
}

// latestState is the state of the newest record of the guest created at
// or after since, or "" when there is none.
func latestState(s *e2eServer, uuid string, since time.Time) string {
	recs, err := s.records(uuid)
	if err != nil {
		return ""
	}
	for _, r := range recs { // newest first
		if !r.Created.Before(since) {
			return string(r.State)
		}
	}
	return ""
}

// laterThan tells whether a record in state got is past want in the
// running → verifying → final order.
func laterThan(got, want journal.State) bool {
	if want == journal.StateSucceeded {
		return false // only succeeded itself is that point
	}
	if got != "" && !got.Open() {
		return true
	}
	order := []journal.State{journal.StatePending, journal.StateRunning, journal.StateVerifying}
	return slices.Index(order, got) > slices.Index(order, want)
}
