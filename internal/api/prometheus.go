package api

import (
	"context"
	"fmt"
	"time"
)

// The server also answers Prometheus' own query API under /api/v1/ (for
// Grafana); these are the parts of its JSON that runbook reads.

// PromAlert is one alert of Prometheus' /api/v1/alerts.
type PromAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
	ActiveAt    *time.Time        `json:"activeAt,omitempty"`
	Value       string            `json:"value"`
}

// PromRuleGroup is one group of Prometheus' /api/v1/rules.
type PromRuleGroup struct {
	Name  string     `json:"name"`
	File  string     `json:"file"`
	Rules []PromRule `json:"rules"`
}

// PromRule is one rule of a PromRuleGroup.
type PromRule struct {
	Name        string            `json:"name"`
	Query       string            `json:"query"`
	Duration    float64           `json:"duration"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	Alerts      []PromAlert       `json:"alerts"`
	Health      string            `json:"health"`
	LastError   string            `json:"lastError,omitempty"`
	Type        string            `json:"type"`
}

type promResponse[T any] struct {
	Status    string `json:"status"`
	Data      T      `json:"data"`
	ErrorType string `json:"errorType"`
	Error     string `json:"error"`
}

// Alerts fetches the pending and firing alerts (Prometheus' /api/v1/alerts).
func (c *Client) Alerts(ctx context.Context) ([]PromAlert, error) {
	var r promResponse[struct {
		Alerts []PromAlert `json:"alerts"`
	}]
	if err := c.get(ctx, "/api/v1/alerts", &r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("alerts: %s: %s", r.ErrorType, r.Error)
	}
	return r.Data.Alerts, nil
}

// Rules fetches the alerting rules (Prometheus' /api/v1/rules?type=alert).
func (c *Client) Rules(ctx context.Context) ([]PromRuleGroup, error) {
	var r promResponse[struct {
		Groups []PromRuleGroup `json:"groups"`
	}]
	if err := c.get(ctx, "/api/v1/rules?type=alert", &r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("rules: %s: %s", r.ErrorType, r.Error)
	}
	return r.Data.Groups, nil
}
