package api

import (
	"caretaker/remediation/journal"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client calls the server's API.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// NewClient returns a client of the server at baseURL (e.g.
// http://127.0.0.1:9300). A nil hc uses a client with a 30 s timeout.
func NewClient(baseURL, token string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), token: token, hc: hc}
}

// StatusError is a non-2xx answer from the server.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string {
	if e.Code == http.StatusUnauthorized {
		return "the server refused the token (401): " + e.Msg
	}
	return fmt.Sprintf("server answered %d: %s", e.Code, e.Msg)
}

// Status fetches the fleet's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.get(ctx, "/api/v1/status", &s)
	return s, err
}

// History fetches the journal records f selects, newest first.
func (c *Client) History(ctx context.Context, f HistoryFilter) (History, error) {
	var h History
	err := c.get(ctx, "/api/v1/history?"+f.query(), &h)
	return h, err
}

// Record fetches one journal record.
func (c *Client) Record(ctx context.Context, id uint64) (journal.Record, error) {
	var r journal.Record
	err := c.get(ctx, "/api/v1/history/"+strconv.FormatUint(id, 10), &r)
	return r, err
}

func (c *Client) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return c.send(req, v)
}

// send adds the token, sends req and decodes a 2xx JSON answer into v (nil:
// ignore it); other answers become a *StatusError.
func (c *Client) send(req *http.Request, v any) error {
	path := req.URL.Path
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("cannot reach the caretaker server at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read body: %w", req.Method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var eb errorBody
		if json.Unmarshal(body, &eb) != nil || eb.Error == "" {
			eb.Error = strings.TrimSpace(string(body))
		}
		return &StatusError{Code: resp.StatusCode, Msg: eb.Error}
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", req.Method, path, err)
	}
	return nil
}
