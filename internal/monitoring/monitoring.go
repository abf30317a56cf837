// Package monitoring is the server's embedded Prometheus: a scrape manager
// that pulls every agent's /metrics into an on-disk TSDB, a PromQL engine
// over it, and a rules manager whose alerts are handed in-process to a
// callback (the remediation engine) instead of going through Alertmanager.
// Optionally it also discovers agents from file_sd files, scrapes the
// server's own metrics, forwards the alerts to external Alertmanagers and
// remote-writes what it stores.
package monitoring

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/notifier"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/scrape"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
)

// Defaults for zero Options fields. Prometheus defaults to one minute; an
// appliance that heals guests wants to notice within seconds.
const (
	DefaultScrapeInterval     = 15 * time.Second
	DefaultEvaluationInterval = 15 * time.Second
	defaultScrapeTimeout      = 10 * time.Second
)

// Prometheus' own defaults for the rules manager
// (--rules.alert.for-outage-tolerance, --rules.alert.for-grace-period):
// nothing here calls for different ones. The query limits' are in
// queryapi.go.
const (
	outageTolerance = time.Hour
	forGracePeriod  = 10 * time.Minute
)

// ErrStopped is returned by methods called after Stop.
var ErrStopped = errors.New("monitoring stopped")

// Target is one agent to scrape.
type Target struct {
	Host    string // value of the `host` label attached to every series scraped from it
	Address string // host:port of the agent's /metrics
}

// Alert is one instance of an alerting rule, as the rules manager sees it.
type Alert struct {
	Name        string            // alertname
	Labels      map[string]string // full label set incl. alertname
	Annotations map[string]string
	State       string // "pending", "firing" or "inactive" (resolved)
	Value       float64
	ActiveAt    time.Time
	FiredAt     time.Time
	ResolvedAt  time.Time
	// Fingerprint is computed exactly as Alertmanager computes it
	// (model.LabelSet.Fingerprint), so an alert that arrives both in-process
	// and through an Alertmanager webhook dedupes to one.
	Fingerprint string
}

// JobScrape is one scrape job's interval and timeout.
type JobScrape struct {
	Interval, Timeout time.Duration
}

// Options configure Start.
type Options struct {
	DataDir        string        // the TSDB lives in DataDir/tsdb
	ScrapeInterval time.Duration // default DefaultScrapeInterval
	ScrapeTimeout  time.Duration // default min(10s, ScrapeInterval)
	// Jobs override the interval and timeout of a job (JobName,
	// ServerJobName); zero fields keep the values above.
	Jobs               map[string]JobScrape
	EvaluationInterval time.Duration // default DefaultEvaluationInterval; for rule groups without their own interval
	Targets            []Target
	// Rules holds *.rules.yml files at its root (an embed.FS or os.DirFS).
	// Nil means no rules; a non-nil FS without rule files is an error,
	// because an appliance that silently evaluates nothing heals nothing.
	Rules fs.FS
	// Notify receives the alerts the rules manager sends: firing ones when
	// they start firing and then every ResendDelay, and resolved ones for 15
	// minutes after they resolve. It runs on the rule group's evaluation
	// goroutine, so it must hand off and return quickly, and it must dedupe.
	// It must not call Alerts or RuleGroups: Stop holds the rules manager's
	// lock while it waits for the evaluation that is calling Notify.
	Notify func(ctx context.Context, alerts []Alert)
	// ResendDelay is how often a still-firing (or recently resolved) alert is
	// sent again. Default EvaluationInterval. A new alert is always sent at
	// the evaluation where it starts firing, whatever this is.
	ResendDelay time.Duration
	Retention   time.Duration // optional; default the TSDB's (15 days)
	// RetentionSize caps the bytes the TSDB keeps (its blocks, WAL and
	// chunks): the oldest blocks go first, whichever of Retention and
	// RetentionSize is reached first. Zero means no size limit.
	RetentionSize int64
	// FileSD holds glob patterns of Prometheus file_sd files (JSON or YAML,
	// `[{"targets": ["host:port"], "labels": {"host": "kvm-1"}}]`; the glob
	// only in the last path element, the name ending in .json, .yml or
	// .yaml). Their targets are scraped in the agent job beside Targets
	// (Start reads them before it returns) and follow the files, which are
	// reread every ScrapeInterval. A target without a `host` label (its own
	// or its group's) gets the hostname part of its address; one whose
	// address is not host:port is dropped with a warning. A file that cannot
	// be read or parsed keeps its previous targets.
	FileSD []string
	// AgentTLS, when set, has the agent job scrape over https with mutual
	// TLS; the server's own job (SelfAddress) is unchanged.
	AgentTLS *TLSFiles
	// SelfAddress is the host:port of the server's own /metrics. When set, a
	// second job, ServerJobName, scrapes it, so the server's remediation,
	// TSDB and rule metrics are queryable beside the agents'.
	SelfAddress string
	// Alertmanagers are URLs (http://host:port, optionally with a path
	// prefix) of external Alertmanagers that receive the alerts Notify
	// receives, firing and resolved, through Alertmanager's v2 API, as
	// Prometheus sends them. Alerts still queued at Stop are dropped.
	Alertmanagers []string
	// RemoteWrite endpoints receive every sample scraped or recorded by a
	// rule, through an in-memory queue (see remotewrite.go for its limits).
	RemoteWrite []RemoteWriteConfig
	// ExternalLabels are added to the alerts sent to Alertmanagers and
	// to the remote-written samples, as Prometheus' global
	// external_labels. ReplicaLabel among them is dropped from alerts, so
	// Alertmanager takes the same alert from every server of a cluster as
	// one.
	ExternalLabels map[string]string
	// Query limits PromQL queries; zero fields take Prometheus' defaults.
	Query  QueryLimits
	Logger *slog.Logger
	// Registerer receives the TSDB, scrape, engine and rules metrics. Those
	// are registered once: Start a Monitor at most once per Registerer.
	Registerer prometheus.Registerer
}

