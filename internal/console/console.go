// Package console is the web console the server serves under /console/:
// server-rendered pages (html/template), their CSS and a few lines of
// plain JavaScript embedded in the binary, nothing fetched from anywhere
// else and no build chain.
//
// Pages: the fleet (/console/: hosts, guests not as meant, alerts with
// their runbook pages, the circuit breaker and pauses; ?host=NAME adds
// that host's guests), one host (/console/hosts/NAME: its agent, guests,
// inventory entry, provisioning state and history, provision and
// reprovision), the inventory (/console/hosts), remediation
// (/console/remediation: pending approvals, pauses, the journal with
// filters), one journal record (/console/actions/ID), guest clusters
// (/console/clusters, with Create Cluster and its placement check) and one
// cluster (/console/clusters/NAME: pools, nodes, overlays, scale, delete),
// and the runbook page of an alert (/console/runbooks/ALERT).
//
// Every read and every change goes through the server's own API handler
// (Options.API), in process, with the signed-in user's bearer token and
// the browser's address, so the API's roles, its checks, its failed-auth
// limiter and its records of who did what apply unchanged: a change made
// here is recorded under the token's name exactly as one made with the
// runbook CLI (the console sends no author of its own). Buttons are shown
// only to roles the API's route table allows, but the API decides: a
// forged form post of a viewer reaches the API, which answers 403, and
// the console answers 403 with the API's words and changes nothing.
//
// Access: sign in with an API token (GET /api/v1/whoami tells its name
// and role). Sessions live in the memory of the server that signed the
// user in, so each server of a clustered deployment signs in separately
// and a restart signs everyone out. A session ends absolutely SessionTTL
// after sign-in, at sign-out, or when the API stops accepting its token.
// The session cookie (caretaker_session, Path=/console/, HttpOnly,
// SameSite=Strict, Secure under TLS) holds only a random 32-byte id; the
// token stays on the server and is never written into a page. Every form
// carries a per-session CSRF token (hidden field "csrf", compared in
// constant time) and every POST from another site (Sec-Fetch-Site, Origin)
// is refused with 403; the sign-in form, before there is a session, is
// protected by a double-submit cookie.
//
// Live updates: GET /console/events is a server-sent event stream that,
// about once a second, computes a digest of what the page named by ?page=
// shows and sends "change" when it differs; console.js then fetches the
// page again with the header X-Console-Partial: 1, which answers only its
// <main>, and swaps it in keeping focus, scroll and open <details>. When a
// form on the page has been typed into, the swap waits and a notice offers
// to update instead, so typed text is never lost. Without JavaScript a
// page refreshes itself every 15 s, but only a page without input fields
// for its user (a refresh would throw a half-written comment away).
//
// Decisions the issue left open:
//   - The fleet page lists every host, the guests not as meant (meant to
//     run and not running) across the fleet, and the guests of one host
//     only when asked (?host= or the host's page); lists that could hold
//     tens of thousands of rows (guests not as meant, alerts) show the
//     first maxRows and say how many more there are.
//   - The fleet's status (Options.Status, else GET /api/v1/status), the
//     pauses, the hosts' provisioning states, the circuit breaker and the
//     overcommit ratios are read once per statusTTL (1 s) and shared by
//     every signed-in user: each is readable by every role. The breaker
//     and the ratios come from the embedded Prometheus' query API
//     (caretaker_remediation_circuit_breaker_open,
//     caretaker_host_{vcpu,memory}_overcommit_ratio); where it does not
//     answer they are shown as unknown.
//   - Runbook pages are rendered from their Markdown (goldmark, raw HTML
//     left out), once each.
//   - The journal pages by "show more" (a larger limit, up to the API's
//     10,000): the API has no cursor to page by.
//   - A comment typed over several lines is recorded as one line (line
//     breaks become spaces): the API records comments as one line.
//   - Create Cluster makes two pools, "master" (role master) and "worker"
//     (role worker), of identical nodes; either count may be 0.
package console

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"caretaker/internal/api"
)

// Options are what the console needs; API is required.
type Options struct {
	// API serves the server's /api/v1/ (the server's own handler, with
	// auth). The console makes every read and every change through it,
	// in process, as the signed-in user.
	API http.Handler
	// Status, when set, reads the fleet status directly (what GET
	// /api/v1/status answers), so the fleet page stays fast at 50,000
	// guests; the console caches it for statusTTL.
	Status func(ctx context.Context) (api.Status, error)
	// GrafanaURL, when set, adds links to caretaker's dashboards.
	GrafanaURL string
	// SessionTTL is how long a session lasts from sign-in; 0 is 8h.
	SessionTTL time.Duration
	// Secure marks cookies Secure (the server serves TLS); they are also
	// Secure when the request came over TLS.
	Secure bool
	Logger *slog.Logger
	Now    func() time.Time
}

// DefaultSessionTTL is how long a session lasts without Options.SessionTTL.
const DefaultSessionTTL = 8 * time.Hour

