package monitoring

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/storage"
)

// The Prometheus-compatible query API (internal/promapi) reads the TSDB,
// the engine and the rules directly; these hand them out. Serve that API
// only through Guard, so Stop never closes the TSDB under a request.

// Prometheus' defaults of --query.timeout and --query.max-samples.
const (
	DefaultQueryTimeout    = 2 * time.Minute
	DefaultQueryMaxSamples = 50_000_000
)

// QueryLimits bound every PromQL query the engine runs, the rules' and the
// query API's, as Prometheus' flags of the same names do. Zero fields take
// the defaults. A query past Timeout ends with promql.ErrQueryTimeout, one
// that would hold more than MaxSamples samples at once with
// promql.ErrTooManySamples.
type QueryLimits struct {
	Timeout    time.Duration // --query.timeout
	MaxSamples int           // --query.max-samples
}

func (l *QueryLimits) withDefaults() error {
	if l.Timeout < 0 || l.MaxSamples < 0 {
		return fmt.Errorf("monitoring options: query timeout %s and max samples %d must not be negative", l.Timeout, l.MaxSamples)
	}
	if l.Timeout == 0 {
		l.Timeout = DefaultQueryTimeout
	}
	if l.MaxSamples == 0 {
		l.MaxSamples = DefaultQueryMaxSamples
	}
	return nil
}

// Queryable is the TSDB.
func (m *Monitor) Queryable() storage.Queryable { return m.db }

// Engine is the PromQL engine the rules use.
func (m *Monitor) Engine() *promql.Engine { return m.engine }

// RulesManager is the rules manager, for /api/v1/rules and /api/v1/alerts.
func (m *Monitor) RulesManager() *rules.Manager { return m.rules }

// Guard serves next only while the Monitor runs: each request holds off
// Stop until it is done and is cancelled when its client leaves, when
// CancelQueries is called or when Stop begins; after either it gets 503.
func (m *Monitor) Guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m.queries.Err() != nil {
			http.Error(w, errShuttingDown.Error(), http.StatusServiceUnavailable)
			return
		}
		ctx, release, err := m.acquire(r.Context())
		if err != nil {
			status := http.StatusInternalServerError
			if errors.Is(err, ErrStopped) {
				status = http.StatusServiceUnavailable
			}
			http.Error(w, err.Error(), status)
			return
		}
		defer release()
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		defer context.AfterFunc(m.queries, func() { cancel(errShuttingDown) })()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

var errShuttingDown = errors.New("the server is shutting down")

// CancelQueries cancels the requests Guard serves and refuses new ones
// with 503, so that a long query never holds up the HTTP server's
// shutdown. The Monitor itself keeps running until Stop.
func (m *Monitor) CancelQueries() { m.cancelQueries() }