// TLSFiles are the files of a scrape job's TLS: the CA its targets'
// certificates must chain to, and the client certificate and key it
// presents. Prometheus verifies that a target's certificate names the host
// part of the target's address, and reads the files again when they change.
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
}

// Monitor is a running embedded Prometheus.
type Monitor struct {
	logger  *slog.Logger
	db      *tsdb.DB
	engine  *promql.Engine
	scraper *scrape.Manager
	rules   *rules.Manager
	notify  func(context.Context, []Alert)

	// notifier and sendToAlertmanagers are nil without Options.Alertmanagers.
	notifier            *notifier.Manager
	notifierTransport   *http.Transport
	sendToAlertmanagers rules.NotifyFunc
	// writers send to Options.RemoteWrite; they run until the appends end,
	// so they have their own goroutines and context.
	writers      []*remoteWriter
	writersWG    sync.WaitGroup
	writerCancel context.CancelFunc

	// ctx lives until Stop; it bounds rule evaluation and ad-hoc queries.
	ctx    context.Context
	cancel context.CancelFunc
	// queries ends the requests Guard serves; CancelQueries or Stop ends it.
	queries       context.Context
	cancelQueries context.CancelFunc
	wg            sync.WaitGroup // the managers' Run goroutines

	// targetsMu serialises target updates with stopping the scrape manager:
	// a target update must be fully applied before Stop, or the scrape
	// manager's reloader could start scrape loops after it stopped.
	targetsMu     sync.Mutex
	targetSets    chan map[string][]*targetgroup.Group
	scrapeStopped bool
	// What the agent job scrapes: the static targets (Options.Targets, then
	// SetTargets) and the file_sd groups by source; and the server job.
	staticGroups  []*targetgroup.Group
	staticTargets []Target
	fileGroups    map[string]*targetgroup.Group
	selfGroup     *targetgroup.Group

	// mu guards stopped; queries hold it shared so the TSDB is not closed
	// under them.
	mu      sync.RWMutex
	stopped bool

	stopOnce sync.Once
	stopErr  error
}

