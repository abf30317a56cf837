package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCaretaker(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCmd(&out, &errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return out.String() + errOut.String(), err
}

// The commands of the README's example: a CA, the server's and an agent's
// certificates; a second init is refused without --force.
func TestCertsCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if out, err := runCaretaker(t, "certs", "init", "--dir", dir); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	if _, err := runCaretaker(t, "certs", "init", "--dir", dir); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("second init: %v, want a refusal naming --force", err)
	}
	if out, err := runCaretaker(t, "certs", "issue", "server", "caretaker-server", "--dir", dir); err != nil {
		t.Fatalf("issue server: %v\n%s", err, out)
	}
	agents := filepath.Join(dir, "agents")
	if out, err := runCaretaker(t, "certs", "issue", "agent", "hv-a1", "--san", "10.0.0.11", "--dir", dir, "--out", agents); err != nil {
		t.Fatalf("issue agent: %v\n%s", err, out)
	}
	for _, f := range []string{"ca.crt", "ca.key", "caretaker-server.crt", "caretaker-server.key", "agents/hv-a1.crt", "agents/hv-a1.key"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if _, err := runCaretaker(t, "certs", "issue", "client", "x", "--dir", dir); err == nil {
		t.Error("issue client: no error")
	}
}