const (
	// statusTTL is how long the fleet's shared snapshot is reused.
	statusTTL = time.Second
	// eventEvery is how often the event stream recomputes its digest.
	eventEvery = time.Second
	// apiTimeout bounds one page's calls to the API.
	apiTimeout = 15 * time.Second
	// maxRows caps the rows of a list that could hold the whole fleet.
	maxRows = 200
	// partialHeader asks for a page's <main> only.
	partialHeader = "X-Console-Partial"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Console serves everything under /console/.
type Console struct {
	o        Options
	mux      *http.ServeMux
	pages    map[string]*template.Template
	sessions *sessions
	snap     snapshotCache
	assets   map[string]string // static file name → its version, for cache busting

	// statusTTL and ticks are fixed in production; tests shorten the one
	// and drive the other.
	statusTTL time.Duration
	ticks     func() (<-chan time.Time, func())
	runbooks  runbooks
}

// New returns the console. It panics when its embedded templates do not
// parse, which the package's tests rule out.
func New(o Options) *Console {
	if o.API == nil {
		panic("console: Options.API is required")
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = DefaultSessionTTL
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.GrafanaURL = strings.TrimRight(o.GrafanaURL, "/")
	c := &Console{o: o, sessions: newSessions(), statusTTL: statusTTL,
		ticks: func() (<-chan time.Time, func()) {
			t := time.NewTicker(eventEvery)
			return t.C, t.Stop
		}}
	c.assets = assetVersions()
	c.pages = c.parseTemplates()
	c.mux = c.routes()
	return c
}

// ServeHTTP serves the console's routes.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	c.mux.ServeHTTP(w, r)
}

func (c *Console) routes() *http.ServeMux {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	files := http.StripPrefix("/console/static/", http.FileServerFS(static))
	mux.Handle("GET /console/static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=86400")
		files.ServeHTTP(w, r)
	}))
	mux.HandleFunc("GET /console", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/console/", http.StatusMovedPermanently)
	})
	mux.HandleFunc("GET /console/signin", c.signinPage)
	mux.HandleFunc("POST /console/signin", c.signin)
	mux.Handle("POST /console/signout", c.action(c.signout))
	mux.Handle("GET /console/events", c.signedIn(c.events))

	mux.Handle("GET /console/{$}", c.signedIn(c.fleetPage))
	mux.Handle("GET /console/runbooks/{alert}", c.signedIn(c.runbookPage))

	mux.Handle("GET /console/remediation", c.signedIn(c.remediationPage))
	mux.Handle("GET /console/actions/{id}", c.signedIn(c.recordPage))
	mux.Handle("POST /console/actions/{id}/approve", c.action(c.decide(true)))
	mux.Handle("POST /console/actions/{id}/deny", c.action(c.decide(false)))
	mux.Handle("POST /console/pauses", c.action(c.pause))
	mux.Handle("POST /console/pauses/end", c.action(c.endPause))

	mux.Handle("GET /console/clusters", c.signedIn(c.clustersPage))
	mux.Handle("POST /console/clusters", c.action(c.createCluster))
	mux.Handle("GET /console/clusters/{name}", c.signedIn(c.clusterPage))
	mux.Handle("POST /console/clusters/{name}/scale", c.action(c.scaleCluster))
	mux.Handle("POST /console/clusters/{name}/delete", c.action(c.deleteCluster))

	mux.Handle("GET /console/hosts", c.signedIn(c.hostsPage))
	mux.Handle("GET /console/hosts/{name}", c.signedIn(c.hostPage))
	mux.Handle("POST /console/hosts/{name}/provision", c.action(c.provision("provision")))
	mux.Handle("POST /console/hosts/{name}/reprovision", c.action(c.provision("reprovision")))

	mux.HandleFunc("/console/", func(w http.ResponseWriter, r *http.Request) {
		s := c.sessions.get(r, c.o.Now())
		c.problem(w, r, s, http.StatusNotFound, "Not found", "The console has no page at "+r.URL.Path+".")
	})
	return mux
}

// base is what every page shows around its content.
type base struct {
	Title string
	Nav   string // which nav link is current
	Path  string // the page's path and query, for the event stream and "back"
	User  *session
	CSRF  string
	Flash string
	// Error is a failed change's message, shown above the form it came
	// from; Notice is a problem reading part of the page.
	Error  string
	Notice []string
	// Forms is set when the page has input fields for its user: it then
	// does not refresh itself without JavaScript.
	Forms   bool
	Now     time.Time
	grafana string
}

// May tells whether the user's role may call method on the API route
// pattern, as the API's route table says.
func (b base) May(method, pattern string) bool {
	if b.User == nil {
		return false
	}
	need, ok := api.RoleFor(method, pattern)
	return ok && b.User.Role.Allows(need)
}

// MayAction tells whether the user may run, or approve, action.
func (b base) MayAction(action string) bool {
	return b.May("POST", "/api/v1/actions/{id}/approve") && b.User.Role.Allows(api.ActionRole(action))
}

