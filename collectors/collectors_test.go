package collectors

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// collectorFunc adapts a function to Collector.
type collectorFunc func(ctx context.Context, ch chan<- prometheus.Metric) error

func (f collectorFunc) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	return f(ctx, ch)
}

func gauge(name string, v float64) prometheus.Metric {
	return prometheus.MustNewConstMetric(prometheus.NewDesc(name, name+" help.", nil, nil), prometheus.GaugeValue, v)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

const (
	successName  = "caretaker_scrape_collector_success"
	durationName = "caretaker_scrape_collector_duration_seconds"
)

func TestSetSuccessAndError(t *testing.T) {
	set := NewSet(testLogger(t), time.Minute, map[string]Collector{
		"good": collectorFunc(func(_ context.Context, ch chan<- prometheus.Metric) error {
			ch <- gauge("test_good", 1)
			return nil
		}),
		"bad": collectorFunc(func(_ context.Context, ch chan<- prometheus.Metric) error {
			ch <- gauge("test_partial", 42)
			return errors.New("read something: broken")
		}),
	})

	const want = `
# HELP caretaker_scrape_collector_success Whether a collector succeeded (1) or failed or timed out (0) in this scrape.
# TYPE caretaker_scrape_collector_success gauge
caretaker_scrape_collector_success{collector="bad"} 0
caretaker_scrape_collector_success{collector="good"} 1
# HELP test_good test_good help.
# TYPE test_good gauge
test_good 1
# HELP test_partial test_partial help.
# TYPE test_partial gauge
test_partial 42
`
	if err := testutil.CollectAndCompare(set, strings.NewReader(want), successName, "test_good", "test_partial"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(set, durationName); n != 2 {
		t.Errorf("got %d %s series, want one per collector (2)", n, durationName)
	}
}

func TestSetTimeout(t *testing.T) {
	lateSent := make(chan struct{})
	release := make(chan struct{})
	ignoredReturned := make(chan struct{})

	set := NewSet(testLogger(t), time.Millisecond, map[string]Collector{
		// Waits for the deadline, then sends once more, as a collector
		// whose libvirt call returned too late would.
		"late": collectorFunc(func(ctx context.Context, ch chan<- prometheus.Metric) error {
			<-ctx.Done()
			ch <- gauge("test_late", 1)
			close(lateSent)
			return ctx.Err()
		}),
		// Ignores ctx altogether and outlives the scrape.
		"deaf": collectorFunc(func(_ context.Context, ch chan<- prometheus.Metric) error {
			defer close(ignoredReturned)
			<-release
			ch <- gauge("test_deaf", 1)
			return nil
		}),
	})

	const want = `
# HELP caretaker_scrape_collector_success Whether a collector succeeded (1) or failed or timed out (0) in this scrape.
# TYPE caretaker_scrape_collector_success gauge
caretaker_scrape_collector_success{collector="deaf"} 0
caretaker_scrape_collector_success{collector="late"} 0
`
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(set)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), successName, "test_late", "test_deaf"); err != nil {
		t.Fatal(err)
	}

	// The scrape is over and its channel is gone: both late sends must
	// still complete, and both collectors return.
	<-lateSent
	close(release)
	<-ignoredReturned
}

func TestSetRunsCollectorsConcurrently(t *testing.T) {
	// Each collector waits for the other to have started: run one after
	// the other, the first would wait out the deadline and fail.
	var started sync.WaitGroup
	started.Add(2)
	allStarted := make(chan struct{})
	go func() { started.Wait(); close(allStarted) }()
	meet := collectorFunc(func(ctx context.Context, _ chan<- prometheus.Metric) error {
		started.Done()
		select {
		case <-allStarted:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	set := NewSet(testLogger(t), time.Minute, map[string]Collector{"a": meet, "b": meet})

	const want = `
# HELP caretaker_scrape_collector_success Whether a collector succeeded (1) or failed or timed out (0) in this scrape.
# TYPE caretaker_scrape_collector_success gauge
caretaker_scrape_collector_success{collector="a"} 1
caretaker_scrape_collector_success{collector="b"} 1
`
	if err := testutil.CollectAndCompare(set, strings.NewReader(want), successName); err != nil {
		t.Fatal(err)
	}
}

func TestSetEmpty(t *testing.T) {
	set := NewSet(testLogger(t), time.Second, nil)
	if n := testutil.CollectAndCount(set); n != 0 {
		t.Errorf("empty set collected %d metrics, want 0", n)
	}
}
