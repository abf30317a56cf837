// Package httpjson holds what caretaker's HTTP APIs (the server's, the
// agent's, the Alertmanager webhook) share: strict decoding of a JSON
// request body, JSON answers with the {"error": "..."} shape, and the
// bearer-token check.
package httpjson

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Causes a BodyError wraps besides the decoder's own errors and
// *http.MaxBytesError.
var (
	// ErrEmpty is a body with no JSON value in it.
	ErrEmpty = errors.New("empty body")
	// ErrTrailingData is a body with more after its JSON value.
	ErrTrailingData = errors.New("data after the JSON value")
)

// BodyError is why a request body was refused. Its message starts with
// "request body: " and says what is wrong; Status is the answer it calls
// for: 413 for a body over the limit, 400 for the rest.
type BodyError struct {
	Status int
	// Reason is the message without "request body: ", e.g.
	// `unknown field "x"`.
	Reason string
	// Err is the cause: ErrEmpty, ErrTrailingData, *http.MaxBytesError
	// or the decoder's error.
	Err error
}

func (e *BodyError) Error() string { return "request body: " + e.Reason }
func (e *BodyError) Unwrap() error { return e.Err }

// Decode reads r's body, at most limit bytes, into v strictly: unknown
// fields, anything but white space after the JSON value, an empty body
// and a body over the limit are errors. Its errors are *BodyError.
func Decode(w http.ResponseWriter, r *http.Request, v any, limit int64) error {
	return DecodeReader(http.MaxBytesReader(w, r.Body, limit), v)
}

// DecodeReader is Decode for a body already at hand (tests, fuzzing) or
// capped by the caller; an *http.MaxBytesError from body is the 413 one.
func DecodeReader(body io.Reader, v any) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); !errors.Is(terr, io.EOF) {
			err = ErrTrailingData
			if tooBig, ok := errors.AsType[*http.MaxBytesError](terr); ok {
				err = tooBig
			}
		}
	}
	switch tooBig, ok := errors.AsType[*http.MaxBytesError](err); {
	case err == nil:
		return nil
	case ok:
		return &BodyError{Status: http.StatusRequestEntityTooLarge, Reason: fmt.Sprintf("larger than %d bytes", tooBig.Limit), Err: err}
	case errors.Is(err, io.EOF):
		return &BodyError{Status: http.StatusBadRequest, Reason: "empty; want a JSON object", Err: ErrEmpty}
	case errors.Is(err, ErrTrailingData):
		return &BodyError{Status: http.StatusBadRequest, Reason: "unexpected data after the JSON object", Err: err}
	default:
		// encoding/json says `json: unknown field "x"`.
		return &BodyError{Status: http.StatusBadRequest, Reason: strings.TrimPrefix(err.Error(), "json: "), Err: err}
	}
}

// Style is how a server lays out its JSON answers.
type Style struct {
	indent string
}

var (
	// Indented is the server's API: two spaces, for the people who read it
	// with curl as well as for runbook.
	Indented = Style{indent: "  "}
	// Compact is one line: the agent's API and the Alertmanager webhook,
	// which machines read.
	Compact = Style{}
)

// errorBody is the shape of every error answer.
type errorBody struct {
	Error string `json:"error"`
}

// Write answers v as JSON with code.
func (s Style) Write(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	if s.indent != "" {
		enc.SetIndent("", s.indent)
	}
	// The status is sent: an encoding error (a client gone) has no one
	// left to tell.
	_ = enc.Encode(v)
}

// Error answers {"error": msg} with code. A refusal (401, 403, 413, 429)
// also closes the connection: it comes before the request's body is read,
// and net/http would otherwise read up to 256 KiB of that body before
// sending the answer, so a client that never sends its body would hold
// the answer (and the connection) until the server's ReadTimeout.
func (s Style) Error(w http.ResponseWriter, code int, msg string) {
	switch code {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
		w.Header().Set("Connection", "close")
	}
	s.Write(w, code, errorBody{Error: msg})
}

// DecodeError answers an error of Decode with its status (413 or 400)
// and message; any other error is a 400 with its message.
func (s Style) DecodeError(w http.ResponseWriter, err error) {
	code := http.StatusBadRequest
	if be, ok := errors.AsType[*BodyError](err); ok {
		code = be.Status
	}
	s.Error(w, code, err.Error())
}

// Unauthorized answers 401 with msg and a WWW-Authenticate header asking
// for a bearer token of realm.
func (s Style) Unauthorized(w http.ResponseWriter, realm, msg string) {
	w.Header().Set("WWW-Authenticate", fmt.Sprintf("Bearer realm=%q", realm))
	s.Error(w, http.StatusUnauthorized, msg)
}

// Write is Indented.Write.
func Write(w http.ResponseWriter, code int, v any) { Indented.Write(w, code, v) }

// Error is Indented.Error.
func Error(w http.ResponseWriter, code int, msg string) { Indented.Error(w, code, msg) }

// WriteDecodeError is Indented.DecodeError.
func WriteDecodeError(w http.ResponseWriter, err error) { Indented.DecodeError(w, err) }

// Unauthorized is Indented.Unauthorized.
func Unauthorized(w http.ResponseWriter, realm, msg string) { Indented.Unauthorized(w, realm, msg) }

// BearerToken returns the token of an Authorization header value
// "Bearer <token>", without the blanks around it. The scheme is matched
// case-insensitively (RFC 9110 §11.1, RFC 6750 §2.1). ok is false when the
// header carries no non-empty bearer token.
func BearerToken(header string) (token string, ok bool) {
	scheme, token, found := strings.Cut(header, " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// TokenMatches reports whether got is the secret want. It compares their
// SHA-256 sums in constant time, so the response time tells neither how
// much of got was right nor how long want is. An empty want matches
// nothing.
func TokenMatches(got, want string) bool {
	if want == "" {
		return false
	}
	g, s := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], s[:]) == 1
}
