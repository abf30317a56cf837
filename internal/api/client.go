package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"caretaker/remediation/journal"
)

// Client calls the server's API. It may know several servers of a
// clustered deployment; see NewClientURLs.
type Client struct {
	bases []string
	token string
	hc    *http.Client
	cur   atomic.Int64 // index in bases of the server that answered last
}

// connectTimeout bounds the dial and the TLS handshake of the default
// client, so an unreachable server (a dropped SYN) leaves time to try the
// next.
const connectTimeout = 10 * time.Second

// NewClient returns a client of the server at baseURL (e.g.
// http://127.0.0.1:9300). A nil hc uses a client with a 30 s timeout.
func NewClient(baseURL, token string, hc *http.Client) *Client {
	return NewClientURLs([]string{baseURL}, token, hc)
}

// NewClientURLs returns a client of the servers at urls (at least one):
// each request goes to the server that answered last (at first urls[0]),
// and moves on to the next URL, in order and wrapping around, only when no
// connection to a server could be made: the dial failed (refused,
// unreachable, no such host, timed out) or the TLS handshake did. Once a
// connection was made the request may have reached that server, so it is
// never sent to another — an action must not run twice; its failure is
// returned. A nil hc uses a client with a 30 s timeout per request and
// 10 s for a connection.
func NewClientURLs(urls []string, token string, hc *http.Client) *Client {
	if hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DialContext = (&net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}).DialContext
		t.TLSHandshakeTimeout = connectTimeout
		hc = &http.Client{Timeout: 30 * time.Second, Transport: t}
	}
	c := &Client{token: token, hc: hc}
	for _, u := range urls {
		c.bases = append(c.bases, strings.TrimRight(u, "/"))
	}
	return c
}

// URL is the base URL of the server the next request goes to first: the
// one that answered last.
func (c *Client) URL() string {
	if len(c.bases) == 0 {
		return ""
	}
	return c.bases[c.cur.Load()]
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
	return c.send(ctx, http.MethodGet, path, nil, false, v)
}

// do sends a request with a JSON body and decodes a JSON answer into v
// (nil: ignore the body).
func (c *Client) do(ctx context.Context, method, path string, body []byte, v any) error {
	return c.send(ctx, method, path, body, true, v)
}

// send sends the request, with the token, to the first server that takes
// the connection (see NewClientURLs) and decodes a 2xx JSON answer into v
// (nil: ignore it); other answers become a *StatusError.
func (c *Client) send(ctx context.Context, method, path string, body []byte, hasBody bool, v any) error {
	if len(c.bases) == 0 {
		return fmt.Errorf("%s %s: no server URL", method, path)
	}
	what, _, _ := strings.Cut(path, "?") // for messages
	first := int(c.cur.Load())
	var tried []string
	var errs []error
	for k := range c.bases {
		i := (first + k) % len(c.bases)
		base := c.bases[i]
		resp, reached, err := c.try(ctx, base, method, path, body, hasBody)
		if err == nil {
			c.cur.Store(int64(i))
			defer resp.Body.Close()
			return decode(resp, method, what, v)
		}
		if reached {
			if len(c.bases) > 1 {
				return fmt.Errorf("the caretaker server at %s took %s %s but did not answer (not retried on another server: the request may have reached it): %w", base, method, what, err)
			}
			return fmt.Errorf("cannot reach the caretaker server at %s: %w", base, err)
		}
		tried, errs = append(tried, base), append(errs, err)
		if ctx.Err() != nil {
			break // out of time: the other servers get none
		}
	}
	if len(errs) == 1 && len(c.bases) == 1 {
		return fmt.Errorf("cannot reach the caretaker server at %s: %w", tried[0], errs[0])
	}
	format := fmt.Sprintf("cannot reach any of the %d caretaker servers:", len(c.bases))
	args := make([]any, 0, 2*len(errs))
	for j, err := range errs {
		format += "\n  %s: %w"
		args = append(args, tried[j], err)
	}
	if len(tried) < len(c.bases) {
		format += fmt.Sprintf("\n  (%d not tried: out of time)", len(c.bases)-len(tried))
	}
	return fmt.Errorf(format, args...)
}

// try sends the request to the server at base. reached reports whether it
// may have got there: a connection was made (or an answer began), so it
// must not be sent to another server.
func (c *Client) try(ctx context.Context, base, method, path string, body []byte, hasBody bool) (resp *http.Response, reached bool, err error) {
	// The transport itself retries on a fresh connection when a reused
	// one failed before it could matter (nothing written, or an idle
	// connection the server closed under a GET); GetConn starts each
	// such attempt, so only the last attempt's connection counts.
	var connected, answered atomic.Bool
	trace := &httptrace.ClientTrace{
		GetConn:              func(string) { connected.Store(false) },
		GotConn:              func(httptrace.GotConnInfo) { connected.Store(true) },
		GotFirstResponseByte: func() { answered.Store(true) },
	}
	var rd io.Reader
	if hasBody {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), method, base+path, rd)
	if err != nil {
		return nil, false, fmt.Errorf("%s %s: %w", method, base+path, err)
	}
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err = c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, connected.Load() || answered.Load(), err
	}
	return resp, true, nil
}

// decode reads a 2xx JSON answer into v (nil: ignore it); other answers
// become a *StatusError.
func decode(resp *http.Response, method, path string, v any) error {
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read body: %w", method, path, err)
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
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}
