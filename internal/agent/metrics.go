package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/digitalocean/go-libvirt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"caretaker/collectors"
)

// metricsHandler serves /metrics. Like node_exporter, `collect[]` query
// parameters select collectors; an unknown name is a 400 that names it.
func (a *Agent) metricsHandler(full *prometheus.Registry) http.Handler {
	opts := promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(a.logger.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
	}
	all := promhttp.InstrumentMetricHandler(full, promhttp.HandlerFor(full, opts))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		names := r.URL.Query()["collect[]"]
		if len(names) == 0 {
			all.ServeHTTP(w, r)
			return
		}
		subset := map[string]collectors.Collector{}
		for _, n := range names {
			c, ok := a.collectors[n]
			if !ok {
				http.Error(w, fmt.Sprintf("collect[]: unknown collector %q (known: %s)", n, strings.Join(a.collectorNames(), ", ")),
					http.StatusBadRequest)
				return
			}
			subset[n] = c
		}
		reg := prometheus.NewRegistry()
		if err := reg.Register(collectors.NewSet(a.logger, a.cfg.ScrapeTimeout, subset)); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		promhttp.HandlerFor(reg, opts).ServeHTTP(w, r)
	})
}

func (a *Agent) collectorNames() []string {
	var names []string
	for n := range a.collectors {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// libvirtCheck pings libvirtd for the host collector's libvirtd_up,
// bounded by the libvirt timeout.
func (a *Agent) libvirtCheck(ctx context.Context) error {
	return a.conn.Call(ctx, "ping libvirtd", func(conn *libvirt.Libvirt) error {
		if _, err := conn.ConnectGetLibVersion(); err != nil {
			return fmt.Errorf("ping libvirtd: %w", err)
		}
		return nil
	})
}
