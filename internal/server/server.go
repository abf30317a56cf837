// Package server wires the caretaker server: the embedded Prometheus, the
// remediation engine and its journal, the agents' clients and the HTTP API.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"

	"caretaker/alerts"
	"caretaker/internal/agentapi"
	"caretaker/internal/api"
	"caretaker/internal/config"
	"caretaker/internal/console"
	"caretaker/internal/kv"
	"caretaker/internal/monitoring"
	"caretaker/internal/promapi"
	"caretaker/internal/secret"
	"caretaker/provisioner/fleet"
	"caretaker/remediation"
	"caretaker/remediation/audit"
	"caretaker/remediation/guards"
	"caretaker/remediation/intake"
	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// Options are what the server needs beyond its configuration file.
type Options struct {
	Config        *config.Server
	ListenAddress string
	WebConfigFile string // exporter-toolkit web config: TLS and basic auth
	RulesDir      string // overrides the embedded alert rules when set
	Logger        *slog.Logger
}

// Server is a running caretaker server.
type Server struct {
	opts    Options
	logger  *slog.Logger
	reg     *prometheus.Registry
	journal *journal.Journal
	inbox   *intake.Inbox
	audit   *audit.Client // nil without Loki
	engine  *remediation.Engine
	monitor *monitoring.Monitor
	// running is monitor once it runs, for the engine and the
	// provisioner, which start before it.
	running atomic.Pointer[monitoring.Monitor]
	// fleet is the number of guests last counted (fleetSize).
	fleet  atomic.Int64
	policy *policyHolder
	prov   *fleet.Provisioner // nil without provisioner.inventory_file
	agents *agentapi.Hosts    // the agents' clients, by host
	// events follows the agents' event streams while this server acts;
	// nil with agents.events false.
	events  *guestEvents
	handler http.Handler
	// console serves /console/ on every server (nil when
	// console.enabled is false); its sessions outlive the terms.
	console http.Handler
	in      inputs
	// cluster is nil for a single server; clustered, engine is nil and
	// each term this server leads has its own (cluster.acting).
	cluster *cluster
	// pol is the policy in force, for the engines of terms to come.
	pol atomic.Pointer[policy.Policy]
	// routeParts are what every mux shares.
	routes routeParts
	// stop ends the background work New started; bg waits for it.
	stop context.CancelFunc
	bg   sync.WaitGroup
}

// New starts the server's parts (everything but the HTTP listener). A
// broken policy, rule file or token file stops it with an error naming
// the file.
func New(ctx context.Context, o Options) (_ *Server, err error) {
	in, err := load(o)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: o, logger: o.Logger, reg: prometheus.NewRegistry(), in: in}
	s.pol.Store(in.policy)
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	if err := s.openState(in); err != nil {
		return nil, err
	}
	hosts := agentapi.NewHostsWith(agentapi.HostsOptions{Token: in.agentToken, Tokens: in.hostTokens, TLS: in.agentTLS})
	s.agents = hosts
	for _, h := range o.Config.Hosts {
		hosts.Add(h.Name, h.Agent)
	}
	if o.Config.Agents.EventsEnabled() {
		if s.events, err = newGuestEvents(hosts, &s.running, o.Config.Prometheus.Job("agents"), s.reg, s.logger.With("component", "events")); err != nil {
			return nil, err
		}
	}
	if in.cfg.Provisioner.Enabled() {
		// Clustered, this one reads the shared state for every server;
		// the leader's own acts.
		var store kv.Store
		if s.cluster != nil {
			// A follower's provisioner reads; writing is the leader's.
			store = s.cluster.store.Fenced(func() (string, int64, bool) { return "", 0, false })
		}
		// A follower's provisioner exports no metrics: its host states
		// are only as fresh as its start; the leader's are the truth.
		var reg prometheus.Registerer = s.reg
		if s.cluster != nil {
			reg = nil
		}
		if s.prov, err = s.newProvisioner(store, reg, s.cluster != nil); err != nil {
			return nil, err
		}
	}
	intakeMetrics, err := s.startRemediation(ctx, in)
	if err != nil {
		return nil, err
	}
	if err := s.startMonitoring(ctx, in); err != nil {
		return nil, err
	}
	var bgCtx context.Context
	bgCtx, s.stop = context.WithCancel(context.WithoutCancel(ctx))
	switch {
	case s.cluster != nil:
		if s.prov != nil {
			s.bg.Go(func() { s.prov.Follow(bgCtx) })
		}
		s.bg.Go(func() { s.cluster.elector.Run(bgCtx, s.lead) })
	case s.prov != nil:
		s.bg.Go(func() { s.prov.Run(bgCtx) })
	}
	if s.cluster == nil && s.events != nil {
		s.bg.Go(func() { s.events.Run(bgCtx, s.engine.Handle) })
	}
	s.bg.Go(func() { s.countFleet(bgCtx) })
	s.bg.Go(func() {
		s.inbox.RunPruning(bgCtx, intake.PruneOptions{Metrics: intakeMetrics, Logger: s.logger.With("component", "webhook")})
	})
	cfg := o.Config
	s.logger.Info("server started", "hosts", len(cfg.Hosts), "data_dir", in.dataDir,
		"state", stateSource(in), "policy", policySource(cfg), "dry_run", cfg.Remediation.DryRun)

	if s.routes, err = s.newRouteParts(in, intakeMetrics); err != nil {
		return nil, err
	}
	s.handler = s.mux(s.engine, s.prov)
	if c := cfg.Console; c.Enabled {
		s.console = console.New(console.Options{
			API:        http.HandlerFunc(s.serveAPI),
			Status:     s.status().Status,
			GrafanaURL: c.GrafanaURL,
			SessionTTL: c.SessionTTL,
			Logger:     s.logger.With("component", "console"),
		})
	}
	return s, nil
}

