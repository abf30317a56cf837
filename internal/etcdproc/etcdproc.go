// Package etcdproc runs one etcd member as a child process, for the HA lab
// (`caretaker lab --servers N`) and for tests: the servers share their state
// in a real etcd, and a real process can be stopped, killed, paused and
// restarted on the same data, which is what the HA code must survive.
//
// The binary is Debian's etcd-server (Find); where it is missing the lab
// may build one from the Go module proxy (Build). Tests never build: they use
// package etcdtest, which skips or fails through internal/needs.
package etcdproc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// DebianPackage provides /usr/bin/etcd (3.4.23 in bookworm).
	DebianPackage = "etcd-server"
	// DefaultReadyTimeout bounds how long a member may take to answer
	// /health after it was started.
	DefaultReadyTimeout = 20 * time.Second
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
	StopGrace = 5 * time.Second

	// logKeep is how much of the member's output Log keeps: enough for the
	// start-up and the last minutes of a test, bounded for a long lab.
	logKeep = 64 << 10
	// errorLines is how much of the log an error carries.
	errorLines = 25
	// portAttempts bounds the retries when a port chosen here was taken by
	// someone else between choosing it and etcd binding it.
	portAttempts = 4
	// healthPoll is the interval of the /health polling while starting.
	healthPoll = 50 * time.Millisecond
)

// Find returns the etcd binary: `etcd` on PATH, else /usr/bin/etcd (which a
// minimal PATH may lack). The error names the package to install.
func Find() (string, error) {
	if p, err := exec.LookPath("etcd"); err == nil {
		return p, nil
	}
	const debian = "/usr/bin/etcd"
	if p, err := exec.LookPath(debian); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("find etcd: not on PATH nor at %s: install Debian's %s (deploy/setup.sh run, as root): %w",
		debian, DebianPackage, exec.ErrNotFound)
}

// Options describe one member. Only Dir is required.
type Options struct {
	// Binary is the etcd to run; empty means Find.
	Binary string
	// Dir is the data directory (--data-dir). Restart keeps it.
	Dir string
	// Name is the member name (--name); empty means "caretaker".
	Name string
	// ClientAddr and PeerAddr are loopback host:port pairs; empty means a
	// free port chosen here, chosen again if etcd finds it taken.
	ClientAddr, PeerAddr string
	// Logger gets the member's lifecycle (started, stopped, killed); nil
	// means none. etcd's own output goes to Stdout and Log.
	Logger *slog.Logger
	// Stdout, if set, gets a copy of etcd's output (stdout and stderr).
	Stdout io.Writer
	// ExtraArgs are appended to the flags chosen here; etcd takes the last
	// of a repeated flag, so they may also override one of ours.
	ExtraArgs []string
	// ReadyTimeout bounds the wait for /health; zero means
	// DefaultReadyTimeout.
	ReadyTimeout time.Duration
}

// Proc is one etcd member running as a child process. Its methods may be
// called from several goroutines.
type Proc struct {
	binary     string
	args       []string
	clientURL  string
	logger     *slog.Logger
	output     io.Writer // the log tail and Options.Stdout
	tail       *tail
	readyLimit time.Duration
	health     *http.Client

	mu  sync.Mutex
	cur *run // the process started last; nil before the first start
}

// run is one process of a member: Restart makes a new one.
type run struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and was reaped
	err  error         // what Wait said, set before done is closed
	// unwatch releases the watcher of the context the process was started
	// with.
	unwatch func() bool
}

func (r *run) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the process unless it has exited. os.Process.Signal
// uses a pidfd on Linux, so a recycled pid is never hit; etcd starts no
// children, so the process is the whole group.
func (r *run) signal(sig syscall.Signal) error {
	if r.exited() {
		return nil
	}
	if err := r.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal etcd (pid %d) %v: %w", r.cmd.Process.Pid, sig, err)
	}
	return nil
}

// stop sends SIGTERM and, if the process is still there after grace,
// SIGKILL; it returns once the process is gone. It reports whether SIGTERM
// was enough.
func (r *run) stop(grace time.Duration) bool {
	_ = r.signal(syscall.SIGTERM)
	// A paused member would hold SIGTERM until it is continued.
	_ = r.signal(syscall.SIGCONT)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-r.done:
		return true
	case <-timer.C:
		_ = r.signal(syscall.SIGKILL)
		<-r.done
		return false
	}
}

