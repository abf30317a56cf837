// Package config holds the server's configuration file: what to scrape, where
// to keep data, which tokens to use and which policy to follow.
package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"

	"caretaker/internal/secret"
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
	Provisioner Provisioner   `yaml:"provisioner"`
	// Cluster, when set, makes this server one of several that share
	// their state in etcd: one leads and acts, all monitor.
	Cluster Cluster `yaml:"cluster"`
	// Console is the web console under /console/.
	Console Console `yaml:"console"`

	// dir is the directory of the file; relative paths resolve against it.
	dir string
}

// Provisioner configures host provisioning and guest clusters. It is off
// while InventoryFile is empty.
type Provisioner struct {
	// InventoryFile lists the hosts (provisioner/inventory); more can be
	// added through the API.
	InventoryFile string `yaml:"inventory_file"`
	// Underlay is the hosts' production interface the guest clusters'
	// VXLAN devices send on.
	Underlay string `yaml:"underlay"`
	// BaseImage is the volume new clusters' nodes are overlays of, in
	// every worker's storage pool, unless a cluster names its own.
	BaseImage string `yaml:"base_image"`
	// BaseImages are the other volumes of the workers' storage pools a
	// cluster's base_image may name; BaseImage is always allowed, any
	// other volume (another cluster's node disk, a path) is refused.
	BaseImages []string `yaml:"base_images"`
	// Overcommit ratios for placement.
	Overcommit Overcommit `yaml:"overcommit"`
	// PXE serves iPXE scripts under /pxe/ when ConfigFile is set.
	PXE PXE `yaml:"pxe"`
	// BMC says where the hosts' BMC passwords are.
	BMC ProvisionerBMC `yaml:"bmc"`
	// Timeouts per provisioning phase; MaxAttempts before a host fails.
	Timeouts    ProvisionTimeouts `yaml:"timeouts"`
	MaxAttempts int               `yaml:"max_attempts"`
}

// ProvisionerBMC says where the hosts' BMC passwords are.
type ProvisionerBMC struct {
	// SecretsDir holds the BMC password files: a host's
	// bmc.password_file names a file inside it, never any other file of
	// the server. Relative to this file's directory.
	SecretsDir string `yaml:"secrets_dir"`
}

// Overcommit ratios: vCPUs per CPU, guest memory per byte of host memory.
type Overcommit struct {
	CPU    float64 `yaml:"cpu"`
	Memory float64 `yaml:"memory"`
}

// PXE configures the iPXE endpoints.
type PXE struct {
	// ConfigFile holds profiles and groups (provisioner/pxe).
	ConfigFile string `yaml:"config_file"`
	// BaseURL is how booting hosts reach this server, e.g.
	// http://10.0.0.1:9300.
	BaseURL string `yaml:"base_url"`
	// SecretFile keys the per-host boot-completion callback tokens.
	SecretFile string `yaml:"secret_file"`
}

// ProvisionTimeouts bound each phase of provisioning a host.
type ProvisionTimeouts struct {
	PoweringOn time.Duration `yaml:"powering_on"`
	PXEBooting time.Duration `yaml:"pxe_booting"`
	Installing time.Duration `yaml:"installing"`
}

// Enabled reports whether the provisioner runs.
func (p Provisioner) Enabled() bool { return p.InventoryFile != "" }

// API configures the server's own HTTP API and who may use it. Every
// token carries a role: a viewer reads; an operator also approves, denies
// and runs actions and pauses remediation; an admin also reloads the policy.
type API struct {
	// TokenFile holds the admin token, named "admin" (the author recorded
	// for what it changes). Optional when Tokens lists an admin.
	TokenFile string `yaml:"token_file"`
	// Tokens are further bearer tokens, one per person or tool.
	Tokens []APIToken `yaml:"tokens"`
}

// APIToken is one named bearer token of the API and its role.
type APIToken struct {
	// Name identifies the token in logs, in 403 answers and as the default
	// author of what it changes.
	Name string `yaml:"name"`
	// Role is viewer, operator or admin.
	Role string `yaml:"role"`
	// TokenFile holds the token; it is read at start and never logged.
	TokenFile string `yaml:"token_file"`
}

