package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// maxResponseBytes caps what the client reads of an answer; the API's
// answers are a few hundred bytes.
const maxResponseBytes = 1 << 20

// Client calls an agent's actions API; the server uses it to act on a host.
type Client struct {
	baseURL string
	token   string
	hc      *http.Client
}

// NewClient returns a client of the agent at baseURL (for example
// "https://host1:9301") authenticating with token. hc may be nil for a
// plain http.Client; deadlines come from the contexts passed to the calls.
func NewClient(baseURL, token string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{}
	}
	return &Client{baseURL: strings.TrimRight(baseURL, "/"), token: token, hc: hc}
}

// StatusError is a non-2xx answer from the agent.
type StatusError struct {
	Code int
	// Msg is the agent's error message, or the start of the body if the
	// answer was not the API's JSON (a proxy's, or exporter-toolkit's
	// basic auth refusal).
	Msg string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("agent answered %d %s: %s", e.Code, http.StatusText(e.Code), e.Msg)
}

// Domain returns the domain with the given uuid.
func (c *Client) Domain(ctx context.Context, uuid string) (Domain, error) {
	var d Domain
	if err := c.do(ctx, http.MethodGet, "/api/v1/domains/"+url.PathEscape(uuid), &d); err != nil {
		return Domain{}, fmt.Errorf("get domain %s from agent %s: %w", uuid, c.baseURL, err)
	}
	return d, nil
}

// StartDomain starts the domain with the given uuid; starting a running
// domain succeeds with Result ResultAlreadyRunning.
func (c *Client) StartDomain(ctx context.Context, uuid string) (StartResult, error) {
	var res StartResult
	if err := c.do(ctx, http.MethodPost, "/api/v1/domains/"+url.PathEscape(uuid)+"/start", &res); err != nil {
		return StartResult{}, fmt.Errorf("start domain %s on agent %s: %w", uuid, c.baseURL, err)
	}
	return res, nil
}

// RepairOverlay makes the agent's host match its configuration for the
// cluster's overlay and returns what it changed, in words; none when the
// overlay was already as configured.
func (c *Client) RepairOverlay(ctx context.Context, cluster string) ([]string, error) {
	var res OverlayRepair
	if err := c.do(ctx, http.MethodPost, "/api/v1/overlays/"+url.PathEscape(cluster)+"/repair", &res); err != nil {
		return nil, fmt.Errorf("repair overlay of cluster %s on agent %s: %w", cluster, c.baseURL, err)
	}
	return res.Changes, nil
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.baseURL+path, nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &StatusError{Code: resp.StatusCode, Msg: errorMessage(body)}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}

// errorMessage returns the API's error message in body, or the body itself,
// shortened, if it is not the API's JSON.
func errorMessage(body []byte) string {
	var e apiError
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return e.Error
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	return msg
}
