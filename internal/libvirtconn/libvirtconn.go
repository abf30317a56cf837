// Package libvirtconn keeps one long-lived libvirt connection per URI and
// replaces it when libvirtd goes away, so that the collectors and the agent's
// actions survive a restart of the daemon without restarting the agent.
//
// It speaks libvirt's RPC protocol to the local libvirtd over its unix
// socket, in pure Go (github.com/digitalocean/go-libvirt): the process links
// no C library of libvirt's, and needs no event loop of its own. The daemon
// opens the driver the URI names (see Dial).
package libvirtconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"
)

// DefaultSocket is the system libvirtd's read-write socket, which Dial
// uses unless the URI names another with ?socket=.
const DefaultSocket = "/var/run/libvirt/libvirt-sock"

// dialTimeout bounds connecting to the socket (not the handshake after it,
// which a frozen libvirtd never answers: Call bounds that).
const dialTimeout = 5 * time.Second

// Target is where a libvirt URI leads: the unix socket of the libvirtd to
// dial, and the URI of the driver the daemon is asked to open on it.
type Target struct {
	Socket string
	Driver string
}

// ParseURI returns where uri leads. Supported are local URIs, served by
// the libvirtd on this host: driver:///path (qemu:///system,
// test:///default, test:///abs/path/node.xml) and driver+unix:///path,
// with ?socket=/path for a libvirtd on another socket than DefaultSocket.
// The daemon opens the driver itself, so test:///… is libvirt's test driver
// inside the daemon (as test+unix:///… is), never in this process.
// Remote transports (tcp, tls, ssh, libssh, ext) and URIs naming a host are
// refused with an error that says so.
func ParseURI(uri string) (Target, error) {
	if uri == "" {
		return Target{}, fmt.Errorf("libvirt URI is empty; want a local one, such as qemu:///system")
	}
	u, err := url.Parse(uri)
	if err != nil {
		return Target{}, fmt.Errorf("libvirt URI %q: %w", uri, err)
	}
	driver, transport, _ := strings.Cut(u.Scheme, "+")
	if driver == "" || u.Opaque != "" {
		return Target{}, fmt.Errorf("libvirt URI %q: want driver:///path, such as qemu:///system", uri)
	}
	if transport != "" && transport != "unix" || u.Host != "" || u.User != nil {
		return Target{}, fmt.Errorf("libvirt URI %q: only the local libvirtd is supported, over its unix socket "+
			"(qemu:///system, test:///path/node.xml, qemu+unix:///system?socket=/path); "+
			"remote transports (tcp, tls, ssh, libssh, ext) and host names are not: run the agent on the host it watches", uri)
	}
	t := Target{Socket: DefaultSocket}
	q := u.Query()
	if s := q.Get("socket"); s != "" {
		t.Socket = s
	}
	// As libvirt's remote driver does: the transport's own parameters
	// stay here, the others go to the daemon with the driver's URI.
	q.Del("socket")
	q.Del("mode")
	if name := q.Get("name"); name != "" {
		t.Driver = name
		return t, nil
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	t.Driver = driver + "://" + path
	if len(q) > 0 {
		t.Driver += "?" + q.Encode()
	}
	return t, nil
}

// Dial opens a connection to the libvirtd and driver uri names (ParseURI).
// Nothing bounds the handshake: a frozen libvirtd accepts the socket and
// never answers it. Disconnect the connection when done.
func Dial(uri string) (*libvirt.Libvirt, error) {
	return dial(uri, &socket{})
}

// dial is Dial through s, which the caller may close to cut a handshake
// left hanging, or the connection later without a round trip (Conn).
func dial(uri string, s *socket) (*libvirt.Libvirt, error) {
	t, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	s.setPath(t.Socket)
	l := libvirt.NewWithDialer(s)
	if err := l.ConnectToURI(libvirt.ConnectURI(t.Driver)); err != nil {
		s.close()
		return nil, fmt.Errorf("open libvirt connection %s (socket %s, driver %s): %w", uri, t.Socket, t.Driver, err)
	}
	return l, nil
}

// socket is go-libvirt's dialer of a unix socket that keeps the
// connection it made, so that it can be closed from outside: go-libvirt
// calls take no context, and closing the socket is what makes a call left
// waiting on a frozen libvirtd return.
type socket struct {
	path string

	mu     sync.Mutex
	conn   net.Conn
	closed bool
}

func (s *socket) setPath(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.path = path
}

// Dial implements go-libvirt's socket.Dialer.
func (s *socket) Dial() (net.Conn, error) {
	s.mu.Lock()
	path := s.path
	s.mu.Unlock()
	conn, err := net.DialTimeout("unix", path, dialTimeout)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		conn.Close()
		return nil, net.ErrClosed
	}
	s.conn = conn
	return conn, nil
}

