package agentapi

import (
	"context"
	"crypto/tls"
	"fmt"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Hosts runs host-local actions through each host's agent (it is the
// remediation engine's Hosts): the hosts of the server's configuration, and
// those the provisioner's inventory adds.
type Hosts struct {
	token  string
	tokens map[string]string // hosts' own tokens, by host
	scheme string            // "http" or, with TLS, "https"
	hc     *http.Client
	// epoch is the leader epoch every client's changes carry (SetEpoch).
	epoch atomic.Int64

	mu      sync.Mutex
	clients map[string]*Client
	addrs   map[string]string
}

// HostsOptions configure NewHostsWith.
type HostsOptions struct {
	// Token is the action token sent to every host without its own.
	Token string
	// Tokens are hosts' own tokens, by host name: a host listed here gets
	// its token and never Token.
	Tokens map[string]string
	// TLS, when set, has the clients call the agents over https with it
	// (ClientTLS): the handshake verifies the agent's certificate before
	// any request, and so any token, is sent.
	TLS *tls.Config
}

// NewHosts returns Hosts without any host, whose clients authenticate
// with token, over plain http.
func NewHosts(token string) *Hosts {
	return NewHostsWith(HostsOptions{Token: token})
}

// NewHostsWith returns Hosts without any host, configured by o.
func NewHostsWith(o HostsOptions) *Hosts {
	// The action timeout bounds each call through its context; this
	// client-wide timeout is only a backstop.
	hc := &http.Client{Timeout: 5 * time.Minute}
	scheme := "http"
	if o.TLS != nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = o.TLS.Clone()
		hc.Transport = t
		scheme = "https"
	}
	return &Hosts{token: o.Token, tokens: maps.Clone(o.Tokens), scheme: scheme, hc: hc,
		clients: map[string]*Client{}, addrs: map[string]string{}}
}

// Add gives host a client for the agent at addr (host:port), replacing one
// for another address. The client sends the host's own token, if it has
// one, else the common one.
func (a *Hosts) Add(host, addr string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.addrs[host] == addr {
		return
	}
	token, own := a.tokens[host]
	if !own {
		token = a.token
	}
	c := NewClient(a.scheme+"://"+addr, token, a.hc)
	c.epoch = &a.epoch
	a.clients[host] = c
	a.addrs[host] = addr
}

// SetEpoch sets the leader epoch that every change the clients make from
// now on carries in EpochHeader, including the clients already made. 0 (or
// less) is a server that is not clustered: no header is sent. An agent
// that has seen a higher epoch refuses the change: errors.Is(err,
// ErrFenced).
func (a *Hosts) SetEpoch(e int64) { a.epoch.Store(e) }

// Announce sends the epoch to every agent the clients know, and returns
// the hosts whose agent could not be told, with why.
func (a *Hosts) Announce(ctx context.Context) map[string]error {
	a.mu.Lock()
	clients := maps.Clone(a.clients)
	a.mu.Unlock()
	var mu sync.Mutex
	failed := map[string]error{}
	var wg sync.WaitGroup
	for host, c := range clients {
		wg.Go(func() {
			if _, err := c.AnnounceEpoch(ctx); err != nil {
				mu.Lock()
				failed[host] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed
}

// Epoch returns the epoch of SetEpoch, 0 when not clustered.
func (a *Hosts) Epoch() int64 { return a.epoch.Load() }

// Clients returns the clients of every host's agent, by host.
func (a *Hosts) Clients() map[string]*Client {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.clients)
}

// Client returns the client of host's agent.
func (a *Hosts) Client(host string) (*Client, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.clients[host]
	if !ok {
		return nil, fmt.Errorf("host %q is neither in the server's configuration nor in the inventory", host)
	}
	return c, nil
}

// The engine wraps the errors of these three with the operation and its
// target ("start guest lab-1 (uuid) on host-a: %w") and the agent's client
// adds its address, so they add nothing: each thing is said once.

func (a *Hosts) StartGuest(ctx context.Context, host, uuid string) error {
	c, err := a.Client(host)
	if err != nil {
		return err
	}
	_, err = c.StartDomain(ctx, uuid)
	return err
}

func (a *Hosts) GuestRunning(ctx context.Context, host, uuid string) (bool, error) {
	c, err := a.Client(host)
	if err != nil {
		return false, err
	}
	d, err := c.Domain(ctx, uuid)
	if err != nil {
		return false, err
	}
	return d.State == "running", nil
}

func (a *Hosts) RepairOverlay(ctx context.Context, host, cluster string) ([]string, error) {
	c, err := a.Client(host)
	if err != nil {
		return nil, err
	}
	return c.RepairOverlay(ctx, cluster)
}
