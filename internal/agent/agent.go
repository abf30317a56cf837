// Package agent is the HTTP surface of the caretaker agent that runs on every
// KVM host: /metrics for the server's Prometheus, and under /api/v1/ the
// host-local actions the server's remediation asks for (today: look at and
// start a libvirt domain, create and delete guest-cluster nodes, make,
// repair and remove VXLAN overlays) and the stream of libvirt's lifecycle
// events (package eventstream).
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promcollectors "github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/exporter-toolkit/web"

	"caretaker/collectors"
	"caretaker/collectors/host"
	"caretaker/collectors/kvm"
	"caretaker/collectors/overlay"
	"caretaker/internal/agent/eventstream"
	"caretaker/internal/agent/guests"
	"caretaker/internal/authlimit"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/overlayspec"
)

// Defaults applied by New to the zero fields of Config.
const (
	DefaultListenAddress   = ":9301"
	DefaultLibvirtURI      = "qemu:///system"
	DefaultScrapeTimeout   = 10 * time.Second
	DefaultGuestPool       = "caretaker"
	DefaultGuestDomainType = guests.TypeKVM
	// DefaultGuestMaxDiskBytes bounds a node's disk: 2 TiB.
	DefaultGuestMaxDiskBytes = 2 << 40
)

// shutdownTimeout bounds the graceful part of Serve's shutdown: requests
// still running after it (a domain start stuck in libvirt) are cut off.
const shutdownTimeout = 30 * time.Second

// Config configures an Agent.
type Config struct {
	// ListenAddress is where Run listens, host:port.
	ListenAddress string
	// WebConfigFile is an exporter-toolkit web configuration file (TLS,
	// basic auth); empty serves plain HTTP.
	WebConfigFile string
	// LibvirtURI is the libvirt connection the collectors and actions use.
	LibvirtURI string
	// ScrapeTimeout bounds each collector on every scrape.
	ScrapeTimeout time.Duration
	// LibvirtTimeout bounds every wait on libvirt: the collectors' (a
	// frozen libvirtd gives caretaker_kvm_up 0 and libvirtd_up 0 instead
	// of a hung scrape) and the actions' (503 saying libvirt did not
	// answer); the work of an action (starting a guest, making a node) is
	// bounded by the longer of it and workTimeout.
	LibvirtTimeout time.Duration
	// Token is the server's bearer token for the actions API. Empty
	// disables the actions: every request under /api/v1/ gets 401.
	Token string
	// DomainFilter, if set, limits the agent to the domains whose name
	// matches it: the others are neither reported nor acted on (404), as
	// if they were on another host. It lets several simulated hosts share
	// one libvirtd (caretaker lab); nil means every domain. The nodes the
	// agent creates through PUT /api/v1/nodes are its own too (created.go).
	DomainFilter *regexp.Regexp
	// ProcFS, SysFS and RootFS are where the host collector finds /proc,
	// /sys and the host's root filesystem (defaults /proc, /sys, /). The
	// KVM device is looked up under RootFS, as node_exporter resolves the
	// host's paths under its --path.rootfs: an agent in a container with
	// the host's / at /host reports /host/dev/kvm.
	ProcFS, SysFS, RootFS string
	// Overlays are the VXLAN overlays this host should have (the agent's
	// configuration file); NeighborStaleAfter is the overlay collector's.
	Overlays           []overlayspec.Overlay
	NeighborStaleAfter time.Duration
	// NetNS is the network namespace the overlay collector reads, and
	// overlay repairs change, as a path like /var/run/netns/x; empty
	// means the agent's own.
	NetNS string
	// OverlayRepairs are the overlays POST /api/v1/overlays/{cluster}/repair
	// can repair (File.Overlays); other clusters get 404.
	OverlayRepairs []overlayspec.Overlay
	// GuestPool is the libvirt storage pool (a directory pool holding the
	// base images) where PUT /api/v1/nodes/{name} puts a node's disks
	// when the request names none. A host without it answers 503.
	GuestPool string
	// GuestDomainType is the nodes' domain type, guests.TypeKVM or
	// guests.TypeQEMU (TCG, for hosts without usable /dev/kvm). TypeQEMU
	// also declares that the host needs no KVM: the host collector reports
	// caretaker_host_kvm_required 0, and HostKVMDeviceMissing stays quiet.
	GuestDomainType string
	// GuestMaxVCPUs, GuestMaxMemoryBytes and GuestMaxDiskBytes bound a
	// node PUT /api/v1/nodes/{name} may ask for (larger: 400 naming the
	// field). Zero takes the defaults: the host's CPUs and memory as
	// libvirt reports them, and DefaultGuestMaxDiskBytes.
	GuestMaxVCPUs       int
	GuestMaxMemoryBytes uint64
	GuestMaxDiskBytes   uint64
	// StateDir is where the agent keeps what must outlive a restart: the
	// highest leader epoch it has seen (EpochFile), so that a restarted
	// agent still refuses the actions of an older leader. It is created
	// if missing; empty keeps the epoch in memory only.
	StateDir string
	Logger   *slog.Logger
}

