package labbmc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"caretaker/provisioner/bmc"
)

// Options configure Start.
type Options struct {
	// Dir holds every file of the BMCs: the password file (secrets/), and
	// per host (host-NAME/) ipmi_sim's configuration, the chassis script
	// and its state, the event FIFO and ipmi_sim's log. It must not exist
	// or be empty: it is Start's alone, and Close removes it. Its path
	// goes into a command line ipmi_sim hands to /bin/sh, so it is an
	// absolute path of letters, digits and . _ - + / only.
	Dir string
	// Hosts are the hosts' names (DNS labels), one BMC each.
	Hosts []string
	// Username and Password are the BMCs' one admin user: at most 16 and
	// 20 bytes (IPMI's limits) of printable ASCII without spaces, quotes or
	// backslashes. The password is written to PasswordFile, never logged.
	Username string
	Password string
	Logger   *slog.Logger
	// OnPower is called for every change of a host's chassis power, with
	// the boot device that boot uses (BootPXE, BootNone, …): on a power
	// off the device set then, on a power on the device the host boots
	// from. A boot device override holds for one boot: after a power on
	// the device is BootNone again. A power cycle of a running host
	// (ipmitool chassis power cycle, the provisioner's PowerCycle) is
	// OnPower(off, dev) at once and OnPower(on, dev) about a second later,
	// when ipmi_sim's timer powers it on; a cycle of a host that is off
	// is OnPower(on, dev) alone, and a reset of a running host is off and
	// on at once. Setting the same power again calls nothing. The lab
	// boots its Firmware on OnPower(on, BootPXE), best in a goroutine of
	// its own. Calls for one host come one at a
	// time, in order, from one goroutine per host; a call that blocks
	// holds up that host's later events, and Close waits for calls in
	// progress.
	OnPower func(host string, on bool, bootDevice string)
	// Program is ipmi_sim's path; empty looks "ipmi_sim" up on PATH.
	Program string
	// ReadyTimeout bounds the wait for each ipmi_sim to answer; default
	// DefaultReadyTimeout. The Start context may end it sooner.
	ReadyTimeout time.Duration
}

// DefaultReadyTimeout bounds the wait for an ipmi_sim to answer.
const DefaultReadyTimeout = 30 * time.Second

const (
	// passwordFile is the password file's name inside SecretsDir.
	passwordFile = "bmc.pass"
	// startAttempts is how often a BMC is started on a fresh port when
	// ipmi_sim exits at once (another process took the port meanwhile).
	startAttempts = 3
	// probeTimeout bounds one readiness probe; probeEvery spaces them
	// when ipmi_sim refuses at once (not yet bound).
	probeTimeout = time.Second
	probeEvery   = 50 * time.Millisecond
	// logTail is how much of ipmi_sim's log an error carries.
	logTail = 2048
)

// chassisScript is ipmi_sim's chassis_control program for one host.
// ipmi_sim runs it through popen(3) as "chassis MC get NAME..." (print
// NAME:VALUE for each) and "chassis MC set NAME VALUE". Power and boot
// device live in files beside it, so a "get" answers what the last "set"
// did; each change is also written, as one line (see parseEvent), to the
// FIFO "events" that the BMC's goroutine reads. ipmi_sim waits for each
// run to end before it handles the next request, so runs never overlap.
const chassisScript = `#!/bin/sh
dir=$(dirname "$0")
[ $# -ge 2 ] || exit 1
op=$2
shift 2
event() { printf '%s\n' "$1" >> "$dir/events"; }
power=$(cat "$dir/power") || exit 1
boot=$(cat "$dir/boot") || exit 1
case $op in
get)
	for p in "$@"; do
		case $p in
		power) echo "power:$power" ;;
		boot) echo "boot:$boot" ;;
		*) exit 1 ;;
		esac
	done ;;
set)
	[ $# -eq 2 ] || exit 1
	case $1:$2 in
	power:0|shutdown:1)
		[ "$power" = 0 ] && exit 0
		echo 0 > "$dir/power"
		event "power 0 $boot" ;;
	power:1)
		[ "$power" = 1 ] && exit 0
		echo 1 > "$dir/power"
		# A boot device override holds for the next boot only.
		echo none > "$dir/boot"
		event "power 1 $boot" ;;
	reset:1)
		[ "$power" = 1 ] || exit 0
		echo none > "$dir/boot"
		event "reset $boot" ;;
	boot:none|boot:pxe|boot:default|boot:cdrom|boot:bios)
		echo "$2" > "$dir/boot"
		event "boot $2" ;;
	identify:*) ;;
	*) exit 1 ;;
	esac ;;
*) exit 1 ;;
esac
`