// Start validates the rule files, opens the TSDB, starts scraping the
// targets and evaluating the rules, and returns once every target has a
// scrape loop. The Monitor runs until Stop, whatever becomes of ctx; rule
// evaluations and Notify see ctx's values.
func Start(ctx context.Context, opts Options) (*Monitor, error) {
	if err := opts.withDefaults(); err != nil {
		return nil, err
	}
	promqlParser := parser.NewParser(parser.Options{})
	// Rules first: a bad rule file must stop the server before it touches
	// the disk or the network, with the file's name in the error.
	ruleFiles, loader, err := loadRuleFiles(opts, promqlParser)
	if err != nil {
		return nil, err
	}
	promCfg, err := promConfig(&opts, opts.Logger)
	if err != nil {
		return nil, err
	}
	targetSet, err := targetGroups(opts.Targets)
	if err != nil {
		return nil, err
	}
	m, err := open(ctx, opts)
	if err != nil {
		return nil, err
	}
	fsd, amTargets, err := m.setUp(opts, promCfg, promqlParser, loader, ruleFiles)
	if err != nil {
		return nil, m.abort(err)
	}
	m.run(ctx, opts, fsd, amTargets)
	if err := m.awaitStart(opts, targetSet); err != nil {
		return nil, errors.Join(err, m.Stop())
	}
	opts.Logger.Info("monitoring started", "tsdb", filepath.Join(opts.DataDir, "tsdb"), "targets", len(opts.Targets), "file_sd", opts.FileSD,
		"self", opts.SelfAddress, "alertmanagers", opts.Alertmanagers, "remote_write", len(opts.RemoteWrite),
		"rule_files", len(ruleFiles), "scrape_interval", opts.ScrapeInterval, "evaluation_interval", opts.EvaluationInterval)
	return m, nil
}

// loadRuleFiles lists and checks the rule files of opts.Rules.
func loadRuleFiles(opts Options, promqlParser parser.Parser) ([]string, *fsLoader, error) {
	ruleFiles, err := listRuleFiles(opts.Rules)
	if err != nil {
		return nil, nil, err
	}
	loader := &fsLoader{fsys: opts.Rules, parser: promqlParser, logger: opts.Logger}
	if err := loader.validate(ruleFiles); err != nil {
		return nil, nil, err
	}
	return ruleFiles, loader, nil
}

