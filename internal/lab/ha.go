package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"caretaker/internal/api"
	"caretaker/internal/etcdproc"
)

// The lab with several servers (Options.Servers >= 2): etcd runs as a
// process of its own, and every server is a `caretaker server` process,
// so an operator (or a test) can kill, pause and continue them for real.
// The lab keeps Options.Servers of them running: one that exits is started
// again after serverRestartDelay.

const (
	// maxServers bounds --servers: one etcd and a few servers.
	maxServers = 5
	// serverRestartDelay is how long the lab waits before it starts a
	// server that exited again: long enough to see the failover happen
	// without it.
	serverRestartDelay = 2 * time.Second
	// serverStopGrace is how long a server gets after SIGTERM before
	// SIGKILL when the lab stops.
	serverStopGrace = 5 * time.Second
	// leaderWait bounds the wait for the first leader at start.
	leaderWait = 2 * time.Minute
	// etcdPrefix is the servers' etcd key prefix (the config's default).
	etcdPrefix = "/caretaker/"
)

// haLab is the servers of a lab with several, and their etcd.
type haLab struct {
	etcd        *etcdproc.Proc
	etcdDir     string
	etcdLog     string
	etcdPidFile string
	servers     []*serverProc
	// leader is the server that led first.
	leader string
}

// serverProc is one `caretaker server` process of the lab, supervised:
// started again when it exits while the lab runs.
type serverProc struct {
	name    string
	addr    string // host:port it serves on
	cfg     string // its server.yml
	dataDir string
	log     string // its output, appended over its restarts
	pidFile string
	bin     string
	logger  *slog.Logger

	stop chan struct{} // closed when the lab stops
	done chan struct{} // closed when the supervisor has stopped it

	mu     sync.Mutex
	pid    int
	starts int
	exits  int
	last   error // how it last exited
}

func (s *serverProc) url() string { return "http://" + s.addr }

// Pid is the process id of the running incarnation, 0 between two.
func (s *serverProc) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

func (s *serverProc) exitCount() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exits, s.last
}

// startServers runs etcd and Options.Servers server processes and waits
// until one of them leads. It returns the servers' API URLs.
func (r *labRun) startServers(ctx context.Context) ([]string, error) {
	ha := &haLab{
		etcdDir:     filepath.Join(r.dataDir, "etcd"),
		etcdLog:     filepath.Join(r.dataDir, "etcd.log"),
		etcdPidFile: filepath.Join(r.dataDir, "etcd.pid"),
	}
	r.ha = ha
	bin := r.o.Binary
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("servers: find the caretaker binary: %w", err)
		}
	}
	if err := r.startEtcd(ctx); err != nil {
		return nil, err
	}
	if r.serverAddrs == nil {
		var err error
		if r.serverAddrs, err = serverAddrs(r.o.ListenAddress, r.o.Servers); err != nil {
			return nil, err
		}
	}
	// The hosts PXE-boot from the first server; a follower passes /pxe/
	// on to the leader.
	pxeURL := "http://" + r.serverAddrs[0]
	if r.power != nil {
		r.power.setServer(pxeURL)
	}
	pxe, err := writePXE(r.dataDir, r.power, pxeURL)
	if err != nil {
		return nil, err
	}
	for i, addr := range r.serverAddrs {
		name := fmt.Sprintf("s%d", i+1)
		s := &serverProc{
			name:    name,
			addr:    addr,
			cfg:     filepath.Join(r.dataDir, "server-"+name+".yml"),
			dataDir: filepath.Join(r.dataDir, "server-"+name),
			log:     filepath.Join(r.dataDir, "server-"+name+".log"),
			pidFile: filepath.Join(r.dataDir, "server-"+name+".pid"),
			bin:     bin,
			logger:  r.o.Logger.With("server", name),
			stop:    make(chan struct{}),
			done:    make(chan struct{}),
		}
		cluster := fmt.Sprintf("cluster:\n  name: %s\n  advertise_url: %s\n  etcd:\n    endpoints: [%s]\n    prefix: %s\n  lease_ttl: %s\n",
			name, s.url(), ha.etcd.Endpoint(), etcdPrefix, r.o.LeaseTTL)
		if err := writeServerConfigAt(s.cfg, r.dataDir, s.dataDir, r.hosts, r.o, r.cl, r.tls, r.power, pxe, cluster); err != nil {
			return nil, err
		}
		ha.servers = append(ha.servers, s)
		go s.supervise()
		r.undo.add("stop server "+name, func() error { close(s.stop); <-s.done; return nil })
	}
	urls := make([]string, len(ha.servers))
	for i, s := range ha.servers {
		urls[i] = s.url()
	}
	if ha.leader, err = r.awaitLeader(ctx); err != nil {
		return nil, err
	}
	return urls, nil
}

