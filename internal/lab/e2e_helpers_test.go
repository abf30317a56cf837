package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/api"
	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
	"caretaker/internal/testdaemon"
	"caretaker/remediation/journal"
)

// systemURI is the real libvirtd the end-to-end tests put their guests on.
const systemURI = "qemu:///system"

// requireQEMU skips the test unless real QEMU guests can be run here.
func requireQEMU(t *testing.T) {
	t.Helper()
	needs.Libvirtd(t)
	if err := checkQEMU(systemURI); err != nil {
		needs.Missing(t, "needs QEMU: %v", err)
	}
}

// ownPrefix is the name prefix of one test's guests (and of what a lab
// makes from it: storage pool, network namespaces), "lab-<tag><pid>-".
// Every test that shares qemu:///system owns its names: the PID keeps two
// runs of the same test apart (two engineers, or a CI job and a developer,
// on one libvirtd), the tag two tests of one run. Nothing a test removes
// by name can then be another test's.
func ownPrefix(tag string) string {
	return fmt.Sprintf("lab-%s%d-", tag, os.Getpid())
}

// sweepStale removes the guests that an earlier run of the test tagged
// tag left behind when it was killed before its cleanup: those named
// ownPrefix(tag) of a process that no longer exists. A live run's guests,
// whoever runs it, are never touched.
func sweepStale(t *testing.T, tag string) {
	t.Helper()
	re := regexp.MustCompile("^lab-" + regexp.QuoteMeta(tag) + `(\d+)-`)
	conn, err := libvirtconn.Dial(systemURI)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Disconnect()
	doms, _, err := conn.ConnectListAllDomains(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range doms {
		name := d.Name
		if m := re.FindStringSubmatch(name); m != nil && !processExists(m[1]) {
			if d.ID != -1 {
				_ = conn.DomainDestroy(d)
			}
			if err := conn.DomainUndefine(d); err != nil {
				t.Logf("remove %s, left by an earlier run: %v", name, err)
			} else {
				t.Logf("removed %s, left by an earlier run", name)
			}
		}
	}
}

// processExists tells whether a process of that PID runs.
func processExists(pid string) bool {
	n, err := strconv.Atoi(pid)
	if err != nil || n <= 0 {
		return false
	}
	return syscall.Kill(n, 0) != syscall.ESRCH
}

// e2eGuests defines n real QEMU guests named prefix-1…n (prefix from
// ownPrefix(tag)) whose metadata says intent, starts them when start is
// set, all at once, and removes them at cleanup.
func e2eGuests(t *testing.T, tag string, n int, intent string, start bool) []guest {
	t.Helper()
	sweepStale(t, tag)
	prefix := ownPrefix(tag)
	owned := []*host{{filter: regexp.MustCompile("^" + regexp.QuoteMeta(prefix) + `\d+$`)}}
	q := &qemuGuests{uri: systemURI, logger: slog.New(slog.DiscardHandler)}
	t.Cleanup(func() {
		if err := q.remove(owned); err != nil {
			t.Errorf("remove guests: %v", err)
		}
	})
	meta, err := guestmeta.Metadata{Intent: intent, Cluster: "e2e", Role: "worker"}.XML()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := libvirtconn.Dial(systemURI)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Disconnect()
	// Concurrently: libvirtd defines and starts guests in parallel, and
	// each call takes seconds where /dev/kvm is unusable.
	gs := make([]guest, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range gs {
		wg.Go(func() {
			name := fmt.Sprintf("%s%d", prefix, i+1)
			if start {
				gs[i], errs[i] = defineAndStart(conn, name, meta)
				return
			}
			gs[i], errs[i] = define(conn, name, meta)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return gs
}

// define defines a guest without starting it.
func define(conn *libvirt.Libvirt, name, meta string) (guest, error) {
	xml, err := domainXML(name, meta)
	if err != nil {
		return guest{}, err
	}
	dom, err := conn.DomainDefineXML(xml)
	if err != nil {
		return guest{}, fmt.Errorf("define guest %s: %w", name, err)
	}
	return guest{name: name, uuid: libvirtconn.UUIDString(dom.UUID)}, nil
}

// binaries are cmd/caretaker and cmd/runbook, built once per run of the
// package (TestMain removes them).
var binaries struct {
	once sync.Once
	dir  string
	err  error
}

// buildBinaries returns the directory of caretaker and runbook, built on
// the first call.
func buildBinaries(t *testing.T) string {
	t.Helper()
	binaries.once.Do(func() {
		binaries.dir, binaries.err = os.MkdirTemp("", "caretaker-lab-bin-")
		if binaries.err != nil {
			return
		}
		for _, c := range []string{"caretaker", "runbook"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binaries.dir, c), "caretaker/cmd/"+c)
			if out, err := cmd.CombinedOutput(); err != nil {
				binaries.err = fmt.Errorf("build %s: %v\n%s", c, err, out)
				return
			}
		}
	})
	if binaries.err != nil {
		t.Fatal(binaries.err)
	}
	return binaries.dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binaries.dir != "" {
		os.RemoveAll(binaries.dir)
	}
	os.Exit(code)
}

// startCounter counts libvirt's "started" lifecycle events per domain
// UUID. libvirtd emits exactly one per successful virDomainCreate (a start
// refused because the domain already runs emits none), so it counts the
// real starts whoever asked for them, which no journal record can fake.
type startCounter struct {
	mu     sync.Mutex
	starts map[string]int
}

func countStarts(t *testing.T) *startCounter {
	t.Helper()
	conn, err := libvirtconn.Dial(systemURI)
	if err != nil {
		t.Fatal(err)
	}
	c := &startCounter{starts: map[string]int{}}
	stop, err := libvirtconn.Subscribe(conn, libvirt.DomainEventIDLifecycle, func(ev any) {
		m, ok := ev.(*libvirt.DomainEventCallbackLifecycleMsg)
		if !ok || libvirt.DomainEventType(m.Msg.Event) != libvirt.DomainEventStarted {
			return
		}
		c.mu.Lock()
		c.starts[libvirtconn.UUIDString(m.Msg.Dom.UUID)]++
		c.mu.Unlock()
	})
	if err != nil {
		conn.Disconnect()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stop()
		conn.Disconnect()
	})
	return c
}

func (c *startCounter) of(uuid string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.starts[uuid]
}

// proc is one caretaker process the test runs.
type proc struct {
	cmd    *exec.Cmd
	exited chan error
	out    *syncBuffer
}

// startProc runs bin with args, its output kept for the failure log. The
// process is killed at cleanup if still running.
func startProc(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), exited: make(chan error, 1), out: &syncBuffer{}}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			s := p.out.String()
			if len(s) > 16384 {
				s = "…" + s[len(s)-16384:]
			}
			t.Logf("%s output (tail):\n%s", name, s)
		}
	})
	return p
}