// open opens the TSDB in DataDir/tsdb and returns the Monitor around it,
// before any manager exists.
func open(ctx context.Context, opts Options) (*Monitor, error) {
	tsdbOpts := tsdb.DefaultOptions()
	if opts.Retention > 0 {
		tsdbOpts.RetentionDuration = opts.Retention.Milliseconds()
	}
	tsdbOpts.MaxBytes = opts.RetentionSize
	tsdbDir := filepath.Join(opts.DataDir, "tsdb")
	db, err := tsdb.Open(tsdbDir, opts.Logger.With("component", "tsdb"), opts.Registerer, tsdbOpts, nil)
	if err != nil {
		return nil, fmt.Errorf("open tsdb %s: %w", tsdbDir, err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	queries, cancelQueries := context.WithCancel(runCtx)
	m := &Monitor{
		queries: queries, cancelQueries: cancelQueries,
		logger:     opts.Logger,
		db:         db,
		notify:     opts.Notify,
		ctx:        runCtx,
		cancel:     cancel,
		targetSets: make(chan map[string][]*targetgroup.Group),
		fileGroups: make(map[string]*targetgroup.Group),
	}
	if opts.SelfAddress != "" {
		m.selfGroup = &targetgroup.Group{
			Source:  "self",
			Targets: []model.LabelSet{{model.AddressLabel: model.LabelValue(opts.SelfAddress)}},
		}
	}
	return m, nil
}

// setUp creates the remote writers, the engine, the scrape manager, the
// notifier and the rules manager, none of them running yet. It reads the
// file_sd files once, so that Start returns with their targets scraped
// like the static ones, and returns their reader and the notifier's
// target channel (nil without Alertmanagers).
func (m *Monitor) setUp(opts Options, promCfg *config.Config, promqlParser parser.Parser, loader *fsLoader, ruleFiles []string) (*fileSD, chan map[string][]*targetgroup.Group, error) {
	appendable, err := m.newAppendable(opts)
	if err != nil {
		return nil, nil, err
	}
	m.engine = newEngine(opts, promqlParser)
	if err := m.newScraper(opts, promCfg, appendable); err != nil {
		return nil, nil, err
	}
	var fsd *fileSD
	if len(opts.FileSD) > 0 {
		fsd = newFileSD(opts.FileSD, opts.Logger.With("component", "file_sd"))
		m.fileGroups, _ = fsd.read()
	}
	var amTargets chan map[string][]*targetgroup.Group
	if len(opts.Alertmanagers) > 0 {
		m.notifierTransport = http.DefaultTransport.(*http.Transport).Clone()
		m.notifier, amTargets, err = startNotifier(promCfg, opts.Alertmanagers, m.notifierTransport, opts.Logger.With("component", "notifier"), opts.Registerer)
		if err != nil {
			return nil, nil, err
		}
		// Links in Alertmanager lead to the expression, relative to no UI:
		// the server has none.
		m.sendToAlertmanagers = rules.SendAlerts(m.notifier, "")
	}
	m.rules = m.newRules(opts, appendable, loader, promqlParser)
	if err := m.rules.Update(opts.EvaluationInterval, ruleFiles, labels.EmptyLabels(), "", nil); err != nil {
		return nil, nil, fmt.Errorf("load rules: %w", err)
	}
	return fsd, amTargets, nil
}

// newAppendable returns what scraping and rules append to: the TSDB and,
// with remote write, writers that queue what was committed to the
// endpoints too.
func (m *Monitor) newAppendable(opts Options) (storage.AppendableV2, error) {
	if len(opts.RemoteWrite) == 0 {
		return m.db, nil
	}
	metrics, err := newRemoteWriteMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	for _, rw := range opts.RemoteWrite {
		m.writers = append(m.writers, newRemoteWriter(rw, metrics, opts.Logger.With("component", "remote write")))
	}
	return &teeAppendable{primary: m.db, writers: m.writers, external: labels.FromMap(opts.ExternalLabels)}, nil
}

func newEngine(opts Options, promqlParser parser.Parser) *promql.Engine {
	evalInterval := opts.EvaluationInterval
	return promql.NewEngine(promql.EngineOpts{
		Logger:     opts.Logger.With("component", "query engine"),
		Reg:        opts.Registerer,
		MaxSamples: opts.Query.MaxSamples,
		Timeout:    opts.Query.Timeout,
		// The engine calls this for subqueries without a step (`x[5m:]`)
		// and has no default: a nil function would panic.
		NoStepSubqueryIntervalFn: func(int64) int64 { return evalInterval.Milliseconds() },
		// Always on in Prometheus since v2.33; Grafana relies on them.
		EnableAtModifier:     true,
		EnableNegativeOffset: true,
		Parser:               promqlParser,
	})
}

func (m *Monitor) newScraper(opts Options, promCfg *config.Config, appendable storage.AppendableV2) error {
	var err error
	m.scraper, err = scrape.NewManager(&scrape.Options{
		// The manager applies target updates at most this often (default
		// 5s); the first update is applied at once with
		// DiscoveryReloadOnStartup, later ones within this interval.
		DiscoveryReloadInterval:  model.Duration(100 * time.Millisecond),
		DiscoveryReloadOnStartup: true,
	}, opts.Logger.With("component", "scrape manager"), nil, nil, appendable, opts.Registerer)
	if err != nil {
		return fmt.Errorf("create scrape manager: %w", err)
	}
	if err := m.scraper.ApplyConfig(promCfg); err != nil {
		return fmt.Errorf("apply scrape config: %w", err)
	}
	return nil
}

// newRules returns the rules manager, which hands the alerts to sendAlerts.
func (m *Monitor) newRules(opts Options, appendable storage.AppendableV2, loader *fsLoader, promqlParser parser.Parser) *rules.Manager {
	resendDelay := opts.ResendDelay
	if resendDelay == 0 {
		resendDelay = opts.EvaluationInterval
	}
	return rules.NewManager(&rules.ManagerOptions{
		NameValidationScheme: model.UTF8Validation,
		// Templates may use $externalURL and pathPrefix, which dereference it.
		ExternalURL:     &url.URL{},
		QueryFunc:       rules.EngineQueryFunc(m.engine, m.db),
		NotifyFunc:      m.sendAlerts,
		Context:         m.ctx,
		AppendableV2:    appendable,
		Queryable:       m.db,
		Logger:          opts.Logger.With("component", "rule manager"),
		Registerer:      opts.Registerer,
		OutageTolerance: outageTolerance,
		ForGracePeriod:  forGracePeriod,
		ResendDelay:     resendDelay,
		GroupLoader:     loader,
		Parser:          promqlParser,
		// Groups each run on their own goroutine; this also evaluates a
		// group's independent rules (the guests group's recording rules)
		// side by side, at most 4 at once (Prometheus's default), so that
		// all rules of a 1,000-host fleet evaluate within a second
		// (alerts/bench_test.go evaluates with the same options).
		ConcurrentEvalsEnabled: true,
		MaxConcurrentEvals:     4,
	})
}

// run starts the goroutines: the remote writers (on a context of their
// own, as they run until the appends end), the notifier, the scrape and
// rules managers and the file_sd reader.
func (m *Monitor) run(ctx context.Context, opts Options, fsd *fileSD, amTargets chan map[string][]*targetgroup.Group) {
	writerCtx, writerCancel := context.WithCancel(context.WithoutCancel(ctx))
	m.writerCancel = writerCancel
	for _, w := range m.writers {
		m.writersWG.Add(1)
		go func() {
			defer m.writersWG.Done()
			w.run(writerCtx)
		}()
	}
	if m.notifier != nil {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.notifier.Run(amTargets)
		}()
	}
	m.wg.Add(2)
	go func() {
		defer m.wg.Done()
		if err := m.scraper.Run(m.targetSets); err != nil {
			m.logger.Error("scrape manager stopped", "err", err)
		}
	}()
	go func() {
		defer m.wg.Done()
		m.rules.Run()
	}()
	if fsd != nil {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.runFileSD(fsd, opts.ScrapeInterval)
		}()
	}
}

