package agentapi

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
	"sync/atomic"

	"caretaker/internal/overlayspec"
)

// maxResponseBytes caps what the client reads of an answer; the API's
// answers are a few hundred bytes.
const maxResponseBytes = 1 << 20

// Client calls an agent's actions API; the server uses it to act on a host.
// Its errors name the agent (its address) and what the agent answered, and
// nothing else: the caller says what it did, and to which guest, node or
// overlay ("repair overlay of cluster c on host-a: %w").
type Client struct {
	baseURL string
	token   string
	hc      *http.Client
	// epoch is the leader epoch its changes carry (EpochHeader), shared
	// with the Hosts that made it; nil or 0 sends none.
	epoch *atomic.Int64
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
	// Fenced is a 409 whose body says the agent refused the request's
	// leader epoch (ErrorBody.Fenced): errors.Is(err, ErrFenced).
	Fenced bool
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("agent answered %d %s: %s", e.Code, http.StatusText(e.Code), e.Msg)
}

// Is makes a fenced answer ErrFenced, keeping the agent's message in Error.
func (e *StatusError) Is(target error) bool { return target == ErrFenced && e.Fenced }

// Epoch is the agent's answer to an epoch announcement.
type Epoch struct {
	Epoch int64 `json:"epoch"`
}

// AnnounceEpoch tells the agent the client's epoch (sent, as with every
// change, in EpochHeader) and returns the highest it has seen: a new
// leader announces itself so that the agent refuses its predecessor's late
// requests even before the new leader has anything to do there.
func (c *Client) AnnounceEpoch(ctx context.Context) (int64, error) {
	var e Epoch
	if err := c.do(ctx, http.MethodPost, "/api/v1/epoch", nil, &e); err != nil {
		return 0, fmt.Errorf("%s: %w", c.baseURL, err)
	}
	return e.Epoch, nil
}

// Domain returns the domain with the given uuid. Its error names the agent
// only: the caller says which guest it asked about, and why.
func (c *Client) Domain(ctx context.Context, uuid string) (Domain, error) {
	var d Domain
	if err := c.do(ctx, http.MethodGet, "/api/v1/domains/"+url.PathEscape(uuid), nil, &d); err != nil {
		return Domain{}, fmt.Errorf("%s: %w", c.baseURL, err)
	}
	return d, nil
}

// StartDomain starts the domain with the given uuid; starting a running
// domain succeeds with Result ResultAlreadyRunning. Its error names the
// agent only: the caller says which guest it started ("start guest …: %w").
func (c *Client) StartDomain(ctx context.Context, uuid string) (StartResult, error) {
	var res StartResult
	if err := c.do(ctx, http.MethodPost, "/api/v1/domains/"+url.PathEscape(uuid)+"/start", nil, &res); err != nil {
		return StartResult{}, fmt.Errorf("%s: %w", c.baseURL, err)
	}
	return res, nil
}

// RepairOverlay makes the agent's host match its configuration for the
// cluster's overlay and returns what it changed, in words; none when the
// overlay was already as configured.
func (c *Client) RepairOverlay(ctx context.Context, cluster string) ([]string, error) {
	var res OverlayRepair
	if err := c.do(ctx, http.MethodPost, "/api/v1/overlays/"+url.PathEscape(cluster)+"/repair", nil, &res); err != nil {
		return nil, fmt.Errorf("%s: %w", c.baseURL, err)
	}
	return res.Changes, nil
}

// PutNode creates the node on the agent's host, or keeps it when it exists
// (updating its definition for its next start); with replace it destroys
// the node and creates it afresh, with a new disk and seed and the same
// UUID. n.UUID is required: the agent changes an existing domain of that
// name only when it has that UUID and n.Cluster's metadata (else 409).
// The answer has the domain's UUID and state.
func (c *Client) PutNode(ctx context.Context, n NodeRequest, replace bool) (NodeResponse, error) {
	path := "/api/v1/nodes/" + url.PathEscape(n.Name)
	if replace {
		path += "?replace=true"
	}
	var res NodeResponse
	if err := c.do(ctx, http.MethodPut, path, n, &res); err != nil {
		return NodeResponse{}, fmt.Errorf("%s: %w", c.baseURL, err)
	}
	return res, nil
}

// DeleteNode destroys and undefines the node's domain and deletes its
// disks; a node that is not there is not an error. cluster and uuid name
// the node meant: the agent leaves a domain of that name of another
// cluster or with another UUID alone (409).
func (c *Client) DeleteNode(ctx context.Context, cluster, name, uuid string) error {
	q := url.Values{"cluster": {cluster}, "uuid": {uuid}}
	if err := c.do(ctx, http.MethodDelete, "/api/v1/nodes/"+url.PathEscape(name)+"?"+q.Encode(), nil, nil); err != nil {
		return fmt.Errorf("%s: %w", c.baseURL, err)
	}
	return nil
}

// PutOverlay makes the agent's host have the cluster's overlay, and has the
// agent expect and repair it from then on; it returns what it changed, in
// words, none when the overlay was already as desired. The body is o as
// is; o.Cluster is not sent, cluster is.
func (c *Client) PutOverlay(ctx context.Context, cluster string, o overlayspec.Overlay) ([]string, error) {
	if o.Peers == nil {
		o.Peers = []overlayspec.Peer{} // "peers": [], as ever, not null
	}
	var res OverlayRepair
	if err := c.do(ctx, http.MethodPut, "/api/v1/overlays/"+url.PathEscape(cluster), o, &res); err != nil {
		return nil, fmt.Errorf("%s: %w", c.baseURL, err)
	}
	return res.Changes, nil
}

// DeleteOverlay removes the cluster's VXLAN device and bridge from the
// agent's host, and has the agent forget the overlay; missing devices are
// not an error. The agent refuses (409) while guests are on the bridge.
func (c *Client) DeleteOverlay(ctx context.Context, cluster string) error {
	if err := c.do(ctx, http.MethodDelete, "/api/v1/overlays/"+url.PathEscape(cluster), nil, nil); err != nil {
		return fmt.Errorf("%s: %w", c.baseURL, err)
	}
	return nil
}

// do sends in as the JSON body (none when nil) and decodes the answer into
// out (ignored when nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.baseURL+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	// Every change carries the leader's epoch, so that an agent that has
	// heard from a newer leader refuses it; reads need none.
	if method != http.MethodGet && method != http.MethodHead && c.epoch != nil {
		if e := c.epoch.Load(); e > 0 {
			req.Header.Set(EpochHeader, strconv.FormatInt(e, 10))
		}
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	respBody, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		msg, fenced := errorMessage(respBody)
		return &StatusError{Code: resp.StatusCode, Msg: msg, Fenced: fenced && resp.StatusCode == http.StatusConflict}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(respBody, out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}

// errorMessage returns the API's error message in body, and whether it
// says the request was fenced, or the body itself, shortened, if it is
// not the API's JSON.
func errorMessage(body []byte) (msg string, fenced bool) {
	var e ErrorBody
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return e.Error, e.Fenced
	}
	msg = strings.TrimSpace(string(body))
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	return msg, false
}

// ErrFenced is an agent's refusal of a request whose leader epoch is lower
// than the highest it has seen: a newer leader has taken over, and the
// caller must stop acting. The error wrapping it (a *StatusError) keeps
// the agent's message.
var ErrFenced = errors.New("fenced: the agent has seen a newer leader")
