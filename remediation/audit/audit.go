// Package audit sends every remediation decision and outcome to Loki, so
// operators can search and graph them beside the rest of the fleet's logs.
//
// Each journal.Record given to Client.Log becomes one log entry:
//
//   - stream labels {job="caretaker-remediation", host, guest, action,
//     result}, plus Config.ExternalLabels; guest is the record's domain, or
//     its UUID when it has no domain; result is the record's state; labels
//     with an empty value are left out;
//   - the line is the record as JSON, exactly as the journal stores it
//     (LogQL: `{job="caretaker-remediation"} | json`);
//   - the timestamp is when the record reached that state: Created for
//     pending and skipped, Started for running, Finished for the outcomes.
//
// Log never blocks the engine: records wait in a bounded buffer, and when it
// is full they are dropped and counted. One goroutine batches them (by
// Config.BatchSize or Config.BatchWait) and pushes each batch as a
// snappy-compressed protobuf push.PushRequest, retrying network errors, 429
// and 5xx with exponential backoff and giving up on other answers. The
// journal stays the record of truth; Loki gets a copy that may miss entries,
// and every one it misses is counted
// (caretaker_audit_entries_{dropped,failed}_total).
package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/golang/snappy"
	"github.com/prometheus/client_golang/prometheus"

	"caretaker/remediation/journal"
)

// Client pushes records to Loki. Its methods are safe for concurrent use.
type Client struct {
	cfg    Config
	where  string // the URL without a password, for logs and errors
	logger *slog.Logger
	clock  clock
	http   *http.Client
	m      *metrics

	queue chan entry

	// mu guards closed: Log holds it shared while it enqueues, so once
	// Close holds it exclusively nothing more enters the queue and the
	// drain is complete.
	mu     sync.RWMutex
	closed bool

	quit      chan struct{} // closed by Close: flush and stop
	done      chan struct{} // closed when run returns
	ctx       context.Context
	cancel    context.CancelFunc // aborts pushes once Close's ctx is done
	closeOnce sync.Once
}

// New validates cfg (after applying defaults), registers the metrics with
// reg (when not nil) and starts the goroutine that pushes. Call Close to
// stop it.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Client, error) {
	return newClient(cfg, logger, reg, realClock{})
}

func newClient(cfg Config, logger *slog.Logger, reg prometheus.Registerer, clk clock) (*Client, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	queue := make(chan entry, cfg.MaxBuffer)
	m, err := newMetrics(reg, queue)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	where := cfg.URL
	if u, err := url.Parse(cfg.URL); err == nil { // validate parsed it already
		where = u.Redacted()
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		cfg:    cfg,
		where:  where,
		logger: logger.With("component", "audit", "url", where),
		clock:  clk,
		// Its own transport, so Close can drop its idle connections.
		http:   &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()},
		m:      m,
		queue:  queue,
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
		ctx:    ctx,
		cancel: cancel,
	}
	go c.run()
	return c, nil
}

// Log queues rec to be pushed and returns at once. When the buffer is full,
// or the client is closed, rec is dropped and counted.
func (c *Client) Log(rec journal.Record) {
	e := entry{rec: rec, ts: stateTime(rec)}
	if e.ts.IsZero() {
		e.ts = c.clock.Now()
	}
	c.mu.RLock()
	if !c.closed {
		select {
		case c.queue <- e:
			c.mu.RUnlock()
			return
		default:
		}
	}
	c.mu.RUnlock()
	c.m.dropped.Inc()
}

// Close pushes what is queued and stops. When ctx is done first, the push
// in flight is abandoned, what is left is counted as failed, and Close
// returns ctx's error. Later calls return nil at once.
func (c *Client) Close(ctx context.Context) error {
	var err error
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		close(c.quit)
		select {
		case <-c.done:
		case <-ctx.Done():
			c.cancel()
			<-c.done
			err = fmt.Errorf("flush audit records to %s: %w", c.where, ctx.Err())
		}
		c.cancel()
		c.http.CloseIdleConnections()
	})
	return err
}