// Roles are the API roles, least to most powerful.
func Roles() []string { return []string{"viewer", "operator", "admin", "webhook"} }

// AdminTokenName is the name of the token in api.token_file.
const AdminTokenName = "admin"

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
	// Jobs set the scrape interval and timeout of one job, over the
	// defaults above: "agents" (the hosts listed and file_sd's) or
	// "server" (the server's own /metrics).
	Jobs map[string]ScrapeJob `yaml:"jobs"`
	// Query limits PromQL queries, as Prometheus' --query.* flags do.
	Query Query `yaml:"query"`
}

// Query holds the limits of PromQL queries: Prometheus' --query.timeout,
// --query.max-samples and --query.max-concurrency, with their defaults.
// Timeout and MaxSamples bound every query, the rules' too; MaxConcurrency
// bounds the query API's queries (one more waits for a slot within its
// timeout), so viewers can never hold off the rules.
type Query struct {
	Timeout        time.Duration `yaml:"timeout"`
	MaxSamples     int           `yaml:"max_samples"`
	MaxConcurrency int           `yaml:"max_concurrency"`
}

// ScrapeJob is one scrape job's interval and timeout; zero keeps the
// server-wide value.
type ScrapeJob struct {
	ScrapeInterval time.Duration `yaml:"scrape_interval"`
	ScrapeTimeout  time.Duration `yaml:"scrape_timeout"`
}

// ScrapeJobs names the jobs prometheus.jobs may set.
func ScrapeJobs() []string { return []string{"agents", "server"} }

// Job returns the interval and timeout of the named job, the server-wide
// values filled in.
func (p Prometheus) Job(name string) ScrapeJob {
	j := p.Jobs[name]
	if j.ScrapeInterval == 0 {
		j.ScrapeInterval = p.ScrapeInterval
	}
	if j.ScrapeTimeout == 0 {
		j.ScrapeTimeout = min(p.ScrapeTimeout, j.ScrapeInterval)
	}
	return j
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
	// Retention is how long finished journal records are kept; 0 keeps
	// them forever.
	Retention time.Duration `yaml:"retention"`
	// StaleAfter cancels an action held by a guard or awaiting approval
	// whose alert has not been received for this long; Alertmanager's
	// repeat_interval must be shorter for alerts that come only from it.
	StaleAfter time.Duration `yaml:"stale_after"`
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
	// TokenFile holds a bearer token Alertmanager sends (its
	// http_config.authorization.credentials_file). The webhook also takes
	// api.tokens of role webhook, and never another role's token.
	TokenFile string `yaml:"token_file"`
	// ClientCertSubjects names the client certificates the webhook takes
	// in place of a token (with --web.config.file asking for them): a
	// subject common name or a DNS, e-mail or URI subject alternative
	// name. Empty takes no certificate.
	ClientCertSubjects []string `yaml:"client_cert_subjects"`
	// BodyLimitBytes caps a delivery (413 beyond it); default 4 MiB.
	BodyLimitBytes int64 `yaml:"body_limit_bytes"`
}

// Agents configures how the server talks to the agents.
type Agents struct {
	// TokenFile holds the bearer token the server sends with action
	// requests; every agent is started with the same token.
	TokenFile string `yaml:"token_file"`
	// TLS, when set, has the server scrape and call the agents over
	// mutually authenticated TLS.
	TLS AgentTLS `yaml:"tls"`
	// Tokens give hosts their own action token by name, whichever lists
	// them: the provisioner's inventory, the API, hosts[] (where
	// hosts[].token_file says the same).
	Tokens []AgentToken `yaml:"tokens"`
	// Events, true unless set false, has the acting server hold every
	// agent's libvirt event stream and act on a stopped guest at once;
	// false leaves it to the rules (scrape and evaluation intervals).
	Events *bool `yaml:"events"`
}

// EventsEnabled says whether the server follows the agents' event streams
// (agents.events, true unless set false).
func (a Agents) EventsEnabled() bool { return a.Events == nil || *a.Events }

