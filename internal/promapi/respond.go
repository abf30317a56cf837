package promapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/util/annotations"
)

// What follows mirrors web/api/v1/api.go of prometheus v0.316.0.

type status string

const (
	statusSuccess status = "success"
	statusError   status = "error"

	// Non-standard status code (originally introduced by nginx) for a client
	// that closes the connection while the query runs.
	statusClientClosedConnection = 499
)

type errorType string

const (
	errorTimeout       errorType = "timeout"
	errorCanceled      errorType = "canceled"
	errorExec          errorType = "execution"
	errorBadData       errorType = "bad_data"
	errorInternal      errorType = "internal"
	errorNotAcceptable errorType = "not_acceptable"
	errorCostLimit     errorType = "cost_limit"
)

type apiError struct {
	typ errorType
	err error
}

// response is web/api/v1.Response.
type response struct {
	Status    status   `json:"status"`
	Data      any      `json:"data,omitempty"`
	ErrorType string   `json:"errorType,omitempty"`
	Error     string   `json:"error,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
	Infos     []string `json:"infos,omitempty"`
}

type apiFuncResult struct {
	data      any
	err       *apiError
	warnings  annotations.Annotations
	finalizer func()
}

type apiFunc func(r *http.Request) apiFuncResult

func invalidParamError(err error, parameter string) apiFuncResult {
	return apiFuncResult{err: &apiError{errorBadData, fmt.Errorf("invalid parameter %q: %w", parameter, err)}}
}

func (a *API) respond(w http.ResponseWriter, req *http.Request, data any, warnings annotations.Annotations, query string) {
	warn, info := warnings.AsStrings(query, 10, 10)
	b, err := json.Marshal(&response{Status: statusSuccess, Data: data, Warnings: warn, Infos: info})
	if err != nil {
		a.logger.Error("error marshaling response", "url", req.URL, "err", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if n, err := w.Write(b); err != nil {
		a.logger.Error("error writing response", "url", req.URL, "bytesWritten", n, "err", err)
	}
}

func (a *API) respondError(w http.ResponseWriter, apiErr *apiError, data any) {
	b, err := json.Marshal(&response{
		Status:    statusError,
		ErrorType: string(apiErr.typ),
		Error:     apiErr.err.Error(),
		Data:      data,
	})
	if err != nil {
		a.logger.Error("error marshaling json response", "err", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(errorCode(apiErr.typ))
	if n, err := w.Write(b); err != nil {
		a.logger.Error("error writing response", "bytesWritten", n, "err", err)
	}
}

// errorCode is web/api/v1's getDefaultErrorCode.
func errorCode(t errorType) int {
	switch t {
	case errorBadData:
		return http.StatusBadRequest
	case errorExec, errorCostLimit:
		return http.StatusUnprocessableEntity
	case errorCanceled:
		return statusClientClosedConnection
	case errorTimeout:
		return http.StatusServiceUnavailable
	case errorNotAcceptable:
		return http.StatusNotAcceptable
	default:
		return http.StatusInternalServerError
	}
}

// returnAPIError classifies an error of query execution or storage.
func returnAPIError(err error) *apiError {
	if err == nil {
		return nil
	}
	var (
		eqc   promql.ErrQueryCanceled
		eqt   promql.ErrQueryTimeout
		es    promql.ErrStorage
		etms  promql.ErrTooManySeries
		etmss promql.ErrTooManySamplesRead
	)
	switch {
	case errors.As(err, &eqc):
		return &apiError{errorCanceled, err}
	case errors.As(err, &eqt):
		return &apiError{errorTimeout, err}
	case errors.As(err, &etms), errors.As(err, &etmss):
		return &apiError{errorCostLimit, err}
	case errors.As(err, &es):
		return &apiError{errorInternal, err}
	}
	if errors.Is(err, context.Canceled) {
		return &apiError{errorCanceled, err}
	}
	return &apiError{errorExec, err}
}

// queryConstructionError maps an error of building a query: running out of
// time or being canceled (while waiting for a query slot) keeps its kind,
// anything else is a bad query parameter.
func queryConstructionError(err error) *apiError {
	if _, ok := errors.AsType[promql.ErrLimitAboveCeiling](err); ok {
		return &apiError{errorBadData, err}
	}
	if _, ok := errors.AsType[promql.ErrQueryTimeout](err); ok {
		return returnAPIError(err)
	}
	if _, ok := errors.AsType[promql.ErrQueryCanceled](err); ok {
		return returnAPIError(err)
	}
	return &apiError{errorBadData, fmt.Errorf("invalid parameter %q: %w", "query", err)}
}
