// Package config holds the server's configuration file: what to scrape, where
// to keep data, which tokens to use and which policy to follow.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"caretaker/internal/yamlfile"
)

// Server is the caretaker server's configuration file.
type Server struct {
	// DataDir holds the TSDB and the remediation journal.
	DataDir     string        `yaml:"data_dir"`
	API         API           `yaml:"api"`
	Prometheus  Prometheus    `yaml:"prometheus"`
	Remediation Remediation   `yaml:"remediation"`
	Alerting    Alerting      `yaml:"alerting"`
	RemoteWrite []RemoteWrite `yaml:"remote_write"`
	Agents      Agents        `yaml:"agents"`
	Hosts       []Host        `yaml:"hosts"`

	// dir is the directory of the file; relative paths resolve against it.
	dir string
}

// API configures the server's own HTTP API.
type API struct {
	// TokenFile holds the bearer token that runbook and other clients send.
	TokenFile string `yaml:"token_file"`
}

// Prometheus configures the embedded Prometheus.
type Prometheus struct {
	ScrapeInterval     time.Duration `yaml:"scrape_interval"`
	ScrapeTimeout      time.Duration `yaml:"scrape_timeout"`
	EvaluationInterval time.Duration `yaml:"evaluation_interval"`
	Retention          time.Duration `yaml:"retention"`
	// RetentionSizeBytes also caps the TSDB's size; 0 means no cap.
	RetentionSizeBytes int64 `yaml:"retention_size_bytes"`
	// FileSD are globs of Prometheus file_sd files (JSON or YAML) listing
	// more agents; the provisioner writes them. A target's `host` label
	// names its host (default: the target's hostname).
	FileSD []string `yaml:"file_sd"`
}

// Alerting forwards the firing alerts to external Alertmanagers, beside
// the in-process remediation engine.
type Alerting struct {
	Alertmanagers []string `yaml:"alertmanagers"` // URLs, e.g. http://alertmanager:9093
}

// RemoteWrite sends every scraped sample to a remote-write receiver
// (Prometheus, Thanos, Mimir).
type RemoteWrite struct {
	URL  string `yaml:"url"`
	Name string `yaml:"name"`
}

// Remediation configures the remediation engine.
type Remediation struct {
	// PolicyFile is the policy; empty means the embedded default policy.
	PolicyFile    string        `yaml:"policy_file"`
	DryRun        bool          `yaml:"dry_run"`
	ActionTimeout time.Duration `yaml:"action_timeout"`
	// Webhook is the Alertmanager webhook intake, POST /api/v1/alertmanager.
	Webhook Webhook `yaml:"webhook"`
	// Loki, when its URL is set, gets every journal record as a log line.
	Loki Loki `yaml:"loki"`
}

// Loki configures the audit stream of remediation decisions to Loki.
type Loki struct {
	URL             string            `yaml:"url"` // e.g. http://loki:3100/loki/api/v1/push
	TenantID        string            `yaml:"tenant_id"`
	BearerTokenFile string            `yaml:"bearer_token_file"`
	BatchSize       int               `yaml:"batch_size"` // default 100
	BatchWait       time.Duration     `yaml:"batch_wait"` // default 1s
	ExternalLabels  map[string]string `yaml:"external_labels"`
}

// Webhook configures the Alertmanager webhook intake.
type Webhook struct {
	// TokenFile holds the bearer token Alertmanager sends (its
	// http_config.authorization.credentials_file); empty uses the API token.
	TokenFile string `yaml:"token_file"`
	// BodyLimitBytes caps a delivery (413 beyond it); default 4 MiB.
	BodyLimitBytes int64 `yaml:"body_limit_bytes"`
}

// Agents configures how the server talks to the agents.
type Agents struct {
	// TokenFile holds the bearer token the server sends with action
	// requests; every agent is started with the same token.
	TokenFile string `yaml:"token_file"`
}

// Host is one hypervisor host and the address of its agent.
type Host struct {
	Name  string `yaml:"name"`
	Agent string `yaml:"agent"` // host:port of the agent
}

// Defaults returns a configuration with every default applied.
func Defaults() Server {
	return Server{
		DataDir: "/var/lib/caretaker",
		Prometheus: Prometheus{
			ScrapeInterval:     5 * time.Second,
			ScrapeTimeout:      4 * time.Second,
			EvaluationInterval: 5 * time.Second,
			Retention:          15 * 24 * time.Hour,
		},
		Remediation: Remediation{ActionTimeout: 2 * time.Minute},
	}
}