// AgentToken is one host's own action token, sent to its agent instead of
// agents.token_file's.
type AgentToken struct {
	Host      string `yaml:"host"`
	TokenFile string `yaml:"token_file"`
}

// AgentTLS is the server's side of the mutually authenticated TLS between
// it and the agents. The server verifies each agent's certificate against
// CAFile and requires it to name the address it dials (the host part of
// hosts[].agent, of the inventory's agent, or of a file_sd target), before
// any request, and so before any token, is sent; it presents CertFile
// (clientAuth), which the agents require (their web config's
// client_ca_file and client_allowed_sans).
type AgentTLS struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Enabled reports whether any of the section is set; validation requires
// all of it then.
func (t AgentTLS) Enabled() bool { return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" }

// Cluster is this server's place among several sharing their state in
// etcd. It is off while Name is empty: one server, its state in bbolt
// files in data_dir.
type Cluster struct {
	// Name is this server's, unique among the servers; the replica label
	// of its alerts and remote-written samples.
	Name string `yaml:"name"`
	// AdvertiseURL is where the other servers forward writes to this one
	// when it leads, and what runbook status shows (http:// or https://).
	AdvertiseURL string `yaml:"advertise_url"`
	// PeerCAFile verifies another server's certificate when a write is
	// forwarded to it over https; the system's roots when empty.
	PeerCAFile string      `yaml:"peer_ca_file"`
	Etcd       ClusterEtcd `yaml:"etcd"`
	// LeaseTTL is how long a leader that stopped renewing keeps the lead:
	// whole seconds, at least 2. Failover takes about this plus a second.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
}

// Enabled reports whether the server is clustered.
func (c Cluster) Enabled() bool { return c.Name != "" }

// ClusterEtcd is how the servers reach etcd.
type ClusterEtcd struct {
	Endpoints []string `yaml:"endpoints"`
	// Prefix is put before every key, so one etcd can serve more.
	Prefix      string        `yaml:"prefix"`
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// TLS is the client's side of etcd's TLS: ca_file to verify etcd,
	// cert_file and key_file when etcd requires client certificates.
	TLS AgentTLS `yaml:"tls"`
}

// Console configures the web console every server serves under /console/.
type Console struct {
	// Enabled serves the console; it is on by default.
	Enabled bool `yaml:"enabled"`
	// GrafanaURL, when set, is the Grafana that holds caretaker's
	// dashboards: the console's pages link to them.
	GrafanaURL string `yaml:"grafana_url"`
	// SessionTTL is how long a sign-in lasts.
	SessionTTL time.Duration `yaml:"session_ttl"`
}

// Host is one hypervisor host and the address of its agent.
type Host struct {
	Name  string `yaml:"name"`
	Agent string `yaml:"agent"` // host:port of the agent
	// TokenFile holds this host's own action token, sent to its agent
	// instead of agents.token_file's, so one host's token opens no other.
	TokenFile string `yaml:"token_file"`
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
			Query:              Query{Timeout: 2 * time.Minute, MaxSamples: 50_000_000, MaxConcurrency: 20},
		},
		Remediation: Remediation{ActionTimeout: 2 * time.Minute, Retention: 90 * 24 * time.Hour, StaleAfter: time.Hour},
		Provisioner: Provisioner{Overcommit: Overcommit{CPU: 4, Memory: 1}, BMC: ProvisionerBMC{SecretsDir: "/etc/caretaker/bmc"}},
		Cluster:     Cluster{LeaseTTL: 5 * time.Second, Etcd: ClusterEtcd{Prefix: "/caretaker/", DialTimeout: 5 * time.Second}},
		Console:     Console{Enabled: true, SessionTTL: 8 * time.Hour},
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

// Validate checks the configuration after defaults were applied, one
// section after another; the order of the checks is the order of the
// errors an operator reads.
func (c *Server) Validate() error {
	var p problems
	if c.DataDir == "" {
		p.add("data_dir", "must not be empty")
	}
	c.Prometheus.validate(&p)
	c.validateOutputs(&p)
	c.Remediation.validateIntake(&p)
	c.validateAPI(&p)
	c.Cluster.validate(&p)
	c.validateAgents(&p)
	c.Provisioner.validate(&p)
	c.Remediation.validateTimes(&p)
	c.Console.validate(&p)
	validateHosts(c.Hosts, &p)
	return errors.Join(p...)
}

// validateAgents checks how the server reaches the agents: a token for
// every listed host (its own or agents.token_file), and a whole TLS
// section when any of it is set.
func (c *Server) validateAgents(errs *problems) {
	own := map[string]string{} // host → the field giving its own token
	for i, h := range c.Hosts {
		if h.TokenFile != "" {
			own[h.Name] = fmt.Sprintf("hosts[%d].token_file", i)
		}
	}
	for i, t := range c.Agents.Tokens {
		path := fmt.Sprintf("agents.tokens[%d]", i)
		switch {
		case t.Host == "":
			errs.add(path+".host", "is required")
		case own[t.Host] != "":
			errs.add(path+".host", "%q already has its token in %s", t.Host, own[t.Host])
		default:
			own[t.Host] = path
		}
		if t.TokenFile == "" {
			errs.add(path+".token_file", "is required")
		}
	}
	if c.Agents.TokenFile == "" {
		for i, h := range c.Hosts {
			if own[h.Name] == "" {
				errs.add("agents.token_file", "is required when hosts are listed without their own token_file (hosts[%d]): agents refuse actions without it", i)
				break
			}
		}
	}
	if t := c.Agents.TLS; t.Enabled() {
		for _, f := range []struct{ field, v string }{{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile}} {
			if f.v == "" {
				errs.add("agents.tls."+f.field, "is required when agents.tls is set")
			}
		}
	}
}

func (c Cluster) validate(errs *problems) {
	if !c.Enabled() {
		if c.AdvertiseURL != "" || len(c.Etcd.Endpoints) > 0 {
			errs.add("cluster.name", "is required when cluster is set: this server's name, unique among the servers")
		}
		return
	}
	if !validName(c.Name) {
		errs.add("cluster.name", "%q: letters, digits, '-', '_' and '.' only", c.Name)
	}
	if u, err := url.Parse(c.AdvertiseURL); c.AdvertiseURL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs.add("cluster.advertise_url", "%q: the URL the other servers reach this one's API at, http:// or https://", c.AdvertiseURL)
	}
	if len(c.Etcd.Endpoints) == 0 {
		errs.add("cluster.etcd.endpoints", "at least one etcd endpoint is required")
	}
	for i, e := range c.Etcd.Endpoints {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs.add(fmt.Sprintf("cluster.etcd.endpoints[%d]", i), "%q is not an http:// or https:// URL", e)
		}
	}
	if !strings.HasPrefix(c.Etcd.Prefix, "/") || !strings.HasSuffix(c.Etcd.Prefix, "/") {
		errs.add("cluster.etcd.prefix", "%q must begin and end with /", c.Etcd.Prefix)
	}
	if c.Etcd.DialTimeout <= 0 {
		errs.add("cluster.etcd.dial_timeout", "must be positive, got %s", c.Etcd.DialTimeout)
	}
	if t := c.Etcd.TLS; (t.CertFile == "") != (t.KeyFile == "") {
		errs.add("cluster.etcd.tls", "cert_file and key_file go together")
	}
	if c.LeaseTTL < 2*time.Second || c.LeaseTTL%time.Second != 0 {
		errs.add("cluster.lease_ttl", "%s: whole seconds, at least 2s", c.LeaseTTL)
	}
}

