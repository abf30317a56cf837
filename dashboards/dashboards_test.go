package dashboards

import (
	"bufio"
	"encoding/json"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"

	"caretaker/internal/agentapi"
	"caretaker/internal/leader"
	"caretaker/remediation"
	"caretaker/remediation/journal"
	"caretaker/remediation/policy"
)

// The template variables every dashboard filtering by host or guest
// cluster must define exactly so: the host list comes from the agents'
// scrape health, so a host whose agent is down still shows up.
const (
	hostVariableQuery    = `label_values(up{job="caretaker-agent"}, host)`
	clusterVariableQuery = `label_values(caretaker_kvm_domain_info, cluster)`
)

// dashboard is the part of Grafana's dashboard model the tests read.
type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type variable struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Query any    `json:"query"` // a string for datasource variables, an object for query ones
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource map[string]any `json:"datasource"`
	Targets    []struct {
		RefID      string         `json:"refId"`
		Expr       string         `json:"expr"`
		Datasource map[string]any `json:"datasource"`
	} `json:"targets"`
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

// board is one dashboard file, parsed.
type board struct {
	file string
	dashboard
}

// query is one panel target, with its expression as Grafana would send it
// for "all hosts, all clusters" over a short range.
type query struct {
	file, panel, refID string
	raw, expr          string
}

func (q query) String() string {
	return q.file + ": panel " + strconv.Quote(q.panel) + " target " + q.refID + ": " + q.raw
}

func loadBoards(t *testing.T) []board {
	t.Helper()
	files, err := fs.Glob(Files, "*.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no dashboards embedded")
	}
	var boards []board
	for _, f := range files {
		data, err := fs.ReadFile(Files, f)
		if err != nil {
			t.Fatal(err)
		}
		b := board{file: f}
		if err := json.Unmarshal(data, &b.dashboard); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		boards = append(boards, b)
	}
	return boards
}

// flatPanels returns the board's panels, rows' nested panels included.
func (b board) flatPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(b.Panels)
	return out
}

func (b board) queries() []query {
	var out []query
	for _, p := range b.flatPanels() {
		for _, tg := range p.Targets {
			out = append(out, query{file: b.file, panel: p.Title, refID: tg.RefID, raw: tg.Expr, expr: substitute(tg.Expr)})
		}
	}
	return out
}

// grafanaVariables are the variables the dashboards use, replaced by what
// Grafana sends for "All" (allValue .*) and a short time range.
var grafanaVariables = strings.NewReplacer(
	"${__rate_interval}", "1m", "$__rate_interval", "1m",
	"${__interval}", "1m", "$__interval", "1m",
	"${__range}", "5m", "$__range", "5m",
	"${host}", ".*", "$host", ".*",
	"${cluster}", ".*", "$cluster", ".*",
)

func substitute(expr string) string { return grafanaVariables.Replace(expr) }

func newParser() parser.Parser { return parser.NewParser(parser.Options{}) }