// awaitStart returns once every target has a scrape loop and every
// Alertmanager is known to the notifier.
func (m *Monitor) awaitStart(opts Options, targetSet []*targetgroup.Group) error {
	if len(opts.Targets) > 0 || len(m.fileGroups) > 0 || m.selfGroup != nil {
		if err := m.applyTargets(targetSet, opts.Targets); err != nil {
			return err
		}
	}
	if m.notifier != nil {
		return m.awaitAlertmanagers(len(opts.Alertmanagers))
	}
	return nil
}

// abort releases what Start opened before the managers ran.
func (m *Monitor) abort(err error) error {
	m.cancel()
	if cerr := m.db.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close tsdb: %w", cerr))
	}
	return err
}

func (o *Options) withDefaults() error {
	if o.DataDir == "" {
		return errors.New("monitoring options: data dir is empty")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registerer == nil {
		// The scrape manager registers its metrics unconditionally.
		o.Registerer = prometheus.NewRegistry()
	}
	if o.ScrapeInterval == 0 {
		o.ScrapeInterval = DefaultScrapeInterval
	}
	if o.ScrapeTimeout == 0 {
		o.ScrapeTimeout = min(defaultScrapeTimeout, o.ScrapeInterval)
	}
	if o.EvaluationInterval == 0 {
		o.EvaluationInterval = DefaultEvaluationInterval
	}
	// Prometheus durations have millisecond resolution.
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"scrape interval", o.ScrapeInterval},
		{"scrape timeout", o.ScrapeTimeout},
		{"evaluation interval", o.EvaluationInterval},
	} {
		if d.v < time.Millisecond {
			return fmt.Errorf("monitoring options: %s %s is below 1ms", d.name, d.v)
		}
	}
	if o.ScrapeTimeout > o.ScrapeInterval {
		return fmt.Errorf("monitoring options: scrape timeout %s is longer than the scrape interval %s", o.ScrapeTimeout, o.ScrapeInterval)
	}
	if o.ResendDelay < 0 || o.Retention < 0 {
		return errors.New("monitoring options: resend delay and retention must not be negative")
	}
	if err := o.Query.withDefaults(); err != nil {
		return err
	}
	if o.RetentionSize < 0 {
		return fmt.Errorf("monitoring options: RetentionSize %d must not be negative", o.RetentionSize)
	}
	if o.SelfAddress != "" {
		if _, port, err := net.SplitHostPort(o.SelfAddress); err != nil || port == "" {
			return fmt.Errorf("monitoring options: SelfAddress %q is not host:port", o.SelfAddress)
		}
	}
	return errors.Join(validateFileSD(o.FileSD), validateAlertmanagers(o.Alertmanagers), validateRemoteWrite(o.RemoteWrite))
}

