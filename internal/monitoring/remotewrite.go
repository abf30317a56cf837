package monitoring

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/golang/snappy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/storage"
)

// Remote write is done here rather than with prometheus/storage/remote:
// that package needs modules go.mod does not require (the OpenTelemetry
// collector, koanf, json-iterator, zap). Prometheus' remote write tails the
// TSDB's WAL; this one tees the appenders instead: what the TSDB commits is
// queued to every endpoint and sent as remote-write 1.0 (snappy-compressed
// prompb.WriteRequest). The queue is in memory and bounded: what does not
// fit, or what an endpoint refuses, is dropped and counted, never blocking
// scraping; the local TSDB keeps everything.

// RemoteWriteConfig is one remote_write endpoint: every sample the server
// stores is also sent there (a long-term store, a central Prometheus).
type RemoteWriteConfig struct {
	URL string // e.g. http://receiver:9090/api/v1/write
	// Name identifies the endpoint in the caretaker_remote_write_* metrics
	// (label remote_name) and logs; default the URL.
	Name string
}

const (
	// remoteFlushDeadline bounds how long Stop waits for the queues to be
	// sent (Prometheus' --storage.remote.flush-deadline is a minute).
	remoteFlushDeadline = 10 * time.Second
	// remoteQueueCommits is how many appender commits (one scrape of one
	// target, one rule group evaluation) wait per endpoint, about ten
	// minutes of a hundred hosts at 15s: an outage longer than that loses
	// the oldest samples remotely.
	remoteQueueCommits = 4000
	// remoteMaxSamplesPerSend is Prometheus' default max_samples_per_send.
	remoteMaxSamplesPerSend = 2000
	remoteRequestTimeout    = 30 * time.Second
	remoteMinBackoff        = 30 * time.Millisecond
	remoteMaxBackoff        = 5 * time.Second
)

func validateRemoteWrite(rws []RemoteWriteConfig) error {
	urls := make(map[string]bool, len(rws))
	names := make(map[string]bool, len(rws))
	for i, rw := range rws {
		if err := validateHTTPURL(rw.URL); err != nil {
			return fmt.Errorf("monitoring options: RemoteWrite[%d].URL %q: %w", i, rw.URL, err)
		}
		if urls[rw.URL] {
			return fmt.Errorf("monitoring options: RemoteWrite[%d].URL %q: listed twice", i, rw.URL)
		}
		urls[rw.URL] = true
		name := rw.Name
		if name == "" {
			name = rw.URL
		}
		if names[name] {
			return fmt.Errorf("monitoring options: RemoteWrite[%d].Name %q: used twice", i, name)
		}
		names[name] = true
	}
	return nil
}

type remoteSample struct {
	labels labels.Labels
	t      int64
	v      float64
	h      *histogram.Histogram
	fh     *histogram.FloatHistogram
}

type remoteWriteMetrics struct {
	sent, failed, dropped *prometheus.CounterVec
}

func newRemoteWriteMetrics(reg prometheus.Registerer) (*remoteWriteMetrics, error) {
	m := &remoteWriteMetrics{
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caretaker_remote_write_samples_sent_total",
			Help: "Samples the remote-write endpoint accepted.",
		}, []string{"remote_name"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caretaker_remote_write_samples_failed_total",
			Help: "Samples the remote-write endpoint refused (4xx) or that could not be sent before shutdown.",
		}, []string{"remote_name"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caretaker_remote_write_samples_dropped_total",
			Help: "Samples dropped because the remote-write queue was full.",
		}, []string{"remote_name"}),
	}
	for _, c := range []*prometheus.CounterVec{m.sent, m.failed, m.dropped} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register remote write metrics: %w", err)
		}
	}
	return m, nil
}

// remoteWriter sends the queued samples to one endpoint.
type remoteWriter struct {
	name, url string
	logger    *slog.Logger
	transport *http.Transport
	client    *http.Client

	sent, failed, dropped prometheus.Counter

	// mu guards closed against enqueue: appends end before close, but a
	// send on a closed channel would panic, so this holds even if not.
	mu     sync.RWMutex
	closed bool
	queue  chan []remoteSample
	done   chan struct{}
}

func newRemoteWriter(cfg RemoteWriteConfig, metrics *remoteWriteMetrics, logger *slog.Logger) *remoteWriter {
	name := cfg.Name
	if name == "" {
		name = cfg.URL
	}
	// Its own transport, so Stop can close its idle connections.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	return &remoteWriter{
		name:      name,
		url:       cfg.URL,
		logger:    logger.With("remote_name", name),
		transport: tr,
		client:    &http.Client{Transport: tr, Timeout: remoteRequestTimeout},
		sent:      metrics.sent.WithLabelValues(name),
		failed:    metrics.failed.WithLabelValues(name),
		dropped:   metrics.dropped.WithLabelValues(name),
		queue:     make(chan []remoteSample, remoteQueueCommits),
		done:      make(chan struct{}),
	}
}

func (w *remoteWriter) enqueue(samples []remoteSample) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		w.dropped.Add(float64(len(samples)))
		return
	}
	select {
	case w.queue <- samples:
	default:
		w.dropped.Add(float64(len(samples)))
		w.logger.Debug("remote write queue full, samples dropped", "samples", len(samples))
	}
}

// close ends the queue; run sends what it holds and returns.
func (w *remoteWriter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.closed = true
		close(w.queue)
	}
}