// Grafana is the URL of a caretaker dashboard with its variables set
// (name, value pairs), or "" without a Grafana URL.
func (b base) Grafana(uid string, vars ...string) string {
	if b.grafana == "" {
		return ""
	}
	q := url.Values{}
	for i := 0; i+1 < len(vars); i += 2 {
		if vars[i+1] != "" {
			q.Set("var-"+vars[i], vars[i+1])
		}
	}
	u := b.grafana + "/d/" + url.PathEscape(uid)
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

func (c *Console) base(r *http.Request, s *session, nav, title string) base {
	b := base{Title: title, Nav: nav, Path: r.URL.RequestURI(), User: s, Now: c.o.Now(), grafana: c.o.GrafanaURL}
	if s != nil {
		b.CSRF = s.CSRF
		b.Flash = c.sessions.takeFlash(s)
	}
	return b
}

// render writes page name with data: the whole document, or only its
// <main> when the request asks for a partial page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, code int, name string, data any) {
	t, ok := c.pages[name]
	if !ok {
		panic("console: no page template " + name)
	}
	which := "layout"
	if r.Header.Get(partialHeader) == "1" {
		which = "main"
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, which, data); err != nil {
		c.o.Logger.Error("console page failed to render", "page", name, "err", err)
		http.Error(w, "the console could not render this page; the server's log says why", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Vary", partialHeader)
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

// problemPage is the page of a refusal or a failure.
type problemPage struct {
	base
	Heading string
	Message string
}

// problem answers code with a page saying what went wrong.
func (c *Console) problem(w http.ResponseWriter, r *http.Request, s *session, code int, heading, msg string) {
	b := c.base(r, s, "", heading)
	c.render(w, r, code, "problem", problemPage{base: b, Heading: heading, Message: msg})
}

// apiError answers the API's refusals that end a request: 401 (the token
// is no longer accepted: the session ends) and 403 (the role may not: the
// API's words, nothing changed). It reports whether it answered.
func (c *Console) apiError(w http.ResponseWriter, r *http.Request, s *session, err error) bool {
	var se *api.StatusError
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code {
	case http.StatusUnauthorized:
		c.sessions.remove(s)
		c.toSignin(w, r)
		return true
	case http.StatusForbidden:
		c.problem(w, r, s, http.StatusForbidden, "Not allowed",
			"The server refused this as "+s.Name+" ("+s.Role.String()+"): "+se.Msg+". Nothing was changed.")
		return true
	case http.StatusTooManyRequests:
		c.problem(w, r, s, http.StatusTooManyRequests, "Too many failed sign-ins",
			"The server refuses requests from this address for a while after too many failed authentications: "+se.Msg)
		return true
	}
	return false
}

// errText is an API error as a sentence for a page: the API's own message
// without the client's prefix.
func errText(err error) string {
	var se *api.StatusError
	if errors.As(err, &se) {
		msg := se.Msg
		for _, d := range se.Details {
			msg += "; " + d
		}
		return msg
	}
	return err.Error()
}

// unavailable tells whether err means the server does not serve that part
// of the API (no provisioner: 404 for the route, or 503).
func unavailable(err error) bool {
	var se *api.StatusError
	return errors.As(err, &se) && (se.Code == http.StatusServiceUnavailable ||
		se.Code == http.StatusNotFound && strings.HasPrefix(se.Msg, "no such endpoint"))
}

// client is an API client that calls Options.API in process with the
// session's token and the browser's address.
func (c *Console) client(r *http.Request, s *session) *api.Client {
	return api.NewClient(inprocBase, s.token, &http.Client{Transport: inproc{h: c.o.API, remote: r.RemoteAddr}})
}

// inprocBase is the base URL of in-process API calls; it never reaches a
// network.
const inprocBase = "http://caretaker.console"

// inproc is a RoundTripper that serves each request with h, in process,
// as if it came from remote.
type inproc struct {
	h      http.Handler
	remote string
}

func (t inproc) RoundTrip(req *http.Request) (*http.Response, error) {
	in := req.Clone(req.Context())
	in.URL = &url.URL{Path: req.URL.Path, RawPath: req.URL.RawPath, RawQuery: req.URL.RawQuery}
	in.RequestURI = in.URL.RequestURI()
	in.RemoteAddr = t.remote
	in.Proto, in.ProtoMajor, in.ProtoMinor = "HTTP/1.1", 1, 1
	if in.Body == nil {
		in.Body = http.NoBody
	}
	rec := &recorder{header: http.Header{}}
	t.h.ServeHTTP(rec, in)
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	return &http.Response{
		Status: fmt.Sprintf("%d %s", rec.code, http.StatusText(rec.code)), StatusCode: rec.code,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: rec.header, Body: io.NopCloser(&rec.body), ContentLength: int64(rec.body.Len()), Request: req,
	}, nil
}

// recorder is the ResponseWriter of an in-process API call.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.body.Write(b)
}

// ctx bounds a page's API calls.
func ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), apiTimeout)
}

// assetVersions names each static file's version: a hash of its content.
func assetVersions() map[string]string {
	out := map[string]string{}
	fs.WalkDir(staticFS, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := staticFS.ReadFile(p)
		if err != nil {
			return err
		}
		out[strings.TrimPrefix(p, "static/")] = shortHash(b)
		return nil
	})
	return out
}