// Agent serves a host's metrics and actions.
type Agent struct {
	cfg    Config
	logger *slog.Logger
	// conn is shared by the kvm collector and the actions, so that the
	// host has one libvirt connection per agent.
	conn *libvirtconn.Conn
	// token is Config.Token, or "" when actions are disabled; requests
	// are checked with httpjson.TokenMatches (constant time).
	token string
	// collectors are the agent's collectors by name, as collect[] names them.
	collectors map[string]collectors.Collector
	// overlays are the overlays the host should have, from the
	// configuration and the server's PUTs.
	overlays *overlays
	// created are the nodes this agent made, its own whatever
	// Config.DomainFilter says.
	created created
	// failures logs, counts and limits failed authentications of the
	// action API per client address.
	failures *authlimit.Limiter
	// fence refuses the actions of an older leader (epoch.go).
	fence *fence
	// events is the stream of libvirt lifecycle events (GET
	// /api/v1/events), fed by source once Serve has started it.
	events  *eventstream.Hub
	source  *eventstream.Source
	handler http.Handler
}

// New returns an Agent for cfg, with defaults applied to its zero fields. It
// does not connect to libvirt: the first scrape or action does.
func New(cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ListenAddress == "" {
		cfg.ListenAddress = DefaultListenAddress
	}
	if cfg.LibvirtURI == "" {
		cfg.LibvirtURI = DefaultLibvirtURI
	}
	if cfg.ScrapeTimeout == 0 {
		cfg.ScrapeTimeout = DefaultScrapeTimeout
	}
	if cfg.LibvirtTimeout == 0 {
		cfg.LibvirtTimeout = kvm.DefaultLibvirtTimeout
	}
	if cfg.GuestPool == "" {
		cfg.GuestPool = DefaultGuestPool
	}
	if cfg.GuestDomainType == "" {
		cfg.GuestDomainType = DefaultGuestDomainType
	}
	if _, err := libvirtconn.ParseURI(cfg.LibvirtURI); err != nil {
		return nil, fmt.Errorf("configure agent: --libvirt.uri: %w", err)
	}
	if cfg.GuestDomainType != guests.TypeKVM && cfg.GuestDomainType != guests.TypeQEMU {
		return nil, fmt.Errorf("configure agent: guest domain type %q: want %q or %q", cfg.GuestDomainType, guests.TypeKVM, guests.TypeQEMU)
	}
	if cfg.GuestMaxVCPUs < 0 {
		return nil, fmt.Errorf("configure agent: guest max vcpus %d is negative", cfg.GuestMaxVCPUs)
	}
	if cfg.GuestMaxDiskBytes == 0 {
		cfg.GuestMaxDiskBytes = DefaultGuestMaxDiskBytes
	}
	if cfg.ScrapeTimeout < 0 {
		return nil, fmt.Errorf("configure agent: scrape timeout %s is negative", cfg.ScrapeTimeout)
	}
	if cfg.WebConfigFile != "" {
		if err := web.Validate(cfg.WebConfigFile); err != nil {
			return nil, fmt.Errorf("configure agent: web config file %s: %w", cfg.WebConfigFile, err)
		}
	}

	a := &Agent{
		cfg:    cfg,
		logger: cfg.Logger,
		conn:   libvirtconn.New(cfg.LibvirtURI, cfg.Logger, libvirtconn.WithTimeout(cfg.LibvirtTimeout)),
	}
	if cfg.Token != "" {
		a.token = cfg.Token
	} else {
		a.logger.Warn("no API token configured: host actions are disabled")
	}

	a.events = eventstream.NewHub(eventstream.Options{Logger: a.logger.With("component", "events")})
	a.source = eventstream.NewSource(a.events, a.conn, a.logger.With("component", "events"))
	// The kvm collector's lifecycle callback is the stream's source too:
	// libvirt takes one per connection.
	kvmOpts := []kvm.Option{kvm.WithLibvirtTimeout(cfg.LibvirtTimeout), kvm.WithLifecycleListener(a.source)}
	if cfg.DomainFilter != nil {
		kvmOpts = append(kvmOpts, kvm.WithDomainMatch(a.owns))
	}
	kvmCollector := kvm.New(a.conn, a.logger.With("collector", "kvm"), kvmOpts...)
	hostCollector, err := host.New(host.Config{
		ProcFS:         cfg.ProcFS,
		SysFS:          cfg.SysFS,
		RootFS:         cfg.RootFS,
		KVMNotRequired: cfg.GuestDomainType == guests.TypeQEMU,
		LibvirtCheck:   a.libvirtCheck,
		// One pass over libvirt per scrape: the guests' commitment
		// comes from the kvm collector's call.
		Guests:         kvmCollector.GuestCommitment,
		LibvirtTimeout: cfg.LibvirtTimeout,
	}, a.logger.With("collector", "host"))
	if err != nil {
		a.conn.Close()
		return nil, fmt.Errorf("configure agent: %w", err)
	}
	overlayCollector, err := overlay.New(overlay.Config{
		Overlays:   cfg.Overlays,
		StaleAfter: cfg.NeighborStaleAfter,
		NetNS:      cfg.NetNS,
	}, a.logger.With("collector", "overlay"))
	if err != nil {
		a.conn.Close()
		return nil, fmt.Errorf("configure agent: %w", err)
	}
	a.overlays = newOverlays(a, overlayCollector)
	a.collectors = map[string]collectors.Collector{
		"host":    hostCollector,
		"overlay": overlayCollector,
		"kvm":     kvmCollector,
	}
	reg := prometheus.NewRegistry()
	authFailures := authlimit.NewCounter("caretaker_agent_auth_failures_total",
		"Failed authentications of the action API by reason: missing or invalid token, disabled (no token configured), or rate_limited (a client with too many failures, refused with 429).")
	a.failures = authlimit.New(authlimit.Options{Counter: authFailures, Logger: a.logger})
	if a.fence, err = newFence(cfg.StateDir, a.logger); err != nil {
		a.conn.Close()
		return nil, fmt.Errorf("configure agent: %w", err)
	}
	for _, c := range append([]prometheus.Collector{
		collectors.NewSet(a.logger, cfg.ScrapeTimeout, a.collectors),
		authFailures,
		a.fence.gauge,
		a.fence.refused,
		promcollectors.NewGoCollector(),
		promcollectors.NewProcessCollector(promcollectors.ProcessCollectorOpts{}),
	}, a.events.Collectors()...) {
		if err := reg.Register(c); err != nil {
			a.conn.Close()
			return nil, fmt.Errorf("configure agent: register metrics collector: %w", err)
		}
	}

	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "caretaker agent",
		Description: "Metrics and host-local actions of a caretaker KVM host",
		Links:       []web.LandingLinks{{Address: "/metrics", Text: "Metrics"}},
		Profiling:   "false",
	})
	if err != nil {
		a.conn.Close()
		return nil, fmt.Errorf("configure agent: landing page: %w", err)
	}

	mux := http.NewServeMux()
	mux.Handle("GET /{$}", landing)
	mux.Handle("GET /metrics", a.metricsHandler(reg))
	// Authentication first, then the leader's epoch, then the action.
	mux.Handle("/api/v1/", a.requireToken(a.fence.handler(a.apiHandler())))
	a.handler = mux
	return a, nil
}