// emuCommands make ipmi_sim's one MC, the BMC at IPMB address 0x20.
const emuCommands = "mc_setbmc 0x20\n" +
	"mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\n" +
	"mc_enable 0x20\n"

// lanConf is ipmi_sim's configuration: lanplus on 127.0.0.1:port, the
// chassis script, one admin user.
func lanConf(host string, port int, dir, user, password string) string {
	return fmt.Sprintf(`name "%s"
set_working_mc 0x20
startlan 1
  addr 127.0.0.1 %d
  priv_limit admin
  allowed_auths_callback none md2 md5 straight
  allowed_auths_user none md2 md5 straight
  allowed_auths_operator none md2 md5 straight
  allowed_auths_admin none md2 md5 straight
  guid a123456789abcdefa123456789abcdef
endlan
chassis_control "%s/chassis 0x20"
user 2 true "%s" "%s" admin 10 none md2 md5 straight
`, host, port, dir, user, password)
}

var (
	safePathRE   = regexp.MustCompile(`^/[A-Za-z0-9._+/-]*$`)
	hostRE       = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	credentialRE = regexp.MustCompile(`^[!#-&(-\[\]-~]+$`) // printable ASCII but space " ' \
)

func (o Options) validate() error {
	var errs []error
	if !safePathRE.MatchString(o.Dir) || slices.Contains(strings.Split(o.Dir, "/"), "..") {
		errs = append(errs, fmt.Errorf("dir %q: want an absolute path of letters, digits and . _ - + / without ..", o.Dir))
	}
	if len(o.Hosts) == 0 {
		errs = append(errs, errors.New("hosts: none given"))
	}
	for i, h := range o.Hosts {
		if !hostRE.MatchString(h) {
			errs = append(errs, fmt.Errorf("hosts[%d] %q: not a DNS label", i, h))
		} else if slices.Index(o.Hosts, h) != i {
			errs = append(errs, fmt.Errorf("hosts[%d] %q: given twice", i, h))
		}
	}
	if len(o.Username) > 16 || !credentialRE.MatchString(o.Username) {
		errs = append(errs, fmt.Errorf("username %q: want 1 to 16 bytes of printable ASCII without spaces, quotes or backslashes", o.Username))
	}
	// The password itself is never shown.
	if len(o.Password) > 20 || !credentialRE.MatchString(o.Password) {
		errs = append(errs, errors.New("password: want 1 to 20 bytes of printable ASCII without spaces, quotes or backslashes"))
	}
	if o.OnPower == nil {
		errs = append(errs, errors.New("OnPower: not set"))
	}
	if o.ReadyTimeout < 0 {
		errs = append(errs, fmt.Errorf("ready timeout %s: negative", o.ReadyTimeout))
	}
	return errors.Join(errs...)
}

// BMCs are the running BMCs of Start.
type BMCs struct {
	opts Options
	log  *slog.Logger
	sims map[string]*sim
	once sync.Once
	err  error
}

// sim is one host's ipmi_sim.
type sim struct {
	host string
	dir  string
	addr string // 127.0.0.1:port
	cmd  *exec.Cmd
	// exited is closed when cmd has been waited for; waitErr is then set.
	exited  chan struct{}
	waitErr error
	logFile *os.File
	events  *os.File      // the FIFO, open O_RDWR
	reading chan struct{} // closed when the FIFO's reader returned
}

// Start runs one ipmi_sim per host of opts.Hosts, each on its own free UDP
// port of 127.0.0.1, host powered on and no boot device override, and
// returns once every one answers a real IPMI request. ctx bounds the
// start only; the BMCs run until Close. On error everything started is
// stopped and Dir removed.
func Start(ctx context.Context, opts Options) (*BMCs, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("start lab BMCs: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = DefaultReadyTimeout
	}
	if opts.Program == "" {
		p, err := exec.LookPath("ipmi_sim")
		if err != nil {
			return nil, fmt.Errorf("start lab BMCs: %w (Debian package openipmi)", err)
		}
		opts.Program = p
	}
	if err := makeEmptyDir(opts.Dir); err != nil {
		return nil, fmt.Errorf("start lab BMCs: %w", err)
	}
	b := &BMCs{opts: opts, log: opts.Logger.With("component", "labbmc"), sims: map[string]*sim{}}
	if err := b.start(ctx); err != nil {
		if cerr := b.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, fmt.Errorf("start lab BMCs: %w", err)
	}
	return b, nil
}

