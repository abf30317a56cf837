package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/api"
	"caretaker/internal/etcdproc"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
	"caretaker/internal/pki"
	"caretaker/remediation/journal"
)

var haRounds = flag.Int("ha-rounds", 3, "rounds of TestLabHAFailover (SIGKILL of the leader and a guest) and of TestLabHASIGSTOP")

// haLease is the lease TTL of the HA tests' labs (the lab's default).
const haLease = 3 * time.Second

// haTestLab is a `caretaker lab --servers N` process a test runs, with
// real QEMU guests.
type haTestLab struct {
	t              *testing.T
	bin, dataDir   string
	rbConfig       string
	prefix, token  string
	urls           []string // s1…sN
	exited         chan error
	clients        []*api.Client
	guests         []api.Guest
	conn           *libvirt.Libvirt
	agentTLSClient *http.Client
	// paused is the server a test has paused, which reads skip; -1 for
	// none.
	paused int
}

// startHALab runs `caretaker lab --servers servers` with two hosts of one
// QEMU guest each and waits until a server leads and both guests run. With
// clusters the servers run the provisioner too, as `caretaker lab` does by
// default.
func startHALab(t *testing.T, tag string, servers int, clusters bool) *haTestLab {
	t.Helper()
	requireQEMU(t)
	bin := buildBinaries(t)
	dir := t.TempDir()
	sweepStale(t, tag)
	l := &haTestLab{t: t, bin: bin, dataDir: filepath.Join(dir, "data"), rbConfig: filepath.Join(dir, "runbook.yml"),
		prefix: ownPrefix(tag), exited: make(chan error, 1), paused: -1}

	var out syncBuffer
	lab := exec.Command(filepath.Join(bin, "caretaker"), "lab", "--driver", "qemu", "--servers", strconv.Itoa(servers),
		"--cluster.lease-ttl", haLease.String(), "--web.listen-address", "127.0.0.1:0", "--runbook.config", l.rbConfig,
		"--guest-prefix", l.prefix, "--hosts", "2", "--guests-per-host", "1", "--clusters="+strconv.FormatBool(clusters), "--data.dir", l.dataDir)
	lab.Stdout, lab.Stderr = &out, &out
	if err := lab.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { l.exited <- lab.Wait() }()
	t.Cleanup(func() {
		select {
		case err := <-l.exited:
			l.exited <- err
		default:
			_ = lab.Process.Signal(os.Interrupt)
			select {
			case <-l.exited:
			case <-time.After(time.Minute):
				_ = lab.Process.Kill()
				<-l.exited
			}
		}
		hosts := []*host{{filter: regexp.MustCompile("^" + regexp.QuoteMeta(l.prefix))}}
		q := &qemuGuests{uri: systemURI, logger: slog.New(slog.DiscardHandler)}
		if err := q.remove(hosts); err != nil {
			t.Errorf("remove leftover guests: %v", err)
		}
		if t.Failed() {
			t.Logf("lab output (without the agents' collector errors):\n%s", withoutLines(out.String(), "collector failed"))
			for i := range servers {
				f := filepath.Join(l.dataDir, fmt.Sprintf("server-s%d.log", i+1))
				t.Logf("%s (tail, without the collector errors):\n%s", f, lastLinesOf(withoutLines(readFile(f), "collector"), 60))
			}
		}
	})

	await(t, l.exited, 3*time.Minute, "the lab's runbook config with every server", func() bool {
		urls, token := readRunbookURLs(l.rbConfig)
		if len(urls) != servers || token == "" {
			return false
		}
		l.urls, l.token = urls, token
		return true
	})
	for _, u := range l.urls {
		l.clients = append(l.clients, api.NewClient(u, l.token, &http.Client{Timeout: 3 * time.Second}))
	}
	await(t, l.exited, 2*time.Minute, "2 running guests", func() bool {
		s, err := l.clients[0].Status(context.Background())
		if err != nil {
			return false
		}
		l.guests = nil
		for _, g := range s.Guests {
			if strings.HasPrefix(g.Domain, l.prefix) && g.State == "running" {
				l.guests = append(l.guests, g)
			}
		}
		return len(l.guests) == 2
	})
	slices.SortFunc(l.guests, func(a, b api.Guest) int { return strings.Compare(a.Domain, b.Domain) })
	conn, err := libvirtconn.Dial(systemURI)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Disconnect() })
	l.conn = conn
	return l
}

