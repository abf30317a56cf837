package intake

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"caretaker/internal/authlimit"
	"caretaker/internal/httpjson"
	"caretaker/remediation"
)

// Path is where the server serves the webhook.
const Path = "/api/v1/alertmanager"

// Options configure Handler. Inbox is required.
type Options struct {
	Inbox *Inbox
	// Token and Tokens are the bearer tokens Alertmanager may send
	// (http_config authorization credentials): the webhook's own and the
	// API tokens of role webhook, never an admin's. Empty ones are ignored;
	// none accepts no token.
	Token  string
	Tokens []string
	// ClientCerts accepts requests with a client certificate verified by
	// the TLS server in place of the token, when its subject is one of
	// ClientSubjects.
	ClientCerts bool
	// ClientSubjects names the certificates accepted: a subject common
	// name or a DNS, e-mail or URI subject alternative name. Empty accepts
	// no certificate, so another client of the same CA is refused.
	ClientSubjects []string
	// MaxFutureSkew refuses an alert whose startsAt is further ahead of
	// Now; 0 is DefaultMaxFutureSkew.
	MaxFutureSkew time.Duration
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// BodyLimit caps a body; 0 is DefaultBodyLimit.
	BodyLimit int64
	// OnAlerts hands recorded alerts to the engine (Engine.Handle); the
	// entries are acked when it returns. Nil leaves them pending for
	// Inbox.Replay.
	OnAlerts func(context.Context, []remediation.Alert)
	Logger   *slog.Logger // nil discards
	Metrics  *Metrics     // nil counts nothing
}

// DefaultMaxFutureSkew is how far ahead of the server's clock an alert
// may start: clocks drift a little, never by hours.
const DefaultMaxFutureSkew = 5 * time.Minute

// EarliestStart is the earliest startsAt taken: an alert that claims to
// have started before Prometheus' alerting existed comes from a broken
// clock or sender.
var EarliestStart = time.Date(2015, 1, 1, 0, 0, 0, 0, time.UTC)

// Response is the body of a successful delivery.
type Response struct {
	Status string `json:"status"`
	// Recorded counts the alerts new to the inbox; re-deliveries count 0.
	Recorded int `json:"recorded"`
}

type handler struct {
	opts     Options
	log      *slog.Logger
	failures *authlimit.Limiter
}