// SetTargets replaces the static targets (Options.Targets); those of
// Options.FileSD stay. It returns once the scrape manager runs a scrape loop
// for every target and none for removed ones.
func (m *Monitor) SetTargets(targets []Target) error {
	groups, err := targetGroups(targets)
	if err != nil {
		return err
	}
	return m.applyTargets(groups, targets)
}

func (m *Monitor) applyTargets(groups []*targetgroup.Group, targets []Target) error {
	m.targetsMu.Lock()
	defer m.targetsMu.Unlock()
	if m.scrapeStopped {
		return ErrStopped
	}
	m.staticGroups, m.staticTargets = groups, targets
	want := m.sendTargetsLocked()
	if m.ctx.Err() != nil {
		return ErrStopped
	}
	if err := m.awaitTargets(want); err != nil {
		return fmt.Errorf("apply scrape targets: %w", err)
	}
	return nil
}

// Query evaluates an instant PromQL query at the given time. Scalar results
// come back as a one-sample vector without labels, as rule queries do.
func (m *Monitor) Query(ctx context.Context, expr string, at time.Time) (promql.Vector, error) {
	ctx, release, err := m.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	q, err := m.engine.NewInstantQuery(ctx, m.db, nil, expr, at)
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", expr, err)
	}
	defer q.Close()
	res := q.Exec(ctx)
	if res.Err != nil {
		return nil, fmt.Errorf("query %q: %w", expr, res.Err)
	}
	switch v := res.Value.(type) {
	case promql.Vector:
		return v, nil
	case promql.Scalar:
		return promql.Vector{{T: v.T, F: v.V, Metric: labels.EmptyLabels()}}, nil
	default:
		return nil, fmt.Errorf("query %q: result is a %s, not a vector", expr, res.Value.Type())
	}
}

// QueryRange evaluates a PromQL range query, as Grafana's panels do.
func (m *Monitor) QueryRange(ctx context.Context, expr string, start, end time.Time, step time.Duration) (promql.Matrix, error) {
	ctx, release, err := m.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	q, err := m.engine.NewRangeQuery(ctx, m.db, nil, expr, start, end, step)
	if err != nil {
		return nil, fmt.Errorf("range query %q: %w", expr, err)
	}
	defer q.Close()
	res := q.Exec(ctx)
	if res.Err != nil {
		return nil, fmt.Errorf("range query %q: %w", expr, res.Err)
	}
	mat, err := res.Matrix()
	if err != nil {
		return nil, fmt.Errorf("range query %q: %w", expr, err)
	}
	// Close hands the result's point slices back to the engine's pools, so
	// the caller must get copies.
	out := make(promql.Matrix, len(mat))
	for i, s := range mat {
		out[i] = promql.Series{Metric: s.Metric, Floats: slices.Clone(s.Floats)}
		for _, h := range s.Histograms {
			out[i].Histograms = append(out[i].Histograms, promql.HPoint{T: h.T, H: h.H.Copy()})
		}
	}
	return out, nil
}

// acquire guards a query against Stop: the returned context is cancelled
// when Stop begins, and Stop waits for release before closing the TSDB.
func (m *Monitor) acquire(ctx context.Context) (context.Context, func(), error) {
	m.mu.RLock()
	if m.stopped {
		m.mu.RUnlock()
		return nil, nil, ErrStopped
	}
	ctx, cancel := context.WithCancel(ctx)
	stopAfter := context.AfterFunc(m.ctx, cancel)
	return ctx, func() {
		stopAfter()
		cancel()
		m.mu.RUnlock()
	}, nil
}

