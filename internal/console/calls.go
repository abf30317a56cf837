package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"caretaker/internal/api"
)

// The calls of this file are those of the server's API that its Go
// client does not make: Prometheus' instant queries. They go through the
// same in-process handler, with the same token and address, and fail with
// the same *api.StatusError.

// queryByHost runs a PromQL instant query and returns each series' value
// by its host label ("" for a series without one).
func (c *Console) queryByHost(ctx context.Context, r *http.Request, token, expr string) (map[string]float64, error) {
	var ans struct {
		Data struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := c.call(ctx, r, token, http.MethodGet, "/api/v1/query?query="+url.QueryEscape(expr), nil, &ans); err != nil {
		return nil, err
	}
	if ans.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query %s: want a vector, got %q", expr, ans.Data.ResultType)
	}
	out := make(map[string]float64, len(ans.Data.Result))
	for _, s := range ans.Data.Result {
		v, _ := s.Value[1].(string)
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %q: %w", expr, v, err)
		}
		out[s.Metric["host"]] = f
	}
	return out, nil
}

// call sends one request to the API in process and decodes a 2xx JSON
// answer into out; other answers are an *api.StatusError.
func (c *Console) call(ctx context.Context, r *http.Request, token, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, inprocBase+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, _ := inproc{h: c.o.API, remote: r.RemoteAddr}.RoundTrip(req)
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		var eb struct {
			Error  string   `json:"error"`
			Errors []string `json:"errors"`
		}
		if json.Unmarshal(data, &eb) != nil || eb.Error == "" {
			eb.Error = strings.TrimSpace(string(data))
		}
		return &api.StatusError{Code: resp.StatusCode, Msg: eb.Error, Details: eb.Errors}
	}
	if err := json.Unmarshal(data, out); err != nil {
		what, _, _ := strings.Cut(path, "?")
		return fmt.Errorf("%s %s: decode answer: %w", method, what, err)
	}
	return nil
}