// close closes the socket, now and if it is dialled later.
func (s *socket) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.conn != nil {
		_ = s.conn.Close()
	}
}

// ErrClosed is returned by Get after Close.
var ErrClosed = errors.New("connection closed")

// Conn is a libvirt connection to one URI that is opened on first use and
// re-opened when it has died (libvirtd restarted, socket closed, libvirtd
// frozen past the keepalive). It is safe for concurrent use.
type Conn struct {
	uri    string
	logger *slog.Logger
	// timeout bounds each Call (WithTimeout).
	timeout time.Duration
	// keepalive is how long libvirtd may leave a ping unanswered, once a
	// call was given up on, before the connection is closed (WithKeepalive).
	keepalive time.Duration

	mu     sync.Mutex
	conn   *libvirt.Libvirt // nil until the first Get and after Close
	sock   *socket          // conn's socket
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
	// probing is set while a ping of conn is under way (probe).
	probing bool
	// calls are the Calls under way, by what they do.
	calls map[string]*call
}

// opening is one attempt to open a connection, through sock; conn and err
// are set before done is closed.
type opening struct {
	done chan struct{}
	sock *socket
	conn *libvirt.Libvirt
	err  error
}

// Option configures a Conn.
type Option func(*Conn)

// WithTimeout bounds how long Call waits for libvirt (--libvirt.timeout).
// d <= 0 leaves only the caller's context. The default is DefaultTimeout.
func WithTimeout(d time.Duration) Option {
	return func(c *Conn) { c.timeout = d }
}

// WithKeepalive sets how long libvirtd may leave a ping unanswered after a
// call was given up on before the connection is closed; the default is
// DefaultKeepalive.
func WithKeepalive(d time.Duration) Option {
	return func(c *Conn) { c.keepalive = d }
}

// DefaultTimeout is how long Call waits for libvirt unless WithTimeout says
// otherwise.
const DefaultTimeout = 5 * time.Second

// DefaultKeepalive is how long a connection whose call was given up on
// stays open while libvirtd answers no ping: about what libvirt's own
// client keepalive allows (five pings five seconds apart).
const DefaultKeepalive = 30 * time.Second

// closeWait bounds the polite close of a connection (Close): past it the
// socket is closed without libvirtd's answer.
const closeWait = time.Second

// Hook is run on each new connection (see OnConnect). It returns what to
// run before that connection is closed, or nil.
type Hook func(*libvirt.Libvirt) (undo func())

// New returns a Conn for uri (see ParseURI; for example "qemu:///system").
// It does not connect: the first Get does, so that an agent starts even
// while libvirtd is down. A URI ParseURI refuses makes every Get fail with
// its error.
func New(uri string, logger *slog.Logger, opts ...Option) *Conn {
	c := &Conn{uri: uri, logger: logger.With("libvirt_uri", uri), timeout: DefaultTimeout, keepalive: DefaultKeepalive, calls: map[string]*call{}}
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
// user subscribes to libvirt's events, which live and die with one
// connection: f runs again after every reconnect, and events that happened
// while there was no connection are lost, so f should also forget what the
// events would have kept up to date.
//
// What f returns runs before the connection is closed, dead or not. It must
// end the subscriptions f made (Subscribe's stop).
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
// The returned connection is shared: callers must not Disconnect it. A
// connection that Get has given out may be closed by a later Get once it is
// found dead; calls on it then fail, as they would have anyway.
//
// Opening a connection to a frozen libvirtd never returns: Get waits for
// it, but holds no lock meanwhile, and the Gets that come while it runs wait
// for the same opening rather than start another. Bound the wait with Call.
func (c *Conn) Get() (*libvirt.Libvirt, error) {
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
		op = &opening{done: make(chan struct{}), sock: &socket{}}
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
	conn, err := dial(c.uri, op.sock)
	sock := op.sock
	c.mu.Lock()
	defer c.mu.Unlock()
	c.connecting = nil
	if err != nil {
		op.err = err
		return
	}
	if c.closed {
		// Closed while the connection was being opened.
		sock.close()
		op.err = fmt.Errorf("get libvirt connection %s: %w", c.uri, ErrClosed)
		return
	}
	c.conn, c.sock = conn, sock
	c.logger.Info("libvirt connection opened")
	for _, f := range c.hooks {
		c.runHookLocked(f)
	}
	op.conn = conn
}

// Lost returns a channel closed once the connection open now is lost:
// libvirtd closed it (it went away), or it was closed because libvirtd
// left a ping unanswered for the keepalive. It is the moment a user of
// OnConnect's subscriptions stopped hearing from them, which the hooks'
// undo learns only at the next Get. With no connection open it returns a
// closed channel.
func (c *Conn) Lost() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		closed := make(chan struct{})
		close(closed)
		return closed
	}
	return c.conn.Disconnected()
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
// is in the errors, and keys the calls. A libvirt call takes no context: one
// that does not return in time (libvirtd frozen) is left to return on its
// own, and until it has, a Call for the same what fails at once with
// ErrBusy rather than start a second one on the connection. Once a call was
// given up on, libvirtd is pinged: a ping left unanswered for the keepalive
// (WithKeepalive) closes the connection, which makes every call left on it
// return. A call whose caller left (ctx ended) is not given up on: a Call
// for the same what waits for it.
//
// Call's error is ErrTimeout or ErrBusy (wrapped, naming the timeout), ctx's
// error, or f's.
func (c *Conn) Call(ctx context.Context, what string, f func(*libvirt.Libvirt) error) error {
	return c.CallWithin(ctx, what, c.timeout, f)
}