// readRunbookURLs reads the urls: list and the token of the runbook
// config the lab wrote.
func readRunbookURLs(path string) ([]string, string) {
	b, err := os.ReadFile(path)
	if err != nil || !bytes.HasPrefix(b, []byte(runbookMarker)) {
		return nil, ""
	}
	var urls []string
	var token string
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "  - "); ok {
			urls = append(urls, v)
		}
		if v, ok := strings.CutPrefix(line, "token: "); ok {
			token = v
		}
	}
	return urls, token
}

// metric reads one unlabelled sample of a server's /metrics; ok is false
// when the server does not answer or has no such sample.
func metric(url, name string) (float64, bool) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	return sampleOf(resp, name, "")
}

// sampleOf finds name{labels} (labels "" for none) in a /metrics answer.
func sampleOf(resp *http.Response, name, labels string) (float64, bool) {
	want := name + labels + " "
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), want); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// leaders returns the indexes of the servers whose /metrics say they lead.
func (l *haTestLab) leaders(except int) []int {
	var out []int
	for i, u := range l.urls {
		if i == except {
			continue
		}
		if v, ok := metric(u, "caretaker_cluster_leader"); ok && v == 1 {
			out = append(out, i)
		}
	}
	return out
}

// awaitLeader waits until exactly one server leads and returns it.
func (l *haTestLab) awaitLeader(within time.Duration) int {
	l.t.Helper()
	leader := -1
	await(l.t, l.exited, within, "one server to lead", func() bool {
		ls := l.leaders(-1)
		if len(ls) != 1 {
			return false
		}
		leader = ls[0]
		return true
	})
	return leader
}

// awaitAllServers waits until every server answers and the cluster
// counts each healthy (the lab restarted the ones killed).
func (l *haTestLab) awaitAllServers(within time.Duration) {
	l.t.Helper()
	await(l.t, l.exited, within, "every server up and healthy", func() bool {
		for _, c := range l.clients {
			ss, err := c.Servers(context.Background())
			if err != nil || len(ss) != len(l.urls) {
				return false
			}
			for _, s := range ss {
				if !s.Healthy {
					return false
				}
			}
		}
		return true
	})
}

// serverPid is the pid of server i (s<i+1>) from the lab's pid file.
func (l *haTestLab) serverPid(i int) int {
	l.t.Helper()
	return l.pidFile(fmt.Sprintf("server-s%d.pid", i+1))
}

func (l *haTestLab) pidFile(name string) int {
	l.t.Helper()
	b, err := os.ReadFile(filepath.Join(l.dataDir, name))
	if err != nil {
		l.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		l.t.Fatal(err)
	}
	return pid
}

// domainID is the guest's libvirt domain ID, -1 when it does not run: a
// restarted guest gets a new one.
func (l *haTestLab) domainID(uuid string) int {
	d, err := libvirtconn.LookupDomain(l.conn, uuid)
	if err != nil {
		return -1
	}
	state, _, err := l.conn.DomainGetState(d, 0)
	if err != nil || libvirt.DomainState(state) != libvirt.DomainRunning {
		return -1
	}
	return int(d.ID)
}

// crashGuest SIGKILLs the guest's QEMU and returns its domain ID from
// before.
func (l *haTestLab) crashGuest(g api.Guest) int {
	l.t.Helper()
	id := l.domainID(g.UUID)
	if id < 0 {
		l.t.Fatalf("%s does not run before its crash", g.Domain)
	}
	if err := syscall.Kill(qemuPID(l.t, g.Domain), syscall.SIGKILL); err != nil {
		l.t.Fatal(err)
	}
	return id
}

