// Package api is the server's HTTP API under /api/v1/ — what runbook and
// other clients see — and its Go client. Every endpoint needs a bearer
// token: a request without a known one gets 401, one whose token's role is
// too low gets 403, and neither changes anything.
package api

import (
	"time"

	"caretaker/remediation/journal"
)

// Status is the fleet as the server sees it now.
type Status struct {
	Time time.Time `json:"time"`
	// Version is the answering server's build (`caretaker version`); empty
	// from servers older than the field.
	Version string  `json:"version,omitempty"`
	Hosts   []Host  `json:"hosts"`
	Guests  []Guest `json:"guests"`
	Alerts  []Alert `json:"alerts"`
}

// Host is one hypervisor host and the health of its agent.
type Host struct {
	Name      string `json:"name"`
	Agent     string `json:"agent"`
	AgentUp   bool   `json:"agent_up"`   // the last scrape of the agent succeeded
	LibvirtUp bool   `json:"libvirt_up"` // the agent reached libvirt
	Guests    int    `json:"guests"`
}

// Guest is one libvirt domain on a host.
type Guest struct {
	Host            string `json:"host"`
	UUID            string `json:"uuid"`
	Domain          string `json:"domain"`
	Cluster         string `json:"cluster,omitempty"`
	Role            string `json:"role,omitempty"`
	State           string `json:"state"`  // "running", "shut off", …
	Reason          string `json:"reason"` // "crashed", "destroyed", …
	StateCode       int    `json:"state_code"`
	ReasonCode      int    `json:"reason_code"`
	IntendedRunning bool   `json:"intended_running"`
}

// Alert is a pending or firing alert.
type Alert struct {
	Name        string            `json:"name"`
	State       string            `json:"state"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations,omitempty"`
	ActiveAt    time.Time         `json:"active_at"`
}

// History is a page of the remediation journal, newest first.
type History struct {
	Records []journal.Record `json:"records"`
}

// errorBody is every error response's body. Errors lists the problems one
// per line where there are several (a policy that does not load).
type errorBody struct {
	Error  string        `json:"error"`
	Errors []string      `json:"errors,omitempty"`
	Policy *PolicyStatus `json:"policy,omitempty"`
}
