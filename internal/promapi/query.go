package promapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/util/httputil"
	"github.com/prometheus/prometheus/util/stats"
)

// queryData is web/api/v1.QueryData without the query-cost feature.
type queryData struct {
	ResultType parser.ValueType `json:"resultType"`
	Result     any              `json:"result"`
	Stats      stats.QueryStats `json:"stats,omitempty"`
}

// maxPoints is Prometheus' limit of points per series in a range query:
// enough for a week at 60s or a year at 1h.
const maxPoints = 11000

func (a *API) query(r *http.Request) (result apiFuncResult) {
	limit, err := parseLimitParam(r.FormValue("limit"))
	if err != nil {
		return invalidParamError(err, "limit")
	}
	ts, err := parseTimeParam(r, "time", a.now())
	if err != nil {
		return invalidParamError(err, "time")
	}
	ctx := r.Context()
	timeout, apiErr := queryTimeout(r)
	if apiErr != nil {
		return apiFuncResult{err: apiErr}
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, a.now().Add(timeout))
		defer cancel()
	}
	ctx, cancel := a.withQueryTimeout(ctx)
	defer cancel()

	opts, err := a.extractQueryOpts(r)
	if err != nil {
		return apiFuncResult{err: &apiError{errorBadData, err}}
	}
	qry, err := a.engine.NewInstantQuery(ctx, a.queryable, opts, r.FormValue("query"), ts)
	if err != nil {
		return apiFuncResult{err: queryConstructionError(err)}
	}
	return a.exec(ctx, r, qry, limit)
}

func (a *API) queryRange(r *http.Request) (result apiFuncResult) {
	limit, err := parseLimitParam(r.FormValue("limit"))
	if err != nil {
		return invalidParamError(err, "limit")
	}
	start, err := parseTime(r.FormValue("start"))
	if err != nil {
		return invalidParamError(err, "start")
	}
	end, err := parseTime(r.FormValue("end"))
	if err != nil {
		return invalidParamError(err, "end")
	}
	if end.Before(start) {
		return invalidParamError(errors.New("end timestamp must not be before start time"), "end")
	}
	step, err := parseDuration(r.FormValue("step"))
	if err != nil {
		return invalidParamError(err, "step")
	}
	if step <= 0 {
		return invalidParamError(errors.New("zero or negative query resolution step widths are not accepted. Try a positive integer"), "step")
	}
	if end.Sub(start)/step > maxPoints {
		err := errors.New("exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)")
		return apiFuncResult{err: &apiError{errorBadData, err}}
	}

	ctx := r.Context()
	timeout, apiErr := queryTimeout(r)
	if apiErr != nil {
		return apiFuncResult{err: apiErr}
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	ctx, cancel := a.withQueryTimeout(ctx)
	defer cancel()

	opts, err := a.extractQueryOpts(r)
	if err != nil {
		return apiFuncResult{err: &apiError{errorBadData, err}}
	}
	qry, err := a.engine.NewRangeQuery(ctx, a.queryable, opts, r.FormValue("query"), start, end, step)
	if err != nil {
		return apiFuncResult{err: queryConstructionError(err)}
	}
	return a.exec(ctx, r, qry, limit)
}

// exec runs a built query. The result's slices belong to the query until
// Close, so Close is the finalizer, run after the response is written.
func (a *API) exec(ctx context.Context, r *http.Request, qry promql.Query, limit int) apiFuncResult {
	release, err := a.acquireSlot(ctx)
	if err != nil {
		return apiFuncResult{err: returnAPIError(err), finalizer: qry.Close}
	}
	res := qry.Exec(httputil.ContextFromRequest(ctx, r))
	release()
	if res.Err != nil {
		return apiFuncResult{err: returnAPIError(res.Err), warnings: res.Warnings, finalizer: qry.Close}
	}
	warnings := res.Warnings
	if limit > 0 && truncate(res, limit) {
		warnings = warnings.Add(errors.New("results truncated due to limit"))
	}
	if s := r.FormValue("stats"); s != "" {
		switch s {
		case statsTrue, statsAll:
		default:
			warnings = warnings.Add(fmt.Errorf("value %q for parameter \"stats\" is deprecated and will be rejected in the next major release, use %q or %q", s, statsTrue, statsAll))
		}
	}
	var qs stats.QueryStats
	if r.FormValue("stats") != "" {
		qs = stats.NewQueryStats(qry.Stats())
	}
	return apiFuncResult{
		data:      &queryData{ResultType: res.Value.Type(), Result: resultJSON(res.Value), Stats: qs},
		warnings:  warnings,
		finalizer: qry.Close,
	}
}

const (
	statsTrue = "true"
	statsAll  = "all"
)

// acquireSlot waits for one of the MaxConcurrency query slots, as the
// engine's active query tracker makes Prometheus wait: the wait counts
// toward the query's timeout, and ends with its context.
func (a *API) acquireSlot(ctx context.Context) (release func(), err error) {
	if a.slots == nil {
		return func() {}, nil
	}
	select {
	case a.slots <- struct{}{}:
		return func() { <-a.slots }, nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, promql.ErrQueryTimeout("query queue")
		}
		return nil, promql.ErrQueryCanceled("query queue")
	}
}