// validName is a server name that is safe in an etcd key and a label.
func validName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// problems collects the validation errors of a file, each naming its field.
type problems []error

func (p *problems) add(path, format string, args ...any) {
	*p = append(*p, yamlfile.Errorf(path, format, args...))
}

func (p Prometheus) validate(errs *problems) {
	if p.ScrapeInterval <= 0 {
		errs.add("prometheus.scrape_interval", "must be positive, got %s", p.ScrapeInterval)
	}
	if p.ScrapeTimeout <= 0 {
		errs.add("prometheus.scrape_timeout", "must be positive, got %s", p.ScrapeTimeout)
	} else if p.ScrapeTimeout > p.ScrapeInterval {
		errs.add("prometheus.scrape_timeout", "%s is longer than scrape_interval %s", p.ScrapeTimeout, p.ScrapeInterval)
	}
	p.validateJobs(errs)
	if p.EvaluationInterval <= 0 {
		errs.add("prometheus.evaluation_interval", "must be positive, got %s", p.EvaluationInterval)
	}
	if p.Retention < 0 {
		errs.add("prometheus.retention", "must not be negative, got %s", p.Retention)
	}
	if p.RetentionSizeBytes < 0 {
		errs.add("prometheus.retention_size_bytes", "must not be negative, got %d", p.RetentionSizeBytes)
	}
	for i, g := range p.FileSD {
		if _, err := filepath.Match(g, ""); err != nil || g == "" {
			errs.add(fmt.Sprintf("prometheus.file_sd[%d]", i), "%q is not a file glob", g)
		}
	}
	if p.Query.Timeout <= 0 {
		errs.add("prometheus.query.timeout", "must be positive, got %s", p.Query.Timeout)
	}
	if p.Query.MaxSamples <= 0 {
		errs.add("prometheus.query.max_samples", "must be positive, got %d", p.Query.MaxSamples)
	}
	if p.Query.MaxConcurrency <= 0 {
		errs.add("prometheus.query.max_concurrency", "must be positive, got %d", p.Query.MaxConcurrency)
	}
}

