package pxe

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Options configure the handler.
type Options struct {
	// BaseURL is how hosts reach this server ("http://10.0.0.1:9300"); it
	// goes into every URL the handler renders.
	BaseURL string
	// Secret keys the attempt tokens; without it the handler serves only
	// the chain script. Read it from a file; it is never logged.
	Secret []byte
	// Attempts says which hosts are being provisioned and takes their
	// progress (hoststate.Machine); without it the handler serves only the
	// chain script.
	Attempts Attempts
	// TokenTTL is how long a token rendered into a host's configs is
	// accepted; default DefaultTokenTTL. The attempt's phase timeouts end
	// it sooner if they run out first.
	TokenTTL time.Duration
	Logger   *slog.Logger
	Now      func() time.Time
}

// DefaultTokenTTL covers the default pxe-booting and installing timeouts
// (10m and 30m) with room to spare.
const DefaultTokenTTL = time.Hour

// Attempt is one provisioning attempt of one host, as the state machine
// has it. Tokens are bound to all of its fields but ScriptServed.
type Attempt struct {
	Host   string
	MAC    string // canonical form
	Number int    // the attempt's number, from 1; repeats across provisionings
	// Nonce is drawn at random when the attempt starts and stored with
	// the host, so no token of an earlier attempt fits this one.
	Nonce string
	// ScriptServed says the attempt's iPXE script was served: it is not
	// served again, and the configs and the callback are now expected.
	ScriptServed bool
}

// Attempts is the host state machine as the handler needs it. Every
// method takes a MAC in canonical form.
type Attempts interface {
	// Attempt returns the attempt in flight of the host whose PXE MAC is
	// mac; false when no such host is being provisioned now.
	Attempt(mac string) (Attempt, bool)
	// ScriptServed records, once per attempt, that a's iPXE script is
	// being served; it fails when a is no longer the attempt in flight or
	// its script was served already.
	ScriptServed(a Attempt) error
	// Completed takes a's boot-completion callback, once; it fails unless a
	// is the attempt in flight and its script was served.
	Completed(a Attempt) error
	// Refused records a refused request about the host with mac, with why
	// (nothing for a MAC no host has).
	Refused(mac, why string)
}

// Token purposes: a token for the configs does not complete an attempt.
const (
	purposeBooted = "booted"
	purposeConfig = "config"
)