// Handler serves Alertmanager webhook deliveries (POST Path). It answers
// 2xx only once the alerts are on disk, 5xx when they could not be
// recorded (Alertmanager retries; 503 when the inbox is full) and 4xx for deliveries a retry cannot
// fix. A request that fails authentication gets 401 and records nothing;
// it is logged and counted, and a client with too many failures gets 429
// with Retry-After (authlimit) until its window ends.
func Handler(opts Options) http.Handler {
	if opts.Inbox == nil {
		panic("intake.Handler: no inbox") // wiring error, like http.Handle(nil)
	}
	h := &handler{opts: opts, log: opts.Logger}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.opts.BodyLimit <= 0 {
		h.opts.BodyLimit = DefaultBodyLimit
	}
	if h.opts.MaxFutureSkew <= 0 {
		h.opts.MaxFutureSkew = DefaultMaxFutureSkew
	}
	if h.opts.Now == nil {
		h.opts.Now = time.Now
	}
	h.failures = authlimit.New(authlimit.Options{Counter: opts.Metrics.authFailures(), Logger: h.log})
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.failures.Refuse(w, r, httpjson.Compact) {
		h.opts.Metrics.delivered(http.StatusTooManyRequests)
		return
	}
	if reason := h.unauthenticated(r); reason != "" {
		h.failures.Fail(r, reason)
		h.opts.Metrics.delivered(http.StatusUnauthorized)
		httpjson.Compact.Unauthorized(w, "caretaker", "missing or invalid bearer token or client certificate")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.opts.Metrics.delivered(http.StatusMethodNotAllowed)
		httpjson.Compact.Error(w, http.StatusMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path)
		return
	}
	if r.ContentLength > h.opts.BodyLimit {
		// Refused before reading a byte of it.
		h.opts.Metrics.delivered(http.StatusRequestEntityTooLarge)
		httpjson.Compact.Error(w, http.StatusRequestEntityTooLarge, tooLarge(h.opts.BodyLimit).Error())
		return
	}
	msg, err := Decode(r.Body, h.opts.BodyLimit)
	switch {
	case errors.Is(err, ErrTooLarge):
		h.opts.Metrics.delivered(http.StatusRequestEntityTooLarge)
		httpjson.Compact.Error(w, http.StatusRequestEntityTooLarge, err.Error())
		return
	case err != nil:
		h.log.Warn("alertmanager webhook refused", "remote", r.RemoteAddr, "err", err)
		h.opts.Metrics.delivered(http.StatusBadRequest)
		httpjson.Compact.Error(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := checkTimes(msg, h.opts.Now(), h.opts.MaxFutureSkew); err != nil {
		h.log.Warn("alertmanager webhook refused", "remote", r.RemoteAddr, "err", err)
		h.opts.Metrics.delivered(http.StatusBadRequest)
		httpjson.Compact.Error(w, http.StatusBadRequest, err.Error())
		return
	}
	if msg.TruncatedAlerts > 0 {
		// Alertmanager's max_alerts dropped some; they are not recoverable
		// from here, so say so where an operator looks.
		h.log.Warn("alertmanager webhook truncated alerts; raise the receiver's max_alerts",
			"receiver", msg.Receiver, "group_key", msg.GroupKey, "truncated", msg.TruncatedAlerts)
	}
	rc, err := h.opts.Inbox.Record(msg.RemediationAlerts())
	h.opts.Metrics.inbox(h.opts.Inbox.Len(), 0)
	if errors.Is(err, ErrFull) {
		// Refused, not dropped: Alertmanager retries a 5xx, and pruning
		// makes room as consumed entries age out.
		h.log.Error("alertmanager webhook refused: the inbox is full; Alertmanager will retry", "err", err)
		h.opts.Metrics.delivered(http.StatusServiceUnavailable)
		w.Header().Set("Retry-After", "60")
		httpjson.Compact.Error(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if err != nil {
		h.log.Error("alertmanager webhook not recorded; Alertmanager will retry", "err", err)
		h.opts.Metrics.delivered(http.StatusInternalServerError)
		httpjson.Compact.Error(w, http.StatusInternalServerError, err.Error())
		return
	}
	h.opts.Metrics.recorded(rc, msg.TruncatedAlerts)
	h.log.Debug("alertmanager webhook recorded", "receiver", msg.Receiver, "group_key", msg.GroupKey,
		"alerts", len(msg.Alerts), "recorded", len(rc.Recorded), "duplicates", rc.Duplicates, "cancelled", rc.Cancelled)
	if h.opts.OnAlerts != nil {
		if len(rc.Current) > 0 {
			h.opts.OnAlerts(r.Context(), rc.Current)
		}
		if err := h.opts.Inbox.Ack(rc.IDs()...); err != nil {
			// Recorded and handled; the entries are handled again at the
			// next start, which the engine makes harmless. Not worth a retry.
			h.log.Error("alertmanager webhook: cannot ack handled alerts", "err", err)
		}
	}
	h.opts.Metrics.delivered(http.StatusOK)
	httpjson.Compact.Write(w, http.StatusOK, Response{Status: "success", Recorded: len(rc.Recorded)})
}

// unauthenticated returns why r is not authenticated (an authlimit
// reason), or "" when it is.
func (h *handler) unauthenticated(r *http.Request) string {
	token, ok := httpjson.BearerToken(r.Header.Get("Authorization"))
	if ok {
		// Every token is compared, so the time taken tells nothing.
		matched := false
		for _, t := range append([]string{h.opts.Token}, h.opts.Tokens...) {
			if t != "" && httpjson.TokenMatches(token, t) {
				matched = true
			}
		}
		if matched {
			return ""
		}
	}
	if h.opts.ClientCerts && r.TLS != nil {
		for _, chain := range r.TLS.VerifiedChains {
			if len(chain) > 0 && h.allowed(chain[0]) {
				return ""
			}
		}
	}
	if ok {
		return authlimit.ReasonInvalid
	}
	return authlimit.ReasonMissing
}

// allowed reports whether cert names one of the configured subjects, by
// its common name or a subject alternative name.
func (h *handler) allowed(cert *x509.Certificate) bool {
	names := append([]string{cert.Subject.CommonName}, cert.DNSNames...)
	names = append(names, cert.EmailAddresses...)
	for _, u := range cert.URIs {
		names = append(names, u.String())
	}
	for _, n := range names {
		if n != "" && slices.Contains(h.opts.ClientSubjects, n) {
			return true
		}
	}
	return false
}

// checkTimes refuses a delivery with an alert that starts more than skew
// after now, or before EarliestStart, naming every such alert.
func checkTimes(m *Message, now time.Time, skew time.Duration) error {
	var errs []string
	for i, a := range m.Alerts {
		name := a.Labels["alertname"]
		switch {
		case a.StartsAt.After(now.Add(skew)):
			errs = append(errs, fmt.Sprintf("alerts[%d].startsAt: %s (alert %s) is more than %s ahead of this server's clock (%s)",
				i, a.StartsAt.UTC().Format(time.RFC3339), name, skew, now.UTC().Format(time.RFC3339)))
		case a.StartsAt.Before(EarliestStart):
			errs = append(errs, fmt.Sprintf("alerts[%d].startsAt: %s (alert %s) is before %s: a broken clock",
				i, a.StartsAt.UTC().Format(time.RFC3339), name, EarliestStart.Format(time.DateOnly)))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalid, strings.Join(errs, "; "))
}
