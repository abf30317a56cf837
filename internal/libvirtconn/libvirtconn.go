// Package libvirtconn keeps one long-lived libvirt connection per URI and
// replaces it when libvirtd goes away, so that the collectors and the agent's
// actions survive a restart of the daemon without restarting the agent.
package libvirtconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"libvirt.org/go/libvirt"
)

// eventLoopOnce is the package's only global. libvirt's default event loop
// is process-wide by libvirt's design: virEventRegisterDefaultImpl may be
// called once per process and must precede the first connection, whoever in
// the process asks for it. A value owned by a caller could not enforce that.
var eventLoopOnce struct {
	once sync.Once
	err  error
}

// StartEventLoop registers libvirt's default event loop and runs it in a
// goroutine until ctx is done. The loop is what delivers close callbacks and
// keepalives on remote connections, so that a libvirtd restart is noticed
// without waiting for the next failing call.
//
// Call it once, early in main, before the first connection is opened. Later
// calls do nothing and return the first call's result: the loop they would
// start already runs (or ran) under the first call's context.
func StartEventLoop(ctx context.Context, logger *slog.Logger) error {
	eventLoopOnce.once.Do(func() {
		if err := libvirt.EventRegisterDefaultImpl(); err != nil {
			eventLoopOnce.err = fmt.Errorf("register libvirt default event loop: %w", err)
			return
		}
		go runEventLoop(ctx, logger)
		go wakeEventLoopWhenDone(ctx, logger)
	})
	return eventLoopOnce.err
}

func runEventLoop(ctx context.Context, logger *slog.Logger) {
	logger.Debug("libvirt event loop started")
	defer logger.Debug("libvirt event loop stopped")
	for ctx.Err() == nil {
		// One iteration blocks until a handle or timer fires; errors are
		// transient (as in virsh's own loop), so log and go on.
		if err := libvirt.EventRunDefaultImpl(); err != nil {
			logger.Error("run libvirt event loop iteration", "err", err)
		}
	}
}

// wakeEventLoopWhenDone adds a timer that fires at once when ctx is done:
// without it the loop would sit in poll() until some unrelated event, and
// never see that it should stop.
func wakeEventLoopWhenDone(ctx context.Context, logger *slog.Logger) {
	<-ctx.Done()
	_, err := libvirt.EventAddTimeout(0, func(timer int) {
		// A zero-interval timer fires on every iteration until removed.
		_ = libvirt.EventRemoveTimeout(timer)
	})
	if err != nil {
		logger.Error("wake libvirt event loop to stop it", "err", err)
	}
}

// ErrClosed is returned by Get after Close.
var ErrClosed = errors.New("connection closed")

// Conn is a libvirt connection to one URI that is opened on first use and
// re-opened when it has died (libvirtd restarted, socket closed, keepalive
// timed out). It is safe for concurrent use.
type Conn struct {
	uri    string
	logger *slog.Logger
	// timeout bounds each Call (WithTimeout).
	timeout time.Duration

	mu     sync.Mutex
	conn   *libvirt.Connect // nil until the first Get and after Close
	dead   chan struct{}    // closed by conn's close callback
	closed bool
	hooks  []Hook
	// undo holds what the hooks returned for conn, to run before it is
	// closed.
	undo []func()
	// connecting is the opening of a connection under way, if any: it
	// runs without mu held (a frozen libvirtd accepts the socket and never
	// answers the handshake), and the Gets that come meanwhile wait for it
	// rather than open another.
	connecting *opening
	// calls are the Calls under way, by what they do.
	calls map[string]*call
}

// opening is one attempt to open a connection; conn and err are set before
// done is closed.
type opening struct {
	done chan struct{}
	conn *libvirt.Connect
	err  error
}

// Option configures a Conn.
type Option func(*Conn)

// WithTimeout bounds how long Call waits for libvirt (--libvirt.timeout).
// d <= 0 leaves only the caller's context. The default is DefaultTimeout.
func WithTimeout(d time.Duration) Option {
	return func(c *Conn) { c.timeout = d }
}

// DefaultTimeout is how long Call waits for libvirt unless WithTimeout says
// otherwise.
const DefaultTimeout = 5 * time.Second

// Hook is run on each new connection (see OnConnect). It returns what to
// run before that connection is closed, or nil.
type Hook func(*libvirt.Connect) (undo func())