func (p Prometheus) validateJobs(errs *problems) {
	for _, name := range slices.Sorted(maps.Keys(p.Jobs)) {
		field, j := "prometheus.jobs."+name, p.Jobs[name]
		switch {
		case !slices.Contains(ScrapeJobs(), name):
			errs.add(field, "unknown job; want one of %s", strings.Join(ScrapeJobs(), ", "))
		case j.ScrapeInterval < 0:
			errs.add(field+".scrape_interval", "must not be negative, got %s", j.ScrapeInterval)
		case j.ScrapeTimeout < 0:
			errs.add(field+".scrape_timeout", "must not be negative, got %s", j.ScrapeTimeout)
		case p.Job(name).ScrapeTimeout > p.Job(name).ScrapeInterval:
			errs.add(field+".scrape_timeout", "%s is longer than the job's scrape_interval %s", p.Job(name).ScrapeTimeout, p.Job(name).ScrapeInterval)
		}
	}
}

// validateOutputs checks where alerts and samples are sent: alerting and
// remote_write.
func (c *Server) validateOutputs(errs *problems) {
	for i, u := range c.Alerting.Alertmanagers {
		if err := checkURL(u); err != nil {
			errs.add(fmt.Sprintf("alerting.alertmanagers[%d]", i), "%v", err)
		}
	}
	for i, rw := range c.RemoteWrite {
		if err := checkURL(rw.URL); err != nil {
			errs.add(fmt.Sprintf("remote_write[%d].url", i), "%v", err)
		}
	}
}

// validateIntake checks what remediation takes in and sends out: the
// webhook and the Loki stream.
func (r Remediation) validateIntake(errs *problems) {
	if r.Webhook.BodyLimitBytes < 0 {
		errs.add("remediation.webhook.body_limit_bytes", "must not be negative, got %d", r.Webhook.BodyLimitBytes)
	}
	for i, s := range r.Webhook.ClientCertSubjects {
		if strings.TrimSpace(s) == "" || strings.ContainsFunc(s, unicode.IsControl) {
			errs.add(fmt.Sprintf("remediation.webhook.client_cert_subjects[%d]", i), "%q is not a certificate subject name", s)
		}
	}
	if l := r.Loki; l.URL != "" {
		if err := checkURL(l.URL); err != nil {
			errs.add("remediation.loki.url", "%v", err)
		}
		if l.BatchSize < 0 {
			errs.add("remediation.loki.batch_size", "must not be negative, got %d", l.BatchSize)
		}
		if l.BatchWait < 0 {
			errs.add("remediation.loki.batch_wait", "must not be negative, got %s", l.BatchWait)
		}
	}
}

