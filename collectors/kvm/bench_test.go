package kvm

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/prometheus/client_golang/prometheus"
	promcollectors "github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"caretaker/collectors"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
)

// benchDomains is the size of the node the benchmarks scrape.
const benchDomains = 500

// daemonNode writes a node of n generated domains and returns its
// test+unix URI, skipping when the system libvirtd is not running.
func daemonNode(tb testing.TB, n int) string {
	tb.Helper()
	needs.Libvirtd(tb)
	return "test+unix://" + writeNode(tb, tb.TempDir(), genNode(n))
}

// rawStats is the bare bulk call the collector makes, with the flags it
// ends up using: NOWAIT, unless the driver refuses it (the test driver
// does).
type rawStats struct {
	conn  *libvirt.Libvirt
	flags libvirt.ConnectGetAllDomainStatsFlags
}

func newRawStats(tb testing.TB, uri string) *rawStats {
	tb.Helper()
	conn, err := libvirtconn.Dial(uri)
	if err != nil {
		tb.Fatalf("connect to %s: %v", uri, err)
	}
	tb.Cleanup(func() { conn.Disconnect() })
	r := &rawStats{conn: conn, flags: libvirt.ConnectGetAllDomainsStatsNowait}
	if _, err := r.call(); libvirtconn.IsCode(err, libvirt.ErrInvalidArg) {
		r.flags = 0
	}
	if n, err := r.call(); err != nil || n != benchDomains {
		tb.Fatalf("raw GetAllDomainStats: %d domains, %v; want %d", n, err, benchDomains)
	}
	return r
}

func (r *rawStats) call() (int, error) {
	stats, err := r.conn.ConnectGetAllDomainStats(nil, uint32(statsTypes), uint32(r.flags))
	return len(stats), err
}

// scraper runs Update into a reusable channel and counts what it sent.
type scraper struct {
	c  *Collector
	ch chan prometheus.Metric
}

func newScraper(tb testing.TB, uri string) *scraper {
	tb.Helper()
	conn := libvirtconn.New(uri, slog.New(slog.DiscardHandler))
	tb.Cleanup(func() { conn.Close() })
	s := &scraper{c: New(conn, slog.New(slog.DiscardHandler)), ch: make(chan prometheus.Metric, 64<<10)}
	// The first scrape fills the identity cache; the benchmarks measure
	// the steady state after it.
	if err := s.scrape(tb); err != nil {
		tb.Fatal(err)
	}
	return s
}

func (s *scraper) scrape(tb testing.TB) error {
	if err := s.c.Update(tb.Context(), s.ch); err != nil {
		return err
	}
	if n := len(s.ch); n < benchDomains {
		return fmt.Errorf("scrape sent %d metrics, fewer than the %d domains", n, benchDomains)
	}
	for len(s.ch) > 0 {
		<-s.ch
	}
	return nil
}

// BenchmarkScrape500 measures one whole Update of 500 domains through
// libvirtd's socket, in steady state. It also times the raw bulk call
// (BenchmarkRawGetAllDomainStats500) on every iteration, outside the
// measured time, and reports both and their ratio, so that the ratio comes
// from one run on one machine state: raw-ns/op and update/raw.
func BenchmarkScrape500(b *testing.B) {
	uri := daemonNode(b, benchDomains)
	s := newScraper(b, uri)
	raw := newRawStats(b, uri)
	var rawTime time.Duration
	for b.Loop() {
		if err := s.scrape(b); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		start := time.Now()
		if _, err := raw.call(); err != nil {
			b.Fatal(err)
		}
		rawTime += time.Since(start)
		b.StartTimer()
	}
	rawPerOp := float64(rawTime.Nanoseconds()) / float64(b.N)
	b.ReportMetric(rawPerOp, "raw-ns/op")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/rawPerOp, "update/raw")
}

// BenchmarkRawGetAllDomainStats500 measures the bare bulk call the
// collector makes, with the same stats groups and flags, on the same node.
func BenchmarkRawGetAllDomainStats500(b *testing.B) {
	raw := newRawStats(b, daemonNode(b, benchDomains))
	for b.Loop() {
		if _, err := raw.call(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAgentRSS500 serves /metrics as the agent does (the kvm collector
// in a Set, with the Go and process collectors) for 500 domains through
// libvirtd and reports the process's resident memory afterwards, in MiB:
// rss (VmRSS), peak-rss (VmHWM), and anon-rss (RssAnon: the process's own
// memory, without the pages of its executable and libraries, which the page
// cache shares). The test binary's own share is in there too, so run it
// alone for the figure: go test -run '^$' -bench AgentRSS500.
func BenchmarkAgentRSS500(b *testing.B) {
	uri := daemonNode(b, benchDomains)
	conn := libvirtconn.New(uri, slog.New(slog.DiscardHandler))
	b.Cleanup(func() { conn.Close() })
	logger := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewSet(logger, 10*time.Second, map[string]collectors.Collector{"kvm": New(conn, logger)}),
		promcollectors.NewGoCollector(),
		promcollectors.NewProcessCollector(promcollectors.ProcessCollectorOpts{}),
	)
	handler := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	for b.Loop() {
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		if rec.Code != http.StatusOK || !bytes.Contains(rec.Body.Bytes(), []byte("caretaker_kvm_domains 500\n")) {
			b.Fatalf("scrape: status %d, no caretaker_kvm_domains 500 in the output", rec.Code)
		}
	}
	mem, err := residentMemory()
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range []struct{ field, unit string }{
		{"VmRSS", "rss-MiB"},
		{"VmHWM", "peak-rss-MiB"},
		{"RssAnon", "anon-rss-MiB"},
	} {
		v, ok := mem[f.field]
		if !ok {
			b.Fatalf("no %s in /proc/self/status", f.field)
		}
		b.ReportMetric(v/(1<<20), f.unit)
	}
}

// residentMemory returns the memory fields of /proc/self/status (VmRSS,
// RssAnon, …), in bytes.
func residentMemory() (map[string]float64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	mem := make(map[string]float64)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		value = strings.TrimSpace(value)
		if !ok || !strings.HasSuffix(value, " kB") {
			continue
		}
		kib, err := strconv.ParseFloat(strings.TrimSuffix(value, " kB"), 64)
		if err != nil {
			return nil, fmt.Errorf("parse %s in /proc/self/status: %w", key, err)
		}
		mem[key] = kib * 1024
	}
	return mem, sc.Err()
}
