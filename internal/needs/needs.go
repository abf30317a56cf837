// Package needs lets a test name the real component it runs against — root,
// libvirtd, a program such as promtool or ipmi_sim. Where the component is
// missing the test is skipped with the reason; under CARETAKER_REQUIRE_E2E=1
// (set by .ci/run, and by `make test` as root) the same is a failure, so CI
// never passes by skipping the real thing.
package needs

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// RequireEnv is the environment variable that turns a missing component
// into a failure.
const RequireEnv = "CARETAKER_REQUIRE_E2E"

// LibvirtSocket is where the system libvirtd listens.
const LibvirtSocket = "/var/run/libvirt/libvirt-sock"

// setupHint says how to get what is missing.
const setupHint = "deploy/setup.sh installs and starts it (as root)"

// Missing skips the test, or fails it under CARETAKER_REQUIRE_E2E=1, saying
// what is missing.
func Missing(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(RequireEnv) == "1" {
		tb.Fatalf("%s (%s=1: a missing component is a failure)", msg, RequireEnv)
		return
	}
	tb.Skip(msg)
}

// Root needs the test to run as root; why says what for.
func Root(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		Missing(tb, "needs root: %s", why)
	}
}

// Program needs an executable on PATH, or in /usr/sbin or /sbin (which a
// user's PATH may lack), and returns its path.
func Program(tb testing.TB, name string) string {
	tb.Helper()
	path, err := exec.LookPath(name)
	for _, dir := range []string{"/usr/sbin/", "/sbin/"} {
		if err == nil {
			break
		}
		if p, e := exec.LookPath(dir + name); e == nil {
			path, err = p, nil
		}
	}
	if err != nil {
		Missing(tb, "%s is not installed (%s): %v", name, setupHint, err)
	}
	return path
}

// Programs needs every one of names on PATH.
func Programs(tb testing.TB, names ...string) {
	tb.Helper()
	for _, n := range names {
		Program(tb, n)
	}
}

// Libvirtd needs root and the system libvirtd running.
func Libvirtd(tb testing.TB) {
	tb.Helper()
	Root(tb, "the test talks to the system libvirtd")
	if _, err := os.Stat(LibvirtSocket); err != nil {
		Missing(tb, "libvirtd is not running (%v); %s", err, setupHint)
	}
}
