package debpkg

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"caretaker/internal/needs"
)

func TestDebianVersion(t *testing.T) {
	for _, tc := range []struct{ describe, date, want string }{
		{"v1.2.0", "20260101120000", "1.2.0"},
		{"1.2.0-dirty", "", "1.2.0.dirty"},
		{"v1.2.0-3-gabc1234", "20260101120000", "1.2.0+git20260101120000.3.abc1234"},
		{"abc1234", "20260101120000", "0.0.0~git20260101120000.abc1234"},
		{"570bc08-dirty", "20261207060424", "0.0.0~git20261207060424.570bc08.dirty"},
		{"abc1234", "", "0.0.0~dev.abc1234"},
		{"dev", "", "0.0.0~dev"},
		{"", "20260101", "0.0.0~dev20260101"},
	} {
		got, err := DebianVersion(tc.describe, tc.date)
		if err != nil || got != tc.want {
			t.Errorf("DebianVersion(%q, %q) = %q, %v; want %q", tc.describe, tc.date, got, err, tc.want)
		}
	}
	for _, bad := range [][2]string{{"v1.2 beta", ""}, {"abc1234", "yesterday"}, {"release_1", ""}} {
		if v, err := DebianVersion(bad[0], bad[1]); err == nil {
			t.Errorf("DebianVersion(%q, %q) = %q, want an error", bad[0], bad[1], v)
		}
	}
	// Untagged builds order by date, and sort before any tagged release.
	if dpkg, err := exec.LookPath("dpkg"); err == nil {
		for _, pair := range [][2]string{
			{"0.0.0~git20260101120000.abc1234", "0.0.0~git20260102000000.0000000"},
			{"0.0.0~git20260101120000.abc1234", "0.0.1"},
			{"0.0.0~git20260101120000.abc1234", "0.0.0~git20260101120000.abc1234.dirty"},
			{"1.2.0", "1.2.0+git20260101120000.3.abc1234"},
		} {
			if err := exec.Command(dpkg, "--compare-versions", pair[0], "lt", pair[1]).Run(); err != nil {
				t.Errorf("dpkg: %s is not older than %s", pair[0], pair[1])
			}
		}
	}
}

func TestCommentOut(t *testing.T) {
	got := string(CommentOut([]byte("a: 1\n  # note\n\n  b: [x]\n"), "# head\n"))
	want := "# head\n# a: 1\n  # note\n\n#   b: [x]\n"
	if got != want {
		t.Fatalf("CommentOut:\n%q\nwant\n%q", got, want)
	}
}

// units copies the two units of deploy/systemd into a temporary directory
// with their ExecStart programs pointing at stand-ins that exist, which is
// all systemd-analyze verify asks of them.
func units(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	stub := filepath.Join(dir, "stub")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, name := range []string{"caretaker-agent.service", "caretaker-server.service"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		s := regexp.MustCompile(`/usr/bin/caretaker(-agent)?\b`).ReplaceAllString(string(b), stub)
		if s == string(b) {
			t.Fatalf("%s: no ExecStart of /usr/bin/caretaker or /usr/bin/caretaker-agent", name)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		out[name] = p
	}
	return out
}

// systemd-analyze verify accepts both units without a word.
func TestUnitsVerify(t *testing.T) {
	sa := needs.Program(t, "systemd-analyze")
	for name, path := range units(t) {
		out, err := exec.Command(sa, "verify", "--man=no", path).CombinedOutput()
		if err != nil || len(out) != 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}
}

// systemd-analyze security --offline rates each unit's exposure (0 best,
// 10 worst) without a running systemd: the figures are logged, and a
// change that weakens a unit past its figure today fails.
func TestUnitsSecurity(t *testing.T) {
	sa := needs.Program(t, "systemd-analyze")
	limit := map[string]float64{"caretaker-agent.service": 2.7, "caretaker-server.service": 1.6}
	re := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+) (\S+)`)
	for name, path := range units(t) {
		out, err := exec.Command(sa, "security", "--offline=yes", "--no-pager", path).CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-analyze security %s: %v\n%s", name, err, out)
		}
		m := re.FindStringSubmatch(string(out))
		if m == nil {
			t.Fatalf("systemd-analyze security %s: no overall exposure level in\n%s", name, out)
		}
		score, _ := strconv.ParseFloat(m[1], 64)
		t.Logf("%s: exposure %s %s", name, m[1], m[2])
		if score > limit[name] {
			t.Errorf("%s: exposure %.1f, more than %.1f:\n%s", name, score, limit[name], strings.TrimSpace(string(out)))
		}
	}
}
