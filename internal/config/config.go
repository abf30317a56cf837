// Package config holds the server's configuration file: what to scrape, where
// to keep data, which tokens to use and which policy to follow.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"caretaker/internal/yamlfile"
)

// Server is the caretaker server's configuration file.
type Server struct {
	// DataDir holds the TSDB and the remediation journal.
	DataDir     string      `yaml:"data_dir"`
	API         API         `yaml:"api"`
	Prometheus  Prometheus  `yaml:"prometheus"`
	Remediation Remediation `yaml:"remediation"`
	Agents      Agents      `yaml:"agents"`
	Hosts       []Host      `yaml:"hosts"`

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
}

// Remediation configures the remediation engine.
type Remediation struct {
	// PolicyFile is the policy; empty means the embedded default policy.
	PolicyFile    string        `yaml:"policy_file"`
	DryRun        bool          `yaml:"dry_run"`
	ActionTimeout time.Duration `yaml:"action_timeout"`
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