// validateTimes checks remediation's durations.
func (r Remediation) validateTimes(errs *problems) {
	if r.Retention < 0 {
		errs.add("remediation.retention", "must not be negative, got %s", r.Retention)
	}
	if r.StaleAfter <= 0 {
		errs.add("remediation.stale_after", "must be positive, got %s", r.StaleAfter)
	}
	if r.ActionTimeout <= 0 {
		errs.add("remediation.action_timeout", "must be positive, got %s", r.ActionTimeout)
	}
}

// validate checks the console's Grafana link and session length.
func (c Console) validate(errs *problems) {
	if c.GrafanaURL != "" {
		if err := checkURL(c.GrafanaURL); err != nil {
			errs.add("console.grafana_url", "%v", err)
		}
	}
	if c.SessionTTL < time.Minute || c.SessionTTL > 30*24*time.Hour {
		errs.add("console.session_ttl", "must be between 1m and 720h, got %s", c.SessionTTL)
	}
}

// validateAPI checks the API's tokens.
func (c *Server) validateAPI(errs *problems) {
	if c.API.TokenFile == "" && len(c.API.Tokens) == 0 {
		errs.add("api.token_file", "is required unless api.tokens lists tokens: the API refuses every request without a token")
	}
	tokenNames := map[string]string{}
	if c.API.TokenFile != "" {
		tokenNames[AdminTokenName] = "api.token_file"
	}
	for i, tok := range c.API.Tokens {
		tok.validate(fmt.Sprintf("api.tokens[%d]", i), tokenNames, errs)
	}
}

// validate checks the token at path; names maps the names already used to
// the field that used them.
func (tok APIToken) validate(path string, names map[string]string, errs *problems) {
	switch {
	case tok.Name == "":
		errs.add(path+".name", "is required")
	case strings.ContainsAny(tok.Name, " \t\n\"/"):
		errs.add(path+".name", "%q must not contain spaces, quotes or slashes", tok.Name)
	default:
		if other, dup := names[tok.Name]; dup {
			errs.add(path+".name", "%q is already used by %s", tok.Name, other)
		}
		names[tok.Name] = path
	}
	if !slices.Contains(Roles(), tok.Role) {
		errs.add(path+".role", "%q is not a role; want one of %s", tok.Role, strings.Join(Roles(), ", "))
	}
	if tok.TokenFile == "" {
		errs.add(path+".token_file", "is required")
	}
}

func (pr Provisioner) validate(errs *problems) {
	if !pr.Enabled() && pr.PXE.ConfigFile == "" {
		return
	}
	if !pr.Enabled() {
		errs.add("provisioner.inventory_file", "is required when provisioner.pxe is set")
	}
	if pr.Underlay == "" {
		errs.add("provisioner.underlay", "is required: the hosts' interface the clusters' VXLAN devices send on")
	}
	if pr.BaseImage != "" {
		if err := checkVolumeName(pr.BaseImage); err != nil {
			errs.add("provisioner.base_image", "%v", err)
		}
	}
	for i, v := range pr.BaseImages {
		if err := checkVolumeName(v); err != nil {
			errs.add(fmt.Sprintf("provisioner.base_images[%d]", i), "%v", err)
		}
	}
	if pr.Overcommit.CPU <= 0 || pr.Overcommit.Memory <= 0 {
		errs.add("provisioner.overcommit", "cpu and memory must be positive, got %v and %v", pr.Overcommit.CPU, pr.Overcommit.Memory)
	}
	if pr.PXE.ConfigFile != "" {
		if err := checkURL(pr.PXE.BaseURL); err != nil {
			errs.add("provisioner.pxe.base_url", "%v", err)
		}
		if pr.PXE.SecretFile == "" {
			errs.add("provisioner.pxe.secret_file", "is required: it keys the hosts' boot-completion callbacks")
		}
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"powering_on", pr.Timeouts.PoweringOn}, {"pxe_booting", pr.Timeouts.PXEBooting}, {"installing", pr.Timeouts.Installing}} {
		if d.v < 0 {
			errs.add("provisioner.timeouts."+d.field, "must not be negative, got %s", d.v)
		}
	}
	if pr.MaxAttempts < 0 {
		errs.add("provisioner.max_attempts", "must not be negative, got %d", pr.MaxAttempts)
	}
	if pr.BMC.SecretsDir == "" {
		errs.add("provisioner.bmc.secrets_dir", "must not be empty: the hosts' bmc.password_file names a file inside it")
	}
}