// TestDashboards checks each dashboard's shape: a Prometheus data-source
// variable used by every panel, the host and cluster variables as the
// fleet defines them, unique caretaker- uids, units on every panel that
// shows numbers, and queries that parse once Grafana's variables are
// substituted.
func TestDashboards(t *testing.T) {
	t.Parallel()
	p := newParser()
	uids := map[string]string{}
	titles := map[string]string{}
	for _, b := range loadBoards(t) {
		name := strings.TrimSuffix(b.file, ".json")
		if want := "caretaker-" + name; b.UID != want {
			t.Errorf("%s: uid %q, want %q", b.file, b.UID, want)
		}
		if other, dup := uids[b.UID]; dup {
			t.Errorf("%s: uid %q is also the uid of %s", b.file, b.UID, other)
		}
		uids[b.UID] = b.file
		if other, dup := titles[b.Title]; dup || b.Title == "" {
			t.Errorf("%s: title %q is empty or also the title of %s", b.file, b.Title, other)
		}
		titles[b.Title] = b.file

		vars := map[string]variable{}
		for _, v := range b.Templating.List {
			vars[v.Name] = v
		}
		if ds, ok := vars["datasource"]; !ok || ds.Type != "datasource" || ds.Query != "prometheus" {
			t.Errorf("%s: no data-source variable `datasource` of type prometheus: %+v", b.file, ds)
		}
		for name, want := range map[string]string{"host": hostVariableQuery, "cluster": clusterVariableQuery} {
			v, ok := vars[name]
			if !ok {
				continue
			}
			q, _ := v.Query.(map[string]any)
			if v.Type != "query" || q["query"] != want {
				t.Errorf("%s: variable %s: want a query variable %s, got %+v", b.file, name, want, v)
			}
		}

		uses := map[string]bool{}
		for _, pn := range b.flatPanels() {
			if pn.Type == "row" {
				continue
			}
			if pn.Datasource["uid"] != "${datasource}" {
				t.Errorf("%s: panel %q: datasource %v, want uid ${datasource}", b.file, pn.Title, pn.Datasource)
			}
			if pn.FieldConfig.Defaults.Unit == "" {
				t.Errorf("%s: panel %q has no unit", b.file, pn.Title)
			}
			if len(pn.Targets) == 0 {
				t.Errorf("%s: panel %q has no queries", b.file, pn.Title)
			}
			for _, tg := range pn.Targets {
				if tg.Datasource["uid"] != "${datasource}" {
					t.Errorf("%s: panel %q target %s: datasource %v, want uid ${datasource}", b.file, pn.Title, tg.RefID, tg.Datasource)
				}
				for _, v := range []string{"host", "cluster"} {
					if strings.Contains(tg.Expr, "$"+v) {
						uses[v] = true
						if !strings.Contains(tg.Expr, `=~"$`+v+`"`) {
							t.Errorf("%s: panel %q target %s: $%s outside a =~ matcher (a multi-value variable needs a regex): %s", b.file, pn.Title, tg.RefID, v, tg.Expr)
						}
					}
				}
			}
		}
		for v := range uses {
			if _, ok := vars[v]; !ok {
				t.Errorf("%s: queries use $%s but the dashboard has no such variable", b.file, v)
			}
		}

		for _, q := range b.queries() {
			if strings.Contains(q.expr, "$") {
				t.Errorf("%s: a Grafana variable the test does not know is left: %s", q, q.expr)
				continue
			}
			if _, err := p.ParseExpr(q.expr); err != nil {
				t.Errorf("%s: does not parse: %v", q, err)
			}
		}
	}
}

// metricNames returns the metric names an expression selects, by exact
// name; a selector matching names by regex names no metric of its own.
func metricNames(p parser.Parser, expr string) ([]string, error) {
	e, err := p.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		if vs.Name != "" {
			names = append(names, vs.Name)
			return nil
		}
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				names = append(names, m.Value)
			}
		}
		return nil
	})
	return names, nil
}

// builtinNames are the series Prometheus itself writes: per-target scrape
// health and the rules manager's alert state.
var builtinNames = []string{
	"up", "scrape_duration_seconds", "scrape_samples_scraped",
	"scrape_samples_post_metric_relabeling", "scrape_series_added",
	"ALERTS", "ALERTS_FOR_STATE",
}

// conditionalNames are metrics a collector exports only where the source
// has them, so neither golden file nor a scrape of this machine shows them.
var conditionalNames = map[string]string{
	// libvirt fills block.N.errors only for drivers that count them (Xen's
	// oo_req); QEMU guests never report it.
	"caretaker_kvm_domain_block_errors_total": "collectors/kvm: only where libvirt reports block errors",
	// One series per host the acting server follows (agents.events); a
	// server without hosts, as here, has none.
	"caretaker_event_stream_up": "internal/server/events.go: per host the acting server holds a stream to",
}

// goldenFiles are the whole-scrape golden files of the agent and its
// collectors: what the collectors export, checked by their own tests.
var goldenFiles = []string{
	"../internal/agent/testdata/metrics.golden.prom",
	"../collectors/kvm/testdata/emit/running.metrics",
	// A guest meant to run that crashed: the unexpected-state series the
	// guest alerts read exist only for such guests.
	"../collectors/kvm/testdata/emit/crashed-intended.metrics",
	"../collectors/overlay/testdata/lab.golden.prom",
}