func (a *API) withQueryTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, a.timeout)
}

// truncate cuts vectors and matrices to limit series; scalars and strings
// stay whole.
func truncate(res *promql.Result, limit int) bool {
	switch v := res.Value.(type) {
	case promql.Matrix:
		if len(v) > limit {
			res.Value = v[:limit]
			return true
		}
	case promql.Vector:
		if len(v) > limit {
			res.Value = v[:limit]
			return true
		}
	}
	return false
}

func (a *API) extractQueryOpts(r *http.Request) (promql.QueryOpts, error) {
	duration := a.lookback
	if s := r.FormValue("lookback_delta"); s != "" {
		d, err := parseDuration(s)
		if err != nil {
			return nil, fmt.Errorf("error parsing lookback delta duration: %w", err)
		}
		duration = d
	}
	var useStartTimestamps *bool
	if val := r.Header.Get("X-Prometheus-Use-Start-Timestamps"); val != "" {
		b, err := strconv.ParseBool(val)
		if err != nil {
			return nil, fmt.Errorf("error parsing X-Prometheus-Use-Start-Timestamps header: %w", err)
		}
		useStartTimestamps = &b
	}
	return promql.NewPrometheusQueryOpts(r.FormValue("stats") == statsAll, duration, useStartTimestamps), nil
}

// queryTimeout parses the request's `timeout` parameter; zero when absent.
func queryTimeout(r *http.Request) (time.Duration, *apiError) {
	v := r.FormValue("timeout")
	if v == "" {
		return 0, nil
	}
	timeout, err := parseDuration(v)
	if err != nil {
		return 0, &apiError{errorBadData, fmt.Errorf("invalid parameter %q: %w", "timeout", err)}
	}
	if timeout <= 0 {
		return 0, &apiError{errorBadData, fmt.Errorf("invalid parameter %q: timeout must be positive, got %s", "timeout", timeout)}
	}
	return timeout, nil
}

func (a *API) formatQuery(r *http.Request) apiFuncResult {
	expr, err := a.parser.ParseExpr(r.FormValue("query"))
	if err != nil {
		return invalidParamError(err, "query")
	}
	return apiFuncResult{data: expr.Pretty(0)}
}

// queryExemplars validates its parameters as Prometheus does and answers
// no exemplars, as Prometheus does with exemplar storage off (its default,
// and the embedded TSDB's): Grafana asks for them alongside range queries.
func (a *API) queryExemplars(r *http.Request) apiFuncResult {
	start, err := parseTimeParam(r, "start", minTime())
	if err != nil {
		return invalidParamError(err, "start")
	}
	end, err := parseTimeParam(r, "end", maxTime())
	if err != nil {
		return invalidParamError(err, "end")
	}
	if end.Before(start) {
		return apiFuncResult{err: &apiError{errorBadData, errors.New("end timestamp must not be before start timestamp")}}
	}
	expr, err := a.parser.ParseExpr(r.FormValue("query"))
	if err != nil {
		return apiFuncResult{err: &apiError{errorBadData, err}}
	}
	if len(parser.ExtractSelectors(expr)) < 1 {
		return apiFuncResult{} // Prometheus answers 204 No Content
	}
	return apiFuncResult{data: []struct{}{}}
}