// inputs are what the server reads before it starts anything, so that a
// broken file stops it before any part runs.
type inputs struct {
	cfg          *config.Server
	agentToken   string
	hostTokens   map[string]string // hosts' own agent tokens (hosts[].token_file, agents.tokens)
	agentTLS     *tls.Config       // nil unless agents.tls
	webhookToken string            // remediation.webhook.token_file's, if set
	policy       *policy.Policy
	rules        fs.FS
	dataDir      string
}

func (in inputs) journalPath() string { return filepath.Join(in.dataDir, "journal.db") }

func load(o Options) (inputs, error) {
	cfg := o.Config
	in := inputs{cfg: cfg, policy: policy.Default(), rules: alerts.Rules(), dataDir: cfg.Path(cfg.DataDir)}
	var err error
	if cfg.API.TokenFile != "" {
		if _, err = config.ReadSecret(cfg.Path(cfg.API.TokenFile)); err != nil {
			return inputs{}, fmt.Errorf("api.token_file: %w", err)
		}
	}
	if cfg.Agents.TokenFile != "" {
		if in.agentToken, err = config.ReadSecret(cfg.Path(cfg.Agents.TokenFile)); err != nil {
			return inputs{}, fmt.Errorf("agents.token_file: %w", err)
		}
	}
	if err := in.loadAgentAuth(); err != nil {
		return inputs{}, err
	}
	if f := cfg.Remediation.Webhook.TokenFile; f != "" {
		if in.webhookToken, err = config.ReadSecret(cfg.Path(f)); err != nil {
			return inputs{}, fmt.Errorf("remediation.webhook.token_file: %w", err)
		}
	}
	if cfg.Remediation.PolicyFile != "" {
		if in.policy, err = policy.Load(cfg.Path(cfg.Remediation.PolicyFile)); err != nil {
			return inputs{}, err
		}
	}
	if o.RulesDir != "" {
		if _, err := os.Stat(o.RulesDir); err != nil {
			return inputs{}, fmt.Errorf("rules directory: %w", err)
		}
		in.rules = os.DirFS(o.RulesDir)
	}
	if err := monitoring.ValidateRules(in.rules); err != nil {
		return inputs{}, err
	}
	if err := os.MkdirAll(in.dataDir, 0o750); err != nil {
		return inputs{}, fmt.Errorf("data directory: %w", err)
	}
	return in, nil
}

