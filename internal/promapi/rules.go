package promapi

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/rules"
)

// The types below are web/api/v1's, so the JSON keys and their order are
// Prometheus'.

type alertDiscovery struct {
	Alerts []*alert `json:"alerts"`
}

type alert struct {
	Labels          labels.Labels `json:"labels"`
	Annotations     labels.Labels `json:"annotations"`
	State           string        `json:"state"`
	ActiveAt        *time.Time    `json:"activeAt,omitempty"`
	KeepFiringSince *time.Time    `json:"keepFiringSince,omitempty"`
	Value           string        `json:"value"`
}

type ruleDiscovery struct {
	RuleGroups     []*ruleGroup `json:"groups"`
	GroupNextToken string       `json:"groupNextToken,omitempty"`
}

type ruleGroup struct {
	Name string `json:"name"`
	File string `json:"file"`
	// Alerting and recording rules share one array to keep their order.
	Rules          []any     `json:"rules"`
	Interval       float64   `json:"interval"`
	Limit          int       `json:"limit"`
	EvaluationTime float64   `json:"evaluationTime"`
	LastEvaluation time.Time `json:"lastEvaluation"`
}

type alertingRule struct {
	State          string           `json:"state"` // "pending", "firing" or "inactive"
	Name           string           `json:"name"`
	Query          string           `json:"query"`
	Duration       float64          `json:"duration"`
	KeepFiringFor  float64          `json:"keepFiringFor"`
	Labels         labels.Labels    `json:"labels"`
	Annotations    labels.Labels    `json:"annotations"`
	Alerts         []*alert         `json:"alerts"`
	Health         rules.RuleHealth `json:"health"`
	LastError      string           `json:"lastError,omitempty"`
	EvaluationTime float64          `json:"evaluationTime"`
	LastEvaluation time.Time        `json:"lastEvaluation"`
	Type           string           `json:"type"` // always "alerting"
}

type recordingRule struct {
	Name           string           `json:"name"`
	Query          string           `json:"query"`
	Labels         labels.Labels    `json:"labels"`
	Health         rules.RuleHealth `json:"health"`
	LastError      string           `json:"lastError,omitempty"`
	EvaluationTime float64          `json:"evaluationTime"`
	LastEvaluation time.Time        `json:"lastEvaluation"`
	Type           string           `json:"type"` // always "recording"
}

func (a *API) alerts(*http.Request) apiFuncResult {
	all := []*alert{}
	for _, r := range a.rules.AlertingRules() {
		all = append(all, toAPIAlerts(r.ActiveAlerts())...)
	}
	return apiFuncResult{data: &alertDiscovery{Alerts: all}}
}

func toAPIAlerts(in []*rules.Alert) []*alert {
	out := make([]*alert, len(in))
	for i, a := range in {
		out[i] = &alert{
			Labels:      a.Labels,
			Annotations: a.Annotations,
			State:       a.State.String(),
			ActiveAt:    &a.ActiveAt,
			Value:       strconv.FormatFloat(a.Value, 'e', -1, 64),
		}
		if !a.KeepFiringSince.IsZero() {
			out[i].KeepFiringSince = &a.KeepFiringSince
		}
	}
	return out
}