// Start starts a member and returns once it answers /health. The member is
// stopped (SIGTERM, then SIGKILL after StopGrace) when ctx ends; the caller
// stops it with Stop otherwise.
func Start(ctx context.Context, o Options) (*Proc, error) {
	if o.Dir == "" {
		return nil, errors.New("start etcd: no data directory")
	}
	binary := o.Binary
	if binary == "" {
		var err error
		if binary, err = Find(); err != nil {
			return nil, fmt.Errorf("start etcd: %w", err)
		}
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	name := o.Name
	if name == "" {
		name = "caretaker"
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	limit := o.ReadyTimeout
	if limit <= 0 {
		limit = DefaultReadyTimeout
	}
	for attempt := 1; ; attempt++ {
		clientAddr, peerAddr, err := addrs(o.ClientAddr, o.PeerAddr)
		if err != nil {
			return nil, fmt.Errorf("start etcd: %w", err)
		}
		t := &tail{max: logKeep}
		p := &Proc{
			binary:     binary,
			args:       args(o.Dir, name, "http://"+clientAddr, "http://"+peerAddr, o.ExtraArgs),
			clientURL:  "http://" + clientAddr,
			logger:     logger.With("etcd", name),
			tail:       t,
			output:     t,
			readyLimit: limit,
			// Short: a paused member must look unhealthy quickly.
			health: &http.Client{Timeout: time.Second},
		}
		if o.Stdout != nil {
			p.output = io.MultiWriter(t, o.Stdout)
		}
		err = p.start(ctx)
		if err == nil {
			return p, nil
		}
		// Another process may take a port between our choosing it and etcd
		// binding it; only ports chosen here can be chosen again.
		if attempt < portAttempts && (o.ClientAddr == "" && taken(t.String(), clientAddr) || o.PeerAddr == "" && taken(t.String(), peerAddr)) {
			logger.Info("etcd port taken, choosing others", "attempt", attempt, "client", clientAddr, "peer", peerAddr)
			continue
		}
		return nil, err
	}
}

// taken says whether etcd's log says it could not bind addr.
func taken(log, addr string) bool {
	return strings.Contains(log, "listen tcp "+addr+": bind: address already in use")
}

// args are the flags of a small loopback member. Short heartbeat and
// election timeouts: a single member elects itself sooner, and a restarted
// one is back sooner. The HA code writes its state in batches, hence the
// raised transaction and request limits.
func args(dir, name, clientURL, peerURL string, extra []string) []string {
	a := []string{
		"--data-dir", dir,
		"--name", name,
		"--listen-client-urls", clientURL,
		"--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", name + "=" + peerURL,
		"--initial-cluster-state", "new",
		"--initial-cluster-token", "caretaker-" + name,
		"--heartbeat-interval", "50",
		"--election-timeout", "500",
		"--max-txn-ops", "1024",
		"--max-request-bytes", "10485760",
		// zap: 3.4 defaults to the deprecated capnslog, and warns; 3.5 and
		// later know only zap.
		"--logger", "zap",
		"--log-outputs", "stderr",
	}
	return append(a, extra...)
}

// addrs fills in free loopback ports where client or peer is empty. Both
// listeners are held open together so the two ports differ.
func addrs(client, peer string) (string, string, error) {
	var hold []net.Listener
	defer func() {
		for _, l := range hold {
			l.Close()
		}
	}()
	free := func() (string, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", fmt.Errorf("choose a free port: %w", err)
		}
		hold = append(hold, l)
		return l.Addr().String(), nil
	}
	var err error
	if client == "" {
		if client, err = free(); err != nil {
			return "", "", err
		}
	}
	if peer == "" {
		if peer, err = free(); err != nil {
			return "", "", err
		}
	}
	return client, peer, nil
}

// start starts a process with p's flags and waits until it is healthy; on
// any error the process is gone when start returns.
func (p *Proc) start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	cmd := exec.Command(p.binary, p.args...)
	cmd.Env = environ()
	cmd.Stdout, cmd.Stderr = p.output, p.output
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group: a Ctrl-C in the lab's terminal reaches
		// the lab, which stops its servers first and etcd last, not all
		// at once.
		Setpgid: true,
		// If the test binary or the lab dies without stopping it (a
		// panic, a kill -9, go test's timeout), the kernel kills etcd
		// too instead of leaving it orphaned on its ports.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start etcd %s: %w", p.binary, err)
	}
	r := &run{cmd: cmd, done: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		close(r.done)
	}()
	r.unwatch = context.AfterFunc(ctx, func() {
		p.logger.Info("etcd stopping: context ended", "pid", cmd.Process.Pid, "cause", context.Cause(ctx))
		r.stop(StopGrace)
	})
	go func() {
		<-r.done
		r.unwatch()
	}()
	p.mu.Lock()
	p.cur = r
	p.mu.Unlock()

	if err := p.waitHealthy(ctx, r); err != nil {
		r.stop(StopGrace)
		return err
	}
	p.logger.Info("etcd started", "pid", cmd.Process.Pid, "endpoint", p.clientURL, "binary", p.binary)
	return nil
}

// environ is the environment without etcd's own variables: etcd reads
// ETCD_* as flags, and one set by the caller's shell would either change
// the member or, shadowed by our flag, make it refuse to start.
func environ() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			env = append(env, kv)
		}
	}
	return env
}