// Load reads a server configuration file: defaults, then the file, then
// validation. Errors name the file, the line and the field.
func Load(path string) (*Server, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read server config: %w", err)
	}
	return Parse(path, data)
}

// Parse is Load on bytes already read; name is used in errors and to resolve
// relative paths.
func Parse(name string, data []byte) (*Server, error) {
	c := Defaults()
	c.dir = filepath.Dir(name)
	if err := yamlfile.Decode(name, data, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks the configuration after defaults were applied.
func (c *Server) Validate() error {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, yamlfile.Errorf(path, format, args...))
	}
	if c.DataDir == "" {
		add("data_dir", "must not be empty")
	}
	p := c.Prometheus
	if p.ScrapeInterval <= 0 {
		add("prometheus.scrape_interval", "must be positive, got %s", p.ScrapeInterval)
	}
	if p.ScrapeTimeout <= 0 {
		add("prometheus.scrape_timeout", "must be positive, got %s", p.ScrapeTimeout)
	} else if p.ScrapeTimeout > p.ScrapeInterval {
		add("prometheus.scrape_timeout", "%s is longer than scrape_interval %s", p.ScrapeTimeout, p.ScrapeInterval)
	}
	if p.EvaluationInterval <= 0 {
		add("prometheus.evaluation_interval", "must be positive, got %s", p.EvaluationInterval)
	}
	if p.Retention < 0 {
		add("prometheus.retention", "must not be negative, got %s", p.Retention)
	}
	if p.RetentionSizeBytes < 0 {
		add("prometheus.retention_size_bytes", "must not be negative, got %d", p.RetentionSizeBytes)
	}
	for i, g := range p.FileSD {
		if _, err := filepath.Match(g, ""); err != nil || g == "" {
			add(fmt.Sprintf("prometheus.file_sd[%d]", i), "%q is not a file glob", g)
		}
	}
	for i, u := range c.Alerting.Alertmanagers {
		if err := checkURL(u); err != nil {
			add(fmt.Sprintf("alerting.alertmanagers[%d]", i), "%v", err)
		}
	}
	for i, rw := range c.RemoteWrite {
		if err := checkURL(rw.URL); err != nil {
			add(fmt.Sprintf("remote_write[%d].url", i), "%v", err)
		}
	}
	if c.Remediation.Webhook.BodyLimitBytes < 0 {
		add("remediation.webhook.body_limit_bytes", "must not be negative, got %d", c.Remediation.Webhook.BodyLimitBytes)
	}
	if l := c.Remediation.Loki; l.URL != "" {
		if err := checkURL(l.URL); err != nil {
			add("remediation.loki.url", "%v", err)
		}
		if l.BatchSize < 0 {
			add("remediation.loki.batch_size", "must not be negative, got %d", l.BatchSize)
		}
		if l.BatchWait < 0 {
			add("remediation.loki.batch_wait", "must not be negative, got %s", l.BatchWait)
		}
	}
	if c.API.TokenFile == "" {
		add("api.token_file", "is required: the API refuses every request without a token")
	}
	if len(c.Hosts) > 0 && c.Agents.TokenFile == "" {
		add("agents.token_file", "is required when hosts are listed: agents refuse actions without it")
	}
	if c.Remediation.ActionTimeout <= 0 {
		add("remediation.action_timeout", "must be positive, got %s", c.Remediation.ActionTimeout)
	}
	names := map[string]int{}
	for i, h := range c.Hosts {
		path := fmt.Sprintf("hosts[%d]", i)
		switch {
		case h.Name == "":
			add(path+".name", "is required")
		case strings.ContainsAny(h.Name, " \t/"):
			add(path+".name", "%q must not contain spaces or slashes", h.Name)
		default:
			if j, dup := names[h.Name]; dup {
				add(path+".name", "%q is already used by hosts[%d]", h.Name, j)
			}
			names[h.Name] = i
		}
		if h.Agent == "" {
			add(path+".agent", "is required (host:port of the agent)")
		} else if _, port, err := net.SplitHostPort(h.Agent); err != nil || port == "" {
			add(path+".agent", "%q is not host:port", h.Agent)
		}
	}
	return errors.Join(errs...)
}

func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http(s) URL", s)
	}
	if u.User != nil {
		return fmt.Errorf("%q carries credentials; they do not belong in a URL", u.Redacted())
	}
	return nil
}

// Path resolves p against the configuration file's directory.
func (c *Server) Path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.dir, p)
}

// ReadSecret reads a token file, trimming surrounding whitespace. It never
// includes the secret in errors.
func ReadSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read secret: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("read secret %s: file is empty", path)
	}
	return s, nil
}