// awaitRunningAgain waits until the guest runs with another domain ID than
// oldID.
func (l *haTestLab) awaitRunningAgain(g api.Guest, oldID int, within time.Duration) {
	l.t.Helper()
	await(l.t, l.exited, within, g.Domain+" to run again", func() bool {
		id := l.domainID(g.UUID)
		return id >= 0 && id != oldID
	})
}

// awaitSettled waits until the journal of the guest holds a succeeded
// record created at or after since and no open one.
func (l *haTestLab) awaitSettled(g api.Guest, since time.Time, within time.Duration) {
	l.t.Helper()
	await(l.t, l.exited, within, "a succeeded restart of "+g.Domain+" and no open record", func() bool {
		recs, err := l.records(g.UUID)
		if err != nil {
			return false
		}
		ok := false
		for _, r := range recs {
			if r.Created.Before(since) {
				continue
			}
			if r.State.Open() {
				return false
			}
			ok = ok || r.State == journal.StateSucceeded
		}
		return ok
	})
}

// records are the guest's journal records, newest first, from any server
// that answers.
func (l *haTestLab) records(uuid string) ([]journal.Record, error) {
	var last error
	for i, c := range l.clients {
		if i == l.paused {
			continue
		}
		h, err := c.History(context.Background(), api.HistoryFilter{Target: uuid, Limit: 1000})
		if err == nil {
			return h.Records, nil
		}
		last = err
	}
	return nil, last
}

// latestState is the state of the guest's newest record created at or
// after since, "" when there is none.
func (l *haTestLab) latestState(uuid string, since time.Time) string {
	recs, err := l.records(uuid)
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

// runbookHistory is `runbook history -o json` against the lab's servers,
// through the config the lab wrote (all the URLs).
func (l *haTestLab) runbookHistory() []journal.Record {
	l.t.Helper()
	cmd := exec.Command(filepath.Join(l.bin, "runbook"), "history", "--limit", "1000", "-o", "json")
	cmd.Env = append(os.Environ(), "RUNBOOK_CONFIG="+l.rbConfig, "RUNBOOK_URL=", "RUNBOOK_TOKEN=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		l.t.Fatalf("runbook history: %v: %s", err, stderr.String())
	}
	var h api.History
	if err := json.Unmarshal(b, &h); err != nil {
		l.t.Fatalf("runbook history: %v", err)
	}
	return h.Records
}

// haCrash is one crash of a guest in an HA test and what it must lead to.
type haCrash struct {
	g      api.Guest
	at     time.Time
	starts int // libvirt's starts of the guest before the crash
	what   string
}

// checkCrashes checks, once everything settled, that each crash was
// followed by exactly one start of its guest (libvirt's own events) and
// exactly one succeeded restart-vm in `runbook history`, and that no
// record is left open.
func (l *haTestLab) checkCrashes(crashes []haCrash, starts *startCounter) {
	l.t.Helper()
	all := l.runbookHistory()
	for i, c := range crashes {
		// The starts and records up to the next crash of the same guest.
		after := starts.of(c.g.UUID)
		var until time.Time
		for _, n := range crashes[i+1:] {
			if n.g.UUID == c.g.UUID {
				after, until = n.starts, n.at
				break
			}
		}
		var recs []journal.Record
		for _, r := range all {
			if r.UUID == c.g.UUID && !r.Created.Before(c.at) && (until.IsZero() || r.Created.Before(until)) {
				recs = append(recs, r)
			}
		}
		what := fmt.Sprintf("crash %d (%s)", i+1, c.what)
		if n := after - c.starts; n != 1 {
			l.t.Errorf("%s: libvirt started %s %d times, want exactly 1; records:\n%s", what, c.g.Domain, n, describeRecords(recs))
		}
		succeeded := 0
		for _, r := range recs {
			if r.State.Open() {
				l.t.Errorf("%s: record %d is still %s", what, r.ID, r.State)
			}
			if r.Action == "restart-vm" && r.State == journal.StateSucceeded {
				succeeded++
			}
		}
		if succeeded != 1 {
			l.t.Errorf("%s: %d succeeded restart-vm records in runbook history, want exactly 1:\n%s", what, succeeded, describeRecords(recs))
		}
	}
}

// fencedRequests sums the agents' caretaker_agent_fenced_requests_total,
// read over the lab's mutual TLS with the servers' client certificate.
func (l *haTestLab) fencedRequests() float64 {
	l.t.Helper()
	if l.agentTLSClient == nil {
		pkiDir := filepath.Join(l.dataDir, "pki")
		cert, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, serverCertName+".crt"), filepath.Join(pkiDir, serverCertName+".key"))
		if err != nil {
			l.t.Fatal(err)
		}
		ca, err := os.ReadFile(filepath.Join(pkiDir, pki.CACertFile))
		if err != nil {
			l.t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		l.agentTLSClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	}
	s, err := l.clients[0].Status(context.Background())
	if err != nil {
		for _, c := range l.clients[1:] {
			if s, err = c.Status(context.Background()); err == nil {
				break
			}
		}
		if err != nil {
			l.t.Fatal(err)
		}
	}
	sum := 0.0
	for _, h := range s.Hosts {
		resp, err := l.agentTLSClient.Get("https://" + h.Agent + "/metrics")
		if err != nil {
			l.t.Fatalf("agent of %s: %v", h.Name, err)
		}
		v, _ := sampleOf(resp, "caretaker_agent_fenced_requests_total", "")
		resp.Body.Close()
		sum += v
	}
	return sum
}