// CallWithin is Call bounded by d instead of the Conn's timeout, for work
// that takes libvirt longer than an answer does (starting a guest, copying
// its disk). d <= 0 leaves only ctx.
func (c *Conn) CallWithin(ctx context.Context, what string, d time.Duration, f func(*libvirt.Libvirt) error) error {
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
// the same fails at once, until it returns. libvirtd is pinged on the
// open connection, if any (probe).
func (c *Conn) abandon(what string, cl *call, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls[what] == cl {
		cl.abandoned = true
	}
	c.logger.Warn("libvirt did not answer in time, leaving the call to return on its own", "call", what, "timeout", d)
	if c.conn != nil && !c.probing && c.keepalive > 0 {
		c.probing = true
		go c.probe(c.conn, c.sock)
	}
}

// probe pings libvirtd on conn, as libvirt's client keepalive would: an
// answer says the call given up on is only slow, and conn is kept (with
// its event subscriptions); no answer within the keepalive says libvirtd
// is frozen, and conn is closed, so that the calls left on it return and
// the next Get opens a new one. A ping is a call libvirtd answers without
// a domain's job lock, from any of its workers.
func (c *Conn) probe(conn *libvirt.Libvirt, sock *socket) {
	defer func() {
		c.mu.Lock()
		c.probing = false
		c.mu.Unlock()
	}()
	answered := make(chan error, 1)
	go func() {
		_, err := conn.ConnectGetLibVersion()
		answered <- err
	}()
	t := time.NewTimer(c.keepalive)
	defer t.Stop()
	select {
	case err := <-answered:
		if err != nil {
			c.logger.Debug("ping libvirtd after a call it did not answer in time", "err", err)
		}
	case <-conn.Disconnected():
	case <-t.C:
		c.logger.Warn("libvirtd did not answer a ping: closing the connection, so that the calls left on it return", "keepalive", c.keepalive)
		sock.close()
	}
}

// aliveLocked reports whether c.conn may still be used: its socket is
// open. It costs no round trip.
func (c *Conn) aliveLocked() bool {
	return c.conn.IsConnected()
}

// dropLocked releases c.conn, which is dead: no round trip is attempted.
func (c *Conn) dropLocked() {
	c.undoHooksLocked()
	c.sock.close()
	c.conn, c.sock = nil, nil
}

// Close closes the connection, if open, and an opening under way. Get
// fails after Close. An open connection is closed politely (libvirt's
// close call), unless libvirtd does not answer within a second.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if op := c.connecting; op != nil {
		// Its handshake may wait on a frozen libvirtd: cut it.
		op.sock.close()
	}
	if c.conn == nil {
		return nil
	}
	c.undoHooksLocked()
	conn, sock := c.conn, c.sock
	c.conn, c.sock = nil, nil
	if !conn.IsConnected() {
		sock.close()
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- conn.Disconnect() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(closeWait):
		err = fmt.Errorf("libvirtd did not answer within %s", closeWait)
	}
	sock.close()
	if err != nil {
		return fmt.Errorf("close libvirt connection %s: %w", c.uri, err)
	}
	return nil
}
