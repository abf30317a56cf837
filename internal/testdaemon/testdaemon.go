// Package testdaemon starts the real programs tests talk to — Prometheus,
// Alertmanager — on a free loopback port, and stops them at cleanup.
package testdaemon

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"caretaker/internal/needs"
)

// readyLimit bounds how long a program may take to answer /-/ready.
const readyLimit = time.Minute

// FreePort returns a loopback host:port nothing listens on just now.
func FreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Start runs program with the arguments args builds for a free address,
// waits until its /-/ready answers 200 and returns its base URL. It needs
// the program (see package needs). The process
// is killed at cleanup; its output is logged when the test failed.
func Start(t testing.TB, program string, args func(addr string) []string) string {
	t.Helper()
	path := needs.Program(t, program)
	addr := FreePort(t)
	logPath := filepath.Join(t.TempDir(), program+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, args(addr)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", program, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 4096 {
				b = b[len(b)-4096:]
			}
			t.Logf("%s log (tail):\n%s", program, b)
		}
	})

	base := "http://" + addr
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Second}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(readyLimit)
	// The program offers no signal for "ready" but its endpoint: poll it.
	for {
		if resp, err := client.Get(base + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			b, _ := os.ReadFile(logPath)
			t.Fatalf("%s exited before it was ready: %v\n%s", program, err, b)
		case <-deadline:
			t.Fatalf("%s not ready at %s within %s", program, base, readyLimit)
		case <-tick.C:
		}
	}
}