// TestLabHAFailover runs `caretaker lab --servers 3` and, -ha-rounds
// times, SIGKILLs the leading server and a guest's QEMU at the same
// moment: another server must lead, the guest run again, and libvirt's
// own events and `runbook history` show exactly one restart per crash. It
// logs the failover and heal times (make bench prints them).
func TestLabHAFailover(t *testing.T) {
	// Each runs a lab of its own: in parallel, make test waits less.
	t.Parallel()
	l := startHALab(t, "hakill", 3, false)
	starts := countStarts(t)
	var failovers, heals []float64
	var crashes []haCrash
	over := 0
	for round := range *haRounds {
		leader := l.awaitLeader(time.Minute)
		g := l.guests[round%len(l.guests)]
		pid := l.serverPid(leader)
		c := haCrash{g: g, starts: starts.of(g.UUID)}

		c.at = time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		oldID := l.crashGuest(g)

		newLeader := -1
		await(t, l.exited, time.Minute, "another server to lead", func() bool {
			if ls := l.leaders(leader); len(ls) == 1 {
				newLeader = ls[0]
				return true
			}
			return false
		})
		failover := time.Since(c.at).Seconds()
		l.awaitRunningAgain(g, oldID, 2*time.Minute)
		heal := time.Since(c.at).Seconds()
		failovers, heals = append(failovers, failover), append(heals, heal)
		if failover > (haLease + 2*time.Second).Seconds() {
			over++
		}
		c.what = fmt.Sprintf("SIGKILL of s%d (pid %d) and of %s's QEMU", leader+1, pid, g.Domain)
		t.Logf("round %d: %s: s%d leads after %.2fs, %s runs again after %.2fs", round+1, c.what, newLeader+1, failover, g.Domain, heal)
		crashes = append(crashes, c)
		l.awaitSettled(g, c.at, time.Minute)
		// The killed server is back (the lab restarts it) before the next
		// round, so each round starts with three.
		l.awaitAllServers(time.Minute)
	}
	l.checkCrashes(crashes, starts)
	logFigures(t, failovers, heals, over)
}