// Handler returns the agent's HTTP handler: /, /metrics and /api/v1/.
func (a *Agent) Handler() http.Handler { return a.handler }

// Run listens on Config.ListenAddress and serves until ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	for _, w := range webTLSWarnings(a.cfg.WebConfigFile) {
		a.logger.Warn(w)
	}
	l, err := net.Listen("tcp", a.cfg.ListenAddress)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", a.cfg.ListenAddress, err)
	}
	return a.Serve(ctx, l)
}

// Serve serves on l until ctx is done, then shuts down gracefully: it stops
// accepting, ends the event streams, lets running requests finish (for up
// to 30s), and returns nil. TLS and basic auth come from
// Config.WebConfigFile. It also starts the event stream's source, which
// keeps the libvirt connection open (and opens it now) so that libvirt's
// events reach GET /api/v1/events without waiting for a scrape.
func (a *Agent) Serve(ctx context.Context, l net.Listener) error {
	addr := l.Addr().String()
	srv := &http.Server{
		Handler: a.handler,
		// A client (the server, Prometheus) has 10 s for its headers and
		// a minute for its request; an action's answer may take its
		// libvirt calls, well within WriteTimeout; an idle keep-alive
		// connection closes after two minutes.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      5 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(a.logger.Handler(), slog.LevelWarn),
	}
	// The event streams never end on their own: without this, Shutdown
	// would wait the whole grace period for them.
	srv.RegisterOnShutdown(a.events.Close)
	a.Start(ctx)
	noSystemd := false
	flags := &web.FlagConfig{
		WebListenAddresses: &[]string{addr},
		WebSystemdSocket:   &noSystemd,
		WebConfigFile:      &a.cfg.WebConfigFile,
	}
	served := make(chan error, 1)
	go func() { served <- web.Serve(l, srv, flags, a.logger) }()

	select {
	case err := <-served:
		return fmt.Errorf("serve agent on %s: %w", addr, err)
	case <-ctx.Done():
	}
	a.logger.Info("shutting down agent HTTP server", "address", addr)
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(shutdownCtx)
	if err != nil {
		// Requests outlived the grace period: cut them off.
		srv.Close()
	}
	if serveErr := <-served; serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serve agent on %s: %w", addr, serveErr)
	}
	if err != nil {
		return fmt.Errorf("shut down agent on %s: %w", addr, err)
	}
	return nil
}

// Start starts what works beside the HTTP handler: the event stream's
// source, which keeps the libvirt connection open so that libvirt's events
// reach GET /api/v1/events without waiting for a scrape. Serve calls it;
// whoever serves Handler some other way must. The event streams end when
// ctx is done, so that a graceful shutdown does not wait for them.
func (a *Agent) Start(ctx context.Context) {
	a.source.Start(ctx)
	context.AfterFunc(ctx, a.events.Close)
}

// Close ends the event streams and closes the agent's libvirt connection.
// Call it after Serve returns.
func (a *Agent) Close() error {
	a.events.Close()
	return a.conn.Close()
}