// run batches queued entries and pushes them until Close.
func (c *Client) run() {
	defer close(c.done)
	batch := make([]entry, 0, min(c.cfg.BatchSize, 1024))
	var wait timer
	flush := func() {
		if wait != nil {
			wait.Stop()
			wait = nil
		}
		if len(batch) > 0 {
			c.push(batch)
			batch = batch[:0]
		}
	}
	for {
		var timeout <-chan time.Time // nil, never ready, while the batch is empty
		if wait != nil {
			timeout = wait.C()
		}
		select {
		case e := <-c.queue:
			batch = append(batch, e)
			if len(batch) >= c.cfg.BatchSize {
				flush()
			} else if wait == nil {
				wait = c.clock.NewTimer(c.cfg.BatchWait)
			}
		case <-timeout:
			wait = nil
			flush()
		case <-c.quit:
			// Close has stopped Log from queuing, so what is queued now is
			// all there will be.
			for {
				select {
				case e := <-c.queue:
					batch = append(batch, e)
					if len(batch) >= c.cfg.BatchSize {
						flush()
					}
				default:
					flush()
					return
				}
			}
		}
	}
}

// push sends one batch, retrying what may succeed later.
func (c *Client) push(batch []entry) {
	n := float64(len(batch))
	body, err := encode(batch, c.cfg.ExternalLabels)
	if err != nil {
		c.m.failed.Add(n)
		c.logger.Error("audit: cannot encode batch, dropping it", "entries", len(batch), "err", err)
		return
	}
	backoff := c.cfg.MinBackoff
	for attempt := 0; ; attempt++ {
		start := c.clock.Now()
		err := c.post(body)
		c.m.duration.Observe(c.clock.Now().Sub(start).Seconds())
		if err == nil {
			c.m.sent.Add(n)
			c.m.batches.Inc()
			return
		}
		var perm permanentError
		switch {
		case errors.As(err, &perm):
			c.m.failed.Add(n)
			c.logger.Error("audit: Loki refused batch, not retrying", "entries", len(batch), "err", err)
			return
		case c.ctx.Err() != nil:
			c.m.failed.Add(n)
			c.logger.Error("audit: batch not sent before shutdown", "entries", len(batch), "err", err)
			return
		case attempt >= c.cfg.MaxRetries:
			c.m.failed.Add(n)
			c.logger.Error("audit: batch not sent, giving up", "entries", len(batch), "attempts", attempt+1, "err", err)
			return
		}
		c.logger.Warn("audit: push failed, retrying", "entries", len(batch), "attempt", attempt+1, "backoff", backoff, "err", err)
		t := c.clock.NewTimer(backoff)
		select {
		case <-t.C():
		case <-c.ctx.Done():
			t.Stop()
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

// encode renders a batch as Loki's push body: a push.PushRequest in
// protobuf, snappy-compressed (block format, as Loki expects).
func encode(batch []entry, external map[string]string) ([]byte, error) {
	req, err := buildPushRequest(batch, external)
	if err != nil {
		return nil, err
	}
	raw, err := req.Marshal()
	if err != nil {
		return nil, fmt.Errorf("marshal push request: %w", err)
	}
	return snappy.Encode(nil, raw), nil
}

// permanentError is an answer that retrying the same batch cannot change.
type permanentError struct{ error }

// retryable reports whether a push answered with code may succeed later:
// Loki's rate limit (429) and server errors, as promtail does.
func retryable(code int) bool {
	return code == http.StatusTooManyRequests || code >= 500
}

// maxErrorBody caps how much of an error answer is read into logs.
const maxErrorBody = 1024

func (c *Client) post(body []byte) error {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return permanentError{fmt.Errorf("build push request: %w", err)}
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("User-Agent", "caretaker-audit")
	if c.cfg.TenantID != "" {
		req.Header.Set("X-Scope-OrgID", c.cfg.TenantID)
	}
	if c.cfg.BearerToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.cfg.BearerToken)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("push to loki: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody)) // lets the connection be reused
		return nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	err = fmt.Errorf("push to loki: %s: %s", resp.Status, bytes.TrimSpace(msg))
	if !retryable(resp.StatusCode) {
		return permanentError{err}
	}
	return err
}
