package monitoring

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/config"
)

// ReplicaLabel is the external label that tells the servers of a cluster
// apart in remote-written samples (as a Prometheus HA pair's replica
// label): their alerts are sent without it.
const ReplicaLabel = "replica"

// promConfig builds the one Prometheus configuration the scrape manager and
// the notifier apply. It goes through
// config.Load because only a loaded Config hands out scrape configs
// (GetScrapeConfigs refuses others), and loading is what fills in the
// defaults v0.316.0 insists on: name validation and escaping schemes,
// scrape protocols, histogram and compression settings. The document is
// built as JSON (which is YAML) so that no URL or name from the options can
// inject configuration.
//
// Prometheus 3 fails a scrape whose Content-Type it does not know unless a
// fallback protocol is set; the agents use promhttp, but a proxy in between
// may not keep it.
func promConfig(opts *Options, logger *slog.Logger) (*config.Config, error) {
	job := func(name string) map[string]any {
		j := map[string]any{
			"job_name":                 name,
			"metrics_path":             "/metrics",
			"scheme":                   "http",
			"fallback_scrape_protocol": "PrometheusText0.0.4",
		}
		if s := opts.Jobs[name]; s.Interval > 0 {
			j["scrape_interval"] = model.Duration(s.Interval).String()
		}
		if s := opts.Jobs[name]; s.Timeout > 0 {
			j["scrape_timeout"] = model.Duration(s.Timeout).String()
		}
		if t := opts.AgentTLS; name == JobName && t != nil {
			j["scheme"] = "https"
			j["tls_config"] = map[string]any{"ca_file": t.CAFile, "cert_file": t.CertFile, "key_file": t.KeyFile,
				"min_version": "TLS12"}
		}
		return j
	}
	scrapeConfigs := []any{job(JobName)}
	if opts.SelfAddress != "" {
		scrapeConfigs = append(scrapeConfigs, job(ServerJobName))
	}
	global := map[string]any{
		"scrape_interval":     model.Duration(opts.ScrapeInterval).String(),
		"scrape_timeout":      model.Duration(opts.ScrapeTimeout).String(),
		"evaluation_interval": model.Duration(opts.EvaluationInterval).String(),
	}
	if len(opts.ExternalLabels) > 0 {
		global["external_labels"] = opts.ExternalLabels
	}
	doc := map[string]any{"global": global, "scrape_configs": scrapeConfigs}

	// One Alertmanager config per URL, because scheme and path prefix are
	// per config. Their targets are fed to the notifier by alertmanagerGroups,
	// under the keys AlertmanagerConfigs.ToMap gives them ("config-<i>").
	var ams []any
	for _, raw := range opts.Alertmanagers {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("build alerting config: %w", err)
		}
		ams = append(ams, map[string]any{
			"api_version": "v2",
			"scheme":      u.Scheme,
			"path_prefix": u.Path,
		})
	}
	if len(ams) > 0 {
		alerting := map[string]any{"alertmanagers": ams}
		if _, ok := opts.ExternalLabels[ReplicaLabel]; ok {
			alerting["alert_relabel_configs"] = []any{map[string]any{"action": "labeldrop", "regex": ReplicaLabel}}
		}
		doc["alerting"] = alerting
	}

	b, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("build prometheus config: %w", err)
	}
	cfg, err := config.Load(string(b), logger)
	if err != nil {
		return nil, fmt.Errorf("build prometheus config: %w", err)
	}
	return cfg, nil
}