// loadAgentAuth reads the hosts' own tokens (hosts[].token_file,
// agents.tokens) and the agents' TLS files.
func (in *inputs) loadAgentAuth() error {
	cfg := in.cfg
	for i, h := range cfg.Hosts {
		if h.TokenFile == "" {
			continue
		}
		tok, err := config.ReadSecret(cfg.Path(h.TokenFile))
		if err != nil {
			return fmt.Errorf("hosts[%d].token_file: %w", i, err)
		}
		if in.hostTokens == nil {
			in.hostTokens = map[string]string{}
		}
		in.hostTokens[h.Name] = tok
	}
	for i, t := range cfg.Agents.Tokens {
		tok, err := config.ReadSecret(cfg.Path(t.TokenFile))
		if err != nil {
			return fmt.Errorf("agents.tokens[%d].token_file: %w", i, err)
		}
		if in.hostTokens == nil {
			in.hostTokens = map[string]string{}
		}
		in.hostTokens[t.Host] = tok
	}
	if t := cfg.Agents.TLS; t.Enabled() {
		var err error
		if in.agentTLS, err = agentapi.ClientTLS(cfg.Path(t.CAFile), cfg.Path(t.CertFile), cfg.Path(t.KeyFile)); err != nil {
			return fmt.Errorf("agents.tls: %w", err)
		}
	}
	return nil
}

// newProvisioner opens the provisioner on store (its own bbolt files in
// the data directory when nil), a follower's only reading: it re-creates guests and reinstalls hosts
// for the engine; without it those actions are not available.
func (s *Server) newProvisioner(store kv.Store, reg prometheus.Registerer, follower bool) (*fleet.Provisioner, error) {
	return fleet.New(fleet.Options{Config: s.in.cfg, DataDir: s.in.dataDir, Store: store, Follower: follower, Agents: s.agents,
		Monitor: &s.running, Registerer: reg, Logger: s.logger.With("component", "provisioner")})
}

// openState opens the journal and the webhook inbox — bbolt files in the
// data directory, or the cluster's etcd — and the journal's Loki audit
// stream when one is configured.
func (s *Server) openState(in inputs) error {
	cfg := in.cfg
	var err error
	if cfg.Cluster.Enabled() {
		err = s.openCluster(in)
	} else {
		s.journal, err = journal.Open(in.journalPath())
		if err == nil {
			s.inbox, err = intake.Open(filepath.Join(in.dataDir, "inbox.db"))
		}
	}
	if err != nil {
		return err
	}
	if l := cfg.Remediation.Loki; l.URL != "" {
		var token string
		if l.BearerTokenFile != "" {
			// Loki's token is Loki's: its file's mode is checked, not its length.
			if token, err = secret.ReadFile(cfg.Path(l.BearerTokenFile)); err != nil {
				return fmt.Errorf("remediation.loki.bearer_token_file: %w", err)
			}
		}
		s.audit, err = audit.New(audit.Config{
			URL: l.URL, TenantID: l.TenantID, BearerToken: token,
			BatchSize: l.BatchSize, BatchWait: l.BatchWait, ExternalLabels: l.ExternalLabels,
		}, s.logger.With("component", "audit"), s.reg)
		if err != nil {
			return err
		}
		s.journal.OnRecord(s.audit.Log)
	}
	return nil
}

// newEngine makes a remediation engine on j; it loads what the journal
// holds and reconciles the actions a crash (or a lost leader) left open.
func (s *Server) newEngine(j *journal.Journal, prov *fleet.Provisioner, reg prometheus.Registerer, mayAct func() bool) (*remediation.Engine, error) {
	cfg := s.in.cfg
	var p remediation.Provisioner
	if prov != nil {
		p = prov
	}
	var events remediation.GuestEvents
	if s.events != nil {
		events = s.events
	}
	// The engine starts before the monitor whose data sizes the fleet:
	// until the first count (countFleet), the fleet size is unknown (0).
	return remediation.New(remediation.Options{
		Policy:        s.pol.Load(),
		Journal:       j,
		Hosts:         s.agents,
		Provisioner:   p,
		Logger:        s.logger.With("component", "remediation"),
		Registerer:    reg,
		Now:           time.Now,
		ActionTimeout: cfg.Remediation.ActionTimeout,
		DryRun:        cfg.Remediation.DryRun,
		Retention:     cfg.Remediation.Retention,
		StaleAfter:    cfg.Remediation.StaleAfter,
		FleetSize:     s.fleetSize,
		MayAct:        mayAct,
		Events:        events,
	})
}

