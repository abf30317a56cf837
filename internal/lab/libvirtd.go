package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// testLibvirtd is the libvirtd of the lab's own that serves libvirt's test
// driver: caretaker speaks libvirt's protocol to a daemon (there is no
// libvirt library in the process to run the driver in), and a daemon of
// the lab's own needs neither root nor the system's. It runs as whoever
// runs the lab, with its socket, PID file and log in a directory of its
// own and without driver modules (the test driver is built in).
type testLibvirtd struct {
	dir    string
	socket string
	cmd    *exec.Cmd
	exited chan struct{}
	out    *capped
}

// startTestLibvirtd starts a testLibvirtd and returns once it is ready,
// which it says on NOTIFY_SOCKET as it would to systemd.
func startTestLibvirtd(ctx context.Context, logger *slog.Logger) (*testLibvirtd, error) {
	bin, err := exec.LookPath("libvirtd")
	if err != nil {
		// Not on a user's PATH, but where Debian puts it.
		bin = "/usr/sbin/libvirtd"
		if _, serr := os.Stat(bin); serr != nil {
			return nil, errors.New("libvirt's test driver runs inside libvirtd, which is not installed (Debian package libvirt-daemon)")
		}
	}
	// Not under the data directory: a socket's path must stay under 108
	// bytes.
	dir, err := os.MkdirTemp("", "ctk-lab-lvd-")
	if err != nil {
		return nil, fmt.Errorf("start the lab's libvirtd: %w", err)
	}
	d := &testLibvirtd{dir: dir, socket: filepath.Join(dir, "sock", "libvirt-sock"), out: &capped{}}
	fail := func(err error) (*testLibvirtd, error) {
		d.stop()
		return nil, fmt.Errorf("start the lab's libvirtd: %w", err)
	}
	for _, sub := range []string{"drivers", "sock", "home"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			return fail(err)
		}
	}
	conf := fmt.Appendf(nil, "unix_sock_dir = %q\nunix_sock_rw_perms = \"0700\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\nlog_outputs = \"3:file:%s\"\n",
		filepath.Join(dir, "sock"), filepath.Join(dir, "libvirtd.log"))
	if err := os.WriteFile(filepath.Join(dir, "libvirtd.conf"), conf, 0o600); err != nil {
		return fail(err)
	}
	notifyPath := filepath.Join(dir, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		return fail(err)
	}
	defer notify.Close()

	d.cmd = exec.Command(bin, "-f", filepath.Join(dir, "libvirtd.conf"), "-p", filepath.Join(dir, "libvirtd.pid"))
	// Unprivileged, libvirtd keeps its state under the user's XDG
	// directories: the lab's own, not the user's.
	home := filepath.Join(dir, "home")
	d.cmd.Env = append(os.Environ(), "LIBVIRT_DRIVER_DIR="+filepath.Join(dir, "drivers"), "NOTIFY_SOCKET="+notifyPath,
		"XDG_CONFIG_HOME="+home, "XDG_CACHE_HOME="+home, "XDG_RUNTIME_DIR="+home)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		return fail(err)
	}
	d.exited = make(chan struct{})
	cmd, exited := d.cmd, d.exited
	go func() { _ = cmd.Wait(); close(exited) }()

	deadline := time.Now().Add(30 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if err := notify.SetReadDeadline(deadline); err != nil {
		return fail(err)
	}
	buf := make([]byte, 4096)
	for {
		n, err := notify.Read(buf)
		if err != nil {
			return fail(fmt.Errorf("it did not report ready: %w; its output: %s", err, bytes.TrimSpace([]byte(d.out.String()))))
		}
		if bytes.Contains(buf[:n], []byte("READY=1")) {
			logger.Info("started the lab's libvirtd for libvirt's test driver", "socket", d.socket, "pid", d.cmd.Process.Pid)
			return d, nil
		}
	}
}

// uri is the test-driver URI of the node file node (an absolute path)
// served by d.
func (d *testLibvirtd) uri(node string) string {
	return "test+unix://" + node + "?socket=" + d.socket
}

// stop stops the daemon, waits for it to exit and removes its directory.
func (d *testLibvirtd) stop() error {
	if d.cmd != nil && d.cmd.Process != nil && d.exited != nil {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(30 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.exited
		}
	}
	d.cmd = nil
	return os.RemoveAll(d.dir)
}