// run sends the queue until it is closed and drained, or ctx ends.
func (w *remoteWriter) run(ctx context.Context) {
	defer close(w.done)
	defer w.transport.CloseIdleConnections()
	var pending []remoteSample
	for {
		batch, ok := <-w.queue
		if !ok {
			return
		}
		pending = append(pending[:0], batch...)
		// Whatever else waits goes along, up to a request's worth.
	gather:
		for len(pending) < remoteMaxSamplesPerSend {
			select {
			case b, ok := <-w.queue:
				if !ok {
					break gather
				}
				pending = append(pending, b...)
			default:
				break gather
			}
		}
		for len(pending) > 0 {
			n := min(len(pending), remoteMaxSamplesPerSend)
			w.send(ctx, pending[:n])
			pending = pending[n:]
		}
	}
}

// send posts samples, retrying network errors, 429 and 5xx with backoff
// until ctx ends; a 4xx refusal is final (the request would not change).
func (w *remoteWriter) send(ctx context.Context, samples []remoteSample) {
	body, err := encodeWriteRequest(samples)
	if err != nil {
		w.failed.Add(float64(len(samples)))
		w.logger.Error("remote write: encode samples", "err", err)
		return
	}
	backoff := remoteMinBackoff
	for {
		err := w.post(ctx, body)
		if err == nil {
			w.sent.Add(float64(len(samples)))
			return
		}
		var refused *refusedError
		if errors.As(err, &refused) || ctx.Err() != nil {
			w.failed.Add(float64(len(samples)))
			w.logger.Warn("remote write: samples not sent", "samples", len(samples), "err", err)
			return
		}
		w.logger.Debug("remote write: retrying", "err", err, "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		backoff = min(2*backoff, remoteMaxBackoff)
	}
}

// refusedError is an answer that retrying cannot change.
type refusedError struct{ status string }

func (e *refusedError) Error() string { return "refused: " + e.status }

func (w *remoteWriter) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return &refusedError{status: err.Error()}
	}
	req.Header.Set("Content-Encoding", "snappy")
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("User-Agent", "caretaker")
	req.Header.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
	resp, err := w.client.Do(req)
	if err != nil {
		return fmt.Errorf("post to %s: %w", w.url, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch {
	case resp.StatusCode/100 == 2:
		return nil
	case resp.StatusCode/100 == 4 && resp.StatusCode != http.StatusTooManyRequests:
		return &refusedError{status: fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(msg))}
	default:
		return fmt.Errorf("post to %s: %s: %s", w.url, resp.Status, bytes.TrimSpace(msg))
	}
}

// encodeWriteRequest builds a remote-write 1.0 body: one time series per
// label set, its samples in append order.
func encodeWriteRequest(samples []remoteSample) ([]byte, error) {
	var req prompb.WriteRequest
	index := make(map[string]int)
	for _, s := range samples {
		key := s.labels.String()
		i, ok := index[key]
		if !ok {
			i = len(req.Timeseries)
			index[key] = i
			req.Timeseries = append(req.Timeseries, prompb.TimeSeries{Labels: prompb.FromLabels(s.labels, nil)})
		}
		ts := &req.Timeseries[i]
		switch {
		case s.h != nil:
			ts.Histograms = append(ts.Histograms, prompb.FromIntHistogram(s.t, s.h))
		case s.fh != nil:
			ts.Histograms = append(ts.Histograms, prompb.FromFloatHistogram(s.t, s.fh))
		default:
			ts.Samples = append(ts.Samples, prompb.Sample{Value: s.v, Timestamp: s.t})
		}
	}
	b, err := req.Marshal()
	if err != nil {
		return nil, fmt.Errorf("marshal write request: %w", err)
	}
	return snappy.Encode(nil, b), nil
}

// teeAppendable appends to the TSDB and queues what it committed to the
// remote writers.
type teeAppendable struct {
	primary storage.AppendableV2
	writers []*remoteWriter
	// external are added to what is sent, where a series lacks them.
	external labels.Labels
}

func (a *teeAppendable) AppenderV2(ctx context.Context) storage.AppenderV2 {
	return &teeAppender{AppenderV2: a.primary.AppenderV2(ctx), writers: a.writers, external: a.external}
}

type teeAppender struct {
	storage.AppenderV2
	writers  []*remoteWriter
	samples  []remoteSample
	external labels.Labels
}

// withExternal returns ls with the external labels it lacks.
func withExternal(ls, external labels.Labels) labels.Labels {
	if external.IsEmpty() {
		return ls
	}
	b := labels.NewBuilder(ls)
	external.Range(func(l labels.Label) {
		if !ls.Has(l.Name) {
			b.Set(l.Name, l.Value)
		}
	})
	return b.Labels()
}

func (a *teeAppender) Append(ref storage.SeriesRef, ls labels.Labels, st, t int64, v float64, h *histogram.Histogram, fh *histogram.FloatHistogram, opts storage.AppendV2Options) (storage.SeriesRef, error) {
	ref, err := a.AppenderV2.Append(ref, ls, st, t, v, h, fh, opts)
	// A partial error is about exemplars: the sample itself is stored.
	if err == nil || errors.Is(err, &storage.AppendPartialError{}) {
		s := remoteSample{labels: withExternal(ls, a.external), t: t, v: v}
		// The caller may reuse its histograms after Append.
		if h != nil {
			s.h = h.Copy()
		}
		if fh != nil {
			s.fh = fh.Copy()
		}
		a.samples = append(a.samples, s)
	}
	return ref, err
}

func (a *teeAppender) Commit() error {
	if err := a.AppenderV2.Commit(); err != nil {
		a.samples = nil
		return err
	}
	if len(a.samples) > 0 {
		for _, w := range a.writers {
			w.enqueue(a.samples)
		}
	}
	a.samples = nil
	return nil
}

func (a *teeAppender) Rollback() error {
	a.samples = nil
	return a.AppenderV2.Rollback()
}
