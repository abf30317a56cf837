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
	"strings"
	"time"
)

// Options configure the handler.
type Options struct {
	// BaseURL is how hosts reach this server ("http://10.0.0.1:9300"); it
	// goes into every URL the handler renders.
	BaseURL string
	// Secret keys the per-host callback tokens; without it the callback
	// refuses every request. Read it from a file; it is never logged.
	Secret []byte
	Logger *slog.Logger
	// OnBooted is called for each authenticated completion callback.
	OnBooted func(Booted)
	Now      func() time.Time
}

// Booted is a host's report that it has booted and finished provisioning.
type Booted struct {
	MAC  string
	UUID string // "" unless the host sent it
	// Group and Profile are the IDs the host matches now, "" if none.
	Group   string
	Profile string
	At      time.Time
}

// TemplateData is what profile templates (args, script, ignition,
// cloud-config) see.
type TemplateData struct {
	MAC     string // aa:bb:cc:dd:ee:ff, "" when the host sent none
	UUID    string
	Group   Group
	Profile Profile
	BaseURL string
	// CallbackURL is the host's authenticated completion callback (POST),
	// with its token; "" without a MAC or a secret.
	CallbackURL string
}

// CallbackToken returns the token host mac presents on its callback:
// hex(HMAC-SHA256(secret, canonical MAC)).
func CallbackToken(secret []byte, mac string) (string, error) {
	m, err := NormalizeMAC(mac)
	if err != nil {
		return "", err
	}
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(m))
	return hex.EncodeToString(h.Sum(nil)), nil
}

type handler struct {
	cfg  *Config
	opts Options
	base string
	log  *slog.Logger
}

// NewHandler serves, under /pxe/:
//
//	GET  boot.ipxe          the chain script iPXE runs first
//	GET  ipxe?mac=&uuid=    the matched profile as an iPXE script
//	GET  ignition?mac=      the matched profile's Ignition config
//	GET  cloud-config?mac=  the matched profile's cloud-config
//	POST booted?mac=&token= the completion callback
//	GET  booted?mac=&token= the same, for iPXE builds without POST
//	                        (PARAM_CMD), such as QEMU's NIC ROMs
func NewHandler(cfg *Config, opts Options) http.Handler {
	h := &handler{cfg: cfg, opts: opts, base: strings.TrimRight(opts.BaseURL, "/"), log: opts.Logger}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.opts.Now == nil {
		h.opts.Now = time.Now
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /pxe/boot.ipxe", h.chain)
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

// resolve finds the request's group and profile, or answers the request
// itself with 400 or 404 and returns false.
func (h *handler) resolve(w http.ResponseWriter, r *http.Request) (TemplateData, bool) {
	labels, err := ParseLabels(r.URL.Query())
	if err != nil {
		text(w, http.StatusBadRequest, err.Error()+"\n")
		return TemplateData{}, false
	}
	g, p, ok := h.cfg.Match(labels)
	if !ok {
		h.log.Info("pxe: no group matches host", "mac", labels["mac"], "uuid", labels["uuid"], "path", r.URL.Path)
		text(w, http.StatusNotFound, fmt.Sprintf("no group matches mac=%q uuid=%q\n", labels["mac"], labels["uuid"]))
		return TemplateData{}, false
	}
	d := TemplateData{MAC: labels["mac"], UUID: labels["uuid"], Group: *g, Profile: *p, BaseURL: h.base}
	if d.MAC != "" && len(h.opts.Secret) > 0 {
		tok, _ := CallbackToken(h.opts.Secret, d.MAC)
		// Both values are URL-safe as they are: no escaping, so the URL
		// reads plainly in a kernel command line or a unit file.
		d.CallbackURL = h.base + "/pxe/booted?mac=" + d.MAC + "&token=" + tok
	}
	return d, true
}

func (h *handler) ipxe(w http.ResponseWriter, r *http.Request) {
	d, ok := h.resolve(w, r)
	if !ok {
		return
	}
	script, err := h.script(d)
	if err != nil {
		h.fail(w, d, "ipxe", err)
		return
	}
	h.log.Info("pxe: boot script served", "mac", d.MAC, "uuid", d.UUID, "group", d.Group.ID, "profile", d.Profile.ID)
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

func (h *handler) ignition(w http.ResponseWriter, r *http.Request) {
	d, ok := h.resolve(w, r)
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
	d, ok := h.resolve(w, r)
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

func (h *handler) booted(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	mac, err := NormalizeMAC(q.Get("mac"))
	if err != nil {
		text(w, http.StatusBadRequest, "query parameter \"mac\": "+err.Error()+"\n")
		return
	}
	uuid := ""
	if u := q.Get("uuid"); u != "" {
		if uuid, err = normalizeUUID(u); err != nil {
			text(w, http.StatusBadRequest, "query parameter \"uuid\": "+err.Error()+"\n")
			return
		}
	}
	want, _ := CallbackToken(h.opts.Secret, mac)
	// An empty secret would make every token computable by anyone.
	if len(h.opts.Secret) == 0 || !hmac.Equal([]byte(q.Get("token")), []byte(want)) {
		h.log.Warn("pxe: callback refused: bad or missing token", "mac", mac, "remote", r.RemoteAddr)
		text(w, http.StatusUnauthorized, "invalid callback token\n")
		return
	}
	b := Booted{MAC: mac, UUID: uuid, At: h.opts.Now()}
	labels := map[string]string{"mac": mac}
	if uuid != "" {
		labels["uuid"] = uuid
	}
	if g, p, ok := h.cfg.Match(labels); ok {
		b.Group, b.Profile = g.ID, p.ID
	}
	h.log.Info("pxe: host booted", "mac", mac, "uuid", uuid, "group", b.Group, "profile", b.Profile)
	if h.opts.OnBooted != nil {
		h.opts.OnBooted(b)
	}
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
