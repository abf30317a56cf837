package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"libvirt.org/go/libvirt"

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

// libvirtCheck pings libvirtd for the host collector's libvirtd_up.
func (a *Agent) libvirtCheck(context.Context) error {
	conn, err := a.conn.Get()
	if err != nil {
		return err
	}
	if _, err := conn.GetLibVersion(); err != nil {
		return fmt.Errorf("ping libvirtd: %w", err)
	}
	return nil
}

// guestCommitment sums the vCPUs and maximum memory of the running guests
// this agent is responsible for, in one bulk libvirt call.
func (a *Agent) guestCommitment(context.Context) (int, uint64, error) {
	conn, err := a.conn.Get()
	if err != nil {
		return 0, 0, err
	}
	// NOWAIT: a guest busy with a job (starting, stopping, migrating)
	// must not hold up the count, or every later scrape finds this call
	// still running.
	types := libvirt.DOMAIN_STATS_VCPU | libvirt.DOMAIN_STATS_BALLOON
	stats, err := conn.GetAllDomainStats(nil, types,
		libvirt.CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE|libvirt.CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
	var lerr libvirt.Error
	if errors.As(err, &lerr) && lerr.Code == libvirt.ERR_INVALID_ARG { // a driver without NOWAIT
		stats, err = conn.GetAllDomainStats(nil, types, libvirt.CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("guest commitment: %w", err)
	}
	var vcpus int
	var mem uint64
	for _, s := range stats {
		if a.cfg.DomainFilter != nil {
			if name, err := s.Domain.GetName(); err != nil || !a.owns(name) {
				s.Domain.Free()
				continue
			}
		}
		for _, v := range s.Vcpu {
			if v.StateSet { // libvirt reports a state for online vCPUs only
				vcpus++
			}
		}
		if s.Balloon != nil && s.Balloon.MaximumSet {
			mem += s.Balloon.Maximum * 1024 // KiB
		}
		s.Domain.Free()
	}
	return vcpus, mem, nil
}
