package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"caretaker/internal/agentapi"
	"caretaker/internal/needs"
	"caretaker/internal/testdaemon"
)

// measure turns on the side-by-side measurements of make bench
// (TestMeasureScrape500, and TestFrozenLibvirtd with the default-sized
// timeout of the issue, 2 s, and its timing printed).
var measure = flag.Bool("measure", false, "run and print the measurements of make bench: the agent's /metrics against virsh domstats at 500 domains, the first scrape with libvirtd stopped")

// writeGuests writes a test-driver node of n running guests, each with 2
// vCPUs and 1 GiB, and returns its absolute path.
func writeGuests(t testing.TB, n int) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("<node>\n")
	for i := range n {
		fmt.Fprintf(&b, `  <domain type="test" xmlns:test="http://libvirt.org/schemas/domain/test/1.0">
    <name>guest%d</name>
    <uuid>0d000000-0000-4000-8000-%012x</uuid>
    <memory unit="MiB">1024</memory>
    <vcpu>2</vcpu>
    <os><type>hvm</type></os>
    <devices><interface type="bridge"><mac address="52:54:00:00:%02x:%02x"/><source bridge="br0"/></interface></devices>
    <test:runstate>1</test:runstate>
  </domain>
`, i, i+1, i>>8&0xff, i&0xff)
	}
	b.WriteString("</node>\n")
	path := filepath.Join(t.TempDir(), fmt.Sprintf("guests%d.xml", n))
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// serveAgent serves a on a loopback port until the test ends and returns
// its base URL.
func serveAgent(t *testing.T, a *Agent) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return "http://" + l.Addr().String()
}

// scrapeMetrics GETs /metrics on a fresh connection, as a scraper would,
// and returns its samples by series (name and labels as printed).
func scrapeMetrics(t *testing.T, base string) map[string]float64 {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Minute}
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: status %d", resp.StatusCode)
	}
	samples := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		var v float64
		if _, err := fmt.Sscan(line[i+1:], &v); err != nil {
			t.Fatalf("scrape: sample %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return samples
}

// wantSamples checks the samples named in want.
func wantSamples(t *testing.T, what string, got map[string]float64, want map[string]float64) {
	t.Helper()
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s: %s = %v (present %v), want %v", what, k, g, ok, v)
		}
	}
}