// waitHealthy polls /health until it answers healthy, the process exits,
// the ready limit passes or ctx ends. etcd has no other "ready" signal.
func (p *Proc) waitHealthy(ctx context.Context, r *run) error {
	deadline := time.NewTimer(p.readyLimit)
	defer deadline.Stop()
	tick := time.NewTicker(healthPoll)
	defer tick.Stop()
	exited := func() error {
		return fmt.Errorf("etcd at %s exited before it was healthy: %v\n%s", p.clientURL, r.err, lastLines(p.tail.String(), errorLines))
	}
	var last error
	for {
		// An exit first: where someone else holds the client port, each
		// health request waits its full timeout, and select chooses at
		// random among the ready cases below.
		if r.exited() {
			return exited()
		}
		if last = p.Health(ctx); last == nil {
			return nil
		}
		select {
		case <-r.done:
			return exited()
		case <-deadline.C:
			return fmt.Errorf("etcd at %s not healthy within %s (last: %v)\n%s", p.clientURL, p.readyLimit, last, lastLines(p.tail.String(), errorLines))
		case <-ctx.Done():
			return fmt.Errorf("start etcd at %s: %w", p.clientURL, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// Health asks the member's /health: nil when it answers {"health":"true"}.
// A paused member does not answer, and the request times out after a
// second.
func (p *Proc) Health(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.clientURL+"/health", nil)
	if err != nil {
		return fmt.Errorf("etcd health: %w", err)
	}
	resp, err := p.health.Do(req)
	if err != nil {
		return fmt.Errorf("etcd health: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return fmt.Errorf("etcd health: %w", err)
	}
	var h struct {
		Health string `json:"health"`
	}
	if err := json.Unmarshal(body, &h); err != nil || resp.StatusCode != http.StatusOK || h.Health != "true" {
		return fmt.Errorf("etcd health: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// Endpoint is the client URL, e.g. http://127.0.0.1:40123.
func (p *Proc) Endpoint() string { return p.clientURL }

// Pid is the process id of the running member, or 0 when none runs.
func (p *Proc) Pid() int {
	r := p.running()
	if r == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// Log returns the end of the member's output (stdout and stderr, over all
// its restarts), up to 64 KiB.
func (p *Proc) Log() string { return p.tail.String() }

// running returns the current process if it has not exited.
func (p *Proc) running() *run {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil || p.cur.exited() {
		return nil
	}
	return p.cur
}

// Stop stops the member: SIGTERM, and SIGKILL if it is still there after
// StopGrace. It returns once the process is gone; the error says it had to
// be killed. Stopping a member that is not running does nothing.
func (p *Proc) Stop() error {
	r := p.running()
	if r == nil {
		return nil
	}
	pid := r.cmd.Process.Pid
	if !r.stop(StopGrace) {
		p.logger.Warn("etcd killed: it did not stop on SIGTERM", "pid", pid, "grace", StopGrace)
		return fmt.Errorf("stop etcd (pid %d): still running %s after SIGTERM, killed", pid, StopGrace)
	}
	p.logger.Info("etcd stopped", "pid", pid)
	return nil
}

// Kill kills the member with SIGKILL, as a crash would, and returns once
// the process is gone.
func (p *Proc) Kill() {
	r := p.running()
	if r == nil {
		return
	}
	_ = r.signal(syscall.SIGKILL)
	<-r.done
	p.logger.Info("etcd killed", "pid", r.cmd.Process.Pid)
}

// Pause stops the member with SIGSTOP: its ports stay open but nothing
// answers, as with a hung or partitioned etcd. Resume continues it.
func (p *Proc) Pause() error {
	r := p.running()
	if r == nil {
		return errors.New("pause etcd: not running")
	}
	if err := r.signal(syscall.SIGSTOP); err != nil {
		return fmt.Errorf("pause etcd: %w", err)
	}
	p.logger.Info("etcd paused", "pid", r.cmd.Process.Pid)
	return nil
}

// Resume continues a paused member with SIGCONT.
func (p *Proc) Resume() error {
	r := p.running()
	if r == nil {
		return errors.New("resume etcd: not running")
	}
	if err := r.signal(syscall.SIGCONT); err != nil {
		return fmt.Errorf("resume etcd: %w", err)
	}
	p.logger.Info("etcd resumed", "pid", r.cmd.Process.Pid)
	return nil
}

// Restart stops the member if it runs and starts it again on the same data
// directory and the same ports, returning once it is healthy. The new
// process is stopped when ctx ends.
func (p *Proc) Restart(ctx context.Context) error {
	if err := p.Stop(); err != nil {
		p.logger.Warn("etcd restart", "err", err)
	}
	if err := p.start(ctx); err != nil {
		return fmt.Errorf("restart etcd: %w", err)
	}
	return nil
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(b), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			if n--; n == 0 {
				return s[i+1:]
			}
		}
	}
	return s
}
