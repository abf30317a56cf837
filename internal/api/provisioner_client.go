package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"caretaker/provisioner/clusters"
	"caretaker/provisioner/hoststate"
	"caretaker/provisioner/inventory"
)

// HostStates is the body of GET /api/v1/provisioner/hosts.
type HostStates struct {
	Hosts []hoststate.Host `json:"hosts"`
}

// HostStateDetail is the body of GET /api/v1/provisioner/hosts/{name}, and
// (without History) of the 202 answer to provision and reprovision.
type HostStateDetail struct {
	Host    hoststate.Host         `json:"host"`
	History []hoststate.Transition `json:"history,omitempty"`
}

// ProvisionRequest is the body of POST
// /api/v1/provisioner/hosts/{name}/provision and …/reprovision. Author
// defaults to the token's name.
type ProvisionRequest struct {
	Author  string `json:"author,omitempty"`
	Comment string `json:"comment"`
}

// CreateCluster asks for a new guest cluster; the server creates its nodes
// asynchronously (follow them with Cluster).
func (c *Client) CreateCluster(ctx context.Context, spec clusters.Spec) (clusters.Cluster, error) {
	var cl clusters.Cluster
	body, err := json.Marshal(spec)
	if err != nil {
		return cl, fmt.Errorf("create cluster %s: %w", spec.Name, err)
	}
	err = c.do(ctx, http.MethodPost, "/api/v1/clusters", body, &cl)
	return cl, err
}

// Clusters lists the guest clusters.
func (c *Client) Clusters(ctx context.Context) ([]clusters.Cluster, error) {
	var l clusters.List
	err := c.get(ctx, "/api/v1/clusters", &l)
	return l.Clusters, err
}

// Cluster fetches one guest cluster with its nodes' progress.
func (c *Client) Cluster(ctx context.Context, name string) (clusters.Cluster, error) {
	var cl clusters.Cluster
	err := c.get(ctx, "/api/v1/clusters/"+url.PathEscape(name), &cl)
	return cl, err
}

// DeleteCluster marks a cluster for deletion and returns it as marked; the
// server deletes its nodes and overlays asynchronously. comment (may be
// "") is recorded in the cluster's changed_by.
func (c *Client) DeleteCluster(ctx context.Context, name, comment string) (clusters.Cluster, error) {
	var cl clusters.Cluster
	var body []byte
	if comment != "" {
		body, _ = json.Marshal(clusters.DeleteRequest{Comment: comment})
	}
	err := c.do(ctx, http.MethodDelete, "/api/v1/clusters/"+url.PathEscape(name), body, &cl)
	return cl, err
}

// ScaleCluster sets the node count of one of a cluster's pools.
func (c *Client) ScaleCluster(ctx context.Context, name, pool string, count int) (clusters.Cluster, error) {
	var cl clusters.Cluster
	body, _ := json.Marshal(clusters.ScaleRequest{Count: &count})
	err := c.do(ctx, http.MethodPatch, "/api/v1/clusters/"+url.PathEscape(name)+"/pools/"+url.PathEscape(pool), body, &cl)
	return cl, err
}

// Hosts lists the inventory: the file's hosts and those added through the
// API, by name.
func (c *Client) Hosts(ctx context.Context) ([]inventory.Host, error) {
	var l struct {
		Hosts []inventory.Host `json:"hosts"`
	}
	err := c.get(ctx, "/api/v1/hosts", &l)
	return l.Hosts, err
}

// Host fetches one host of the inventory.
func (c *Client) Host(ctx context.Context, name string) (inventory.Host, error) {
	var h inventory.Host
	err := c.get(ctx, "/api/v1/hosts/"+url.PathEscape(name), &h)
	return h, err
}

// AddHost adds a host to the inventory and returns it as stored (MACs
// normalised, the default agent address filled in).
func (c *Client) AddHost(ctx context.Context, h inventory.Host) (inventory.Host, error) {
	var stored inventory.Host
	body, err := json.Marshal(h)
	if err != nil {
		return stored, fmt.Errorf("add host %s: %w", h.Name, err)
	}
	err = c.do(ctx, http.MethodPost, "/api/v1/hosts", body, &stored)
	return stored, err
}

// RemoveHost removes a host added through the API (the file's hosts are
// removed from the file). comment (may be "") is kept in the server's
// record of the removal, beside the token's identity.
func (c *Client) RemoveHost(ctx context.Context, name, comment string) error {
	var body []byte
	if comment != "" {
		body, _ = json.Marshal(inventory.RemoveRequest{Comment: comment})
	}
	return c.do(ctx, http.MethodDelete, "/api/v1/hosts/"+url.PathEscape(name), body, nil)
}

// HostStates lists every host's provisioning state. A server without a
// provisioner answers 404 (a *StatusError).
func (c *Client) HostStates(ctx context.Context) ([]hoststate.Host, error) {
	var s HostStates
	err := c.get(ctx, "/api/v1/provisioner/hosts", &s)
	return s.Hosts, err
}

// HostState fetches one host's provisioning state and its transitions.
func (c *Client) HostState(ctx context.Context, name string) (hoststate.Host, []hoststate.Transition, error) {
	var d HostStateDetail
	err := c.get(ctx, "/api/v1/provisioner/hosts/"+url.PathEscape(name), &d)
	return d.Host, d.History, err
}

// Provision starts provisioning a registered or failed host.
func (c *Client) Provision(ctx context.Context, name, author, comment string) (hoststate.Host, error) {
	return c.provision(ctx, "provision", name, author, comment)
}

// Reprovision cordons a host, has its guests moved and reinstalls it.
func (c *Client) Reprovision(ctx context.Context, name, author, comment string) (hoststate.Host, error) {
	return c.provision(ctx, "reprovision", name, author, comment)
}

func (c *Client) provision(ctx context.Context, verb, name, author, comment string) (hoststate.Host, error) {
	var d HostStateDetail
	body, _ := json.Marshal(ProvisionRequest{Author: author, Comment: comment})
	err := c.do(ctx, http.MethodPost, "/api/v1/provisioner/hosts/"+url.PathEscape(name)+"/"+verb, body, &d)
	return d.Host, err
}

// PlanCluster asks where a cluster's nodes would go if it were created now
// (whether it fits, why not), creating nothing.
func (c *Client) PlanCluster(ctx context.Context, spec clusters.Spec) (clusters.Plan, error) {
	var p clusters.Plan
	body, err := json.Marshal(spec)
	if err != nil {
		return p, fmt.Errorf("plan cluster %s: %w", spec.Name, err)
	}
	err = c.do(ctx, http.MethodPost, "/api/v1/clusters/plan", body, &p)
	return p, err
}