// New returns a Conn for uri (for example "qemu:///system"). It does not
// connect: the first Get does, so that an agent starts even while libvirtd is
// down.
func New(uri string, logger *slog.Logger, opts ...Option) *Conn {
	c := &Conn{uri: uri, logger: logger.With("libvirt_uri", uri), timeout: DefaultTimeout, calls: map[string]*call{}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// URI returns the libvirt URI the Conn connects to.
func (c *Conn) URI() string { return c.uri }

// Timeout returns how long Call waits for libvirt (WithTimeout).
func (c *Conn) Timeout() time.Duration { return c.timeout }

// OnConnect has f run on every connection c opens from now on, before Get
// hands it out, and at once on the connection c has open, if any. It is how a
// user registers libvirt event callbacks, which live and die with one
// connection: f runs again after every reconnect, and events that happened
// while there was no connection are lost, so f should also forget what the
// events would have kept up to date.
//
// What f returns runs before the connection is closed, dead or not. It must
// deregister the callbacks f registered: each holds a reference to the
// connection, which libvirt would otherwise keep open.
//
// f and what it returns run with c's lock held, on the goroutine that called
// Get, OnConnect or Close: they may make calls on the connection they are
// given but must not call c's methods.
func (c *Conn) OnConnect(f Hook) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hooks = append(c.hooks, f)
	if c.conn != nil && c.aliveLocked() {
		c.runHookLocked(f)
	}
}

func (c *Conn) runHookLocked(f Hook) {
	if undo := f(c.conn); undo != nil {
		c.undo = append(c.undo, undo)
	}
}

// undoHooksLocked runs what the hooks returned for c.conn, last first.
func (c *Conn) undoHooksLocked() {
	for i := len(c.undo) - 1; i >= 0; i-- {
		c.undo[i]()
	}
	c.undo = nil
}

// Get returns the live connection, opening it if there is none or if the
// previous one died.
//
// The returned connection is shared: callers must not Close it. A connection
// that Get has given out may be closed by a later Get once it is found dead;
// calls on it then fail with a libvirt error, as they would have anyway.
//
// Opening a connection to a frozen libvirtd never returns: Get waits for
// it, but holds no lock meanwhile, and the Gets that come while it runs wait
// for the same opening rather than start another. Bound the wait with Call.
func (c *Conn) Get() (*libvirt.Connect, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, fmt.Errorf("get libvirt connection %s: %w", c.uri, ErrClosed)
	}
	if c.conn != nil {
		if c.aliveLocked() {
			conn := c.conn
			c.mu.Unlock()
			return conn, nil
		}
		c.logger.Warn("libvirt connection lost, reconnecting")
		c.dropLocked()
	}
	op := c.connecting
	if op == nil {
		op = &opening{done: make(chan struct{})}
		c.connecting = op
		go c.open(op)
	}
	c.mu.Unlock()
	<-op.done
	return op.conn, op.err
}

// open opens a connection for op, makes it c's and runs the hooks on it.
func (c *Conn) open(op *opening) {
	defer close(op.done)
	conn, err := libvirt.NewConnect(c.uri)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.connecting = nil
	if err != nil {
		op.err = fmt.Errorf("open libvirt connection %s: %w", c.uri, err)
		return
	}
	if c.closed {
		// Closed while the connection was being opened.
		_, _ = conn.Close()
		op.err = fmt.Errorf("get libvirt connection %s: %w", c.uri, ErrClosed)
		return
	}
	dead := make(chan struct{})
	var once sync.Once
	err = conn.RegisterCloseCallback(func(_ *libvirt.Connect, reason libvirt.ConnectCloseReason) {
		// Runs on the event loop's thread, where calling back into this
		// connection could deadlock libvirt: only mark it dead here and
		// let the next Get replace it.
		once.Do(func() { close(dead) })
		c.logger.Warn("libvirt connection closed", "reason", closeReason(reason))
	})
	if err != nil {
		// Not fatal: IsAlive still tells a dead connection apart.
		c.logger.Debug("register libvirt close callback", "err", err)
	}
	c.conn, c.dead = conn, dead
	c.logger.Info("libvirt connection opened")
	for _, f := range c.hooks {
		c.runHookLocked(f)
	}
	op.conn = conn
}

// Lost returns a channel closed once the connection open now is lost, as
// libvirt's close callback reports it (libvirtd went away, the keepalive
// timed out): the moment a user of OnConnect's callbacks stopped hearing
// from them, which the hooks' undo learns only at the next Get. With no
// connection open it returns a closed channel. A connection whose close
// callback could not be registered is never reported lost here; IsAlive
// still tells Get.
func (c *Conn) Lost() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil || c.dead == nil {
		closed := make(chan struct{})
		close(closed)
		return closed
	}
	return c.dead
}

// ErrTimeout is returned (wrapped) by Call when libvirt did not answer
// within the timeout, and ErrBusy when an earlier call for the same thing
// has not returned yet. Both mean libvirtd is not answering: the agent
// answers 503 to them.
var (
	ErrTimeout = errors.New("libvirt did not answer in time")
	ErrBusy    = errors.New("an earlier call to libvirt for the same has not returned yet")
)

// unanswered is the error of a Call libvirt did not answer in time: its
// message says what and for how long, and it wraps ErrTimeout or ErrBusy.
type unanswered struct {
	msg  string
	kind error
}

func (e *unanswered) Error() string { return e.msg }
func (e *unanswered) Unwrap() error { return e.kind }

// call is one Call under way; err is set before done is closed.
type call struct {
	done chan struct{}
	err  error
	// abandoned is set, under Conn.mu, once its caller's time for it ran
	// out: libvirt did not answer.
	abandoned bool
}