// rulesList is web/api/v1's rules: filters rule_name[], rule_group[],
// file[], match[] and type, exclude_alerts, and group_limit pagination.
func (a *API) rulesList(r *http.Request) apiFuncResult {
	if err := r.ParseForm(); err != nil {
		return apiFuncResult{err: &apiError{errorBadData, fmt.Errorf("error parsing form values: %w", err)}}
	}
	toSet := func(values []string) map[string]struct{} {
		set := make(map[string]struct{}, len(values))
		for _, v := range values {
			set[v] = struct{}{}
		}
		return set
	}
	rnSet := toSet(r.Form["rule_name[]"])
	rgSet := toSet(r.Form["rule_group[]"])
	fSet := toSet(r.Form["file[]"])

	matcherSets, err := a.parseMatchersParam(r.Form["match[]"])
	if err != nil {
		return apiFuncResult{err: &apiError{errorBadData, err}}
	}
	groups := a.rules.RuleGroups()
	res := &ruleDiscovery{}
	typ := strings.ToLower(r.URL.Query().Get("type"))
	if typ != "" && typ != "alert" && typ != "record" {
		return invalidParamError(fmt.Errorf("not supported value %q", typ), "type")
	}
	returnAlerts := typ == "" || typ == "alert"
	returnRecording := typ == "" || typ == "record"

	excludeAlerts := false
	if s := strings.ToLower(r.URL.Query().Get("exclude_alerts")); s != "" {
		if excludeAlerts, err = strconv.ParseBool(s); err != nil {
			return invalidParamError(fmt.Errorf("error converting exclude_alerts: %w", err), "exclude_alerts")
		}
	}
	maxGroups, nextToken, perr := parsePagination(r)
	if perr != nil {
		return *perr
	}

	rgs := make([]*ruleGroup, 0, len(groups))
	foundToken := false
	for _, grp := range groups {
		if maxGroups > 0 && nextToken != "" && !foundToken {
			if nextToken != groupToken(grp.File(), grp.Name()) {
				continue
			}
			foundToken = true
		}
		if _, ok := rgSet[grp.Name()]; len(rgSet) > 0 && !ok {
			continue
		}
		if _, ok := fSet[grp.File()]; len(fSet) > 0 && !ok {
			continue
		}
		g := &ruleGroup{
			Name:           grp.Name(),
			File:           grp.File(),
			Interval:       grp.Interval().Seconds(),
			Limit:          grp.Limit(),
			Rules:          []any{},
			EvaluationTime: grp.GetEvaluationTime().Seconds(),
			LastEvaluation: grp.GetLastEvaluation(),
		}
		for _, rr := range grp.Rules(matcherSets...) {
			if _, ok := rnSet[rr.Name()]; len(rnSet) > 0 && !ok {
				continue
			}
			lastError := ""
			if rr.LastError() != nil {
				lastError = rr.LastError().Error()
			}
			switch rule := rr.(type) {
			case *rules.AlertingRule:
				if !returnAlerts {
					continue
				}
				var active []*alert
				if !excludeAlerts {
					active = toAPIAlerts(rule.ActiveAlerts())
				}
				g.Rules = append(g.Rules, alertingRule{
					State:          rule.State().String(),
					Name:           rule.Name(),
					Query:          rule.Query().String(),
					Duration:       rule.HoldDuration().Seconds(),
					KeepFiringFor:  rule.KeepFiringFor().Seconds(),
					Labels:         rule.Labels(),
					Annotations:    rule.Annotations(),
					Alerts:         active,
					Health:         rule.Health(),
					LastError:      lastError,
					EvaluationTime: rule.GetEvaluationDuration().Seconds(),
					LastEvaluation: rule.GetEvaluationTimestamp(),
					Type:           "alerting",
				})
			case *rules.RecordingRule:
				if !returnRecording {
					continue
				}
				g.Rules = append(g.Rules, recordingRule{
					Name:           rule.Name(),
					Query:          rule.Query().String(),
					Labels:         rule.Labels(),
					Health:         rule.Health(),
					LastError:      lastError,
					EvaluationTime: rule.GetEvaluationDuration().Seconds(),
					LastEvaluation: rule.GetEvaluationTimestamp(),
					Type:           "recording",
				})
			default:
				return apiFuncResult{err: &apiError{errorInternal, fmt.Errorf("failed to assert type of rule '%v'", rule.Name())}}
			}
		}
		// A group whose rules were all filtered out is left out.
		if len(g.Rules) > 0 {
			if maxGroups > 0 && len(rgs) == int(maxGroups) {
				// One group beyond the page: there is a next page.
				res.GroupNextToken = groupToken(grp.File(), grp.Name())
				break
			}
			rgs = append(rgs, g)
		}
	}
	if maxGroups > 0 && nextToken != "" && !foundToken {
		return invalidParamError(fmt.Errorf("invalid group_next_token '%v'. were rule groups changed?", nextToken), "group_next_token")
	}
	res.RuleGroups = rgs
	return apiFuncResult{data: res}
}

