package agent

import (
	"caretaker/internal/golden"
	"caretaker/internal/needs"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestMetricsGolden diffs the agent's whole /metrics output — the host
// collector on fixture trees (a KVM host, by the default domain type kvm,
// whose /dev/kvm is missing), the kvm collector on libvirt's test driver,
// the overlay collector with an expected overlay that is missing — against
// a golden file, and runs promtool check metrics on the raw output.
func TestMetricsGolden(t *testing.T) {
	t.Parallel()
	needs.Libvirtd(t)
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
		// An empty root: no mount point exists under it (stat errors,
		// not the build machine's disks), nor does dev/kvm, so
		// caretaker_host_kvm_device_present is 0 whether or not the build
		// machine has /dev/kvm.
		RootFS:   t.TempDir(),
		Overlays: f.Overlays,
		Logger:   slog.New(slog.DiscardHandler),
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

	t.Run("promtool", func(t *testing.T) { golden.CheckMetrics(t, raw) })
	golden.Compare(t, "testdata/metrics.golden.prom", normalize(raw), *update)
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
