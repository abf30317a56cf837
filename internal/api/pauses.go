package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"caretaker/internal/httpjson"
	"caretaker/remediation/guards"
)

// PauseRequest asks to pause remediation of Target ("*" for everything, or
// a guest as "host/uuid") for Duration, at most MaxPause. It is recorded
// under the token's name and role; Author, when set, is kept as "on behalf
// of".
type PauseRequest struct {
	Target   string `json:"target"`
	Author   string `json:"author,omitempty"`
	Comment  string `json:"comment"`
	Duration string `json:"duration"` // a Go duration, e.g. "2h"
}

// MaxPause is the longest pause the API takes: a pause longer than a month
// is a forgotten one.
const MaxPause = 30 * 24 * time.Hour

// Pauser is what the pause endpoints need; the remediation engine has it.
type Pauser interface {
	Pause(p guards.Pause) error
	Resume(target string)
	Pauses() []guards.Pause
}

func (h *handler) pauses(w http.ResponseWriter, _ *http.Request) {
	ps := h.Pauser.Pauses()
	if ps == nil {
		ps = []guards.Pause{}
	}
	httpjson.Write(w, http.StatusOK, ps)
}

func (h *handler) pause(w http.ResponseWriter, r *http.Request) {
	var req PauseRequest
	if err := httpjson.Decode(w, r, &req, maxBody); err != nil {
		httpjson.WriteDecodeError(w, err)
		return
	}
	now := h.Now()
	d, err := time.ParseDuration(req.Duration)
	if err != nil || d <= 0 {
		httpjson.Error(w, http.StatusBadRequest, fmt.Sprintf("duration: want a positive duration such as 2h, got %q", req.Duration))
		return
	}
	if d > MaxPause {
		httpjson.Error(w, http.StatusBadRequest, fmt.Sprintf("duration: %s is longer than the longest pause, %s; pause again when it ends", d, MaxPause))
		return
	}
	if strings.TrimSpace(req.Comment) == "" {
		httpjson.Error(w, http.StatusBadRequest, "comment: required, so the next on-call knows why remediation is paused")
		return
	}
	for _, f := range []struct{ name, v string }{{"target", req.Target}, {"comment", req.Comment}, {"author", req.Author}} {
		if !CheckText(w, f.name, f.v) {
			return
		}
	}
	by := Who(r, req.Author)
	p := guards.Pause{Target: req.Target, Author: by.Name, AuthorRole: by.Role, OnBehalfOf: by.OnBehalfOf,
		Comment: req.Comment, Since: now, Until: now.Add(d)}
	if err := h.Pauser.Pause(p); err != nil {
		httpjson.Error(w, http.StatusBadRequest, err.Error())
		return
	}
	httpjson.Write(w, http.StatusCreated, p)
}

func (h *handler) resume(w http.ResponseWriter, r *http.Request) {
	target := r.URL.Query().Get("target")
	if target == "" {
		httpjson.Error(w, http.StatusBadRequest, `target: required ("*" for the global pause, or host/uuid)`)
		return
	}
	h.Pauser.Resume(target)
	w.WriteHeader(http.StatusNoContent)
}

// Pauses lists the pauses in force.
func (c *Client) Pauses(ctx context.Context) ([]guards.Pause, error) {
	var ps []guards.Pause
	err := c.get(ctx, "/api/v1/pauses", &ps)
	return ps, err
}

// Pause pauses remediation as req asks.
func (c *Client) Pause(ctx context.Context, req PauseRequest) (guards.Pause, error) {
	var p guards.Pause
	body, _ := json.Marshal(req)
	err := c.do(ctx, http.MethodPost, "/api/v1/pauses", body, &p)
	return p, err
}

// Resume ends the pauses of target.
func (c *Client) Resume(ctx context.Context, target string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/pauses?target="+url.QueryEscape(target), nil, nil)
}