// logFigures logs the median and maximum failover and heal times, the
// line make bench prints.
func logFigures(t *testing.T, failovers, heals []float64, over int) {
	t.Helper()
	if len(failovers) == 0 {
		return
	}
	slices.Sort(failovers)
	slices.Sort(heals)
	t.Logf("failover: median %.2fs, max %.2fs; heal: median %.2fs, max %.2fs (%d rounds, lease %s; %d failovers over lease + 2s)",
		failovers[len(failovers)/2], failovers[len(failovers)-1], heals[len(heals)/2], heals[len(heals)-1], len(failovers), haLease, over)
}

// TestLabHASIGSTOP pauses the leading server with SIGSTOP past its lease
// while a guest crashes — just before the pause or just after it, so the
// old leader may be paused in the middle of the restart — and checks that
// another server leads and heals the guest, and that the old leader,
// continued, does not act: libvirt starts the guest exactly once per
// crash, and the journal holds exactly one succeeded restart. The agents'
// count of fenced requests shows the late requests they refused.
func TestLabHASIGSTOP(t *testing.T) {
	// Each runs a lab of its own: in parallel, make test waits less.
	t.Parallel()
	l := startHALab(t, "hastop", 3, false)
	starts := countStarts(t)
	var crashes []haCrash
	var failovers, heals []float64
	over := 0
	for round := range *haRounds {
		leader := l.awaitLeader(time.Minute)
		g := l.guests[round%len(l.guests)]
		pid := l.serverPid(leader)
		fencedBefore := l.fencedRequests()
		c := haCrash{g: g, starts: starts.of(g.UUID)}

		var oldID int
		var stopped time.Time
		if round%2 == 0 {
			// Paused first, then the crash: the old leader never saw it.
			stopped = time.Now()
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			c.at = time.Now()
			oldID = l.crashGuest(g)
			c.what = fmt.Sprintf("SIGSTOP of s%d (pid %d), then SIGKILL of %s's QEMU", leader+1, pid, g.Domain)
		} else {
			// The crash first, the pause in the leader's reaction: at a
			// random moment, or once its restart is under way (the
			// journal's record running, or past it when that was too
			// quick to see), so the old leader may be paused holding
			// an action.
			c.at = time.Now()
			oldID = l.crashGuest(g)
			seen := ""
			if round%4 == 1 {
				delay := rand.N(3 * time.Second)
				<-time.After(delay) // the point is an arbitrary moment
				seen = "after " + delay.Round(time.Millisecond).String()
			} else {
				await(t, l.exited, time.Minute, "a running restart of "+g.Domain, func() bool {
					seen = l.latestState(g.UUID, c.at)
					return seen == string(journal.StateRunning) || laterThan(journal.State(seen), journal.StateRunning)
				})
				seen = "its record " + seen
			}
			stopped = time.Now()
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			c.what = fmt.Sprintf("SIGKILL of %s's QEMU, SIGSTOP of s%d (pid %d) %s (%s later)", g.Domain, leader+1, pid, seen, stopped.Sub(c.at).Round(time.Millisecond))
		}
		l.paused = leader
		cont := func() {
			if l.paused == leader {
				_ = syscall.Kill(pid, syscall.SIGCONT)
				l.paused = -1
			}
		}
		t.Cleanup(cont)

		newLeader := -1
		await(t, l.exited, time.Minute, "another server to lead", func() bool {
			if ls := l.leaders(leader); len(ls) == 1 {
				newLeader = ls[0]
				return true
			}
			return false
		})
		failover := time.Since(stopped).Seconds()
		if id := l.domainID(g.UUID); id < 0 || id == oldID {
			l.awaitRunningAgain(g, oldID, 2*time.Minute)
		}
		heal := time.Since(c.at).Seconds()
		failovers, heals = append(failovers, failover), append(heals, heal)
		if failover > (haLease + 2*time.Second).Seconds() {
			over++
		}
		l.awaitSettled(g, c.at, time.Minute)
		// Past the lease and then some, whatever the failover took.
		if d := time.Until(stopped.Add(haLease + 2*time.Second)); d > 0 {
			<-time.After(d) // the pause itself is the test's subject
		}
		startsBeforeCont := starts.of(g.UUID)
		cont()
		// The old leader wakes up, finds its lease gone and says it no
		// longer leads; whatever it had in flight goes to the agents
		// with its old epoch.
		await(t, l.exited, time.Minute, fmt.Sprintf("s%d, continued, to answer and not lead", leader+1), func() bool {
			v, ok := metric(l.urls[leader], "caretaker_cluster_leader")
			return ok && v == 0
		})
		if ls := l.leaders(-1); len(ls) != 1 || ls[0] != newLeader {
			t.Errorf("round %d: after SIGCONT of s%d the leaders are %v, want only s%d", round+1, leader+1, ls, newLeader+1)
		}
		fenced := l.fencedRequests() - fencedBefore
		t.Logf("round %d: %s: s%d leads after %.2fs, %s runs again %.2fs after its crash; s%d continued after %.2fs paused: %d starts since, %v requests fenced by the agents",
			round+1, c.what, newLeader+1, failover, g.Domain, heal, leader+1, time.Since(stopped).Seconds(), starts.of(g.UUID)-startsBeforeCont, fenced)
		crashes = append(crashes, c)
		l.awaitAllServers(time.Minute)
	}
	l.checkCrashes(crashes, starts)
	logFigures(t, failovers, heals, over)
}