// startRemediation starts a single server's engine, and hands it what the
// webhook inbox holds from before a restart (a clustered server's engines
// start with its terms). It returns the webhook's metrics, for its handler
// and pruning.
func (s *Server) startRemediation(ctx context.Context, in inputs) (*intake.Metrics, error) {
	if s.cluster != nil {
		return intake.NewMetrics(s.reg)
	}
	var err error
	if s.engine, err = s.newEngine(s.journal, s.prov, s.reg, nil); err != nil {
		return nil, err
	}
	// Alertmanager deliveries are on disk before they are answered; what a
	// crash left unhandled is handed to the engine again now.
	logger := s.logger
	if n, err := s.inbox.Replay(ctx, s.engine.Handle); err != nil {
		return nil, fmt.Errorf("replay the webhook inbox: %w", err)
	} else if n > 0 {
		logger.Info("replayed webhook deliveries recorded before a restart", "alerts", n)
	}
	return intake.NewMetrics(s.reg)
}

// fleetSize is the number of guests the embedded Prometheus has seen in
// the last 10 minutes, as last counted (countFleet); 0 until counted.
func (s *Server) fleetSize() int { return int(s.fleet.Load()) }

// fleetEvery spaces the counts of the fleet: counting every guest's
// series takes a while at fleet scale, and the engine asks for the size on
// every batch of alerts, an event's too.
const fleetEvery = 15 * time.Second

