package monitoring

import (
	"errors"
	"net/http"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/storage"
)

// The Prometheus-compatible query API (internal/promapi) reads the TSDB,
// the engine and the rules directly; these hand them out. Serve that API
// only through Guard, so Stop never closes the TSDB under a request.

// Queryable is the TSDB.
func (m *Monitor) Queryable() storage.Queryable { return m.db }

// Engine is the PromQL engine the rules use.
func (m *Monitor) Engine() *promql.Engine { return m.engine }

// RulesManager is the rules manager, for /api/v1/rules and /api/v1/alerts.
func (m *Monitor) RulesManager() *rules.Manager { return m.rules }

// Guard serves next only while the Monitor runs: each request holds off
// Stop until it is done and is cancelled when Stop begins; after Stop it
// gets 503.
func (m *Monitor) Guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}
