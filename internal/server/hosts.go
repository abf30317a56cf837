package server

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"caretaker/internal/agent"
	"caretaker/internal/config"
)

// agentHosts runs guest actions through each host's agent.
type agentHosts struct {
	clients map[string]*agent.Client
}

func newAgentHosts(hosts []config.Host, token string) *agentHosts {
	// The action timeout bounds each call through its context; this
	// client-wide timeout is only a backstop.
	hc := &http.Client{Timeout: 5 * time.Minute}
	a := &agentHosts{clients: map[string]*agent.Client{}}
	for _, h := range hosts {
		a.clients[h.Name] = agent.NewClient("http://"+h.Agent, token, hc)
	}
	return a
}

func (a *agentHosts) client(host string) (*agent.Client, error) {
	c, ok := a.clients[host]
	if !ok {
		return nil, fmt.Errorf("host %q is not in the server's configuration", host)
	}
	return c, nil
}

func (a *agentHosts) StartGuest(ctx context.Context, host, uuid string) error {
	c, err := a.client(host)
	if err != nil {
		return err
	}
	if _, err := c.StartDomain(ctx, uuid); err != nil {
		return fmt.Errorf("start guest %s on %s: %w", uuid, host, err)
	}
	return nil
}

func (a *agentHosts) GuestRunning(ctx context.Context, host, uuid string) (bool, error) {
	c, err := a.client(host)
	if err != nil {
		return false, err
	}
	d, err := c.Domain(ctx, uuid)
	if err != nil {
		return false, fmt.Errorf("check guest %s on %s: %w", uuid, host, err)
	}
	return d.State == "running", nil
}

func (a *agentHosts) RepairOverlay(ctx context.Context, host, cluster string) ([]string, error) {
	c, err := a.client(host)
	if err != nil {
		return nil, err
	}
	changes, err := c.RepairOverlay(ctx, cluster)
	if err != nil {
		return changes, fmt.Errorf("repair overlay %s on %s: %w", cluster, host, err)
	}
	return changes, nil
}