// AttemptToken returns the token of purpose ("booted" or "config") for
// attempt a, valid until exp: hex(HMAC-SHA256(secret, purpose, MAC, host,
// attempt number, nonce, expiry)), each field length-prefixed.
func AttemptToken(secret []byte, purpose string, a Attempt, exp time.Time) string {
	h := hmac.New(sha256.New, secret)
	for _, f := range []string{"caretaker-pxe-v1", purpose, a.MAC, a.Host, strconv.Itoa(a.Number), a.Nonce,
		strconv.FormatInt(exp.Unix(), 10)} {
		fmt.Fprintf(h, "%d:%s", len(f), f)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TemplateData is what profile templates (args, script, ignition,
// cloud-config) see. They are rendered only for the attempt in flight of
// the host with MAC: the iPXE script once, the configs for a request
// carrying the attempt's token.
type TemplateData struct {
	MAC     string // aa:bb:cc:dd:ee:ff
	UUID    string // "" when the host sent none
	Group   Group
	Profile Profile
	BaseURL string
	// CallbackURL is the attempt's boot-completion callback (POST, or GET
	// for iPXE), with its token.
	CallbackURL string
	// IgnitionURL and CloudConfigURL fetch the attempt's configs, with a
	// token that reads them but does not complete the attempt.
	IgnitionURL    string
	CloudConfigURL string
}

type handler struct {
	cfg  *Config
	opts Options
	base string
	log  *slog.Logger
}

// NewHandler serves, under /pxe/:
//
//	GET  boot.ipxe                              the chain script iPXE runs first
//	GET  ipxe?mac=&uuid=                        the matched profile as an iPXE script,
//	                                            once per provisioning attempt
//	GET  ignition?mac=&attempt=&exp=&token=     the matched profile's Ignition config
//	GET  cloud-config?mac=&attempt=&exp=&token= the matched profile's cloud-config
//	POST booted?mac=&attempt=&exp=&token=       the completion callback
//	GET  booted?…                               the same, for iPXE builds without
//	                                            POST (PARAM_CMD), such as QEMU's NIC ROMs
//
// Only a host with a provisioning attempt in flight gets anything but the
// chain script; see the README's "PXE trust model".
func NewHandler(cfg *Config, opts Options) http.Handler {
	h := &handler{cfg: cfg, opts: opts, base: strings.TrimRight(opts.BaseURL, "/"), log: opts.Logger}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.opts.Now == nil {
		h.opts.Now = time.Now
	}
	if h.opts.TokenTTL <= 0 {
		h.opts.TokenTTL = DefaultTokenTTL
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /pxe/boot.ipxe", h.chain)
	if len(opts.Secret) == 0 || opts.Attempts == nil {
		// An empty secret would make every token computable by anyone.
		h.log.Error("pxe: no secret or no host state machine: only the chain script is served")
		mux.HandleFunc("/pxe/", func(w http.ResponseWriter, _ *http.Request) {
			text(w, http.StatusServiceUnavailable, "PXE provisioning is not configured on this server\n")
		})
		return mux
	}
	mux.HandleFunc("GET /pxe/ipxe", h.ipxe)
	mux.HandleFunc("GET /pxe/ignition", h.ignition)
	mux.HandleFunc("GET /pxe/cloud-config", h.cloudConfig)
	mux.HandleFunc("POST /pxe/booted", h.booted)
	// The token, not the method, authenticates the callback; GET lets a
	// profile script report with a plain imgfetch.
	mux.HandleFunc("GET /pxe/booted", h.booted)
	return mux
}

func (h *handler) chain(w http.ResponseWriter, r *http.Request) {
	// iPXE expands the ${…} variables itself before it fetches the URL.
	text(w, http.StatusOK, "#!ipxe\nchain "+h.base+"/pxe/ipxe?mac=${net0/mac:hexhyp}&uuid=${uuid}\n")
}

// ParseLabels turns a request's query into normalised host labels: mac
// and uuid in canonical form, other keys as given. Empty values count as
// absent, since iPXE expands an unset variable to nothing.
func ParseLabels(q url.Values) (map[string]string, error) {
	labels := map[string]string{}
	for k, vs := range q {
		if len(vs) > 1 {
			return nil, fmt.Errorf("query parameter %q given %d times", k, len(vs))
		}
		if vs[0] == "" {
			continue
		}
		v, err := normalizeLabel(k, vs[0])
		if err != nil {
			return nil, fmt.Errorf("query parameter %q: %w", k, err)
		}
		labels[k] = v
	}
	return labels, nil
}

// refuse answers a request with code and msg, logs it and records it in
// the history of the host with mac, if there is one.
func (h *handler) refuse(w http.ResponseWriter, r *http.Request, mac string, code int, msg string) {
	h.log.Warn("pxe: request refused", "path", r.URL.Path, "mac", mac, "remote", r.RemoteAddr, "status", code, "why", msg)
	if mac != "" {
		h.opts.Attempts.Refused(mac, r.URL.Path+": "+msg)
	}
	text(w, code, msg+"\n")
}

// attempt parses the request's labels and finds the attempt in flight of
// the host with its MAC, or answers the request itself and returns false.
func (h *handler) attempt(w http.ResponseWriter, r *http.Request) (map[string]string, Attempt, bool) {
	labels, err := ParseLabels(r.URL.Query())
	if err != nil {
		text(w, http.StatusBadRequest, err.Error()+"\n")
		return nil, Attempt{}, false
	}
	mac := labels["mac"]
	if mac == "" {
		text(w, http.StatusBadRequest, "query parameter \"mac\" is required: only a host being provisioned, known by its MAC, is served\n")
		return nil, Attempt{}, false
	}
	a, ok := h.opts.Attempts.Attempt(mac)
	if !ok || a.Nonce == "" {
		h.refuse(w, r, mac, http.StatusNotFound, fmt.Sprintf("no provisioning in flight for mac %s", mac))
		return nil, Attempt{}, false
	}
	return labels, a, true
}

// checkToken verifies the request's attempt token of purpose for a, or
// answers the request itself and returns false.
func (h *handler) checkToken(w http.ResponseWriter, r *http.Request, purpose string, a Attempt) bool {
	q := r.URL.Query()
	tok, expS := q.Get("token"), q.Get("exp")
	if tok == "" || expS == "" {
		h.refuse(w, r, a.MAC, http.StatusUnauthorized, "no attempt token")
		return false
	}
	exp, err := strconv.ParseInt(expS, 10, 64)
	if err != nil {
		h.refuse(w, r, a.MAC, http.StatusBadRequest, fmt.Sprintf("query parameter \"exp\": %q is no Unix time", expS))
		return false
	}
	if n := q.Get("attempt"); n != strconv.Itoa(a.Number) {
		h.refuse(w, r, a.MAC, http.StatusForbidden, fmt.Sprintf("token of attempt %q, but attempt %d is in flight", n, a.Number))
		return false
	}
	want := AttemptToken(h.opts.Secret, purpose, a, time.Unix(exp, 0))
	if !hmac.Equal([]byte(tok), []byte(want)) {
		// Also a token of an earlier attempt with the same number: its
		// nonce differs.
		h.refuse(w, r, a.MAC, http.StatusForbidden, fmt.Sprintf("invalid %s token for attempt %d", purpose, a.Number))
		return false
	}
	if !h.opts.Now().Before(time.Unix(exp, 0)) {
		h.refuse(w, r, a.MAC, http.StatusForbidden, fmt.Sprintf("%s token of attempt %d expired at %s", purpose, a.Number,
			time.Unix(exp, 0).UTC().Format(time.RFC3339)))
		return false
	}
	return true
}

// data matches the host's group and renders the attempt's URLs, or answers
// the request itself and returns false.
func (h *handler) data(w http.ResponseWriter, r *http.Request, labels map[string]string, a Attempt) (TemplateData, bool) {
	g, p, ok := h.cfg.Match(labels)
	if !ok {
		h.refuse(w, r, a.MAC, http.StatusNotFound, fmt.Sprintf("no group matches mac=%q uuid=%q", labels["mac"], labels["uuid"]))
		return TemplateData{}, false
	}
	exp := h.opts.Now().Add(h.opts.TokenTTL).Truncate(time.Second)
	// Every value is URL-safe as it is: no escaping, so the URLs read
	// plainly in a kernel command line or a unit file.
	q := fmt.Sprintf("?mac=%s&attempt=%d&exp=%d&token=", a.MAC, a.Number, exp.Unix())
	cfgTok := AttemptToken(h.opts.Secret, purposeConfig, a, exp)
	return TemplateData{
		MAC: a.MAC, UUID: labels["uuid"], Group: *g, Profile: *p, BaseURL: h.base,
		CallbackURL:    h.base + "/pxe/booted" + q + AttemptToken(h.opts.Secret, purposeBooted, a, exp),
		IgnitionURL:    h.base + "/pxe/ignition" + q + cfgTok,
		CloudConfigURL: h.base + "/pxe/cloud-config" + q + cfgTok,
	}, true
}

// ipxe serves the attempt's iPXE script, once: it carries the attempt's
// tokens.
func (h *handler) ipxe(w http.ResponseWriter, r *http.Request) {
	labels, a, ok := h.attempt(w, r)
	if !ok {
		return
	}
	if a.ScriptServed {
		h.refuse(w, r, a.MAC, http.StatusConflict, fmt.Sprintf("the iPXE script of attempt %d was served already: it is served once", a.Number))
		return
	}
	d, ok := h.data(w, r, labels, a)
	if !ok {
		return
	}
	script, err := h.script(d)
	if err != nil {
		h.fail(w, d, "ipxe", err)
		return
	}
	// Of two requests at once, one is served; the state machine records
	// it before a byte goes out.
	if err := h.opts.Attempts.ScriptServed(a); err != nil {
		h.log.Warn("pxe: iPXE script not served", "mac", a.MAC, "host", a.Host, "remote", r.RemoteAddr, "err", err)
		text(w, http.StatusConflict, fmt.Sprintf("the iPXE script of attempt %d is not served: %v\n", a.Number, err))
		return
	}
	h.log.Info("pxe: boot script served", "mac", d.MAC, "host", a.Host, "attempt", a.Number, "uuid", d.UUID,
		"group", d.Group.ID, "profile", d.Profile.ID, "remote", r.RemoteAddr)
	text(w, http.StatusOK, script)
}

// script renders the iPXE script for d.
func (h *handler) script(d TemplateData) (string, error) {
	if d.Profile.Script != "" {
		s, err := render("script", d.Profile.Script, d)
		if err != nil {
			return "", err
		}
		if !strings.HasSuffix(s, "\n") {
			s += "\n"
		}
		return "#!ipxe\n" + s, nil
	}
	var b strings.Builder
	b.WriteString("#!ipxe\nkernel " + h.asset(d.Profile.Kernel))
	for i, arg := range d.Profile.Args {
		s, err := render(fmt.Sprintf("args[%d]", i), arg, d)
		if err != nil {
			return "", err
		}
		// A line break would end the kernel command and start another.
		if strings.ContainsAny(s, "\r\n") {
			return "", fmt.Errorf("args[%d] renders to a line break", i)
		}
		if s != "" {
			b.WriteString(" " + s)
		}
	}
	b.WriteString("\n")
	for _, initrd := range d.Profile.Initrd {
		b.WriteString("initrd " + h.asset(initrd) + "\n")
	}
	b.WriteString("boot\n")
	return b.String(), nil
}

func (h *handler) asset(s string) string {
	if strings.HasPrefix(s, "/") {
		return h.base + s
	}
	return s
}

// config checks a config request and returns its data, or answers the
// request itself and returns false.
func (h *handler) config(w http.ResponseWriter, r *http.Request) (TemplateData, bool) {
	labels, a, ok := h.attempt(w, r)
	if !ok || !h.checkToken(w, r, purposeConfig, a) {
		return TemplateData{}, false
	}
	if !a.ScriptServed {
		h.refuse(w, r, a.MAC, http.StatusConflict, fmt.Sprintf("attempt %d has not fetched its iPXE script", a.Number))
		return TemplateData{}, false
	}
	return h.data(w, r, labels, a)
}

func (h *handler) ignition(w http.ResponseWriter, r *http.Request) {
	d, ok := h.config(w, r)
	if !ok {
		return
	}
	if d.Profile.Ignition == "" {
		text(w, http.StatusNotFound, fmt.Sprintf("profile %q has no ignition config\n", d.Profile.ID))
		return
	}
	s, err := render("ignition", d.Profile.Ignition, d)
	if err == nil && !json.Valid([]byte(s)) {
		err = errors.New("ignition renders to invalid JSON")
	}
	if err != nil {
		h.fail(w, d, "ignition", err)
		return
	}
	w.Header().Set("Content-Type", "application/vnd.coreos.ignition+json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(s))
}

func (h *handler) cloudConfig(w http.ResponseWriter, r *http.Request) {
	d, ok := h.config(w, r)
	if !ok {
		return
	}
	if d.Profile.CloudConfig == "" {
		text(w, http.StatusNotFound, fmt.Sprintf("profile %q has no cloud-config\n", d.Profile.ID))
		return
	}
	s, err := render("cloud_config", d.Profile.CloudConfig, d)
	if err != nil {
		h.fail(w, d, "cloud-config", err)
		return
	}
	text(w, http.StatusOK, s)
}

// booted takes the attempt's completion callback: once, with the
// attempt's booted token, before it expires, while the host is installing.
func (h *handler) booted(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	mac, err := NormalizeMAC(q.Get("mac"))
	if err != nil {
		text(w, http.StatusBadRequest, "query parameter \"mac\": "+err.Error()+"\n")
		return
	}
	if u := q.Get("uuid"); u != "" {
		if _, err := normalizeUUID(u); err != nil {
			text(w, http.StatusBadRequest, "query parameter \"uuid\": "+err.Error()+"\n")
			return
		}
	}
	a, ok := h.opts.Attempts.Attempt(mac)
	if !ok || a.Nonce == "" {
		// A replay after success lands here: the host is ready.
		h.refuse(w, r, mac, http.StatusConflict, fmt.Sprintf("boot callback with no provisioning in flight for mac %s", mac))
		return
	}
	if !h.checkToken(w, r, purposeBooted, a) {
		return
	}
	if err := h.opts.Attempts.Completed(a); err != nil {
		h.log.Warn("pxe: boot callback refused", "mac", mac, "host", a.Host, "remote", r.RemoteAddr, "err", err)
		text(w, http.StatusConflict, fmt.Sprintf("boot callback of attempt %d refused: %v\n", a.Number, err))
		return
	}
	h.log.Info("pxe: host booted", "mac", mac, "host", a.Host, "attempt", a.Number, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) fail(w http.ResponseWriter, d TemplateData, what string, err error) {
	h.log.Error("pxe: render failed", "what", what, "mac", d.MAC, "group", d.Group.ID, "profile", d.Profile.ID, "err", err)
	text(w, http.StatusInternalServerError, fmt.Sprintf("render %s of profile %q: %v\n", what, d.Profile.ID, err))
}

func render(name, text string, d TemplateData) (string, error) {
	t, err := parseTemplate(name, text)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return "", err
	}
	return b.String(), nil
}

func text(w http.ResponseWriter, code int, s string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(s))
}