// Call runs f with the live connection (Get) in a goroutine of its own and
// waits for it until the Conn's timeout (WithTimeout) or ctx ends, whichever
// comes first. what names the work (for example "start domain <uuid>"): it
// is in the errors, and keys the calls. A libvirt call cannot be cancelled:
// one that does not return in time (libvirtd frozen) is left to return on
// its own, and until it has, a Call for the same what fails at once with
// ErrBusy rather than start a second one on the connection. A call whose
// caller left (ctx ended) is not given up on: a Call for the same what
// waits for it.
//
// Call's error is ErrTimeout or ErrBusy (wrapped, naming the timeout), ctx's
// error, or f's.
func (c *Conn) Call(ctx context.Context, what string, f func(*libvirt.Connect) error) error {
	return c.CallWithin(ctx, what, c.timeout, f)
}

// CallWithin is Call bounded by d instead of the Conn's timeout, for work
// that takes libvirt longer than an answer does (starting a guest, copying
// its disk). d <= 0 leaves only ctx.
func (c *Conn) CallWithin(ctx context.Context, what string, d time.Duration, f func(*libvirt.Connect) error) error {
	var timer <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	var cl *call
	for cl == nil {
		c.mu.Lock()
		prev := c.calls[what]
		switch {
		case prev == nil:
			cl = &call{done: make(chan struct{})}
			c.calls[what] = cl
		case prev.abandoned:
			c.mu.Unlock()
			return &unanswered{fmt.Sprintf("%s: libvirt %s did not answer within %s, and has not answered since", what, c.uri, d), ErrBusy}
		}
		c.mu.Unlock()
		if cl != nil {
			break
		}
		// The same work for another caller: one at a time.
		select {
		case <-prev.done:
		case <-timer:
			return &unanswered{fmt.Sprintf("%s: libvirt %s did not answer within %s", what, c.uri, d), ErrTimeout}
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
	}
	go func() {
		defer close(cl.done)
		conn, err := c.Get()
		if err == nil {
			err = f(conn)
		}
		cl.err = err
		c.mu.Lock()
		delete(c.calls, what)
		c.mu.Unlock()
	}()

	select {
	case <-cl.done:
		return cl.err
	case <-timer:
		c.abandon(what, cl, d)
		return &unanswered{fmt.Sprintf("%s: libvirt %s did not answer within %s", what, c.uri, d), ErrTimeout}
	case <-ctx.Done():
		// The caller left (a client hung up): that says nothing of
		// libvirt, so the call is not abandoned, and the next caller for
		// the same waits for it rather than be refused.
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
}

// abandon marks cl given up on. It stays in c.calls, so that a Call for
// the same fails at once, until it returns.
func (c *Conn) abandon(what string, cl *call, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls[what] == cl {
		cl.abandoned = true
	}
	c.logger.Warn("libvirt did not answer in time, leaving the call to return on its own", "call", what, "timeout", d)
}

// aliveLocked reports whether c.conn may still be used.
func (c *Conn) aliveLocked() bool {
	select {
	case <-c.dead:
		return false
	default:
	}
	// For remote drivers IsAlive is a local check of the client's socket
	// state, not a round trip, so it is cheap enough for every Get. It
	// errors when the connection was closed behind our back.
	alive, err := c.conn.IsAlive()
	return err == nil && alive
}

// dropLocked releases c.conn. Errors are only logged: the connection is
// being thrown away, usually because it is already broken.
func (c *Conn) dropLocked() {
	c.undoHooksLocked()
	if err := c.conn.UnregisterCloseCallback(); err != nil {
		c.logger.Debug("unregister libvirt close callback", "err", err)
	}
	if refs, err := c.conn.Close(); err != nil {
		c.logger.Debug("close dead libvirt connection", "err", err)
	} else if refs > 0 {
		c.logger.Debug("dead libvirt connection still referenced after close", "references", refs)
	}
	c.conn, c.dead = nil, nil
}

// Close closes the connection, if open. Get fails after Close.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.conn == nil {
		return nil
	}
	c.undoHooksLocked()
	_ = c.conn.UnregisterCloseCallback()
	refs, err := c.conn.Close()
	c.conn, c.dead = nil, nil
	if refs > 0 {
		// Something (an event callback whose hook did not undo it)
		// keeps libvirt from closing the connection.
		c.logger.Warn("libvirt connection still referenced after close", "references", refs)
	}
	if err != nil {
		return fmt.Errorf("close libvirt connection %s: %w", c.uri, err)
	}
	return nil
}

func closeReason(r libvirt.ConnectCloseReason) string {
	switch r {
	case libvirt.CONNECT_CLOSE_REASON_ERROR:
		return "error"
	case libvirt.CONNECT_CLOSE_REASON_EOF:
		return "eof"
	case libvirt.CONNECT_CLOSE_REASON_KEEPALIVE:
		return "keepalive"
	case libvirt.CONNECT_CLOSE_REASON_CLIENT:
		return "client"
	default:
		return fmt.Sprintf("unknown (%d)", int(r))
	}
}