// countFleet counts the fleet every fleetEvery (every second until there
// is a count) until ctx is done.
func (s *Server) countFleet(ctx context.Context) {
	for {
		s.fleet.Store(int64(s.countGuests(ctx)))
		wait := fleetEvery
		if s.fleet.Load() == 0 {
			wait = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// countGuests counts the guests the embedded Prometheus has seen in the
// last 10 minutes; 0 when it cannot tell.
func (s *Server) countGuests(ctx context.Context) int {
	m := s.running.Load()
	if m == nil {
		return 0
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// Over a window: a scrape that failed (libvirtd busy with the very
	// crash) marks its guests stale, which must not shrink the fleet the
	// breaker takes its percentage of.
	v, err := m.Query(qctx, "count(last_over_time(caretaker_kvm_domain_info[10m]))", time.Now())
	if err != nil || len(v) == 0 {
		return 0
	}
	return int(v[0].F)
}

// startMonitoring starts the embedded Prometheus: it scrapes the agents
// (configured, file_sd, the provisioner's inventory) and the server,
// evaluates the rules and hands their alerts to the engine.
func (s *Server) startMonitoring(ctx context.Context, in inputs) error {
	cfg := in.cfg
	var remote []monitoring.RemoteWriteConfig
	for _, rw := range cfg.RemoteWrite {
		remote = append(remote, monitoring.RemoteWriteConfig{URL: rw.URL, Name: rw.Name})
	}
	fileSD := make([]string, 0, len(cfg.Prometheus.FileSD))
	for _, g := range cfg.Prometheus.FileSD {
		fileSD = append(fileSD, cfg.Path(g))
	}
	if s.prov != nil {
		fileSD = append(fileSD, s.prov.FileSD())
	}
	targets := make([]monitoring.Target, 0, len(cfg.Hosts))
	for _, h := range cfg.Hosts {
		targets = append(targets, monitoring.Target{Host: h.Name, Address: h.Agent})
	}
	var external map[string]string
	if cfg.Cluster.Enabled() {
		// Every server scrapes and evaluates, as a Prometheus HA pair.
		external = map[string]string{monitoring.ReplicaLabel: cfg.Cluster.Name}
	}
	var err error
	s.monitor, err = monitoring.Start(ctx, monitoring.Options{
		ExternalLabels: external,
		DataDir:        in.dataDir,
		ScrapeInterval: cfg.Prometheus.ScrapeInterval,
		ScrapeTimeout:  cfg.Prometheus.ScrapeTimeout,
		Jobs: map[string]monitoring.JobScrape{
			monitoring.JobName:       jobScrape(cfg.Prometheus.Job("agents")),
			monitoring.ServerJobName: jobScrape(cfg.Prometheus.Job("server")),
		},
		EvaluationInterval: cfg.Prometheus.EvaluationInterval,
		Retention:          cfg.Prometheus.Retention,
		RetentionSize:      cfg.Prometheus.RetentionSizeBytes,
		FileSD:             fileSD,
		AgentTLS:           agentScrapeTLS(cfg),
		SelfAddress:        selfAddress(s.opts),
		Alertmanagers:      cfg.Alerting.Alertmanagers,
		RemoteWrite:        remote,
		Query:              monitoring.QueryLimits{Timeout: cfg.Prometheus.Query.Timeout, MaxSamples: cfg.Prometheus.Query.MaxSamples},
		Targets:            targets,
		Rules:              in.rules,
		Notify:             s.notify,
		Logger:             s.logger.With("component", "prometheus"),
		Registerer:         s.reg,
	})
	if err != nil {
		return err
	}
	s.running.Store(s.monitor)
	return nil
}

// routeParts are what every mux of the server shares: built once, since
// they register metrics and hold the failed-authentication counts.
type routeParts struct {
	auth          *api.Authenticator
	prom          *promapi.API
	webhookTokens []string
	intakeMetrics *intake.Metrics
}

func (s *Server) newRouteParts(in inputs, intakeMetrics *intake.Metrics) (routeParts, error) {
	cfg, logger := in.cfg, s.logger
	creds, err := cfg.APICredentials()
	if err != nil {
		return routeParts{}, err
	}
	tokens, err := apiTokens(creds)
	if err != nil {
		return routeParts{}, err
	}
	auth, err := api.NewAuthenticator(tokens)
	if err != nil {
		return routeParts{}, err
	}
	if err := auth.LimitFailures(logger.With("component", "api"), s.reg); err != nil {
		return routeParts{}, err
	}
	var policyFile string
	if cfg.Remediation.PolicyFile != "" {
		policyFile = cfg.Path(cfg.Remediation.PolicyFile)
	}
	s.policy = newPolicyHolder(policyFile, in.policy, s.setPolicy, logger.With("component", "policy"), time.Now)
	// Prometheus' own query API beside caretaker's, for Grafana and runbook.
	prom, err := promapi.New(promapi.Options{
		Queryable: s.monitor.Queryable(),
		Engine:    s.monitor.Engine(),
		Rules:     s.monitor.RulesManager(),
		Logger:    logger.With("component", "query API"),
		// Prometheus' --query.max-concurrency, for the API's queries only:
		// viewers never hold off the rules.
		MaxConcurrency: cfg.Prometheus.Query.MaxConcurrency,
	})
	if err != nil {
		return routeParts{}, err
	}
	if s.cluster != nil {
		s.cluster.forward = auth.Authenticate(s.cluster.proxy)
		s.cluster.local = map[string]bool{}
		for _, p := range prom.Paths() {
			s.cluster.local[p] = true
		}
	}
	// The webhook authenticates itself: a bearer token of the webhook
	// role (never an admin's), or a client certificate of a named subject.
	var webhookTokens []string
	for _, t := range tokens {
		if t.Role == api.RoleWebhook {
			webhookTokens = append(webhookTokens, t.Secret)
		}
	}
	subjects := cfg.Remediation.Webhook.ClientCertSubjects
	if in.webhookToken == "" && len(webhookTokens) == 0 && (s.opts.WebConfigFile == "" || len(subjects) == 0) {
		logger.Warn("the Alertmanager webhook accepts no one: set remediation.webhook.token_file, an api.tokens entry with role webhook, or remediation.webhook.client_cert_subjects",
			"path", intake.Path)
	}
	return routeParts{auth: auth, prom: prom, webhookTokens: webhookTokens, intakeMetrics: intakeMetrics}, nil
}

// status is the fleet as /api/v1/status and the console read it.
func (s *Server) status() *status {
	return &status{monitor: s.monitor, journal: s.journal, hosts: s.in.cfg.Hosts, more: s.prov.Hosts}
}

// actingEngine is the engine that acts on this server now: the single
// server's, the current term's while a clustered one leads, else nil.
func (s *Server) actingEngine() *remediation.Engine {
	if s.cluster == nil {
		return s.engine
	}
	if a := s.cluster.acting.Load(); a != nil {
		return a.engine
	}
	return nil
}

// setPolicy applies a reloaded policy to the engine acting now and keeps
// it for the engines of later terms.
func (s *Server) setPolicy(p *policy.Policy) {
	s.pol.Store(p)
	if s.engine != nil {
		s.engine.SetPolicy(p)
	}
	if s.cluster != nil {
		if a := s.cluster.acting.Load(); a != nil {
			a.engine.SetPolicy(p)
		}
	}
}

// mux is the server's HTTP surface with engine and prov acting behind it
// (nil on a follower of the cluster, which forwards what needs them):
// caretaker's API and Prometheus' query API behind the tokens' roles, the
// Alertmanager webhook, the provisioner's API and /pxe/, the server's
// metrics and health.
func (s *Server) mux(engine *remediation.Engine, prov *fleet.Provisioner) http.Handler {
	cfg, logger, rp := s.in.cfg, s.logger, s.routes
	var pauser api.Pauser = notActing{}
	var actor api.Actor = notActing{}
	// A follower's webhook only stores deliveries (nil leaves them
	// pending): the leader drains them.
	var onAlerts func(context.Context, []remediation.Alert)
	if engine != nil {
		pauser, actor, onAlerts = engine, engine, engine.Handle
	}
	apiOpts := api.Options{
		Backend: s.status(),
		Pauser:  pauser,
		Actor:   actor,
		Policy:  s.policy,
		Auth:    rp.auth,
		Logger:  logger.With("component", "api"),
	}
	if s.cluster != nil {
		apiOpts.Servers = s.cluster
	}
	mux := http.NewServeMux()
	mux.Handle("/api/v1/", api.NewHandler(apiOpts))
	mux.Handle(intake.Path, intake.Handler(intake.Options{
		Inbox:          s.inbox,
		Token:          s.in.webhookToken,
		Tokens:         rp.webhookTokens,
		ClientSubjects: cfg.Remediation.Webhook.ClientCertSubjects,
		ClientCerts:    s.opts.WebConfigFile != "",
		BodyLimit:      cfg.Remediation.Webhook.BodyLimitBytes,
		OnAlerts:       onAlerts,
		Logger:         logger.With("component", "webhook"),
		Metrics:        rp.intakeMetrics,
	}))
	promHandler := rp.auth.Require(api.RoleViewer, "querying Prometheus", s.monitor.Guard(rp.prom.Handler()))
	for _, p := range rp.prom.Paths() {
		mux.Handle(p, promHandler)
	}
	if prov != nil {
		prov.Mount(mux, rp.auth)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	mux.HandleFunc("GET /-/healthy", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "OK") })
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		// A browser goes to the console; clients that want no HTML read
		// where things are.
		if cfg.Console.Enabled && strings.Contains(r.Header.Get("Accept"), "text/html") {
			http.Redirect(w, r, "/console/", http.StatusSeeOther)
			return
		}
		fmt.Fprintln(w, "caretaker server: console at /console/, API under /api/v1/ (bearer token), metrics at /metrics")
	})
	return mux
}

// errNotActing answers what only the leader's engine does, on a server
// that does not lead (a request that reached it between the end of its
// term and the forwarding that follows).
var errNotActing = errors.New("this server does not lead the cluster now: try again, the request will be forwarded to the leader")

type notActing struct{}

func (notActing) Pause(guards.Pause) error { return errNotActing }
func (notActing) Resume(string)            {}
func (notActing) Pauses() []guards.Pause   { return nil }
func (notActing) Run(context.Context, remediation.ManualRequest) (journal.Record, error) {
	return journal.Record{}, errNotActing
}
func (notActing) Answer(uint64, bool, guards.Who, string) (journal.Record, error) {
	return journal.Record{}, errNotActing
}

// agentScrapeTLS is the agents' job's TLS: agents.tls, or nil.
func agentScrapeTLS(cfg *config.Server) *monitoring.TLSFiles {
	t := cfg.Agents.TLS
	if !t.Enabled() {
		return nil
	}
	return &monitoring.TLSFiles{CAFile: cfg.Path(t.CAFile), CertFile: cfg.Path(t.CertFile), KeyFile: cfg.Path(t.KeyFile)}
}

func jobScrape(j config.ScrapeJob) monitoring.JobScrape {
	return monitoring.JobScrape{Interval: j.ScrapeInterval, Timeout: j.ScrapeTimeout}
}

// selfAddress is where the embedded Prometheus scrapes the server's own
// /metrics: the listen address, on loopback when it listens on all
// addresses. Over TLS (a web config) the self-scrape is left out.
func selfAddress(o Options) string {
	if o.ListenAddress == "" || o.WebConfigFile != "" {
		return ""
	}
	host, port, err := net.SplitHostPort(o.ListenAddress)
	if err != nil || port == "0" {
		return ""
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// stateSource says where the journal and the rest of the state are.
func stateSource(in inputs) string {
	if c := in.cfg.Cluster; c.Enabled() {
		return fmt.Sprintf("etcd %s under %s, as cluster member %s", strings.Join(c.Etcd.Endpoints, ","), c.Etcd.Prefix, c.Name)
	}
	return in.journalPath()
}

func policySource(cfg *config.Server) string {
	if cfg.Remediation.PolicyFile == "" {
		return "embedded default"
	}
	return cfg.Path(cfg.Remediation.PolicyFile)
}

// notify hands alerts from the embedded rules to the remediation engine.
func (s *Server) notify(ctx context.Context, alerts []monitoring.Alert) {
	in := make([]remediation.Alert, 0, len(alerts))
	for _, a := range alerts {
		status := "firing"
		switch a.State {
		case "firing":
		case "inactive":
			status = "resolved"
		default:
			continue // pending alerts are not acted on
		}
		in = append(in, remediation.Alert{
			Name:        a.Name,
			Labels:      a.Labels,
			Annotations: a.Annotations,
			Status:      status,
			StartsAt:    a.ActiveAt,
			EndsAt:      a.ResolvedAt,
			Fingerprint: a.Fingerprint,
		})
	}
	// Every server evaluates the rules; only the leader's engine acts.
	if e := s.actingEngine(); len(in) > 0 && e != nil {
		e.Handle(ctx, in)
	}
}

// Handler is the server's HTTP surface: the console under /console/,
// the rest as serveAPI routes it.
func (s *Server) Handler() http.Handler {
	if s.console == nil {
		return http.HandlerFunc(s.serveAPI)
	}
	mux := http.NewServeMux()
	mux.Handle("/console/", s.console)
	mux.HandleFunc("/", s.serveAPI)
	return mux
}

// serveAPI serves everything but the console: a single server's routes,
// or a clustered one's, which sends changes to the leader. The console
// calls it in process, as its users.
func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	if s.cluster == nil {
		s.handler.ServeHTTP(w, r)
		return
	}
	s.cluster.serveHTTP(s.handler, w, r)
}

// Serve serves HTTP on l until ctx is done.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler: s.Handler(),
		// A client has 10 s for its headers and a minute for its whole
		// request, body included; an idle keep-alive connection closes
		// after two. Writing an answer may take as long as the longest
		// handler, a PromQL query (prometheus.query.timeout), and more.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      s.opts.Config.Prometheus.Query.Timeout + writeMargin,
		IdleTimeout:       2 * time.Minute,
	}
	errc := make(chan error, 1)
	go s.tick(ctx)
	go func() {
		cfgFile := s.opts.WebConfigFile
		errc <- web.Serve(l, srv, &web.FlagConfig{WebConfigFile: &cfgFile}, s.logger)
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	// A PromQL query may run for minutes: end them now, or Shutdown waits.
	if s.monitor != nil {
		s.monitor.CancelQueries()
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		return fmt.Errorf("shut down HTTP server: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// writeMargin is what the server's WriteTimeout allows beyond a query's
// timeout: the other handlers (provisioner calls to agents, journal
// queries) end well within it.
const writeMargin = 5 * time.Minute

// tickEvery spaces the engine's timed work: approvals expiring,
// verifications timing out, retries of alerts that are not re-sent.
const tickEvery = 5 * time.Second

func (s *Server) tick(ctx context.Context) {
	t := time.NewTicker(tickEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if s.engine != nil { // a clustered server's terms tick their own
				s.engine.Tick(now)
			}
		}
	}
}

// Run listens on the configured address and serves until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	l, err := net.Listen("tcp", s.opts.ListenAddress)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	s.logger.Info("listening", "address", l.Addr().String())
	return s.Serve(ctx, l)
}

// Close stops the parts in the order data flows: no new alerts, then no new
// actions, then the journal.
func (s *Server) Close() error {
	var errs []error
	if s.stop != nil {
		s.stop()
		s.bg.Wait()
	}
	if s.monitor != nil {
		errs = append(errs, s.monitor.Stop())
	}
	if s.engine != nil {
		s.engine.Close()
	}
	if s.prov != nil {
		s.prov.Close()
	}
	if s.inbox != nil {
		errs = append(errs, s.inbox.Close())
	}
	if s.audit != nil {
		// What Loki has not taken within a few seconds is still in the journal.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, s.audit.Close(ctx))
		cancel()
	}
	if s.journal != nil {
		errs = append(errs, s.journal.Close())
	}
	if s.cluster != nil {
		errs = append(errs, s.cluster.client.Close())
	}
	return errors.Join(errs...)
}
