package agentapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// EventsPath is the agent's stream of libvirt lifecycle events: GET, with
// the server's token, answered 200 with one JSON object per line
// (application/x-ndjson) for as long as the connection lasts. The first
// line is a StreamLine with Hello, then Event lines as libvirt reports
// them and a Heartbeat line every HeartbeatEvery, so that a reader that
// hears nothing for a few heartbeats knows the connection is dead.
//
// Query parameters: boot and after, the Hello.Boot and the last Event.Seq
// the reader got from an earlier connection. The agent then sends every
// event after it that it still holds, and says in Hello.Resumed whether
// that is all of them. Without them the stream starts with the next event.
const EventsPath = "/api/v1/events"

// EventsContentType is the stream's media type.
const EventsContentType = "application/x-ndjson"

// HeartbeatEvery is how often the agent writes a Heartbeat line on an idle
// stream.
const HeartbeatEvery = 5 * time.Second

// MaxEventLine bounds one line of the stream; a longer one is an error.
const MaxEventLine = 64 << 10

// StreamLine is one line of the event stream: exactly one field is set.
type StreamLine struct {
	Hello     *Hello     `json:"hello,omitempty"`
	Event     *Event     `json:"event,omitempty"`
	Heartbeat *Heartbeat `json:"heartbeat,omitempty"`
}

// Hello opens a stream.
type Hello struct {
	// Boot names this run of the agent: sequence numbers count from 1 in
	// each. A reader resumes only within the same boot.
	Boot string `json:"boot"`
	// Seq is the last sequence number the agent has given an event (0:
	// none yet).
	Seq uint64 `json:"seq"`
	// Resumed is true when the reader asked to resume (boot and after)
	// and every event after its after follows: none was lost while it
	// was away. False means some may have been (the agent restarted, or
	// no longer holds them): the reader cannot tell what happened
	// meanwhile from the stream alone.
	Resumed bool `json:"resumed"`
	// Libvirt says the agent's libvirt event callbacks are registered
	// now; while they are not, no event can come.
	Libvirt bool `json:"libvirt"`
}

// Heartbeat says the stream is alive and where it stands.
type Heartbeat struct {
	Seq     uint64 `json:"seq"`
	Libvirt bool   `json:"libvirt"`
}

// The Types of an Event: libvirt's lifecycle event types in lower case, and
// EventGap.
const (
	EventDefined     = "defined"
	EventUndefined   = "undefined"
	EventStarted     = "started"
	EventSuspended   = "suspended"
	EventResumed     = "resumed"
	EventStopped     = "stopped"
	EventShutdown    = "shutdown"
	EventPMSuspended = "pmsuspended"
	EventCrashed     = "crashed"
	// EventGap says events may have been lost on the agent's side: its
	// libvirt connection was down (libvirtd restarted) from Since until
	// the event's Time, and nothing libvirt reported meanwhile reached
	// the agent. It has no domain.
	EventGap = "gap"
)

// Event is one lifecycle event of a domain, with the domain's state read
// right after it.
type Event struct {
	// Seq numbers the events of one boot of the agent (Hello.Boot) from
	// 1, without holes.
	Seq uint64 `json:"seq"`
	// Time is when the agent received the event from libvirt, on the
	// agent's clock.
	Time time.Time `json:"time"`
	// Type is one of the Event* constants; Detail is libvirt's detail of
	// it in lower case ("crashed", "failed", "destroyed", "shutdown",
	// "booted", "ioerror", …), or "" when there is none.
	Type   string `json:"type"`
	Detail string `json:"detail,omitempty"`
	UUID   string `json:"uuid,omitempty"`
	Domain string `json:"domain,omitempty"`
	// State and Reason are the domain's state and its reason as read
	// after the event (libvirt's virDomainState and reason codes, as in
	// caretaker_kvm_domain_state and _state_reason); StateKnown is false
	// when it could not be read (the domain is gone).
	StateKnown bool `json:"state_known"`
	State      int  `json:"state"`
	Reason     int  `json:"reason"`
	// IntendedRunning is whether the guest is meant to run, as the kvm
	// collector decides it (caretaker_kvm_domain_intended_running):
	// nil when it could not be read.
	IntendedRunning *bool `json:"intended_running,omitempty"`
	// Since is, for EventGap, when the agent lost its libvirt events.
	Since time.Time `json:"since,omitzero"`
}

