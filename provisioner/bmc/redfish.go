package bmc

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"unicode"
)

const (
	// maxRedfishBody caps what is read of one answer: a ComputerSystem is
	// a few kilobytes.
	maxRedfishBody = 1 << 20
	// maxErrorText caps the BMC's text quoted in an error.
	maxErrorText = 300

	systemsPath = "/redfish/v1/Systems"
)

// redfishController speaks Redfish over HTTPS with basic auth, which every
// Redfish service accepts and which needs no session to expire.
type redfishController struct {
	cfg      Config
	base     *url.URL
	password string
	client   *http.Client
	log      *slog.Logger

	mu         sync.Mutex
	systemPath string // found once, on first use
}

func newRedfish(cfg Config, password string, log *slog.Logger) (*redfishController, error) {
	base, err := redfishBase(cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("bmc address: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// BMCs sit on the management network: a proxy from the environment,
	// set for the way out, would only be in the way.
	tr.Proxy = nil
	// Insecure is the operator's explicit choice for a self-signed BMC.
	tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: cfg.Insecure}
	return &redfishController{
		cfg:      cfg,
		base:     base,
		password: password,
		client:   &http.Client{Transport: tr, CheckRedirect: noRedirect},
		log:      log,
	}, nil
}

// noRedirect keeps the credentials on the configured host.
func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// odataRef is a link to another resource.
type odataRef struct {
	ID string `json:"@odata.id"`
}

type systemCollection struct {
	Members []odataRef `json:"Members"`
}

// computerSystem is the part of a ComputerSystem the controller uses.
type computerSystem struct {
	ID         string `json:"Id"`
	PowerState string `json:"PowerState"`
	Actions    struct {
		Reset struct {
			Target  string   `json:"target"`
			Allowed []string `json:"ResetType@Redfish.AllowableValues"`
		} `json:"#ComputerSystem.Reset"`
	} `json:"Actions"`
	Boot struct {
		Target  string `json:"BootSourceOverrideTarget"`
		Enabled string `json:"BootSourceOverrideEnabled"`
	} `json:"Boot"`
}

// redfishErrorBody is the Redfish error response.
type redfishErrorBody struct {
	Error struct {
		Code         string `json:"code"`
		Message      string `json:"message"`
		ExtendedInfo []struct {
			MessageID  string `json:"MessageId"`
			Message    string `json:"Message"`
			Resolution string `json:"Resolution"`
		} `json:"@Message.ExtendedInfo"`
	} `json:"error"`
}

// parseSystemMember returns the path of the system with id in a
// ComputerSystemCollection, or of its first member when id is empty.
func parseSystemMember(data []byte, id string) (string, error) {
	var coll systemCollection
	if err := json.Unmarshal(data, &coll); err != nil {
		return "", fmt.Errorf("decode systems collection: %w", err)
	}
	var ids []string
	for _, m := range coll.Members {
		p, err := localPath(m.ID)
		if err != nil {
			return "", fmt.Errorf("systems collection member: %w", err)
		}
		last := p[strings.LastIndex(strings.TrimSuffix(p, "/"), "/")+1:]
		last = strings.TrimSuffix(last, "/")
		if id == "" || last == id {
			return p, nil
		}
		ids = append(ids, last)
	}
	if id == "" {
		return "", errors.New("systems collection has no members")
	}
	return "", fmt.Errorf("no system %q in the systems collection (has %s)", id, strings.Join(ids, ", "))
}

// parseSystem decodes a ComputerSystem.
func parseSystem(data []byte) (computerSystem, error) {
	var s computerSystem
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("decode ComputerSystem: %w", err)
	}
	if t := s.Actions.Reset.Target; t != "" {
		p, err := localPath(t)
		if err != nil {
			return s, fmt.Errorf("ComputerSystem %q: reset action target: %w", s.ID, err)
		}
		s.Actions.Reset.Target = p
	}
	return s, nil
}

// localPath accepts a path on the BMC itself; a link elsewhere would carry
// the credentials to another host.
func localPath(ref string) (string, error) {
	u, err := url.Parse(ref)
	if err != nil || u.Scheme != "" || u.Host != "" || !strings.HasPrefix(u.Path, "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%q is not a path on the BMC", clip(ref))
	}
	return u.Path, nil
}

func (s computerSystem) powerState() PowerState {
	switch s.PowerState {
	case "On":
		return PowerOn
	case "Off":
		return PowerOff
	default: // PoweringOn, PoweringOff, Paused, absent
		return PowerUnknown
	}
}

// cycleResetType is PowerCycle, or ForceRestart when the system lists
// its reset types without PowerCycle.
func (s computerSystem) cycleResetType() string {
	allowed := s.Actions.Reset.Allowed
	if len(allowed) > 0 && !slices.Contains(allowed, "PowerCycle") {
		return "ForceRestart"
	}
	return "PowerCycle"
}

// redfishErrorText is the most specific message an error answer carries:
// the extended info's messages, else the error's message, else the start
// of the body when it is text.
func redfishErrorText(body []byte) string {
	var e redfishErrorBody
	if json.Unmarshal(body, &e) == nil {
		var msgs []string
		for _, x := range e.Error.ExtendedInfo {
			if x.Message != "" {
				msgs = append(msgs, x.Message)
			}
		}
		if len(msgs) > 0 {
			return clip(strings.Join(msgs, "; "))
		}
		if e.Error.Message != "" {
			return clip(e.Error.Message)
		}
	}
	return clip(string(body))
}