// TestLabHAEtcdDown pauses the lab's etcd (SIGSTOP): no server may act —
// a guest that crashes meanwhile stays down — every server's /metrics say
// no leader is known and etcd is down, and CaretakerNoLeader fires on
// every server. Continued, etcd gets a leader again, which heals the
// guest, once.
func TestLabHAEtcdDown(t *testing.T) {
	// Each runs a lab of its own: in parallel, make test waits less.
	t.Parallel()
	l := startHALab(t, "haetcd", 3, true)
	starts := countStarts(t)
	l.awaitLeader(time.Minute)
	g := l.guests[0]
	etcdPid := l.pidFile("etcd.pid")
	c := haCrash{g: g, starts: starts.of(g.UUID), what: "SIGKILL of " + g.Domain + "'s QEMU while etcd is paused"}

	if err := syscall.Kill(etcdPid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := true
	cont := func() {
		if paused {
			_ = syscall.Kill(etcdPid, syscall.SIGCONT)
			paused = false
		}
	}
	t.Cleanup(cont)
	c.at = time.Now()
	oldID := l.crashGuest(g)

	await(t, l.exited, time.Minute, "every server to see etcd down and no leader", func() bool {
		for _, u := range l.urls {
			known, ok1 := metric(u, "caretaker_cluster_leader_known")
			up, ok2 := metric(u, "caretaker_cluster_etcd_up")
			leads, ok3 := metric(u, "caretaker_cluster_leader")
			if !ok1 || !ok2 || !ok3 || known != 0 || up != 0 || leads != 0 {
				return false
			}
		}
		return true
	})
	t.Logf("every server reports etcd down, no leader known, not leading: %.2fs after the pause", time.Since(c.at).Seconds())
	await(t, l.exited, time.Minute, "CaretakerNoLeader and CaretakerEtcdUnreachable firing on every server", func() bool {
		for _, cl := range l.clients {
			alerts, err := cl.Alerts(context.Background())
			if err != nil {
				return false
			}
			firing := map[string]bool{}
			for _, a := range alerts {
				if a.State == "firing" {
					firing[a.Labels["alertname"]] = true
				}
			}
			if !firing["CaretakerNoLeader"] || !firing["CaretakerEtcdUnreachable"] {
				return false
			}
		}
		return true
	})
	t.Logf("CaretakerNoLeader and CaretakerEtcdUnreachable fire on every server %.2fs after the pause", time.Since(c.at).Seconds())
	// Nobody acted while etcd was paused: the guest is still down, and
	// libvirt started it not once.
	if n := starts.of(g.UUID) - c.starts; n != 0 || l.domainID(g.UUID) >= 0 {
		t.Errorf("%s was started %d times while etcd was paused (running: %v): a server acted without etcd", g.Domain, n, l.domainID(g.UUID) >= 0)
	}

	cont()
	resumed := time.Now()
	leader := l.awaitLeader(time.Minute)
	l.awaitRunningAgain(g, oldID, 2*time.Minute)
	t.Logf("etcd continued: s%d leads after %.2fs, %s runs again after %.2fs", leader+1, time.Since(resumed).Seconds(), g.Domain, time.Since(resumed).Seconds())
	l.awaitSettled(g, c.at, time.Minute)
	l.awaitAllServers(time.Minute)
	l.checkCrashes([]haCrash{c}, starts)
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// withoutLines drops the lines containing s.
func withoutLines(text, s string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(text, "\n") {
		if !strings.Contains(line, s) {
			b.WriteString(line)
		}
	}
	return b.String()
}

func lastLinesOf(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestLabServersTestDriver runs the lab with two server processes on
// etcd and libvirt's test driver (no QEMU needed): runbook's config lists
// both servers, each lists both with one leader and sees every guest, and
// stopping the lab stops the servers and etcd and restores the config.
func TestLabServersTestDriver(t *testing.T) {
	if _, err := etcdproc.Find(); err != nil {
		needs.Missing(t, "%v", err)
	}
	bin := buildBinaries(t)
	dir := t.TempDir()
	o := DefaultOptions()
	o.Driver = "test"
	o.Servers = 2
	o.Binary = filepath.Join(bin, "caretaker")
	o.ListenAddress = "127.0.0.1:0"
	o.DataDir = filepath.Join(dir, "data")
	o.RunbookConfig = filepath.Join(dir, "runbook.yml")
	o.Logger = slog.New(slog.DiscardHandler)
	var out syncBuffer
	o.Out = &out
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()

	var urls []string
	var token string
	await(t, done, 2*time.Minute, "runbook's config with both servers", func() bool {
		urls, token = readRunbookURLs(o.RunbookConfig)
		return len(urls) == 2
	})
	if !strings.Contains(out.String(), "Try a failover:") {
		t.Errorf("the summary does not say how to try a failover:\n%s", out.String())
	}
	for _, u := range urls {
		c := api.NewClient(u, token, &http.Client{Timeout: 5 * time.Second})
		await(t, done, time.Minute, u+" to list both servers, one leading, and 6 running guests", func() bool {
			ss, err := c.Servers(context.Background())
			if err != nil || len(ss) != 2 {
				return false
			}
			leaders := 0
			for _, s := range ss {
				if s.Leader {
					leaders++
				}
			}
			st, err := c.Status(context.Background())
			if err != nil {
				return false
			}
			running := 0
			for _, g := range st.Guests {
				if g.State == "running" {
					running++
				}
			}
			return leaders == 1 && running == 6
		})
	}
	pids := []int{}
	for _, f := range []string{"server-s1.pid", "server-s2.pid", "etcd.pid"} {
		b, err := os.ReadFile(filepath.Join(o.DataDir, f))
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		pids = append(pids, pid)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("lab: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the lab did not stop within a minute")
	}
	for _, pid := range pids {
		if processExists(strconv.Itoa(pid)) {
			t.Errorf("process %d (a server or etcd) still runs after the lab stopped", pid)
		}
	}
	if _, err := os.Stat(o.RunbookConfig); !os.IsNotExist(err) {
		t.Errorf("runbook config left after the lab stopped (stat: %v)", err)
	}
}