// Validate checks a line received from an agent: exactly one part, and
// what the reader relies on in it.
func (l StreamLine) Validate() error {
	n := 0
	for _, set := range []bool{l.Hello != nil, l.Event != nil, l.Heartbeat != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("want exactly one of hello, event and heartbeat, got %d", n)
	}
	switch {
	case l.Hello != nil:
		if l.Hello.Boot == "" || len(l.Hello.Boot) > 64 {
			return errors.New("hello: boot must be 1 to 64 characters")
		}
	case l.Event != nil:
		e := l.Event
		if e.Seq == 0 {
			return errors.New("event: seq must be positive")
		}
		if e.Type == "" {
			return fmt.Errorf("event %d: no type", e.Seq)
		}
		if e.Type != EventGap && !ValidUUID(e.UUID) {
			return fmt.Errorf("event %d: uuid %q is not a UUID", e.Seq, e.UUID)
		}
	}
	return nil
}

// ValidUUID reports whether s is a UUID in its canonical text form,
// 8-4-4-4-12 hex digits of either case.
func ValidUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// Position is where a reader stands in an agent's stream: the boot and the
// last sequence number it got. The zero Position asks for the events from
// now on.
type Position struct {
	Boot string
	Seq  uint64
}

// ReadEvents reads a stream until it ends, an invalid line, or handle's
// error, and returns why it ended (io.EOF at a clean end). Every line is
// checked (Validate) before handle sees it.
func ReadEvents(r io.Reader, handle func(StreamLine) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), MaxEventLine)
	n := 0
	for sc.Scan() {
		n++
		var l StreamLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("event stream line %d: %w", n, err)
		}
		if err := l.Validate(); err != nil {
			return fmt.Errorf("event stream line %d: %w", n, err)
		}
		if n == 1 && l.Hello == nil {
			return errors.New("event stream line 1: want hello first")
		}
		if n > 1 && l.Hello != nil {
			return fmt.Errorf("event stream line %d: a second hello", n)
		}
		if err := handle(l); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("event stream after line %d: %w", n, err)
	}
	return io.EOF
}

// Events opens the agent's event stream from pos and hands each line to
// handle (ReadEvents) until the stream ends, handle fails or ctx is done.
// The connection is the client's own (no client-wide timeout): stall
// bounds how long it may stay silent before it is given up as dead; a
// healthy agent writes a heartbeat every HeartbeatEvery.
func (c *Client) Events(ctx context.Context, pos Position, stall time.Duration, handle func(StreamLine) error) error {
	q := url.Values{}
	if pos.Boot != "" {
		q.Set("boot", pos.Boot)
		q.Set("after", strconv.FormatUint(pos.Seq, 10))
	}
	u := c.baseURL + EventsPath
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("Accept", EventsContentType)
	hc := &http.Client{Transport: c.hc.Transport} // no Timeout: the stream is long
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", c.baseURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
		msg, _ := errorMessage(body)
		return fmt.Errorf("%s: %w", c.baseURL, &StatusError{Code: resp.StatusCode, Msg: msg})
	}
	// A watchdog: every line read pushes the deadline on.
	alive := make(chan struct{}, 1)
	stalled := errors.New("no line within " + stall.String())
	go func() {
		t := time.NewTimer(stall)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-alive:
				t.Reset(stall)
			case <-t.C:
				cancel(stalled)
				return
			}
		}
	}()
	err = ReadEvents(resp.Body, func(l StreamLine) error {
		select {
		case alive <- struct{}{}:
		default:
		}
		return handle(l)
	})
	if cause := context.Cause(ctx); cause == stalled {
		err = cause
	}
	return fmt.Errorf("%s: event stream: %w", c.baseURL, err)
}
