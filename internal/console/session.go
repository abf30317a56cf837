package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"caretaker/internal/api"
)

const (
	// sessionCookie holds a session's random id.
	sessionCookie = "caretaker_session"
	// signinCookie holds the sign-in form's double-submit token.
	signinCookie = "caretaker_signin"
	// maxSessions bounds the sessions kept; the oldest goes first.
	maxSessions = 10000
	// maxForm caps a form post: the largest is a comment.
	maxForm = 64 << 10
)

// session is one signed-in browser. Name and Role are the token's, as the
// API told at sign-in; the token itself never leaves the server.
type session struct {
	Name    string
	Role    api.Role
	CSRF    string
	Expires time.Time
	token   string
	key     [32]byte // sha256 of the cookie's id
	flash   string   // shown once on the next page
}

// sessions are the signed-in browsers of this server, in memory.
type sessions struct {
	mu sync.Mutex
	m  map[[32]byte]*session
}

func newSessions() *sessions { return &sessions{m: map[[32]byte]*session{}} }

// randomToken is 32 random bytes, base64url.
func randomToken() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func shortHash(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:6])
}

// create starts a session that ends at expires and returns its cookie id.
// Expired sessions are dropped, and the oldest when there are too many.
func (ss *sessions) create(name string, role api.Role, token string, now, expires time.Time) (string, *session) {
	id := randomToken()
	s := &session{Name: name, Role: role, CSRF: randomToken(), Expires: expires, token: token, key: sha256.Sum256([]byte(id))}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var oldest *session
	for k, o := range ss.m {
		if !now.Before(o.Expires) {
			delete(ss.m, k)
		} else if oldest == nil || o.Expires.Before(oldest.Expires) {
			oldest = o
		}
	}
	if len(ss.m) >= maxSessions && oldest != nil {
		delete(ss.m, oldest.key)
	}
	ss.m[s.key] = s
	return id, s
}

// get returns the request's session, or nil when it has none or it has
// expired (then it is dropped).
func (ss *sessions) get(r *http.Request, now time.Time) *session {
	ck, err := r.Cookie(sessionCookie)
	if err != nil || ck.Value == "" {
		return nil
	}
	key := sha256.Sum256([]byte(ck.Value))
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s := ss.m[key]
	if s == nil {
		return nil
	}
	if !now.Before(s.Expires) {
		delete(ss.m, key)
		return nil
	}
	return s
}

// alive tells whether s is still a session at now.
func (ss *sessions) alive(s *session, now time.Time) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.m[s.key] == s && now.Before(s.Expires)
}

func (ss *sessions) remove(s *session) {
	if s == nil {
		return
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, s.key)
}

func (ss *sessions) setFlash(s *session, msg string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s.flash = msg
}

func (ss *sessions) takeFlash(s *session) string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	f := s.flash
	s.flash = ""
	return f
}

func (ss *sessions) count() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.m)
}

// secure tells whether cookies must be Secure.
func (c *Console) secure(r *http.Request) bool { return c.o.Secure || r.TLS != nil }

func (c *Console) setCookie(w http.ResponseWriter, r *http.Request, name, value, path string, expires time.Time) {
	ck := &http.Cookie{Name: name, Value: value, Path: path, HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: c.secure(r)}
	switch {
	case value == "":
		ck.MaxAge = -1
	case !expires.IsZero():
		ck.Expires = expires.UTC()
		ck.MaxAge = max(1, int(expires.Sub(c.o.Now()).Seconds()))
	}
	http.SetCookie(w, ck)
}

// same compares two secrets in constant time; empty never matches.
func same(got, want string) bool {
	return got != "" && want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// crossSite tells whether the browser says the request comes from another
// site: Sec-Fetch-Site other than same-origin (or none: typed by the
// user), or an Origin that is not this host.
func crossSite(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return true
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host == "" || !strings.EqualFold(u.Host, r.Host) {
			return true
		}
	}
	return false
}