// kill SIGKILLs the process, if it still runs, and waits for it.
func (p *proc) kill() {
	select {
	case err := <-p.exited:
		p.exited <- err
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	err := <-p.exited
	p.exited <- err
}

// e2eServer is a caretaker server process and the files it runs on.
type e2eServer struct {
	bin, cfg, addr, token string
	client                *api.Client
	procs                 []*proc // every incarnation, the last one running
}

// writeE2EConfig writes tokens, a policy and server.yml into dir for one
// agent at agentAddr, named host, and returns the server.yml path and
// the API token. extra is appended to the remediation section.
func writeE2EConfig(t *testing.T, dir, host, agentAddr, policy, extra string) (string, string) {
	t.Helper()
	apiToken, agentToken := newToken(), newToken()
	files := map[string]string{
		"api.token":   apiToken + "\n",
		"agent.token": agentToken + "\n",
		"policy.yml":  policy,
		"server.yml": fmt.Sprintf(`data_dir: %s
api:
  token_file: api.token
agents:
  token_file: agent.token
prometheus:
  scrape_interval: 500ms
  scrape_timeout: 500ms
  evaluation_interval: 500ms
  retention: 1h
remediation:
  policy_file: policy.yml
  action_timeout: 1m
%shosts:
  - name: %s
    agent: %s
`, filepath.Join(dir, "data"), extra, host, agentAddr),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "server.yml"), apiToken
}

// startAgent runs `caretaker agent` at addr on the real libvirtd with the
// agent token of dir, declaring TCG guests as the lab's agents do (so
// HostKVMDeviceMissing does not hold remediation back where /dev/kvm is
// missing).
func startAgent(t *testing.T, bin, dir, addr string) *proc {
	t.Helper()
	return startProc(t, "agent", filepath.Join(bin, "caretaker"), "agent", "--web.listen-address", addr,
		"--libvirt.uri", systemURI, "--action.token-file", filepath.Join(dir, "agent.token"),
		"--guests.domain-type", "qemu", "--log.level", "info")
}

func newE2EServer(t *testing.T, bin, cfg, token string) *e2eServer {
	addr := testdaemon.FreePort(t)
	return &e2eServer{bin: bin, cfg: cfg, addr: addr, token: token,
		client: api.NewClient("http://"+addr, token, &http.Client{Timeout: 5 * time.Second})}
}

// start runs a new incarnation of the server on the same data directory
// and waits until its API answers.
func (s *e2eServer) start(t *testing.T) {
	t.Helper()
	p := startProc(t, fmt.Sprintf("server #%d", len(s.procs)+1), filepath.Join(s.bin, "caretaker"), "server",
		"--config.file", s.cfg, "--web.listen-address", s.addr, "--log.level", "info")
	s.procs = append(s.procs, p)
	await(t, p.exited, time.Minute, "the server's API", func() bool {
		_, err := s.client.Status(context.Background())
		return err == nil
	})
}

func (s *e2eServer) current() *proc { return s.procs[len(s.procs)-1] }

// records returns the journal's records of the guest, newest first.
func (s *e2eServer) records(uuid string) ([]journal.Record, error) {
	h, err := s.client.History(context.Background(), api.HistoryFilter{Target: uuid, Limit: 1000})
	return h.Records, err
}

// describeRecords is the evidence a failure prints.
func describeRecords(recs []journal.Record) string {
	var b strings.Builder
	for _, r := range recs {
		fmt.Fprintf(&b, "  #%d %s %s alert=%s fp=%s starts_at=%s attempt=%d state=%s reason=%q error=%q\n",
			r.ID, r.Created.Format("15:04:05.000"), r.Action, r.Alert, r.Fingerprint,
			r.AlertStartsAt.Format("15:04:05.000"), r.Attempt, r.State, r.Reason, r.Error)
		for _, tr := range r.Transitions {
			fmt.Fprintf(&b, "      %s %s %s\n", tr.At.Format("15:04:05.000"), tr.State, tr.Note)
		}
	}
	return b.String()
}

// domainRunning asks libvirt whether the guest runs.
func domainRunning(conn *libvirt.Libvirt, uuid string) bool {
	d, err := libvirtconn.LookupDomain(conn, uuid)
	if err != nil {
		return false
	}
	state, _, err := conn.DomainGetState(d, 0)
	return err == nil && libvirt.DomainState(state) == libvirt.DomainRunning
}

// labProcess is a `caretaker lab` a test runs as a process of its own.
type labProcess struct {
	cmd    *exec.Cmd
	exited chan error // the lab's exit, put back by whoever takes it
	out    syncBuffer // its stderr, and its stdout unless the test took it
}

// startLab runs bin's `caretaker lab` with args, its stdout to stdout (nil:
// with its stderr into out). At cleanup it interrupts the lab as an
// operator would, kills it if it does not stop within a minute, removes
// every guest whose name starts with one of leftovers (whatever happened,
// none stays), and logs the lab's output when the test failed.
func startLab(t *testing.T, bin string, stdout io.Writer, leftovers []string, args ...string) *labProcess {
	t.Helper()
	l := &labProcess{cmd: exec.Command(filepath.Join(bin, "caretaker"), append([]string{"lab"}, args...)...), exited: make(chan error, 1)}
	l.cmd.Stdout, l.cmd.Stderr = stdout, &l.out
	if stdout == nil {
		l.cmd.Stdout = &l.out
	}
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { l.exited <- l.cmd.Wait() }()
	t.Cleanup(func() {
		l.stop()
		for _, prefix := range leftovers {
			hosts := []*host{{filter: regexp.MustCompile("^" + regexp.QuoteMeta(prefix))}}
			q := &qemuGuests{uri: systemURI, logger: slog.New(slog.DiscardHandler)}
			if err := q.remove(hosts); err != nil {
				t.Errorf("remove leftover guests %s*: %v", prefix, err)
			}
		}
		if t.Failed() {
			t.Logf("lab output:\n%s", l.out.String())
		}
	})
	return l
}

// stop interrupts the lab unless it has exited, and kills it when it does
// not stop within a minute; it returns the lab's exit.
func (l *labProcess) stop() error {
	select {
	case err := <-l.exited:
		l.exited <- err
		return err
	default:
	}
	_ = l.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-l.exited:
		l.exited <- err
		return err
	case <-time.After(time.Minute):
		_ = l.cmd.Process.Kill()
		err := <-l.exited
		l.exited <- err
		return err
	}
}
