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
	"strings"
	"time"

	"caretaker/remediation/guards"
)

// PauseRequest asks to pause remediation of Target ("*" for everything, or
// a guest as "host/uuid") for Duration.
type PauseRequest struct {
	Target   string `json:"target"`
	Author   string `json:"author"`
	Comment  string `json:"comment"`
	Duration string `json:"duration"` // a Go duration, e.g. "2h"
}

// Pauser is what the pause endpoints need; the remediation engine has it.
type Pauser interface {
	Pause(p guards.Pause) error
	Resume(target string)
	Pauses() []guards.Pause
}

// maxPauseBody caps a pause request; they are a few hundred bytes.
const maxPauseBody = 64 << 10

// PauseHandler serves /api/v1/pauses: GET lists the pauses in force, POST
// adds one (author and comment required), DELETE ?target=… ends them.
func PauseHandler(p Pauser, now func() time.Time) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			pauses := p.Pauses()
			if pauses == nil {
				pauses = []guards.Pause{}
			}
			writeJSON(w, http.StatusOK, pauses)
		case http.MethodPost:
			pause, err := decodePause(r, now())
			if err != nil {
				writeError(w, http.StatusBadRequest, err.Error())
				return
			}
			if err := p.Pause(pause); err != nil {
				writeError(w, http.StatusBadRequest, err.Error())
				return
			}
			writeJSON(w, http.StatusCreated, pause)
		case http.MethodDelete:
			target := r.URL.Query().Get("target")
			if target == "" {
				writeError(w, http.StatusBadRequest, `target: required ("*" for the global pause, or host/uuid)`)
				return
			}
			p.Resume(target)
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Allow", "GET, POST, DELETE")
			writeError(w, http.StatusMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path)
		}
	})
}

func decodePause(r *http.Request, now time.Time) (guards.Pause, error) {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxPauseBody))
	dec.DisallowUnknownFields()
	var req PauseRequest
	if err := dec.Decode(&req); err != nil {
		return guards.Pause{}, fmt.Errorf("pause request: %w", err)
	}
	d, err := time.ParseDuration(req.Duration)
	if err != nil || d <= 0 {
		return guards.Pause{}, fmt.Errorf("duration: want a positive duration such as 2h, got %q", req.Duration)
	}
	if strings.TrimSpace(req.Author) == "" || strings.TrimSpace(req.Comment) == "" {
		return guards.Pause{}, errors.New("author and comment: both required, so the next on-call knows who paused and why")
	}
	return guards.Pause{Target: req.Target, Author: req.Author, Comment: req.Comment, Since: now, Until: now.Add(d)}, nil
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