// makeEmptyDir creates dir, or accepts it when it exists and is empty.
func makeEmptyDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("%s is not empty: the BMCs need a directory of their own", dir)
	}
	return nil
}

func (b *BMCs) start(ctx context.Context) error {
	if err := os.Mkdir(b.SecretsDir(), 0o700); err != nil {
		return fmt.Errorf("create the secrets directory: %w", err)
	}
	if err := os.WriteFile(b.PasswordFile(), []byte(b.opts.Password+"\n"), 0o600); err != nil {
		return fmt.Errorf("write the password file: %w", err)
	}
	for _, h := range b.opts.Hosts {
		s, err := b.prepare(h)
		if s != nil {
			b.sims[h] = s
		}
		if err != nil {
			return err
		}
	}
	// The readiness waits are the slow part: all at once.
	var wg sync.WaitGroup
	errs := make([]error, len(b.opts.Hosts))
	for i, h := range b.opts.Hosts {
		wg.Go(func() { errs[i] = b.run(ctx, b.sims[h]) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// prepare writes a host's files and opens its event FIFO; the returned
// sim (also on error, when there is something to clean up) has its reader
// running.
func (b *BMCs) prepare(host string) (*sim, error) {
	dir := b.hostDir(host)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("bmc %s: %w", host, err)
	}
	s := &sim{host: host, dir: dir}
	for name, content := range map[string]string{"chassis": chassisScript, "power": "1\n", "boot": BootNone + "\n", "emu.cmds": emuCommands} {
		mode := os.FileMode(0o600)
		if name == "chassis" {
			mode = 0o700
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			return s, fmt.Errorf("bmc %s: write %s: %w", host, name, err)
		}
	}
	fifo := filepath.Join(dir, "events")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		return s, fmt.Errorf("bmc %s: make the event FIFO: %w", host, err)
	}
	// Open for reading and writing: the open does not wait for a writer,
	// the script's open for writing never waits for a reader, and a
	// script that ends is no end of file.
	f, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		return s, fmt.Errorf("bmc %s: open the event FIFO: %w", host, err)
	}
	s.events = f
	s.reading = make(chan struct{})
	go b.read(s)
	return s, nil
}

// hostDir holds host's files; the prefix keeps a host called "secrets"
// apart from SecretsDir.
func (b *BMCs) hostDir(host string) string { return filepath.Join(b.opts.Dir, "host-"+host) }

// run starts ipmi_sim for s and waits until it answers, on a fresh port
// each time ipmi_sim exits at once.
func (b *BMCs) run(ctx context.Context, s *sim) error {
	var errs []error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		exited, err := b.runOnce(ctx, s)
		if err == nil {
			b.log.Info("lab BMC up", "host", s.host, "addr", s.addr)
			return nil
		}
		errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
		if !exited || ctx.Err() != nil {
			break // not the port: another port will not help
		}
	}
	return fmt.Errorf("bmc %s: %w", s.host, errors.Join(errs...))
}

