// Package promapi answers the part of Prometheus' HTTP query API that
// Grafana uses, so the caretaker server can be a Grafana "Prometheus" data
// source without a Prometheus beside it: query, query_range,
// query_exemplars (always empty: the TSDB keeps no exemplars), format_query,
// series, labels, label values, rules, alerts, metadata (empty for now) and
// status/buildinfo.
//
// Why not web/api/v1.NewAPI: in prometheus v0.316.0 that package pulls in
// modules this module does not require (julienschmidt/httprouter, the
// OpenTelemetry collector, pb33f/libopenapi, json-iterator as a direct
// dependency, …), and its constructor wants some forty dependencies (scrape,
// notifier, remote write, TSDB admin, config, flags) an appliance does not
// expose. So the handlers here follow web/api/v1/api.go of v0.316.0 line by
// line for the endpoints served: the same parameter parsing, error types,
// status codes and messages, the same promql engine calls and storage
// queries, and the same response structs. The JSON of vectors and matrices
// is a port of web/api/v1/json_codec.go and util/jsonutil (both need
// json-iterator) onto encoding/json; scalars, strings, labels and rule data
// use Prometheus' own MarshalJSON methods, as Prometheus does.
// util/httputil (gzip/deflate, query-log context) is used as is.
package promapi

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/httputil"
)

// RulesRetriever is the rules manager as the API reads it; it is
// web/api/v1.RulesRetriever, and *rules.Manager satisfies it.
type RulesRetriever interface {
	RuleGroups() []*rules.Group
	AlertingRules() []*rules.AlertingRule
}

// Options are the API's dependencies.
type Options struct {
	// Queryable is the storage that series, labels and label values read
	// and that queries run on (a *tsdb.DB).
	Queryable storage.Queryable
	// Engine runs PromQL (a *promql.Engine). Its own timeout, max samples
	// and default lookback delta apply.
	Engine promql.QueryEngine
	// Rules serves /api/v1/rules and /api/v1/alerts; nil answers them
	// with no groups and no alerts.
	Rules RulesRetriever
	// Parser parses match[] selectors; default parser.NewParser(parser.Options{}),
	// which is what the embedded engine uses.
	Parser parser.Parser
	Logger *slog.Logger
	// QueryTimeout bounds each query and query_range in addition to the
	// engine's timeout and the request's `timeout` parameter; 0 means none.
	QueryTimeout time.Duration
	// MaxConcurrency bounds the queries and query_ranges that run at once,
	// as Prometheus' --query.max-concurrency does; one more waits for a
	// slot until its context ends (its client leaves or its timeout
	// passes). 0 means no limit.
	MaxConcurrency int
	// LookbackDelta overrides the engine's default lookback delta for
	// queries without a `lookback_delta` parameter; 0 keeps the engine's.
	LookbackDelta time.Duration
	// Now is the clock for the default `time` of instant queries; default
	// time.Now.
	Now func() time.Time
}

// API serves the Prometheus query API.
type API struct {
	queryable storage.Queryable
	engine    promql.QueryEngine
	rules     RulesRetriever
	parser    parser.Parser
	logger    *slog.Logger
	timeout   time.Duration
	slots     chan struct{} // one per running query; nil: no limit
	lookback  time.Duration
	now       func() time.Time
	buildInfo prometheusVersion
	handler   http.Handler
}

// New returns the API over opts' storage, engine and rules.
func New(opts Options) (*API, error) {
	if opts.Queryable == nil {
		return nil, errors.New("prometheus api: no queryable")
	}
	if opts.Engine == nil {
		return nil, errors.New("prometheus api: no query engine")
	}
	if opts.QueryTimeout < 0 || opts.LookbackDelta < 0 || opts.MaxConcurrency < 0 {
		return nil, fmt.Errorf("prometheus api: negative query timeout %s, lookback delta %s or max concurrency %d", opts.QueryTimeout, opts.LookbackDelta, opts.MaxConcurrency)
	}
	a := &API{
		queryable: opts.Queryable,
		engine:    opts.Engine,
		rules:     opts.Rules,
		parser:    opts.Parser,
		logger:    opts.Logger,
		timeout:   opts.QueryTimeout,
		lookback:  opts.LookbackDelta,
		now:       opts.Now,
		buildInfo: readBuildInfo(),
	}
	if opts.MaxConcurrency > 0 {
		a.slots = make(chan struct{}, opts.MaxConcurrency)
	}
	if a.parser == nil {
		a.parser = parser.NewParser(parser.Options{})
	}
	if a.logger == nil {
		a.logger = slog.New(slog.DiscardHandler)
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.rules == nil {
		a.rules = noRules{}
	}
	a.handler = a.routes()
	return a, nil
}

type noRules struct{}

func (noRules) RuleGroups() []*rules.Group           { return nil }
func (noRules) AlertingRules() []*rules.AlertingRule { return nil }

// The endpoints, with the methods Prometheus accepts for each.
func (a *API) endpoints() []struct {
	path    string
	methods []string
	fn      apiFunc
} {
	getPost := []string{http.MethodGet, http.MethodPost}
	get := []string{http.MethodGet}
	return []struct {
		path    string
		methods []string
		fn      apiFunc
	}{
		{"/api/v1/query", getPost, a.query},
		{"/api/v1/query_range", getPost, a.queryRange},
		{"/api/v1/query_exemplars", getPost, a.queryExemplars},
		{"/api/v1/format_query", getPost, a.formatQuery},
		{"/api/v1/series", getPost, a.series},
		{"/api/v1/labels", getPost, a.labelNames},
		{"/api/v1/label/{name}/values", get, a.labelValues},
		{"/api/v1/metadata", get, a.metricMetadata},
		{"/api/v1/rules", get, a.rulesList},
		{"/api/v1/alerts", get, a.alerts},
		{"/api/v1/status/buildinfo", get, a.serveBuildInfo},
	}
}

// Paths lists the http.ServeMux patterns (without methods) that Handler
// serves, so the server can route them here and the rest of /api/v1/ to
// its own API.
func (a *API) Paths() []string {
	var out []string
	for _, e := range a.endpoints() {
		out = append(out, e.path)
	}
	return out
}

// Handler serves the paths of Paths, which include the /api/v1 prefix: mount
// it on the server's mux for each of them, unstripped.
func (a *API) Handler() http.Handler { return a.handler }

func (a *API) routes() http.Handler {
	mux := http.NewServeMux()
	for _, e := range a.endpoints() {
		h := a.wrap(e.fn)
		for _, m := range e.methods {
			mux.Handle(m+" "+e.path, h)
		}
		// Prometheus answers OPTIONS on every API path (CORS preflight)
		// with 204.
		mux.Handle(http.MethodOptions+" "+e.path, a.wrap(func(*http.Request) apiFuncResult { return apiFuncResult{} }))
	}
	return mux
}

// wrap is web/api/v1's Register.wrap without CORS, readiness and OpenAPI.
func (a *API) wrap(f apiFunc) http.Handler {
	hf := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		result := f(r)
		if result.finalizer != nil {
			defer result.finalizer()
		}
		if result.err != nil {
			a.respondError(w, result.err, result.data)
			return
		}
		if result.data != nil {
			a.respond(w, r, result.data, result.warnings, r.FormValue("query"))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return httputil.CompressionHandler{Handler: hf}
}
