package monitoring

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"github.com/prometheus/prometheus/notifier"
)

// notifierQueueCapacity is Prometheus' default --alertmanager.notification-queue-capacity.
const notifierQueueCapacity = 10000

// alertmanagerApplyTimeout bounds the wait for the notifier to take up the
// Alertmanagers. Like targetApplyTimeout it only guards against a bug.
const alertmanagerApplyTimeout = time.Minute

func validateAlertmanagers(urls []string) error {
	seen := make(map[string]bool, len(urls))
	for i, raw := range urls {
		if err := validateHTTPURL(raw); err != nil {
			return fmt.Errorf("monitoring options: Alertmanagers[%d] %q: %w", i, raw, err)
		}
		if seen[raw] {
			return fmt.Errorf("monitoring options: Alertmanagers[%d] %q: listed twice", i, raw)
		}
		seen[raw] = true
	}
	return nil
}

// validateHTTPURL accepts http(s)://host:port/optional/prefix. Credentials
// in the URL are refused: they would end up in logs.
func validateHTTPURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return err
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("scheme %q is not http or https", u.Scheme)
	case u.Host == "":
		return fmt.Errorf("no host")
	case u.User != nil:
		return fmt.Errorf("credentials in the URL are not supported")
	case u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("query and fragment are not supported")
	}
	return nil
}

// startNotifier creates the notifier that forwards alerts to the external
// Alertmanagers. It is fed its targets here, once, instead of by a
// discovery manager: the Alertmanagers are static.
//
// Requests go through transport rather than the client the notifier builds
// from the (default) HTTP config: the notifier never closes that client's
// idle connections, and Stop must leave none behind.
func startNotifier(cfg *config.Config, urls []string, transport *http.Transport, logger *slog.Logger, reg prometheus.Registerer) (*notifier.Manager, chan map[string][]*targetgroup.Group, error) {
	client := &http.Client{Transport: transport}
	n := notifier.NewManager(&notifier.Options{
		Do: func(ctx context.Context, _ *http.Client, req *http.Request) (*http.Response, error) {
			return client.Do(req.WithContext(ctx))
		},
		QueueCapacity: notifierQueueCapacity,
		// Stop must not wait for unreachable Alertmanagers. An alert lost at
		// shutdown expires in Alertmanager at its EndsAt, and the next run
		// sends it again while it still fires.
		DrainOnShutdown: false,
		Registerer:      reg,
	}, model.UTF8Validation, logger)
	if err := n.ApplyConfig(cfg); err != nil {
		return nil, nil, fmt.Errorf("apply alerting config: %w", err)
	}
	sets := make(map[string][]*targetgroup.Group, len(urls))
	for i, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("alertmanager %s: %w", raw, err)
		}
		// The key is the one config.AlertmanagerConfigs.ToMap gives the i-th config.
		sets["config-"+strconv.Itoa(i)] = []*targetgroup.Group{{
			Source:  raw,
			Targets: []model.LabelSet{{model.AddressLabel: model.LabelValue(u.Host)}},
		}}
	}
	ch := make(chan map[string][]*targetgroup.Group, 1)
	ch <- sets
	close(ch)
	return n, ch, nil
}

// awaitAlertmanagers waits until the notifier knows every Alertmanager, so
// that an alert firing right after Start is not dropped for want of one.
// The notifier applies targets asynchronously and offers no signal.
func (m *Monitor) awaitAlertmanagers(count int) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(alertmanagerApplyTimeout)
	defer deadline.Stop()
	for len(m.notifier.Alertmanagers()) < count {
		select {
		case <-tick.C:
		case <-deadline.C:
			return fmt.Errorf("notifier did not take up the alertmanagers within %s", alertmanagerApplyTimeout)
		}
	}
	return nil
}