// clip makes s fit in one line of an error message.
func clip(s string) string {
	s = strings.Join(strings.FieldsFunc(s, unicode.IsSpace), " ")
	s = strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
	if len(s) > maxErrorText {
		s = strings.ToValidUTF8(s[:maxErrorText], "") + "…"
	}
	return s
}

// statusError is an answer other than 2xx.
type statusError struct {
	method, path string
	code         int
	text         string
}

func (e *statusError) Error() string {
	msg := fmt.Sprintf("%s %s: %d %s", e.method, e.path, e.code, http.StatusText(e.code))
	if e.code == http.StatusUnauthorized {
		msg += " (check username and password_file)"
	}
	if e.text != "" {
		msg += ": " + e.text
	}
	return msg
}

// call sends one request, retried as configured, and returns the body of
// its 2xx answer. 4xx answers are not retried: the BMC understood and said
// no. A request whose answer was lost is sent again, as ipmitool resends a
// chassis control: every request here is harmless to repeat but a cycle.
func (c *redfishController) call(ctx context.Context, op, method, path string, payload any) ([]byte, error) {
	var reqBody []byte
	if payload != nil {
		var err error
		if reqBody, err = json.Marshal(payload); err != nil {
			return nil, err
		}
	}
	var body []byte
	err := retry(ctx, c.log, op, c.cfg.Timeout, c.cfg.Retries, func(ctx context.Context) error {
		u := c.base.JoinPath(path)
		req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(reqBody))
		if err != nil {
			return permanent(err)
		}
		req.SetBasicAuth(c.cfg.Username, c.password)
		req.Header.Set("Accept", "application/json")
		if reqBody != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := c.client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxRedfishBody))
		if err != nil {
			return fmt.Errorf("%s %s: read answer: %w", method, path, err)
		}
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			serr := &statusError{method: method, path: path, code: resp.StatusCode, text: redfishErrorText(b)}
			if resp.StatusCode < 500 {
				return permanent(serr)
			}
			return serr
		}
		body = b
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redfish %s: %s: %w", c.base.Host, op, err)
	}
	return body, nil
}

// system finds the ComputerSystem (once) and reads it.
func (c *redfishController) system(ctx context.Context, op string) (computerSystem, string, error) {
	c.mu.Lock()
	path := c.systemPath
	c.mu.Unlock()
	if path == "" {
		b, err := c.call(ctx, op, http.MethodGet, systemsPath, nil)
		if err != nil {
			return computerSystem{}, "", err
		}
		if path, err = parseSystemMember(b, c.cfg.SystemID); err != nil {
			return computerSystem{}, "", fmt.Errorf("redfish %s: %s: %w", c.base.Host, op, err)
		}
		c.mu.Lock()
		c.systemPath = path
		c.mu.Unlock()
	}
	b, err := c.call(ctx, op, http.MethodGet, path, nil)
	if err != nil {
		return computerSystem{}, "", err
	}
	s, err := parseSystem(b)
	if err != nil {
		return computerSystem{}, "", fmt.Errorf("redfish %s: %s: %w", c.base.Host, op, err)
	}
	return s, path, nil
}

func (c *redfishController) PowerStatus(ctx context.Context) (PowerState, error) {
	s, _, err := c.system(ctx, "power status")
	if err != nil {
		return PowerUnknown, err
	}
	return s.powerState(), nil
}

func (c *redfishController) PowerOn(ctx context.Context) error {
	return c.reset(ctx, "power on", func(computerSystem) string { return "On" })
}

func (c *redfishController) PowerOff(ctx context.Context) error {
	return c.reset(ctx, "power off", func(computerSystem) string { return "ForceOff" })
}

// PowerCycle powers an off system on: Redfish services commonly refuse
// PowerCycle and ForceRestart for a system that is off.
func (c *redfishController) PowerCycle(ctx context.Context) error {
	return c.reset(ctx, "power cycle", func(s computerSystem) string {
		if s.powerState() == PowerOff {
			return "On"
		}
		return s.cycleResetType()
	})
}

// reset posts the ResetType resetType chooses for the system's state to
// the system's ComputerSystem.Reset action.
func (c *redfishController) reset(ctx context.Context, op string, resetType func(computerSystem) string) error {
	s, _, err := c.system(ctx, op)
	if err != nil {
		return err
	}
	if s.Actions.Reset.Target == "" {
		return fmt.Errorf("redfish %s: %s: system %q has no #ComputerSystem.Reset action", c.base.Host, op, s.ID)
	}
	rt := resetType(s)
	c.log.Info("BMC reset", "op", op, "reset_type", rt, "power_state", s.PowerState)
	_, err = c.call(ctx, op, http.MethodPost, s.Actions.Reset.Target, map[string]string{"ResetType": rt})
	return err
}

func (c *redfishController) SetPXEBootOnce(ctx context.Context) error {
	const op = "set PXE boot once"
	_, path, err := c.system(ctx, op)
	if err != nil {
		return err
	}
	c.log.Info("BMC boot override", "target", "Pxe", "enabled", "Once")
	patch := map[string]any{"Boot": map[string]string{
		"BootSourceOverrideTarget":  "Pxe",
		"BootSourceOverrideEnabled": "Once",
	}}
	_, err = c.call(ctx, op, http.MethodPatch, path, patch)
	return err
}