// startEtcd starts the lab's etcd: Debian's etcd-server, or one built from
// the Go module proxy into the user's cache directory when it is missing.
// It stops after the servers, when the lab stops.
func (r *labRun) startEtcd(ctx context.Context) error {
	ha := r.ha
	bin, err := etcdproc.Find()
	if err != nil {
		cache, cerr := os.UserCacheDir()
		if cerr != nil {
			return fmt.Errorf("etcd: %w; and no cache directory to build one in: %w", err, cerr)
		}
		dir := filepath.Join(cache, "caretaker", "etcd")
		fmt.Fprintf(r.o.Out, "etcd is not installed (Debian's %s): building etcd %s from the Go module proxy into %s; this may take minutes…\n",
			etcdproc.DebianPackage, etcdproc.BuildVersion, dir)
		if bin, err = etcdproc.Build(ctx, dir); err != nil {
			return err
		}
	}
	logFile, err := os.OpenFile(ha.etcdLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("etcd log: %w", err)
	}
	// Not ctx: on Ctrl-C the servers stop first, and may still talk to
	// etcd on their way out.
	p, err := etcdproc.Start(context.WithoutCancel(ctx), etcdproc.Options{
		Binary: bin,
		Dir:    ha.etcdDir,
		Name:   "lab",
		Logger: r.o.Logger,
		Stdout: logFile,
	})
	if err != nil {
		logFile.Close()
		return err
	}
	ha.etcd = p
	if err := os.WriteFile(ha.etcdPidFile, []byte(strconv.Itoa(p.Pid())+"\n"), 0o600); err != nil {
		r.o.Logger.Warn("write etcd's pid file", "err", err)
	}
	r.undo.add("stop etcd", func() error {
		err := p.Stop()
		os.Remove(ha.etcdPidFile)
		return errors.Join(err, logFile.Close())
	})
	return nil
}

// serverAddrs are the listen addresses of n servers: the given one and the
// ports after it, or n free ports of its host when its port is 0. A port
// that is taken is an error naming it.
func serverAddrs(listen string, n int) ([]string, error) {
	hostPart, portPart, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("--web.listen-address %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portPart)
	if err != nil || port < 0 || port+n-1 > 65535 {
		return nil, fmt.Errorf("--web.listen-address %q: want a port from 0 to %d for %d servers", listen, 65536-n, n)
	}
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	addrs := make([]string, n)
	for i := range addrs {
		p := 0
		if port != 0 {
			p = port + i
		}
		addr := net.JoinHostPort(hostPart, strconv.Itoa(p))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("server s%d: listen on %s (is another caretaker running? --web.listen-address picks the first of %d consecutive ports): %w", i+1, addr, n, err)
		}
		// Held until all are chosen, so free ports differ.
		held = append(held, l)
		addrs[i] = l.Addr().String()
	}
	return addrs, nil
}

