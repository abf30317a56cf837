package labbmc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"caretaker/internal/needs"
	"caretaker/provisioner/bmc"
)

const (
	testUser = "lab"
	testPass = "lab-s3cret"
	// eventWait bounds the wait for an OnPower call; ipmi_sim powers a
	// cycled host on from a timer a second later.
	eventWait = 30 * time.Second
)

// power is one OnPower call.
type power struct {
	On   bool
	Boot string
}

func (p power) String() string { return fmt.Sprintf("on=%v boot=%s", p.On, p.Boot) }

// recorder keeps every host's OnPower calls in order.
type recorder struct {
	mu      sync.Mutex
	calls   map[string][]power
	changed chan struct{} // closed and replaced on every call
}

func newRecorder() *recorder {
	return &recorder{calls: map[string][]power{}, changed: make(chan struct{})}
}

func (r *recorder) onPower(host string, on bool, boot string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[host] = append(r.calls[host], power{on, boot})
	close(r.changed)
	r.changed = make(chan struct{})
}

// await waits until host had len(want) calls and checks they are want.
// The calls of one host come in order, so a stray call would show in
// place of a wanted one.
func (r *recorder) await(t *testing.T, host string, want ...power) {
	t.Helper()
	deadline := time.NewTimer(eventWait)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		got, changed := slices.Clone(r.calls[host]), r.changed
		r.mu.Unlock()
		if len(got) >= len(want) {
			if !slices.Equal(got, want) {
				t.Fatalf("OnPower(%s) calls %v, want %v", host, got, want)
			}
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("OnPower(%s) calls %v after %s, want %v", host, got, eventWait, want)
		}
	}
}