// localNext returns next when it is a path of the console (no scheme, no
// host, no way out of /console/), else /console/.
func localNext(next string) string {
	const home = "/console/"
	if next == "" || !strings.HasPrefix(next, home) || strings.ContainsAny(next, "\\\x00\r\n\t ") {
		return home
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" || u.Fragment != "" {
		return home
	}
	p := u.EscapedPath()
	// Clean must change nothing but a trailing slash: no "." or ".."
	// segment, no empty one.
	if !strings.HasPrefix(p, home) || path.Clean(u.Path) != strings.TrimSuffix(u.Path, "/") ||
		strings.HasPrefix(u.Path, "/console/signin") || strings.HasPrefix(u.Path, "/console/static/") {
		return home
	}
	out := p
	if u.RawQuery != "" {
		out += "?" + u.RawQuery
	}
	return out
}

// signedIn serves fn to requests with a session, and sends the others to
// sign in.
func (c *Console) signedIn(fn func(http.ResponseWriter, *http.Request, *session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := c.sessions.get(r, c.o.Now())
		if s == nil {
			c.toSignin(w, r)
			return
		}
		fn(w, r, s)
	})
}

// toSignin sends a request without a session to the sign-in page, with
// the page it wanted as next; a partial page or the event stream gets 401
// instead (the script then reloads the page, which does this).
func (c *Console) toSignin(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get(partialHeader) == "1" || r.URL.Path == "/console/events" {
		w.Header().Set("Cache-Control", "no-store")
		http.Error(w, "not signed in", http.StatusUnauthorized)
		return
	}
	to := "/console/signin"
	if next := r.URL.RequestURI(); r.Method == http.MethodGet && localNext(next) == next && next != "/console/" {
		to += "?next=" + url.QueryEscape(next)
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// action serves fn to form posts of this console's own pages: not from
// another site, with a session, and with the session's CSRF token; the
// others get 403 (without a session, the sign-in page) and change
// nothing. The form is parsed (r.PostForm) before fn runs.
func (c *Console) action(fn func(http.ResponseWriter, *http.Request, *session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := c.sessions.get(r, c.o.Now())
		// Refusals show no session's page: it would carry its CSRF token.
		if crossSite(r) {
			c.problem(w, r, nil, http.StatusForbidden, "Refused", "This form was sent from another site. Nothing was changed.")
			return
		}
		if s == nil {
			c.toSignin(w, r)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
		if err := r.ParseForm(); err != nil {
			c.problem(w, r, s, http.StatusBadRequest, "Bad form", "The form could not be read: "+err.Error())
			return
		}
		if !same(r.PostForm.Get("csrf"), s.CSRF) {
			c.problem(w, r, nil, http.StatusForbidden, "Refused",
				"This form did not carry this session's CSRF token, so it may not have come from this console. Nothing was changed. Reload the page and try again.")
			return
		}
		fn(w, r, s)
	})
}

// done ends a successful change: the message is shown once on the page
// the browser is sent back to.
func (c *Console) done(w http.ResponseWriter, r *http.Request, s *session, back, msg string) {
	c.sessions.setFlash(s, msg)
	http.Redirect(w, r, back, http.StatusSeeOther)
}

// signinData is the sign-in page.
type signinData struct {
	base
	Next      string
	SignedOut bool
}

func (c *Console) signinPage(w http.ResponseWriter, r *http.Request) {
	if s := c.sessions.get(r, c.o.Now()); s != nil {
		http.Redirect(w, r, localNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	c.renderSignin(w, r, http.StatusOK, "")
}

// renderSignin shows the sign-in form with a double-submit token: the
// same random value in a cookie and in the form.
func (c *Console) renderSignin(w http.ResponseWriter, r *http.Request, code int, errMsg string) {
	tok := ""
	if ck, err := r.Cookie(signinCookie); err == nil && len(ck.Value) == 43 {
		tok = ck.Value
	} else {
		tok = randomToken()
		c.setCookie(w, r, signinCookie, tok, "/console/signin", time.Time{})
	}
	next := r.URL.Query().Get("next")
	if r.Method == http.MethodPost {
		next = r.PostForm.Get("next")
	}
	b := c.base(r, nil, "", "Sign in")
	b.CSRF, b.Error, b.Forms = tok, errMsg, true
	c.render(w, r, code, "signin", signinData{base: b, Next: localNext(next), SignedOut: r.URL.Query().Get("signedout") == "1"})
}

// signin takes an API token, asks the API whose it is, and starts a
// session for it.
func (c *Console) signin(w http.ResponseWriter, r *http.Request) {
	if crossSite(r) {
		c.problem(w, r, nil, http.StatusForbidden, "Refused", "This sign-in was sent from another site.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		c.problem(w, r, nil, http.StatusBadRequest, "Bad form", "The form could not be read: "+err.Error())
		return
	}
	ck, _ := r.Cookie(signinCookie)
	if ck == nil || !same(r.PostForm.Get("csrf"), ck.Value) {
		c.problem(w, r, nil, http.StatusForbidden, "Refused",
			"The sign-in form did not carry the token this browser was given with it. Open the sign-in page again and retry.")
		return
	}
	token := strings.TrimSpace(r.PostForm.Get("token"))
	if token == "" {
		c.renderSignin(w, r, http.StatusBadRequest, "Enter an API token.")
		return
	}
	ctx, cancel := ctx(r)
	defer cancel()
	cl := api.NewClient(inprocBase, token, &http.Client{Transport: inproc{h: c.o.API, remote: r.RemoteAddr}})
	who, err := cl.WhoAmI(ctx)
	var se *api.StatusError
	switch {
	case errors.As(err, &se) && se.Code == http.StatusUnauthorized:
		c.o.Logger.Info("console sign-in refused", "client", r.RemoteAddr)
		c.renderSignin(w, r, http.StatusUnauthorized, "The server does not accept this token.")
		return
	case errors.As(err, &se) && se.Code == http.StatusForbidden: // a webhook's token
		c.renderSignin(w, r, http.StatusForbidden, "This token's role cannot use the console: "+se.Msg)
		return
	case errors.As(err, &se) && se.Code == http.StatusTooManyRequests:
		c.renderSignin(w, r, http.StatusTooManyRequests, "Too many failed attempts from this address: "+se.Msg)
		return
	case err != nil:
		c.o.Logger.Error("console sign-in failed", "client", r.RemoteAddr, "err", err)
		c.renderSignin(w, r, http.StatusBadGateway, "The server could not check the token: "+errText(err))
		return
	}
	role, err := api.ParseRole(who.Role)
	if err != nil || role == api.RoleWebhook {
		c.renderSignin(w, r, http.StatusForbidden, "This token's role ("+who.Role+") cannot use the console.")
		return
	}
	now := c.o.Now()
	c.sessions.remove(c.sessions.get(r, now)) // a new sign-in ends the browser's old session
	id, s := c.sessions.create(who.Name, role, token, now, now.Add(c.o.SessionTTL))
	c.setCookie(w, r, sessionCookie, id, "/console/", s.Expires)
	c.setCookie(w, r, signinCookie, "", "/console/signin", time.Time{})
	c.o.Logger.Info("console sign-in", "token", who.Name, "role", role.String(), "client", r.RemoteAddr)
	http.Redirect(w, r, localNext(r.PostForm.Get("next")), http.StatusSeeOther)
}

func (c *Console) signout(w http.ResponseWriter, r *http.Request, s *session) {
	c.sessions.remove(s)
	c.setCookie(w, r, sessionCookie, "", "/console/", time.Time{})
	c.o.Logger.Info("console sign-out", "token", s.Name, "client", r.RemoteAddr)
	http.Redirect(w, r, "/console/signin?signedout=1", http.StatusSeeOther)
}
