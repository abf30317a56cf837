package promapi

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"
)

// checkContextEveryNIterations is how often the series loop looks at the
// request's context.
const checkContextEveryNIterations = 128

// parseLimitAndRange reads the limit, start and end parameters the series
// and label endpoints share; param names the one that is wrong.
func parseLimitAndRange(r *http.Request) (limit int, start, end time.Time, param string, err error) {
	if limit, err = parseLimitParam(r.FormValue("limit")); err != nil {
		return 0, start, end, "limit", err
	}
	if start, err = parseTimeParam(r, "start", minTime()); err != nil {
		return 0, start, end, "start", err
	}
	if end, err = parseTimeParam(r, "end", maxTime()); err != nil {
		return 0, start, end, "end", err
	}
	return limit, start, end, "", nil
}

func (a *API) labelNames(r *http.Request) apiFuncResult {
	limit, start, end, param, err := parseLimitAndRange(r)
	if err != nil {
		return invalidParamError(err, param)
	}
	matcherSets, err := a.parseMatchersParam(r.Form["match[]"])
	if err != nil {
		return apiFuncResult{err: &apiError{errorBadData, err}}
	}
	hints := &storage.LabelHints{Limit: toHintLimit(limit)}
	q, err := a.queryable.Querier(timestamp.FromTime(start), timestamp.FromTime(end))
	if err != nil {
		return apiFuncResult{err: returnAPIError(err)}
	}
	defer q.Close()

	var (
		names    []string
		warnings annotations.Annotations
	)
	if len(matcherSets) > 1 {
		set := map[string]struct{}{}
		for _, matchers := range matcherSets {
			vals, callWarnings, err := q.LabelNames(r.Context(), hints, matchers...)
			if err != nil {
				return apiFuncResult{err: returnAPIError(err), warnings: warnings}
			}
			warnings = warnings.Merge(callWarnings)
			for _, v := range vals {
				set[v] = struct{}{}
			}
		}
		names = make([]string, 0, len(set))
		for k := range set {
			names = append(names, k)
		}
		slices.Sort(names)
	} else {
		var matchers []*labels.Matcher
		if len(matcherSets) == 1 {
			matchers = matcherSets[0]
		}
		names, warnings, err = q.LabelNames(r.Context(), hints, matchers...)
		if err != nil {
			return apiFuncResult{err: &apiError{errorExec, err}, warnings: warnings}
		}
	}
	if names == nil {
		names = []string{}
	}
	if limit > 0 && len(names) > limit {
		names = names[:limit]
		warnings = warnings.Add(errors.New("results truncated due to limit"))
	}
	return apiFuncResult{data: names, warnings: warnings}
}

func (a *API) labelValues(r *http.Request) (result apiFuncResult) {
	ctx := r.Context()
	name := r.PathValue("name")
	if strings.HasPrefix(name, "U__") {
		name = model.UnescapeName(name, model.ValueEncodingEscaping)
	}
	if !model.UTF8Validation.IsValidLabelName(name) {
		return apiFuncResult{err: &apiError{errorBadData, fmt.Errorf("invalid label name: %q", name)}}
	}
	limit, start, end, param, err := parseLimitAndRange(r)
	if err != nil {
		return invalidParamError(err, param)
	}
	matcherSets, err := a.parseMatchersParam(r.Form["match[]"])
	if err != nil {
		return apiFuncResult{err: &apiError{errorBadData, err}}
	}
	hints := &storage.LabelHints{Limit: toHintLimit(limit)}
	q, err := a.queryable.Querier(timestamp.FromTime(start), timestamp.FromTime(end))
	if err != nil {
		return apiFuncResult{err: &apiError{errorExec, err}}
	}
	// The values may point into the querier's memory: close it only after
	// the response is written.
	closer := func() { q.Close() }

	var (
		vals     []string
		warnings annotations.Annotations
	)
	if len(matcherSets) > 1 {
		set := map[string]struct{}{}
		for _, matchers := range matcherSets {
			vs, callWarnings, err := q.LabelValues(ctx, name, hints, matchers...)
			if err != nil {
				return apiFuncResult{err: &apiError{errorExec, err}, warnings: warnings, finalizer: closer}
			}
			warnings = warnings.Merge(callWarnings)
			for _, v := range vs {
				set[v] = struct{}{}
			}
		}
		vals = make([]string, 0, len(set))
		for v := range set {
			vals = append(vals, v)
		}
	} else {
		var matchers []*labels.Matcher
		if len(matcherSets) == 1 {
			matchers = matcherSets[0]
		}
		vals, warnings, err = q.LabelValues(ctx, name, hints, matchers...)
		if err != nil {
			return apiFuncResult{err: &apiError{errorExec, err}, warnings: warnings, finalizer: closer}
		}
		if vals == nil {
			vals = []string{}
		}
	}
	slices.Sort(vals)
	if limit > 0 && len(vals) > limit {
		vals = vals[:limit]
		warnings = warnings.Add(errors.New("results truncated due to limit"))
	}
	return apiFuncResult{data: vals, warnings: warnings, finalizer: closer}
}

func (a *API) series(r *http.Request) (result apiFuncResult) {
	ctx := r.Context()
	if err := r.ParseForm(); err != nil {
		return apiFuncResult{err: &apiError{errorBadData, fmt.Errorf("error parsing form values: %w", err)}}
	}
	if len(r.Form["match[]"]) == 0 {
		return apiFuncResult{err: &apiError{errorBadData, errors.New("no match[] parameter provided")}}
	}
	limit, start, end, param, err := parseLimitAndRange(r)
	if err != nil {
		return invalidParamError(err, param)
	}
	matcherSets, err := a.parseMatchersParam(r.Form["match[]"])
	if err != nil {
		return invalidParamError(err, "match[]")
	}
	q, err := a.queryable.Querier(timestamp.FromTime(start), timestamp.FromTime(end))
	if err != nil {
		return apiFuncResult{err: returnAPIError(err)}
	}
	closer := func() { q.Close() }

	hints := &storage.SelectHints{
		Start: timestamp.FromTime(start),
		End:   timestamp.FromTime(end),
		Func:  "series", // no such function: this token asks for series without samples
		Limit: toHintLimit(limit),
	}
	var set storage.SeriesSet
	if len(matcherSets) > 1 {
		var sets []storage.SeriesSet
		for _, ms := range matcherSets {
			// Merging (deduplicating) needs sorted sets.
			sets = append(sets, q.Select(ctx, true, hints, ms...))
		}
		set = storage.NewMergeSeriesSet(sets, 0, storage.ChainedSeriesMerge)
	} else {
		set = q.Select(ctx, false, hints, matcherSets[0]...)
	}

	metrics := []labels.Labels{}
	warnings := set.Warnings()
	for i := 1; set.Next(); i++ {
		if i%checkContextEveryNIterations == 0 {
			if err := ctx.Err(); err != nil {
				return apiFuncResult{err: returnAPIError(err), warnings: warnings, finalizer: closer}
			}
		}
		metrics = append(metrics, set.At().Labels())
		if limit > 0 && len(metrics) > limit {
			metrics = metrics[:limit]
			warnings = warnings.Add(errors.New("results truncated due to limit"))
			return apiFuncResult{data: metrics, warnings: warnings, finalizer: closer}
		}
	}
	if err := set.Err(); err != nil {
		return apiFuncResult{err: returnAPIError(err), warnings: warnings, finalizer: closer}
	}
	return apiFuncResult{data: metrics, warnings: warnings, finalizer: closer}
}
