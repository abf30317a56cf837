// Package authlimit is what every caretaker API does with a failed
// authentication: log it (client address, route, reason — never the
// token), count it by reason, and refuse a client that keeps failing with
// 429 and Retry-After for the rest of its window, without affecting any
// other client. The server's API, the Alertmanager webhook and the agent's
// action API each keep one Limiter.
package authlimit

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"caretaker/internal/httpjson"
)

// Reasons of a failure, as the reason label.
const (
	ReasonMissing     = "missing"      // no bearer token (or client certificate)
	ReasonInvalid     = "invalid"      // a token that is not known
	ReasonRateLimited = "rate_limited" // refused unseen: too many failures
	ReasonDisabled    = "disabled"     // the API has no token configured
)

// Defaults of Options.
const (
	DefaultMaxFailures = 10
	DefaultWindow      = time.Minute
	// maxClients bounds the memory kept: beyond it, clients whose window
	// ended are forgotten first, then the table is started afresh.
	maxClients = 10_000
)

// NewCounter returns the failure counter named name (e.g.
// caretaker_api_auth_failures_total) with every reason's series at 0.
func NewCounter(name, help string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"reason"})
	for _, r := range []string{ReasonMissing, ReasonInvalid, ReasonRateLimited, ReasonDisabled} {
		c.WithLabelValues(r)
	}
	return c
}

// Options configure a Limiter; zero values are the defaults.
type Options struct {
	// MaxFailures a client may have within Window before it is refused
	// with 429 until the window ends.
	MaxFailures int
	Window      time.Duration
	Counter     *prometheus.CounterVec // NewCounter's; nil counts nothing
	Logger      *slog.Logger           // nil discards
	Now         func() time.Time       // time.Now
}

type client struct {
	start    time.Time // of the window
	failures int
}

// Limiter counts failed authentications per client address. It is safe
// for concurrent use. A nil *Limiter refuses no one and records nothing.
type Limiter struct {
	o       Options
	log     *slog.Logger
	mu      sync.Mutex
	clients map[string]*client
}

// New returns a Limiter.
func New(o Options) *Limiter {
	if o.MaxFailures <= 0 {
		o.MaxFailures = DefaultMaxFailures
	}
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	l := &Limiter{o: o, log: o.Logger, clients: map[string]*client{}}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	return l
}

// Blocked says whether the client at addr has had MaxFailures failures in
// its current window at now, and how long until the window ends.
func (l *Limiter) Blocked(addr string, now time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[addr]
	if c == nil || !now.Before(c.start.Add(l.o.Window)) {
		return 0, false
	}
	if c.failures < l.o.MaxFailures {
		return 0, false
	}
	return c.start.Add(l.o.Window).Sub(now), true
}

// Failed records a failure of the client at addr at now.
func (l *Limiter) Failed(addr string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[addr]
	if c == nil || !now.Before(c.start.Add(l.o.Window)) {
		if c == nil && len(l.clients) >= maxClients {
			l.forget(now)
		}
		c = &client{start: now}
		l.clients[addr] = c
	}
	c.failures++
}

// forget drops the clients whose window ended, or all when none did.
func (l *Limiter) forget(now time.Time) {
	for a, c := range l.clients {
		if !now.Before(c.start.Add(l.o.Window)) {
			delete(l.clients, a)
		}
	}
	if len(l.clients) >= maxClients {
		clear(l.clients)
	}
}

// Client is the address a request comes from: the host of RemoteAddr
// (never a forwarded-for header, which the client writes itself).
func Client(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// Refuse answers 429 with Retry-After, in style, when r's client is
// blocked, and reports whether it did. Call it before looking at the
// credentials, so a blocked client's guesses are not even tried.
func (l *Limiter) Refuse(w http.ResponseWriter, r *http.Request, style httpjson.Style) bool {
	if l == nil {
		return false
	}
	addr := Client(r)
	wait, blocked := l.Blocked(addr, l.o.Now())
	if !blocked {
		return false
	}
	l.count(ReasonRateLimited)
	l.log.Warn("authentication refused: too many failures", "client", addr, "route", r.Method+" "+r.URL.Path,
		"reason", ReasonRateLimited, "retry_after", wait.Round(time.Second))
	secs := int((wait + time.Second - 1) / time.Second)
	w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
	style.Error(w, http.StatusTooManyRequests, fmt.Sprintf("too many failed authentications from %s; retry in %d s", addr, max(secs, 1)))
	return true
}

// Fail logs and counts a failed authentication of r for reason (one of
// the Reason constants) and records it against r's client.
func (l *Limiter) Fail(r *http.Request, reason string) {
	if l == nil {
		return
	}
	addr := Client(r)
	l.Failed(addr, l.o.Now())
	l.count(reason)
	l.log.Warn("authentication failed", "client", addr, "route", r.Method+" "+r.URL.Path, "reason", reason)
}

// Count logs and counts a failed authentication of r for reason without
// holding it against the client: for refusals no guess causes, such as an
// API without a token configured.
func (l *Limiter) Count(r *http.Request, reason string) {
	if l == nil {
		return
	}
	l.count(reason)
	l.log.Warn("authentication failed", "client", Client(r), "route", r.Method+" "+r.URL.Path, "reason", reason)
}

func (l *Limiter) count(reason string) {
	if l.o.Counter != nil {
		l.o.Counter.WithLabelValues(reason).Inc()
	}
}