// TestFrozenLibvirtd stops (SIGSTOP) the private libvirtd under an agent
// that has scraped it once: the next scrape returns while libvirtd is still
// stopped, with caretaker_kvm_up 0 and caretaker_host_libvirtd_up 0 and the
// host's other metrics there; the actions answer 503 with the reason; and
// once libvirtd runs again, scrapes and actions work again.
func TestFrozenLibvirtd(t *testing.T) {
	daemon := testdaemon.PrivateLibvirtd(t)
	timeout := 300 * time.Millisecond
	if *measure {
		timeout = 2 * time.Second
	}
	node := writeGuests(t, 20)
	a, err := New(Config{
		LibvirtURI:     daemon.URI(node),
		LibvirtTimeout: timeout,
		ScrapeTimeout:  DefaultScrapeTimeout,
		ProcFS:         "../../collectors/host/testdata/proc",
		SysFS:          "../../collectors/host/testdata/sys",
		RootFS:         t.TempDir(),
		Token:          token,
		Logger:         testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	base := serveAgent(t, a)
	// libvirt's test driver reports neither vCPU states nor balloon
	// maxima: the guests' commitment is 0, but reported.
	running := map[string]float64{
		"caretaker_kvm_up":                  1,
		"caretaker_kvm_domains":             20,
		"caretaker_host_libvirtd_up":        1,
		"caretaker_host_guest_vcpus":        0,
		"caretaker_host_guest_memory_bytes": 0,
		"caretaker_host_load1":              1.52,
	}
	wantSamples(t, "scrape of the running libvirtd", scrapeMetrics(t, base), running)

	resume := daemon.Freeze()
	defer resume()

	start := time.Now()
	stopped := scrapeMetrics(t, base)
	took := time.Since(start)
	wantSamples(t, "first scrape of the stopped libvirtd", stopped, map[string]float64{
		"caretaker_kvm_up":                                        0,
		"caretaker_host_libvirtd_up":                              0,
		"caretaker_host_load1":                                    1.52,
		`caretaker_scrape_collector_success{collector="kvm"}`:     0,
		`caretaker_scrape_collector_success{collector="overlay"}`: 1,
	})
	if _, ok := stopped["caretaker_host_memory_total_bytes"]; !ok {
		t.Errorf("first scrape of the stopped libvirtd: no caretaker_host_memory_total_bytes")
	}
	if *measure {
		t.Logf("first scrape with libvirtd stopped: %.2f s, timeout %s (target ≤ timeout + 0.5 s)", took.Seconds(), timeout)
	}
	// A second scrape does not wait for the calls the first gave up on.
	wantSamples(t, "second scrape of the stopped libvirtd", scrapeMetrics(t, base), map[string]float64{
		"caretaker_kvm_up":           0,
		"caretaker_host_libvirtd_up": 0,
	})

	// The actions answer 503 and say why, libvirtd still stopped.
	client := &http.Client{Timeout: time.Minute}
	uuid := "0d000000-0000-4000-8000-000000000001"
	for _, req := range []struct{ method, path, body string }{
		{"GET", "/api/v1/domains/" + uuid, ""},
		{"POST", "/api/v1/domains/" + uuid + "/start", ""},
		{"POST", "/api/v1/domains/" + uuid + "/start", ""}, // the same again: not a second call
		{"PUT", "/api/v1/nodes/n1", `{"cluster":"c1","name":"n1","role":"worker","vcpus":1,"memory_bytes":67108864,"disk_bytes":67108864,"bridge":"br0","user_data":"#cloud-config\\n","base_image":"base.qcow2","uuid":"0d000000-0000-4000-8000-0000000000aa"}`},
		{"DELETE", "/api/v1/nodes/n1?cluster=c1&uuid=0d000000-0000-4000-8000-0000000000aa", ""},
	} {
		r, err := http.NewRequest(req.method, base+req.path, strings.NewReader(req.body))
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(r)
		if err != nil {
			t.Fatalf("%s %s with libvirtd stopped: %v", req.method, req.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e apiError
		_ = json.Unmarshal(body, &e)
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(e.Error, "libvirt") ||
			!(strings.Contains(e.Error, "did not answer within "+timeout.String()) || strings.Contains(e.Error, "has not returned yet")) {
			t.Errorf("%s %s with libvirtd stopped: %d %s; want 503 saying libvirt did not answer within %s", req.method, req.path, resp.StatusCode, body, timeout)
		} else {
			t.Logf("%s %s with libvirtd stopped: %d %s", req.method, req.path, resp.StatusCode, bytes.TrimSpace(body))
		}
	}

	resume()
	// The calls left in libvirt return once it runs again; until they
	// have, scrapes say libvirt is busy. Poll: they return on libvirt's
	// time, and nothing signals it to the test.
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := scrapeMetrics(t, base)
		if got["caretaker_kvm_up"] == 1 && got["caretaker_host_libvirtd_up"] == 1 {
			wantSamples(t, "scrape after libvirtd continued", got, running)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after libvirtd continued: kvm_up %v, libvirtd_up %v; want 1, 1", got["caretaker_kvm_up"], got["caretaker_host_libvirtd_up"])
		}
		time.Sleep(50 * time.Millisecond)
	}
	c := agentapi.NewClient(base, token, nil)
	d, err := c.Domain(t.Context(), uuid)
	if err != nil || d.State != "running" {
		t.Errorf("domain %s after libvirtd continued: %+v, %v; want running", uuid, d, err)
	}
}

// TestMeasureScrape500 times the agent's whole /metrics (every collector,
// over HTTP, a fresh connection each time) against `virsh domstats` on the
// same libvirtd, 500 domains of libvirt's test driver, alternately, seven
// times each, and prints the medians and their ratio. It runs with
// -measure (make bench).
func TestMeasureScrape500(t *testing.T) {
	if !*measure {
		t.Skip("a measurement: run with -measure (make bench)")
	}
	needs.Libvirtd(t)
	virsh := needs.Program(t, "virsh")
	uri := "test+unix://" + writeGuests(t, 500)
	a, err := New(Config{LibvirtURI: uri, Token: token, Logger: testLogger(t), GuestDomainType: "qemu"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	base := serveAgent(t, a)
	// The first scrape reads every domain's XML once; later ones are the
	// steady state.
	if got := scrapeMetrics(t, base); got["caretaker_kvm_domains"] != 500 {
		t.Fatalf("first scrape: %v domains, want 500", got["caretaker_kvm_domains"])
	}
	const runs = 7
	var agentTimes, virshTimes []time.Duration
	for range runs {
		start := time.Now()
		got := scrapeMetrics(t, base)
		agentTimes = append(agentTimes, time.Since(start))
		if _, ok := got["caretaker_host_guest_vcpus"]; got["caretaker_kvm_up"] != 1 || !ok {
			t.Fatalf("scrape: kvm_up %v, caretaker_host_guest_vcpus there %v; want 1, true", got["caretaker_kvm_up"], ok)
		}
		start = time.Now()
		cmd := exec.Command(virsh, "-c", uri, "domstats")
		cmd.Stdout = io.Discard
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("virsh domstats: %v: %s", err, stderr.Bytes())
		}
		virshTimes = append(virshTimes, time.Since(start))
	}
	am, vm := median(agentTimes), median(virshTimes)
	t.Logf("agent scrape: %.3f s, virsh domstats: %.3f s, ratio %.2f (target ≤ 1.3); medians of %d, agent %v, virsh %v",
		am.Seconds(), vm.Seconds(), am.Seconds()/vm.Seconds(), runs, agentTimes, virshTimes)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