// Alerts returns the current pending and firing alerts of all rule groups,
// sorted by name and then label set.
func (m *Monitor) Alerts() []Alert {
	type entry struct {
		labels labels.Labels
		alert  Alert
	}
	var all []entry
	for _, r := range m.rules.AlertingRules() {
		for _, a := range r.ActiveAlerts() {
			all = append(all, entry{a.Labels, convertAlert(a)})
		}
	}
	slices.SortFunc(all, func(a, b entry) int {
		if c := strings.Compare(a.alert.Name, b.alert.Name); c != 0 {
			return c
		}
		return labels.Compare(a.labels, b.labels)
	})
	out := make([]Alert, len(all))
	for i, e := range all {
		out[i] = e.alert
	}
	return out
}

// sendAlerts is the rules manager's NotifyFunc. The manager calls it after
// every evaluation of every alerting rule, mostly with nothing to send.
func (m *Monitor) sendAlerts(ctx context.Context, expr string, alerts ...*rules.Alert) {
	if len(alerts) == 0 {
		return
	}
	if m.sendToAlertmanagers != nil {
		// Only queues them: the notifier sends from its own goroutines.
		m.sendToAlertmanagers(ctx, expr, alerts...)
	}
	if m.notify == nil {
		return
	}
	out := make([]Alert, len(alerts))
	for i, a := range alerts {
		out[i] = convertAlert(a)
	}
	m.notify(ctx, out)
}

func convertAlert(a *rules.Alert) Alert {
	ls := make(model.LabelSet, a.Labels.Len())
	a.Labels.Range(func(l labels.Label) { ls[model.LabelName(l.Name)] = model.LabelValue(l.Value) })
	return Alert{
		Name:        a.Labels.Get(labels.AlertName),
		Labels:      a.Labels.Map(),
		Annotations: a.Annotations.Map(),
		State:       a.State.String(),
		Value:       a.Value,
		ActiveAt:    a.ActiveAt,
		FiredAt:     a.FiredAt,
		ResolvedAt:  a.ResolvedAt,
		Fingerprint: ls.Fingerprint().String(),
	}
}

// flushRemoteWrite closes the remote-write queues and waits for them to be
// sent, at most remoteFlushDeadline; then it abandons the rest.
func (m *Monitor) flushRemoteWrite() {
	if m.writerCancel == nil {
		return
	}
	for _, w := range m.writers {
		w.close()
	}
	done := make(chan struct{})
	go func() {
		m.writersWG.Wait()
		close(done)
	}()
	deadline := time.NewTimer(remoteFlushDeadline)
	defer deadline.Stop()
	select {
	case <-done:
	case <-deadline.C:
		m.logger.Warn("remote write: flush deadline reached, abandoning unsent samples", "deadline", remoteFlushDeadline)
		m.writerCancel()
		<-done
	}
	m.writerCancel()
}

// Stop stops rule evaluation, alert forwarding, file discovery and
// scraping, waits for them, sends what the remote-write queues hold (at most
// remoteFlushDeadline), and closes the TSDB. It is idempotent: later calls
// return the first call's result.
func (m *Monitor) Stop() error {
	m.stopOnce.Do(func() { m.stopErr = m.stop() })
	return m.stopErr
}

func (m *Monitor) stop() error {
	// Rules first: they read what scraping writes, and their last
	// evaluation must finish before the TSDB closes.
	m.rules.Stop()
	if m.notifier != nil {
		m.notifier.Stop()
	}

	m.targetsMu.Lock()
	m.scrapeStopped = true
	m.scraper.Stop()
	m.targetsMu.Unlock()

	m.cancel()
	m.wg.Wait()

	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()

	if m.notifierTransport != nil {
		m.notifierTransport.CloseIdleConnections()
	}
	// No appends are left: send what the queues hold, within a deadline.
	m.flushRemoteWrite()

	var errs []error
	if err := m.engine.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close query engine: %w", err))
	}
	if err := m.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close tsdb: %w", err))
	}
	m.logger.Info("monitoring stopped")
	return errors.Join(errs...)
}
