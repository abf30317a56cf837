package agent

import (
	"bytes"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestMetricsGolden diffs the agent's whole /metrics output — the host
// collector on fixture trees, the kvm collector on libvirt's test driver,
// the overlay collector with an expected overlay that is missing — against
// a golden file, and runs promtool check metrics on the raw output.
func TestMetricsGolden(t *testing.T) {
	node, err := filepath.Abs("testdata/golden-node.xml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := LoadFile("testdata/config/good.yml")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{
		LibvirtURI: "test://" + node,
		ProcFS:     "../../collectors/host/testdata/proc",
		SysFS:      "../../collectors/host/testdata/sys",
		RootFS:     t.TempDir(), // no mount point exists under it: stat errors, not the build machine's disks
		Overlays:   f.OverlayList(),
		Logger:     slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	if promtool, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(raw)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	} else {
		t.Log("promtool not on PATH: skipping promtool check metrics")
	}

	got := normalize(raw)
	golden := "testdata/metrics.golden.prom"
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("read golden (run with -update): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("/metrics differs from %s (run with -update after checking):\n%s", golden, diff(string(want), string(got)))
	}
}

// normalize keeps the caretaker_ families (Go and process metrics vary by
// machine) and zeroes the values that vary between runs.
func normalize(raw []byte) []byte {
	// Durations, and the filesystem sizes of the build machine's / (the
	// fixture's mountinfo lists /, which exists under any root).
	varying := regexp.MustCompile(`^(caretaker_(scrape_collector_duration_seconds|host_filesystem_(size|free|avail)_bytes|host_filesystem_files(_free)?)\{[^}]*\}) .*$`)
	var out []string
	for _, line := range strings.Split(string(raw), "\n") {
		name := strings.TrimPrefix(strings.TrimPrefix(line, "# HELP "), "# TYPE ")
		if !strings.HasPrefix(name, "caretaker_") {
			continue
		}
		line = varying.ReplaceAllString(line, "$1 0")
		out = append(out, line)
	}
	return []byte(strings.Join(out, "\n") + "\n")
}

func diff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	wm := map[string]bool{}
	for _, l := range w {
		wm[l] = true
	}
	gm := map[string]bool{}
	for _, l := range g {
		gm[l] = true
	}
	var b strings.Builder
	for _, l := range w {
		if !gm[l] {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range g {
		if !wm[l] {
			b.WriteString("+ " + l + "\n")
		}
	}
	return b.String()
}