func validateHosts(hosts []Host, errs *problems) {
	names := map[string]int{}
	for i, h := range hosts {
		path := fmt.Sprintf("hosts[%d]", i)
		switch {
		case h.Name == "":
			errs.add(path+".name", "is required")
		case strings.ContainsAny(h.Name, " \t/"):
			errs.add(path+".name", "%q must not contain spaces or slashes", h.Name)
		default:
			if j, dup := names[h.Name]; dup {
				errs.add(path+".name", "%q is already used by hosts[%d]", h.Name, j)
			}
			names[h.Name] = i
		}
		if h.Agent == "" {
			errs.add(path+".agent", "is required (host:port of the agent)")
		} else if _, port, err := net.SplitHostPort(h.Agent); err != nil || port == "" {
			errs.add(path+".agent", "%q is not host:port", h.Agent)
		}
	}
}

// maxVolumeName is the longest volume name: a file name in a directory
// pool.
const maxVolumeName = 255

// checkVolumeName accepts the plain name of a volume in the agents'
// storage pool: a file name there, never a path out of it nor one a tool
// would take for an option.
func checkVolumeName(v string) error {
	switch {
	case v == "":
		return errors.New("empty, want a volume name in the agents' storage pool")
	case len(v) > maxVolumeName:
		return fmt.Errorf("%d bytes, a volume name holds at most %d", len(v), maxVolumeName)
	case strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r >= 0x7f && r < 0xa0 }):
		return fmt.Errorf("%q contains control characters", v)
	case strings.Contains(v, "/"), strings.Contains(v, ".."):
		return fmt.Errorf("%q is not a plain volume name: no '/' nor '..'", v)
	case v[0] == '.' || v[0] == '-':
		return fmt.Errorf("%q is not a plain volume name: it must not start with '.' or '-'", v)
	}
	return nil
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

// Credential is one API token as read from its file.
type Credential struct {
	Name   string
	Role   string
	Secret string
}

// APICredentials reads the API's token files: api.token_file as the admin
// token named "admin", then api.tokens in order. Two entries holding the
// same token are an error, since the server could not tell who calls. No
// error includes a secret.
func (c *Server) APICredentials() ([]Credential, error) {
	type source struct{ field, name, role, file string }
	var srcs []source
	if c.API.TokenFile != "" {
		srcs = append(srcs, source{"api.token_file", AdminTokenName, "admin", c.API.TokenFile})
	}
	for i, t := range c.API.Tokens {
		srcs = append(srcs, source{fmt.Sprintf("api.tokens[%d].token_file", i), t.Name, t.Role, t.TokenFile})
	}
	creds := make([]Credential, 0, len(srcs))
	seen := map[string]string{}
	for _, src := range srcs {
		secret, err := ReadSecret(c.Path(src.file))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src.field, err)
		}
		if other, dup := seen[secret]; dup {
			return nil, fmt.Errorf("%s: holds the same token as %s; give every token its own value", src.field, other)
		}
		seen[secret] = src.field
		creds = append(creds, Credential{Name: src.name, Role: src.role, Secret: secret})
	}
	return creds, nil
}

// ReadSecret reads a token file (secret.ReadToken): trimmed of surrounding
// white space, refused when group or others may read it or when the token
// has fewer than secret.MinTokenLength characters. It never includes the
// secret in errors.
func ReadSecret(path string) (string, error) {
	return secret.ReadToken(path)
}
