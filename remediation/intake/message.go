// Package intake takes alerts from Alertmanager webhooks to the remediation
// engine. A delivery is answered 2xx only once its alerts are durably in the
// inbox, so Alertmanager retries what was not recorded, and the server
// re-handles what the engine had not consumed when it stopped.
package intake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"time"

	"github.com/prometheus/common/model"

	"caretaker/remediation"
)

// Version is the webhook payload version this package speaks.
const Version = "4"

// DefaultBodyLimit caps a webhook body when no limit is configured. A group
// of a thousand alerts with generous labels fits.
const DefaultBodyLimit = 4 << 20

// ErrTooLarge is returned by Decode for a body over the limit.
var ErrTooLarge = errors.New("request body too large")

// ErrInvalid is wrapped by every Decode error about the payload itself:
// malformed JSON, a wrong version or an invalid alert.
var ErrInvalid = errors.New("invalid alertmanager webhook")

// Message is the body of an Alertmanager webhook notification, version 4:
// the JSON of notify/webhook.Message (template.Data, flattened, plus the
// version, group key and truncated-alert count).
type Message struct {
	Receiver string  `json:"receiver"`
	Status   string  `json:"status"`
	Alerts   []Alert `json:"alerts"`

	// NotificationReason and RouteLabels are sent by newer Alertmanagers
	// only (0.25 omits them).
	NotificationReason string `json:"notification_reason"`

	GroupLabels       map[string]string `json:"groupLabels"`
	CommonLabels      map[string]string `json:"commonLabels"`
	CommonAnnotations map[string]string `json:"commonAnnotations"`
	RouteLabels       map[string]string `json:"routeLabels"`

	ExternalURL string `json:"externalURL"`

	Version         string `json:"version"`
	GroupKey        string `json:"groupKey"`
	TruncatedAlerts uint64 `json:"truncatedAlerts"`
}

// Alert is one alert of a Message (template.Alert).
type Alert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

// Decode reads and validates one webhook body of at most limit bytes
// (limit <= 0 is DefaultBodyLimit). Its errors wrap ErrTooLarge, or
// ErrInvalid with the reason, naming the offending alert by index and
// field; any other error is a failure to read the body.
func Decode(r io.Reader, limit int64) (*Message, error) {
	if limit <= 0 {
		limit = DefaultBodyLimit
	}
	// One byte more than allowed tells an exact fit from an overflow.
	body, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("alertmanager webhook: read body: %w", err)
	}
	if int64(len(body)) > limit {
		return nil, tooLarge(limit)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, fmt.Errorf("%w: empty body", ErrInvalid)
	}
	// Alerts are decoded one by one, so an error names the alert's index.
	var w struct {
		Message
		Alerts []json.RawMessage `json:"alerts"`
	}
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, fmt.Errorf("%w: malformed JSON: %s", ErrInvalid, jsonReason(err))
	}
	m := w.Message
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if w.Alerts != nil {
		m.Alerts = make([]Alert, len(w.Alerts))
	}
	for i, raw := range w.Alerts {
		field, err := decodeAlert(raw, &m.Alerts[i])
		if err != nil {
			if field != "" {
				field = "." + field
			}
			return nil, fmt.Errorf("%w: alerts[%d]%s: %w", ErrInvalid, i, field, err)
		}
	}
	return &m, nil
}

// decodeAlert decodes and validates one alert, and names the field at
// fault ("" for the whole alert). Its times are parsed apart so that a bad
// one is named.
func decodeAlert(raw json.RawMessage, a *Alert) (field string, err error) {
	var w struct {
		Alert
		StartsAt json.RawMessage `json:"startsAt"`
		EndsAt   json.RawMessage `json:"endsAt"`
	}
	if err := json.Unmarshal(raw, &w); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return strings.TrimPrefix(te.Field, "Alert."), fmt.Errorf("want %s, got %s", jsonKind(te.Type), te.Value)
		}
		return "", err
	}
	*a = w.Alert
	for _, t := range []struct {
		name string
		raw  json.RawMessage
		dst  *time.Time
	}{{"startsAt", w.StartsAt, &a.StartsAt}, {"endsAt", w.EndsAt, &a.EndsAt}} {
		if t.raw == nil {
			continue
		}
		if err := t.dst.UnmarshalJSON(t.raw); err != nil {
			return t.name, fmt.Errorf("want an RFC 3339 time: %w", err)
		}
	}
	return a.validate()
}

func tooLarge(limit int64) error {
	return fmt.Errorf("alertmanager webhook: %w: over %d bytes", ErrTooLarge, limit)
}

// jsonReason describes a decoding error in the payload's terms rather than
// this package's Go types.
func jsonReason(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := strings.TrimPrefix(te.Field, "Message.") // the decoding wrapper's
		if field == "" {
			field = "the body"
		}
		return fmt.Sprintf("%s: want %s, got %s", field, jsonKind(te.Type), te.Value)
	}
	return err.Error()
}

func jsonKind(t reflect.Type) string {
	if t == reflect.TypeFor[time.Time]() {
		return "a time string"
	}
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	}
	return t.Kind().String()
}

func validStatus(s string) bool {
	return s == remediation.StatusFiring || s == remediation.StatusResolved
}

func (m *Message) validate() error {
	switch {
	case m.Version == "":
		return fmt.Errorf("version: missing, want %q", Version)
	case m.Version != Version:
		return fmt.Errorf("version: got %q, want %q", m.Version, Version)
	case !validStatus(m.Status):
		return fmt.Errorf("status: %q is not %q or %q", m.Status, remediation.StatusFiring, remediation.StatusResolved)
	}
	return nil
}

// validate returns the field at fault and why.
func (a *Alert) validate() (string, error) {
	switch {
	case !validStatus(a.Status):
		return "status", fmt.Errorf("%q is not %q or %q", a.Status, remediation.StatusFiring, remediation.StatusResolved)
	case a.Labels["alertname"] == "":
		return "labels.alertname", errors.New("missing")
	case a.StartsAt.IsZero():
		return "startsAt", errors.New("missing")
	case a.Fingerprint != "" && !isFingerprint(a.Fingerprint):
		return "fingerprint", fmt.Errorf("%q is not 16 hexadecimal digits", a.Fingerprint)
	}
	return "", nil
}

// isFingerprint accepts what Alertmanager sends: a 64-bit hash as 16
// lower-case hex digits. The inbox keys on it, so nothing else gets in.
func isFingerprint(s string) bool {
	if len(s) != 16 {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// RemediationAlerts converts the message's alerts for the engine. An alert
// without a fingerprint gets Alertmanager's (and the engine's) fingerprint
// of its labels.
func (m *Message) RemediationAlerts() []remediation.Alert {
	out := make([]remediation.Alert, 0, len(m.Alerts))
	for _, a := range m.Alerts {
		out = append(out, a.remediation())
	}
	return out
}

func (a *Alert) remediation() remediation.Alert {
	fp := a.Fingerprint
	if fp == "" {
		fp = fingerprint(a.Labels)
	}
	return remediation.Alert{
		Name:        a.Labels["alertname"],
		Labels:      a.Labels,
		Annotations: a.Annotations,
		Status:      a.Status,
		StartsAt:    a.StartsAt,
		EndsAt:      a.EndsAt,
		Fingerprint: fp,
	}
}

// fingerprint is Alertmanager's fingerprint of a label set, the same the
// engine computes for alerts that come without one.
func fingerprint(labels map[string]string) string {
	ls := make(model.LabelSet, len(labels))
	for k, v := range labels {
		ls[model.LabelName(k)] = model.LabelValue(v)
	}
	return ls.Fingerprint().String()
}