// runOnce starts ipmi_sim on a free port and waits for it to answer;
// exited says it exited by itself before it answered.
func (b *BMCs) runOnce(ctx context.Context, s *sim) (exited bool, err error) {
	port, err := freeUDPPort()
	if err != nil {
		return false, err
	}
	conf := filepath.Join(s.dir, "lan.conf")
	if err := os.WriteFile(conf, []byte(lanConf(s.host, port, s.dir, b.opts.Username, b.opts.Password)), 0o600); err != nil {
		return false, fmt.Errorf("write lan.conf: %w", err)
	}
	state := filepath.Join(s.dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return false, fmt.Errorf("create the state directory: %w", err)
	}
	if s.logFile == nil {
		if s.logFile, err = os.OpenFile(filepath.Join(s.dir, "ipmi_sim.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
			return false, fmt.Errorf("open ipmi_sim's log: %w", err)
		}
	}
	cmd := exec.Command(b.opts.Program, "-c", conf, "-f", filepath.Join(s.dir, "emu.cmds"), "-n", "-s", state)
	cmd.Stdout, cmd.Stderr = s.logFile, s.logFile
	// Its own process group, so Close also ends a chassis script ipmi_sim
	// is running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return false, fmt.Errorf("start %s: %w", b.opts.Program, err)
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := b.awaitReady(ctx, s); err != nil {
		select {
		case <-s.exited:
			exited = true
		default:
		}
		s.stop()
		return exited, fmt.Errorf("%w; ipmi_sim's log ends:\n%s", err, s.logTail())
	}
	return false, nil
}

// awaitReady polls a real IPMI request (Get Chassis Status, which runs
// the chassis script) until it answers powered on: ipmi_sim has no
// readiness signal.
func (b *BMCs) awaitReady(ctx context.Context, s *sim) error {
	cfg, _ := b.BMCConfig(s.host)
	cfg.Timeout, cfg.Retries = probeTimeout, 0
	c, err := bmc.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return fmt.Errorf("readiness probe: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, b.opts.ReadyTimeout)
	defer cancel()
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	for {
		ps, err := c.PowerStatus(ctx)
		if err == nil && ps == bmc.PowerOn {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("power is %s, want on", ps)
		}
		select {
		case <-s.exited:
			return fmt.Errorf("ipmi_sim on %s exited: %v", s.addr, s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("ipmi_sim on %s not answering within %s: %w", s.addr, b.opts.ReadyTimeout, err)
		case <-tick.C:
		}
	}
}

// freeUDPPort returns a loopback port no UDP socket is bound to just now.
func freeUDPPort() (int, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free UDP port: %w", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}

// stop kills ipmi_sim and its chassis script, if running, and waits for it.
func (s *sim) stop() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

func (s *sim) logTail() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "ipmi_sim.log"))
	if err != nil {
		return err.Error()
	}
	if len(b) > logTail {
		b = b[len(b)-logTail:]
	}
	return string(b)
}

// read takes the chassis script's lines off s's FIFO until it is closed.
func (b *BMCs) read(s *sim) {
	defer close(s.reading)
	log := b.log.With("host", s.host)
	r := bufio.NewReaderSize(s.events, 4*maxEventLine)
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			log.Warn("lab BMC: chassis event line too long, skipped")
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = r.ReadSlice('\n')
			}
			continue
		}
		if err != nil {
			if !errors.Is(err, os.ErrClosed) && !errors.Is(err, io.EOF) {
				log.Error("lab BMC: read chassis events", "err", err)
			}
			return
		}
		ev, err := parseEvent(strings.TrimSuffix(string(line), "\n"))
		if err != nil {
			log.Warn("lab BMC: chassis event ignored", "err", err)
			continue
		}
		switch ev.Kind {
		case eventBoot:
			log.Info("lab BMC: boot device set", "device", ev.Boot)
		case eventPower:
			log.Info("lab BMC: power", "on", ev.On, "boot_device", ev.Boot)
			b.opts.OnPower(s.host, ev.On, ev.Boot)
		case eventReset:
			log.Info("lab BMC: reset", "boot_device", ev.Boot)
			b.opts.OnPower(s.host, false, ev.Boot)
			b.opts.OnPower(s.host, true, ev.Boot)
		}
	}
}

// Addr returns host's BMC address, "127.0.0.1:port"; "" for a host
// without one.
func (b *BMCs) Addr(host string) string {
	if s, ok := b.sims[host]; ok {
		return s.addr
	}
	return ""
}

// SecretsDir is the directory holding the password file: the server's
// provisioner.bmc.secrets_dir.
func (b *BMCs) SecretsDir() string { return filepath.Join(b.opts.Dir, "secrets") }

// PasswordFile is the BMCs' password file (mode 0600, one line); its
// name inside SecretsDir is every host's bmc.password_file.
func (b *BMCs) PasswordFile() string { return filepath.Join(b.SecretsDir(), passwordFile) }

// BMCConfig returns host's `bmc:` block for the server's inventory: type
// ipmi, Addr, the user and password_file; SecretsDir (not part of the
// inventory) is set too, so bmc.New can use it as it is. False for a host
// without a BMC.
func (b *BMCs) BMCConfig(host string) (bmc.Config, bool) {
	s, ok := b.sims[host]
	if !ok {
		return bmc.Config{}, false
	}
	return bmc.Config{
		Type: bmc.TypeIPMI, Address: s.addr, Username: b.opts.Username,
		PasswordFile: passwordFile, SecretsDir: b.SecretsDir(),
	}, true
}

// Close stops every ipmi_sim, waits for OnPower calls in progress and
// removes Dir. It is safe to call more than once.
func (b *BMCs) Close() error {
	b.once.Do(func() {
		var errs []error
		for _, s := range b.sims {
			s.stop()
			if s.events != nil {
				if err := s.events.Close(); err != nil {
					errs = append(errs, fmt.Errorf("close the event FIFO of %s: %w", s.host, err))
				}
				<-s.reading
			}
			if s.logFile != nil {
				_ = s.logFile.Close()
			}
		}
		if err := os.RemoveAll(b.opts.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", b.opts.Dir, err))
		}
		b.err = errors.Join(errs...)
	})
	return b.err
}
