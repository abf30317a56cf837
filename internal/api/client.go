package api

import (
	"bytes"
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

	"caretaker/remediation/journal"
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
	Code    int
	Msg     string
	Details []string // the problems, one per line, where the server lists them
}

func (e *StatusError) Error() string {
	var msg string
	switch e.Code {
	case http.StatusUnauthorized:
		msg = "the server refused the token (401): " + e.Msg
	case http.StatusForbidden:
		msg = "not allowed (403): " + e.Msg
	case http.StatusNotFound:
		msg = "not found (404): " + e.Msg
	case http.StatusConflict:
		msg = "conflict (409): " + e.Msg
	default:
		msg = fmt.Sprintf("server answered %d: %s", e.Code, e.Msg)
	}
	for _, d := range e.Details {
		msg += "\n  " + d
	}
	return msg
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
		return &StatusError{Code: resp.StatusCode, Msg: eb.Error, Details: eb.Errors}
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", req.Method, path, err)
	}
	return nil
}

// do sends a request with a JSON body and decodes a JSON answer into v
// (nil: ignore the body).
func (c *Client) do(ctx context.Context, method, path string, body []byte, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	return c.send(req, v)
}