// awaitLeader waits until every server answers and one of them leads, and
// returns its name. A server that exits before is an error carrying the
// end of its log.
func (r *labRun) awaitLeader(ctx context.Context) (string, error) {
	token, err := os.ReadFile(filepath.Join(r.dataDir, "api.token"))
	if err != nil {
		return "", err
	}
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.NewTimer(leaderWait)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		for _, s := range r.ha.servers {
			if n, err := s.exitCount(); n > 0 {
				return "", fmt.Errorf("server %s exited while the lab started (%v); the end of %s:\n%s", s.name, err, s.log, logTail(s.log, 20))
			}
		}
		answered, leader := 0, ""
		for _, s := range r.ha.servers {
			ss, err := api.NewClient(s.url(), strings.TrimSpace(string(token)), client).Servers(ctx)
			if err != nil {
				last = fmt.Sprintf("server %s: %v", s.name, err)
				continue
			}
			answered++
			for _, x := range ss {
				if x.Leader {
					leader = x.Name
				}
			}
		}
		if answered == len(r.ha.servers) && leader != "" {
			r.o.Logger.Info("lab servers ready", "leader", leader)
			return leader, nil
		}
		if answered == len(r.ha.servers) {
			last = "no server leads yet"
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-deadline.C:
			return "", fmt.Errorf("servers: none leads within %s (last: %s); see their logs %s", leaderWait, last, filepath.Join(r.dataDir, "server-s*.log"))
		case <-tick.C:
		}
	}
}

// supervise runs the server until the lab stops, starting it again
// serverRestartDelay after it exits.
func (s *serverProc) supervise() {
	defer close(s.done)
	for {
		cmd, exited, err := s.start()
		if err != nil {
			s.mu.Lock()
			s.exits++
			s.last = err
			s.mu.Unlock()
			s.logger.Error("lab server did not start; trying again", "err", err, "in", serverRestartDelay)
		} else {
			select {
			case err := <-exited:
				s.mu.Lock()
				s.exits++
				s.last = err
				s.pid = 0
				s.mu.Unlock()
				s.logger.Warn("lab server exited; the lab starts it again", "pid", cmd.Process.Pid, "exit", exitText(err), "in", serverRestartDelay, "log", s.log)
			case <-s.stop:
				s.terminate(cmd, exited)
				return
			}
		}
		select {
		case <-s.stop:
			return
		case <-time.After(serverRestartDelay):
		}
	}
}

// start starts one incarnation of the server; exited gets its end.
func (s *serverProc) start() (*exec.Cmd, chan error, error) {
	if err := os.MkdirAll(s.dataDir, 0o750); err != nil {
		return nil, nil, fmt.Errorf("server %s: %w", s.name, err)
	}
	logFile, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("server %s: log: %w", s.name, err)
	}
	defer logFile.Close() // the child has its own descriptor
	cmd := exec.Command(s.bin, "server", "--config.file", s.cfg, "--web.listen-address", s.addr)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group: Ctrl-C reaches the lab, which stops
		// the servers itself, not the servers at once.
		Setpgid: true,
		// A lab that dies without stopping it takes it along.
		Pdeathsig: syscall.SIGKILL,
	}
	s.mu.Lock()
	s.starts++
	n := s.starts
	s.mu.Unlock()
	fmt.Fprintf(logFile, "--- caretaker lab: starting server %s (start %d) at %s: %s\n", s.name, n, time.Now().Format(time.RFC3339Nano), strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("server %s: %w", s.name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	s.mu.Lock()
	s.pid = cmd.Process.Pid
	s.mu.Unlock()
	if err := os.WriteFile(s.pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		s.logger.Warn("write the server's pid file", "err", err)
	}
	if n > 1 {
		s.logger.Info("lab server started again", "pid", cmd.Process.Pid, "addr", s.addr)
	}
	return cmd, exited, nil
}

// terminate stops the server: SIGTERM (and SIGCONT, should an operator
// have paused it), SIGKILL after serverStopGrace.
func (s *serverProc) terminate(cmd *exec.Cmd, exited chan error) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Process.Signal(syscall.SIGCONT)
	select {
	case <-exited:
	case <-time.After(serverStopGrace):
		s.logger.Warn("lab server did not stop on SIGTERM: killed", "pid", cmd.Process.Pid, "grace", serverStopGrace)
		_ = cmd.Process.Kill()
		<-exited
	}
	s.mu.Lock()
	s.pid = 0
	s.mu.Unlock()
	os.Remove(s.pidFile)
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// logTail returns the last n lines of a file, for an error.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
