package server

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"caretaker/internal/agent"
	"caretaker/internal/config"
)

// agentHosts runs host-local actions through each host's agent: the hosts
// of the configuration, and those the provisioner's inventory adds.
type agentHosts struct {
	token string
	hc    *http.Client

	mu      sync.Mutex
	clients map[string]*agent.Client
	addrs   map[string]string
}

func newAgentHosts(hosts []config.Host, token string) *agentHosts {
	// The action timeout bounds each call through its context; this
	// client-wide timeout is only a backstop.
	a := &agentHosts{token: token, hc: &http.Client{Timeout: 5 * time.Minute},
		clients: map[string]*agent.Client{}, addrs: map[string]string{}}
	for _, h := range hosts {
		a.add(h.Name, h.Agent)
	}
	return a
}

// add gives host a client for the agent at addr (host:port), replacing one
// for another address.
func (a *agentHosts) add(host, addr string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.addrs[host] == addr {
		return
	}
	a.clients[host] = agent.NewClient("http://"+addr, a.token, a.hc)
	a.addrs[host] = addr
}

func (a *agentHosts) client(host string) (*agent.Client, error) {
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

func (a *agentHosts) StartGuest(ctx context.Context, host, uuid string) error {
	c, err := a.client(host)
	if err != nil {
		return err
	}
	_, err = c.StartDomain(ctx, uuid)
	return err
}

func (a *agentHosts) GuestRunning(ctx context.Context, host, uuid string) (bool, error) {
	c, err := a.client(host)
	if err != nil {
		return false, err
	}
	d, err := c.Domain(ctx, uuid)
	if err != nil {
		return false, err
	}
	return d.State == "running", nil
}

func (a *agentHosts) RepairOverlay(ctx context.Context, host, cluster string) ([]string, error) {
	c, err := a.client(host)
	if err != nil {
		return nil, err
	}
	return c.RepairOverlay(ctx, cluster)
}
