package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"caretaker/internal/guestmeta"
	"caretaker/internal/needs"
	"caretaker/internal/testdaemon"
)

var (
	rss        = flag.Bool("rss", false, "measure the resident memory of caretaker-agent and `caretaker agent` serving 500 domains through libvirtd (make bench)")
	rssScrapes = flag.Int("rss-scrapes", 60, "scrapes of each agent before its memory is read (-rss)")
)

// heavy are the packages the lean agent must not link: the embedded
// Prometheus (TSDB, scrape, rules), the cloud SDKs its service discovery
// brings, and caretaker's server.
var heavy = []string{
	"github.com/prometheus/prometheus",
	"github.com/aws/", "github.com/Azure/", "google.golang.org/api", "cloud.google.com/",
	"github.com/hashicorp/", "k8s.io/",
	"caretaker/internal/server", "caretaker/internal/monitoring",
}

func TestLinksNoServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "list", "-deps", "caretaker/cmd/caretaker-agent").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, h := range heavy {
			if strings.HasPrefix(pkg, h) {
				t.Errorf("caretaker-agent links %s (find the chain: go list -deps -f '{{.ImportPath}} {{.Imports}}' ./cmd/caretaker-agent)", pkg)
			}
		}
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	root := newRootCmd(&out, &out)
	root.SetArgs([]string{"--help"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"caretaker-agent [flags]",
		"caretaker-agent --libvirt.uri qemu:///system --action.token-file /etc/caretaker/agent.token",
		"--web.listen-address", "--libvirt.timeout", "--log.level", "--log.format",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}

// syncBuffer is the agent's log, written by its goroutines and read by the
// test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServesMetrics runs the command as the binary does, on libvirt's
// test driver in libvirtd, and scrapes it: all three collectors answer.
func TestServesMetrics(t *testing.T) {
	needs.Libvirtd(t)
	addr := testdaemon.FreePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	root := newRootCmd(io.Discard, &logs)
	root.SetArgs([]string{"--web.listen-address", addr, "--libvirt.uri", "test:///default", "--log.level", "warn"})
	exited := make(chan error, 1)
	go func() { exited <- root.ExecuteContext(ctx) }()
	defer func() {
		cancel()
		if err := <-exited; err != nil {
			t.Errorf("caretaker-agent: %v", err)
		}
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	}()
	body, err := scrapeWhenUp("http://"+addr+"/metrics", exited, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`caretaker_scrape_collector_success{collector="host"} 1`,
		`caretaker_scrape_collector_success{collector="kvm"} 1`,
		`caretaker_scrape_collector_success{collector="overlay"} 1`,
		"caretaker_kvm_domains 1\n",
		"caretaker_host_memory_",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// scrapeWhenUp polls url until it answers 200 (the agent offers no other
// sign that it listens) and returns the body; exited reports the agent's
// end.
func scrapeWhenUp(url string, exited chan error, limit time.Duration) (string, error) {
	client := &http.Client{Timeout: 30 * time.Second}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(limit)
	for {
		if body, err := scrape(client, url); err == nil {
			return body, nil
		}
		select {
		case err := <-exited:
			exited <- err
			return "", fmt.Errorf("the agent exited before serving %s: %v", url, err)
		case <-deadline:
			return "", fmt.Errorf("no answer from %s within %s", url, limit)
		case <-tick.C:
		}
	}
}

func scrape(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// TestAgentRSS500 (with -rss; make bench) builds caretaker-agent and
// caretaker as make build does, runs each as an agent of a libvirtd test-driver node of 500
// domains, scrapes its /metrics over HTTP -rss-scrapes times with all
// three collectors, and reads VmRSS and VmHWM from /proc/PID/status.
func TestAgentRSS500(t *testing.T) {
	if !*rss {
		t.Skip("a measurement: run with -rss (make bench)")
	}
	needs.Libvirtd(t)
	dir := t.TempDir()
	lean, fat := filepath.Join(dir, "caretaker-agent"), filepath.Join(dir, "caretaker")
	for bin, pkg := range map[string]string{lean: "caretaker/cmd/caretaker-agent", fat: "caretaker/cmd/caretaker"} {
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	uri := "test+unix://" + writeNode(t, dir, 500)
	leanMem := agentMemory(t, uri, lean)
	fatMem := agentMemory(t, uri, fat, "agent")
	size := func(path string) float64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return float64(fi.Size()) / (1 << 20)
	}
	t.Logf("agent rss: lean %.1f MiB (peak %.1f), caretaker agent %.1f MiB (peak %.1f); target < 40 MiB",
		leanMem["VmRSS"], leanMem["VmHWM"], fatMem["VmRSS"], fatMem["VmHWM"])
	t.Logf("agent rss parts: lean anon %.1f MiB, file %.1f MiB (binary %.1f MiB); caretaker agent anon %.1f MiB, file %.1f MiB (binary %.1f MiB); after %d scrapes of 500 domains",
		leanMem["RssAnon"], leanMem["RssFile"], size(lean), fatMem["RssAnon"], fatMem["RssFile"], size(fat), *rssScrapes)
	if leanMem["VmRSS"] >= 40 {
		t.Errorf("caretaker-agent resident at %.1f MiB, want under 40 MiB", leanMem["VmRSS"])
	}
}

// agentMemory starts bin with args as an agent of uri, scrapes it and
// returns the memory fields of its /proc/PID/status in MiB.
func agentMemory(t *testing.T, uri, bin string, args ...string) map[string]float64 {
	t.Helper()
	addr := testdaemon.FreePort(t)
	var logs syncBuffer
	cmd := exec.Command(bin, append(args, "--web.listen-address", addr, "--libvirt.uri", uri)...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		if t.Failed() {
			t.Logf("%s log:\n%s", filepath.Base(bin), logs.String())
		}
	}()
	url := "http://" + addr + "/metrics"
	if _, err := scrapeWhenUp(url, exited, time.Minute); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	for range *rssScrapes {
		body, err := scrape(client, url)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			`caretaker_scrape_collector_success{collector="host"} 1`,
			`caretaker_scrape_collector_success{collector="kvm"} 1`,
			`caretaker_scrape_collector_success{collector="overlay"} 1`,
			"caretaker_kvm_domains 500\n",
		} {
			if !strings.Contains(body, want) {
				t.Fatalf("%s: /metrics lacks %q", filepath.Base(bin), want)
			}
		}
	}
	mem, err := procStatus(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return mem
}

// procStatus returns the kB fields of /proc/PID/status in MiB.
func procStatus(pid int) (map[string]float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	mem := make(map[string]float64)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, _ := strings.Cut(sc.Text(), ":")
		kib, ok := strings.CutSuffix(strings.TrimSpace(value), " kB")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(kib, 64)
		if err != nil {
			return nil, fmt.Errorf("parse %s of /proc/%d/status: %w", key, pid, err)
		}
		mem[key] = v / 1024
	}
	return mem, sc.Err()
}

// writeNode writes a libvirt test-driver node of n domains — a mix of
// running, paused and shut-off ones, half with caretaker's metadata, each
// with two disks and a bridged interface, as collectors/kvm's benchmarks
// have — and returns its absolute path.
func writeNode(t *testing.T, dir string, n int) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("<node>\n  <cpu><mhz>2000</mhz><model>x86_64</model><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads></cpu>\n  <memory>67108864</memory>\n")
	clusters := []string{"prod", "stage", "ci", "edge", "lab"}
	for i := range n {
		cluster := clusters[i%len(clusters)]
		runstate := 1
		switch i % 7 {
		case 0:
			runstate = 5
		case 1:
			runstate = 3
		}
		name := fmt.Sprintf("%s-worker-%d", cluster, i)
		meta := ""
		if i%2 == 0 {
			name = fmt.Sprintf("guest%d", i)
			intent := guestmeta.IntentRunning
			if runstate == 5 {
				intent = guestmeta.IntentStopped
			}
			x, err := (&guestmeta.Metadata{Intent: intent, Cluster: cluster, Role: "worker"}).XML()
			if err != nil {
				t.Fatal(err)
			}
			meta = "<metadata>" + x + "</metadata>"
		}
		fmt.Fprintf(&b, "  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'><name>%s</name><uuid>0c000000-0000-4000-8000-%012x</uuid>%s\n", name, i+1, meta)
		b.WriteString("    <memory unit='MiB'>1024</memory><currentMemory unit='MiB'>512</currentMemory><vcpu>2</vcpu><os><type>hvm</type></os><devices>\n")
		for _, disk := range []string{"vda", "vdb"} {
			fmt.Fprintf(&b, "      <disk type='file' device='disk'><source file='/var/lib/libvirt/images/%s-%s.qcow2'/><target dev='%s' bus='virtio'/></disk>\n", name, disk, disk)
		}
		fmt.Fprintf(&b, "      <interface type='bridge'><mac address='52:54:00:%02x:%02x:%02x'/><source bridge='br-%s'/></interface>\n", i>>16&0xff, i>>8&0xff, i&0xff, cluster)
		fmt.Fprintf(&b, "    </devices><test:runstate>%d</test:runstate></domain>\n", runstate)
	}
	b.WriteString("</node>\n")
	path := filepath.Join(dir, fmt.Sprintf("node%d.xml", n))
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