func parsePagination(r *http.Request) (int64, string, *apiFuncResult) {
	maxGroups := r.URL.Query().Get("group_limit")
	nextToken := r.URL.Query().Get("group_next_token")
	if nextToken != "" && maxGroups == "" {
		res := invalidParamError(errors.New("group_limit needs to be present in order to paginate over the groups"), "group_next_token")
		return -1, "", &res
	}
	if maxGroups == "" {
		return -1, "", nil
	}
	n, err := strconv.ParseInt(maxGroups, 10, 32)
	if err != nil {
		res := invalidParamError(fmt.Errorf("group_limit needs to be a valid number: %w", err), "group_limit")
		return -1, "", &res
	}
	if n <= 0 {
		res := invalidParamError(errors.New("group_limit needs to be greater than 0"), "group_limit")
		return -1, "", &res
	}
	return n, nextToken, nil
}

func groupToken(file, group string) string {
	h := sha256.Sum256([]byte(file + ";" + group))
	return hex.EncodeToString(h[:])
}

// metricMetadata answers /api/v1/metadata with no metadata: the embedded
// scrape manager's target metadata is not exposed (yet). The limit
// parameters are still validated as Prometheus does.
func (a *API) metricMetadata(r *http.Request) apiFuncResult {
	if s := r.FormValue("limit"); s != "" {
		if _, err := strconv.Atoi(s); err != nil {
			return apiFuncResult{err: &apiError{errorBadData, errors.New("limit must be a number")}}
		}
	}
	if s := r.FormValue("limit_per_metric"); s != "" {
		if _, err := strconv.Atoi(s); err != nil {
			return apiFuncResult{err: &apiError{errorBadData, errors.New("limit_per_metric must be a number")}}
		}
	}
	return apiFuncResult{data: map[string][]struct{}{}}
}

// prometheusVersion is web/api/v1.PrometheusVersion.
type prometheusVersion struct {
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	Branch    string `json:"branch"`
	BuildUser string `json:"buildUser"`
	BuildDate string `json:"buildDate"`
	GoVersion string `json:"goVersion"`
}

func (a *API) serveBuildInfo(*http.Request) apiFuncResult {
	return apiFuncResult{data: a.buildInfo}
}

// prometheusModule is the module whose version names the Prometheus release
// this API follows.
const prometheusModule = "github.com/prometheus/prometheus"

// readBuildInfo reports the embedded Prometheus' release: Grafana reads the
// version to pick features. Module version v0.MMP.x is release M.P.x
// (v0.316.0 is 3.16.0).
func readBuildInfo() prometheusVersion {
	v := prometheusVersion{Version: "3.16.0", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	for _, dep := range bi.Deps {
		if dep.Path == prometheusModule {
			if rel, ok := releaseOf(dep.Version); ok {
				v.Version = rel
			}
		}
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.BuildDate = s.Value
		}
	}
	return v
}

// releaseOf maps a Prometheus Go module version (v0.316.0) to its release
// (3.16.0).
func releaseOf(module string) (string, bool) {
	parts := strings.SplitN(strings.TrimPrefix(module, "v"), ".", 3)
	if len(parts) != 3 || parts[0] != "0" || len(parts[1]) < 3 {
		return "", false
	}
	minor, err := strconv.Atoi(parts[1])
	if err != nil {
		return "", false
	}
	patch, _, _ := strings.Cut(parts[2], "-")
	return fmt.Sprintf("%d.%d.%s", minor/100, minor%100, patch), true
}
