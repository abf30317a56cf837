// Package collectors holds the contract shared by caretaker's exporters: a
// Collector writes its metrics for one scrape, and a Set runs several of them
// as one prometheus.Collector, reporting for each whether it succeeded and how
// long it took, so that one failing part never fails the whole scrape.
//
// The exporters themselves live in the subpackages (kvm, host, overlay); the
// agent lists the ones it runs explicitly when it builds its Set.
package collectors

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector collects one part of the host's metrics.
type Collector interface {
	// Update sends this scrape's metrics on ch. It should give up when ctx
	// is done. Metrics sent before an error are still exposed; metrics sent
	// after ctx is done are discarded. Update must not send on ch after it
	// has returned.
	Update(ctx context.Context, ch chan<- prometheus.Metric) error
}

// Set runs named Collectors concurrently on every scrape.
//
// Set is an unchecked collector: Describe sends nothing. The metrics of its
// collectors depend on what they find at scrape time (one series per guest,
// per overlay, …), and DescribeByCollect would run a whole collection, against
// libvirt and the kernel, at registration. The registry still checks every
// scrape for duplicate series and inconsistent metadata.
type Set struct {
	logger     *slog.Logger
	timeout    time.Duration
	collectors map[string]Collector

	successDesc  *prometheus.Desc
	durationDesc *prometheus.Desc
}

// NewSet returns a Set that runs cs, keyed by the name reported in the
// collector label, each with a context that times out after timeout (no
// deadline if timeout <= 0).
func NewSet(logger *slog.Logger, timeout time.Duration, cs map[string]Collector) *Set {
	own := make(map[string]Collector, len(cs))
	for name, c := range cs {
		own[name] = c
	}
	return &Set{
		logger:     logger,
		timeout:    timeout,
		collectors: own,
		successDesc: prometheus.NewDesc(
			"caretaker_scrape_collector_success",
			"Whether a collector succeeded (1) or failed or timed out (0) in this scrape.",
			[]string{"collector"}, nil,
		),
		durationDesc: prometheus.NewDesc(
			"caretaker_scrape_collector_duration_seconds",
			"How long a collector took in this scrape, up to the scrape timeout.",
			[]string{"collector"}, nil,
		),
	}
}

// Describe implements prometheus.Collector; it sends nothing (see Set).
func (s *Set) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (s *Set) Collect(ch chan<- prometheus.Metric) {
	ctx := context.Background()
	if s.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	var wg sync.WaitGroup
	for name, c := range s.collectors {
		wg.Go(func() { s.run(ctx, name, c, ch) })
	}
	wg.Wait()
}

// run runs one collector, forwarding its metrics to ch until it returns or
// ctx is done, then reports its success and duration. Everything sent on ch
// is sent before run returns, hence before Collect returns and the registry
// stops reading ch.
func (s *Set) run(ctx context.Context, name string, c Collector, ch chan<- prometheus.Metric) {
	begin := time.Now()
	// The collector gets its own channel so that what it sends after the
	// deadline can be discarded instead of reaching ch, which the registry
	// may have stopped reading. It is never closed: the collector's
	// goroutine is its only sender.
	out := make(chan prometheus.Metric)
	done := make(chan error, 1)
	go func() { done <- c.Update(ctx, out) }()

	returned, err := forward(ctx, out, done, ch)
	if !returned {
		// Keep receiving so that a collector that ignores ctx is not
		// blocked forever on its next send; discard what it sends until
		// it returns.
		go func() {
			for {
				select {
				case <-out:
				case <-done:
					return
				}
			}
		}()
	}
	duration := time.Since(begin).Seconds()

	success := 1.0
	if err != nil {
		success = 0
		s.logger.Error("collector failed", "collector", name, "duration_seconds", duration, "err", err)
	} else {
		s.logger.Debug("collector succeeded", "collector", name, "duration_seconds", duration)
	}
	ch <- prometheus.MustNewConstMetric(s.durationDesc, prometheus.GaugeValue, duration, name)
	ch <- prometheus.MustNewConstMetric(s.successDesc, prometheus.GaugeValue, success, name)
}

// forward sends what a collector sends on out to ch until the collector
// returns (true and its error) or ctx is done (false and ctx's error).
func forward(ctx context.Context, out <-chan prometheus.Metric, done <-chan error, ch chan<- prometheus.Metric) (returned bool, err error) {
	for {
		select {
		case m := <-out:
			// select picks at random among ready cases: without this
			// check a metric sent after the deadline could still win.
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			ch <- m
		case err = <-done:
			return true, err
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}
