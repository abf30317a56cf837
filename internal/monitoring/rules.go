package monitoring

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/rules"
)

// ruleFilePattern selects the rule files at the root of Options.Rules.
const ruleFilePattern = "*.rules.yml"

// fsLoader is a rules.GroupLoader that reads rule files from an fs.FS, so
// the rules manager evaluates the files the server embeds (or a directory)
// without copying them to disk. The rules manager identifies groups by the
// file name given to Load, which here is the name inside the FS.
type fsLoader struct {
	fsys   fs.FS
	parser parser.Parser
	logger *slog.Logger
}

var _ rules.GroupLoader = (*fsLoader)(nil)

// Load reads and validates one rule file. Every error names the file, as
// rulefmt.ParseFile's do.
func (l *fsLoader) Load(name string, ignoreUnknownFields bool, scheme model.ValidationScheme) (*rulefmt.RuleGroups, []error) {
	b, err := fs.ReadFile(l.fsys, name)
	if err != nil {
		return nil, []error{fmt.Errorf("%s: %w", name, err)}
	}
	groups, errs := rulefmt.Parse(b, ignoreUnknownFields, scheme, l.parser, l.logger.With("file", name))
	for i := range errs {
		errs[i] = fmt.Errorf("%s: %w", name, errs[i])
	}
	return groups, errs
}

// Parse parses a rule's expression.
func (l *fsLoader) Parse(query string) (parser.Expr, error) {
	return l.parser.ParseExpr(query)
}

// validate loads every file as the rules manager will, strictly (unknown
// fields are errors), and reports all problems of all files at once.
func (l *fsLoader) validate(names []string) error {
	var errs []error
	for _, name := range names {
		_, ferrs := l.Load(name, false, model.UTF8Validation)
		errs = append(errs, ferrs...)
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid rule files: %w", errors.Join(errs...))
	}
	return nil
}

// listRuleFiles returns the rule files at the root of fsys, sorted.
func listRuleFiles(fsys fs.FS) ([]string, error) {
	if fsys == nil {
		return nil, nil
	}
	names, err := fs.Glob(fsys, ruleFilePattern)
	if err != nil {
		return nil, fmt.Errorf("list rule files: %w", err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("list rule files: no %s files", ruleFilePattern)
	}
	return names, nil
}

// ValidateRules checks the rule files of fsys as Start does, without
// starting anything: for a server's --check mode or a CI step.
func ValidateRules(fsys fs.FS) error {
	names, err := listRuleFiles(fsys)
	if err != nil {
		return err
	}
	l := &fsLoader{fsys: fsys, parser: parser.NewParser(parser.Options{}), logger: slog.New(slog.DiscardHandler)}
	return l.validate(names)
}

// RuleGroup is a loaded rule group and its rules.
type RuleGroup struct {
	Name           string
	File           string
	Interval       time.Duration
	LastEvaluation time.Time
	Rules          []Rule
}

// Rule is one alerting or recording rule as the rules manager runs it.
type Rule struct {
	Kind          string // "alerting" or "recording"
	Name          string // alert name or recorded metric name
	Expr          string
	For           time.Duration
	KeepFiringFor time.Duration
	Labels        map[string]string
	Annotations   map[string]string
	Health        string // "ok", "err" or "unknown"
	LastError     string
	LastEvaluated time.Time
}

// RuleGroups returns the loaded rule groups sorted by file and name, for
// explaining why an alert fires.
func (m *Monitor) RuleGroups() []RuleGroup {
	groups := m.rules.RuleGroups()
	out := make([]RuleGroup, 0, len(groups))
	for _, g := range groups {
		rg := RuleGroup{Name: g.Name(), File: g.File(), Interval: g.Interval(), LastEvaluation: g.GetLastEvaluation()}
		for _, r := range g.Rules() {
			rule := Rule{
				Kind:          "recording",
				Name:          r.Name(),
				Expr:          r.Query().String(),
				Labels:        r.Labels().Map(),
				Health:        string(r.Health()),
				LastEvaluated: r.GetEvaluationTimestamp(),
			}
			if err := r.LastError(); err != nil {
				rule.LastError = err.Error()
			}
			if ar, ok := r.(*rules.AlertingRule); ok {
				rule.Kind = "alerting"
				rule.For = ar.HoldDuration()
				rule.KeepFiringFor = ar.KeepFiringFor()
				rule.Annotations = ar.Annotations().Map()
			}
			rg.Rules = append(rg.Rules, rule)
		}
		out = append(out, rg)
	}
	return out
}