// startBMCs starts BMCs for hosts, closed at cleanup.
func startBMCs(t *testing.T, hosts ...string) (*BMCs, *recorder) {
	t.Helper()
	prog := needs.Program(t, "ipmi_sim")
	rec := newRecorder()
	var logs bytes.Buffer
	var logMu sync.Mutex
	dir := filepath.Join(t.TempDir(), "bmc")
	b, err := Start(context.Background(), Options{
		Dir: dir, Hosts: hosts, Username: testUser, Password: testPass,
		Logger:  slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil)),
		OnPower: rec.onPower, Program: prog,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("Close left %s: %v", dir, err)
		}
		if t.Failed() {
			logMu.Lock()
			t.Logf("labbmc log:\n%s", logs.String())
			logMu.Unlock()
		}
	})
	return b, rec
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// ipmitool runs ipmitool against host's BMC with the password in
// passFile and returns its output and error.
func ipmitool(t *testing.T, b *BMCs, host, passFile string, args ...string) (string, error) {
	t.Helper()
	bin := needs.Program(t, "ipmitool")
	addr, port, err := net.SplitHostPort(b.Addr(host))
	if err != nil {
		t.Fatalf("Addr(%s) = %q: %v", host, b.Addr(host), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	base := []string{"-I", "lanplus", "-C", "3", "-N", "1", "-R", "2", "-H", addr, "-p", port, "-U", testUser, "-f", passFile}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.String(), err
}

// mustIPMItool runs ipmitool with the right password and checks its
// output contains want.
func mustIPMItool(t *testing.T, b *BMCs, host, want string, args ...string) {
	t.Helper()
	out, err := ipmitool(t, b, host, b.PasswordFile(), args...)
	if err != nil || !strings.Contains(out, want) {
		t.Fatalf("ipmitool %s on %s: %v\n%s\nwant %q", strings.Join(args, " "), host, err, out, want)
	}
}

// controller is the provisioner's own IPMI driver for host's BMC, from the
// inventory block the lab writes.
func controller(t *testing.T, b *BMCs, host string) bmc.Controller {
	t.Helper()
	cfg, ok := b.BMCConfig(host)
	if !ok {
		t.Fatalf("no BMC for %s", host)
	}
	cfg.Timeout = 10 * time.Second
	c, err := bmc.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestBMCs(t *testing.T) {
	t.Parallel()
	b, rec := startBMCs(t, "h1", "h2")
	if b.Addr("h1") == b.Addr("h2") || b.Addr("nope") != "" {
		t.Fatalf("addresses h1 %q h2 %q nope %q", b.Addr("h1"), b.Addr("h2"), b.Addr("nope"))
	}
	if fi, err := os.Stat(b.PasswordFile()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("password file: %v, %v", fi, err)
	}

	// ipmitool on h1.
	mustIPMItool(t, b, "h1", "Chassis Power is on", "chassis", "power", "status")
	mustIPMItool(t, b, "h1", "Down/Off", "chassis", "power", "off")
	rec.await(t, "h1", power{false, BootNone})
	mustIPMItool(t, b, "h1", "Chassis Power is off", "chassis", "power", "status")
	mustIPMItool(t, b, "h2", "Chassis Power is on", "chassis", "power", "status")
	mustIPMItool(t, b, "h1", "Up/On", "chassis", "power", "on")
	rec.await(t, "h1", power{false, BootNone}, power{true, BootNone})
	mustIPMItool(t, b, "h1", "Set Boot Device to pxe", "chassis", "bootdev", "pxe")
	mustIPMItool(t, b, "h1", "Boot Device Selector : Force PXE", "chassis", "bootparam", "get", "5")
	mustIPMItool(t, b, "h1", "Cycle", "chassis", "power", "cycle")
	rec.await(t, "h1", power{false, BootNone}, power{true, BootNone}, power{false, BootPXE}, power{true, BootPXE})
	// The override held for that boot only.
	mustIPMItool(t, b, "h1", "Boot Device Selector : No override", "chassis", "bootparam", "get", "5")
	mustIPMItool(t, b, "h1", "Chassis Power is on", "chassis", "power", "status")

	// Nothing of that reached h2: its first call is its own power off.
	mustIPMItool(t, b, "h2", "Down/Off", "chassis", "power", "off")
	rec.await(t, "h2", power{false, BootNone})

	// The provisioner's driver on h2: a cycle of a host that is off
	// powers it on, one of a running host is off then on.
	c := controller(t, b, "h2")
	ctx := context.Background()
	for _, step := range []struct {
		name string
		op   func(context.Context) error
	}{
		{"SetPXEBootOnce", c.SetPXEBootOnce}, {"PowerCycle when off", c.PowerCycle},
		{"SetPXEBootOnce again", c.SetPXEBootOnce}, {"PowerCycle", c.PowerCycle},
	} {
		if err := step.op(ctx); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if step.name == "PowerCycle when off" {
			rec.await(t, "h2", power{false, BootNone}, power{true, BootPXE})
		}
	}
	rec.await(t, "h2", power{false, BootNone}, power{true, BootPXE}, power{false, BootPXE}, power{true, BootPXE})
	if ps, err := c.PowerStatus(ctx); err != nil || ps != bmc.PowerOn {
		t.Fatalf("PowerStatus = %v, %v; want on", ps, err)
	}
	rec.await(t, "h1", power{false, BootNone}, power{true, BootNone}, power{false, BootPXE}, power{true, BootPXE})
}

// TestBMCWrongPassword: a wrong password changes nothing, through ipmitool
// or the provisioner's driver.
func TestBMCWrongPassword(t *testing.T) {
	t.Parallel()
	b, rec := startBMCs(t, "h1")
	wrong := filepath.Join(t.TempDir(), "wrong.pass")
	if err := os.WriteFile(wrong, []byte("wrong-s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"chassis", "bootdev", "pxe"}, {"chassis", "power", "off"}, {"chassis", "power", "cycle"}} {
		if out, err := ipmitool(t, b, "h1", wrong, args...); err == nil {
			t.Errorf("ipmitool %s with a wrong password succeeded:\n%s", strings.Join(args, " "), out)
		}
	}
	cfg, _ := b.BMCConfig("h1")
	cfg.SecretsDir, cfg.PasswordFile, cfg.Timeout = filepath.Dir(wrong), filepath.Base(wrong), 5*time.Second
	c, err := bmc.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for name, op := range map[string]func(context.Context) error{"SetPXEBootOnce": c.SetPXEBootOnce, "PowerOff": c.PowerOff, "PowerCycle": c.PowerCycle} {
		if err := op(context.Background()); err == nil || !strings.Contains(err.Error(), "refused the credentials") {
			t.Errorf("%s with a wrong password: %v", name, err)
		}
	}
	// Still on, no override: the first call after is the right power
	// cycle's, booting from no override.
	mustIPMItool(t, b, "h1", "Chassis Power is on", "chassis", "power", "status")
	mustIPMItool(t, b, "h1", "No override", "chassis", "bootparam", "get", "5")
	mustIPMItool(t, b, "h1", "Cycle", "chassis", "power", "cycle")
	rec.await(t, "h1", power{false, BootNone}, power{true, BootNone})
}

func TestStartRefuses(t *testing.T) {
	t.Parallel()
	nonEmpty := t.TempDir()
	if err := os.WriteFile(filepath.Join(nonEmpty, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ok := func(o *Options) {}
	for _, tc := range []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"relative dir", func(o *Options) { o.Dir = "bmc" }, `dir "bmc": want an absolute path`},
		{"dir with a space", func(o *Options) { o.Dir = "/tmp/a b" }, `dir "/tmp/a b"`},
		{"dir with ..", func(o *Options) { o.Dir = "/tmp/../etc" }, "without .."},
		{"no hosts", func(o *Options) { o.Hosts = nil }, "hosts: none given"},
		{"bad host", func(o *Options) { o.Hosts = []string{"h1", "H_2"} }, `hosts[1] "H_2": not a DNS label`},
		{"host twice", func(o *Options) { o.Hosts = []string{"h1", "h1"} }, `hosts[1] "h1": given twice`},
		{"long user", func(o *Options) { o.Username = strings.Repeat("u", 17) }, "username"},
		{"quote in password", func(o *Options) { o.Password = `a"b` }, "password: want"},
		{"long password", func(o *Options) { o.Password = strings.Repeat("p", 21) }, "password: want"},
		{"no OnPower", func(o *Options) { o.OnPower = nil }, "OnPower: not set"},
		{"non-empty dir", func(o *Options) { o.Dir = nonEmpty }, "is not empty"},
		{"ipmi_sim missing", ok, "/nonexistent/ipmi_sim"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "bmc")
			o := Options{Dir: dir, Hosts: []string{"h1"}, Username: testUser, Password: testPass,
				OnPower: func(string, bool, string) {}, Program: "/nonexistent/ipmi_sim"}
			tc.edit(&o)
			b, err := Start(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start: %v, %v; want an error containing %q", b, err, tc.want)
			}
			if strings.Contains(err.Error(), testPass) {
				t.Errorf("error shows the password: %v", err)
			}
			// A failed Start leaves nothing behind.
			if _, err := os.Stat(dir); o.Dir == dir && !os.IsNotExist(err) {
				t.Errorf("failed Start left %s: %v", dir, err)
			}
		})
	}
}

// TestEventFIFOGarbage: lines the script never writes, too long ones
// among them, are skipped; the next valid line still arrives.
func TestEventFIFOGarbage(t *testing.T) {
	t.Parallel()
	// A host may be called "secrets", like the password file's directory.
	b, rec := startBMCs(t, "secrets")
	f, err := os.OpenFile(filepath.Join(b.hostDir("secrets"), "events"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	garbage := "power 1\n" + strings.Repeat("x", 1000) + "\npower 1 floppy\n\n" + strings.Repeat("power 1 pxe ", 30) + "\nreset pxe\n"
	if _, err := f.WriteString(garbage); err != nil {
		t.Fatal(err)
	}
	rec.await(t, "secrets", power{false, BootPXE}, power{true, BootPXE})
}
