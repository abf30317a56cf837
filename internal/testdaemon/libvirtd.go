package testdaemon

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"caretaker/internal/needs"
)

// Libvirtd is a libvirtd of the test's own, which the test may stop
// (SIGSTOP) and restart without touching the system's. It runs as root, so
// in system mode, but with its sockets, PID file and log in a temporary
// directory and without driver modules (LIBVIRT_DRIVER_DIR names an empty
// directory): it manages no QEMU guest, network or storage. The test
// driver, built into libvirt, serves test+unix URIs with ?socket=Socket
// (see URI).
type Libvirtd struct {
	t        testing.TB
	libvirtd string
	dir      string
	// Socket is the daemon's read-write socket.
	Socket string

	cmd    *exec.Cmd
	exited chan struct{}
	out    *capped
}

// PrivateLibvirtd starts a Libvirtd, stopped when the test ends. It needs
// root and the libvirtd program.
func PrivateLibvirtd(t testing.TB) *Libvirtd {
	t.Helper()
	needs.Root(t, "the test runs a private libvirtd")
	libvirtd := needs.Program(t, "libvirtd")
	// Not t.TempDir: socket paths must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "ctk-lvd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &Libvirtd{t: t, libvirtd: libvirtd, dir: dir, Socket: filepath.Join(dir, "sock", "libvirt-sock")}
	for _, sub := range []string{"drivers", "sock"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	err = os.WriteFile(d.path("libvirtd.conf"), fmt.Appendf(nil, `unix_sock_dir = %q
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:%s"
`, d.path("sock"), d.path("libvirtd.log")), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	t.Cleanup(func() {
		d.Stop()
		if t.Failed() {
			log, _ := os.ReadFile(d.path("libvirtd.log"))
			t.Logf("private libvirtd log:\n%s", tail(log, 4096))
		}
	})
	return d
}

// URI returns the test+unix URI of the test-driver node file node (an
// absolute path) served by d.
func (d *Libvirtd) URI(node string) string {
	return "test+unix://" + node + "?socket=" + d.Socket
}

func (d *Libvirtd) path(name string) string { return filepath.Join(d.dir, name) }

// Start starts the daemon and returns once it is ready, which it says on
// NOTIFY_SOCKET as it would to systemd.
func (d *Libvirtd) Start() {
	t := d.t
	t.Helper()
	notifyPath := d.path("notify")
	os.Remove(notifyPath)
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen for libvirtd's readiness: %v", err)
	}
	defer notify.Close()

	d.cmd = exec.Command(d.libvirtd, "-f", d.path("libvirtd.conf"), "-p", d.path("libvirtd.pid"))
	d.cmd.Env = append(os.Environ(), "LIBVIRT_DRIVER_DIR="+d.path("drivers"), "NOTIFY_SOCKET="+notifyPath)
	d.out = &capped{}
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start private libvirtd: %v", err)
	}
	exited := make(chan struct{})
	d.exited = exited
	cmd := d.cmd
	go func() { _ = cmd.Wait(); close(exited) }()

	if err := notify.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for {
		n, err := notify.Read(buf)
		if err != nil {
			d.Stop()
			t.Fatalf("private libvirtd did not report ready: %v; output: %s", err, d.out)
		}
		if bytes.Contains(buf[:n], []byte("READY=1")) {
			return
		}
	}
}

// Stop stops the daemon, stopped (SIGSTOP) or not, and waits for it to exit.
func (d *Libvirtd) Stop() {
	if d.cmd == nil {
		return
	}
	// By PID: a stopped daemon must be continued to act on SIGTERM.
	_ = d.cmd.Process.Signal(syscall.SIGCONT)
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
}

// Freeze stops the daemon (SIGSTOP) and returns what continues it
// (SIGCONT), once however often it is called; the test's cleanup calls it
// too, so the daemon is never left stopped.
func (d *Libvirtd) Freeze() (resume func()) {
	d.t.Helper()
	if err := d.Signal(syscall.SIGSTOP); err != nil {
		d.t.Fatalf("stop libvirtd: %v", err)
	}
	var once sync.Once
	resume = func() {
		once.Do(func() {
			if err := d.Signal(syscall.SIGCONT); err != nil {
				d.t.Errorf("continue libvirtd: %v", err)
			}
		})
	}
	d.t.Cleanup(resume)
	return resume
}

// Signal sends sig to the daemon.
func (d *Libvirtd) Signal(sig syscall.Signal) error {
	if d.cmd == nil {
		return fmt.Errorf("signal %v: private libvirtd is not running", sig)
	}
	return d.cmd.Process.Signal(sig)
}

// capped keeps the first 64 KiB written to it.
type capped struct{ b []byte }

func (c *capped) Write(p []byte) (int, error) {
	if room := 64<<10 - len(c.b); room > 0 {
		c.b = append(c.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *capped) String() string { return string(c.b) }

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