var sampleName = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]`)

// staticExported builds, without root or libvirt, the set of metric names
// someone exports: the golden files, the server's remediation metrics from
// a real engine's registry, and Prometheus' own series.
func staticExported(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, f := range goldenFiles {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if fields := strings.Fields(line); len(fields) == 4 && fields[0] == "#" && fields[1] == "TYPE" {
				addFamily(out, fields[2], fields[3], f)
			} else if m := sampleName.FindStringSubmatch(line); m != nil {
				out[m[1]] = f
			}
		}
		fh.Close()
		if err := sc.Err(); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}

	reg := prometheus.NewRegistry()
	engine := newEngine(t, reg, nil)
	defer engine.Close()
	// A clustered server's election metrics.
	if _, err := leader.New(leader.Options{TTL: 2 * time.Second, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		addFamily(out, mf.GetName(), strings.ToLower(mf.GetType().String()), "the remediation engine")
	}
	for _, n := range builtinNames {
		out[n] = "Prometheus"
	}
	for n, why := range conditionalNames {
		out[n] = why
	}
	return out
}

// addFamily adds a metric family's series names: a histogram's or
// summary's samples are its _bucket, _sum and _count series.
func addFamily(out map[string]string, name, typ, source string) {
	switch typ {
	case "histogram", "gaugehistogram":
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			out[name+s] = source
		}
	case "summary":
		for _, s := range []string{"_sum", "_count"} {
			out[name+s] = source
		}
		out[name] = source
	default:
		out[name] = source
	}
}

// newEngine returns a real remediation engine whose metrics are registered
// on reg, with its journal in a temporary directory.
func newEngine(t *testing.T, reg prometheus.Registerer, hosts remediation.Hosts) *remediation.Engine {
	t.Helper()
	j, err := journal.Open(filepath.Join(t.TempDir(), "journal.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	if hosts == nil {
		hosts = agentapi.NewHosts("")
	}
	e, err := remediation.New(remediation.Options{Policy: policy.Default(), Journal: j, Hosts: hosts, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// use is one dashboard query or alert rule and the metric names it uses.
type use struct {
	where, expr string
	names       []string
}

// usedNames returns the uses of every dashboard query and every rule in
// alerts/*.rules.yml.
func usedNames(t *testing.T) []use {
	t.Helper()
	p := newParser()
	var uses []use
	for _, b := range loadBoards(t) {
		for _, q := range b.queries() {
			names, err := metricNames(p, q.expr)
			if err != nil {
				t.Errorf("%s: %v", q, err)
				continue
			}
			uses = append(uses, use{where: q.file + ": panel " + strconv.Quote(q.panel), expr: q.raw, names: names})
		}
	}
	ruleFiles, err := filepath.Glob("../alerts/*.rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	if len(ruleFiles) == 0 {
		t.Fatal("no alerts/*.rules.yml found")
	}
	for _, f := range ruleFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var rf struct {
			Groups []struct {
				Rules []struct {
					Alert, Record, Expr string
				}
			}
		}
		if err := yaml.Unmarshal(data, &rf); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				names, err := metricNames(p, r.Expr)
				if err != nil {
					t.Errorf("%s: rule %s%s: %v", f, r.Alert, r.Record, err)
					continue
				}
				uses = append(uses, use{where: filepath.ToSlash(f) + ": rule " + r.Alert + r.Record, expr: r.Expr, names: names})
			}
		}
	}
	return uses
}

// checkNamesExported fails for every name a dashboard query or alert rule
// uses that nobody in exported exports; recording rules' outputs count as
// exported.
func checkNamesExported(t *testing.T, exported map[string]string) {
	t.Helper()
	uses := usedNames(t)
	all := maps.Clone(exported)
	recorded, err := recordedNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range recorded {
		all[n] = "a recording rule"
	}
	for _, u := range uses {
		for _, n := range u.names {
			if _, ok := all[n]; !ok {
				t.Errorf("%s uses %s, which no collector, the server or Prometheus exports:\n%s", u.where, n, strings.TrimSpace(u.expr))
			}
		}
	}
}

func recordedNames() ([]string, error) {
	files, err := filepath.Glob("../alerts/*.rules.yml")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var rf struct {
			Groups []struct{ Rules []struct{ Record string } }
		}
		if err := yaml.Unmarshal(data, &rf); err != nil {
			return nil, err
		}
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				if r.Record != "" {
					out = append(out, r.Record)
				}
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// TestMetricNamesExported checks, without root, that every metric a
// dashboard or an alert rule uses is exported by a collector (per its
// golden file), the server or Prometheus. The live test repeats the check
// with the names of a real scrape added.
func TestMetricNamesExported(t *testing.T) {
	t.Parallel()
	checkNamesExported(t, staticExported(t))
}
