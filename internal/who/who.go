// Package who is the stored record of who changed something through the
// API: the name and role of the authenticated token, always, and what the
// client said beside it (an "author" kept only as on behalf of, a
// comment), never instead of it.
package who

import (
	"fmt"
	"net/http"
	"time"
	"unicode"
	"unicode/utf8"
)

// By is who made a change, and when.
type By struct {
	// Name and Role are the bearer token's: the authenticated identity.
	Name string `json:"name"`
	Role string `json:"role"`
	// OnBehalfOf is the client's "author", when it sent one: whom the
	// token's holder says they acted for. It is never the identity.
	OnBehalfOf string    `json:"on_behalf_of,omitempty"`
	Comment    string    `json:"comment,omitempty"`
	At         time.Time `json:"at,omitzero"`
}

// String is "otto (operator)", with " on behalf of mallory" when the
// client named someone.
func (b By) String() string {
	s := b.Name + " (" + b.Role + ")"
	if b.OnBehalfOf != "" {
		s += " on behalf of " + b.OnBehalfOf
	}
	return s
}

// Func tells who makes the request r: the authenticated identity, with
// author (the client's, may be "") as on behalf of and comment as the
// comment, at the current time. The server builds it from its
// authenticator (api.WhoFunc); the provisioner's handlers take it as a
// parameter because they cannot import the API. A nil Func records
// nothing.
type Func func(r *http.Request, author, comment string) By

// Of calls f, or returns nil when f is nil.
func (f Func) Of(r *http.Request, author, comment string) *By {
	if f == nil {
		return nil
	}
	b := f(r, author, comment)
	return &b
}

// TextProblem says why v may not be recorded as an author or comment, or
// "" when it may: a control character (C0, DEL, C1), a Unicode line or
// paragraph separator, a bidirectional control or bytes that are not
// UTF-8. Recorded text must print as one honest line.
func TextProblem(v string) string {
	if !utf8.ValidString(v) {
		return "not valid UTF-8"
	}
	for i, c := range v {
		switch {
		case unicode.IsControl(c),
			c == '\u2028', c == '\u2029', // line and paragraph separators
			c == '\u061c', c == '\u200e', c == '\u200f', // bidi marks
			c >= '\u202a' && c <= '\u202e', c >= '\u2066' && c <= '\u2069': // bidi embeddings, overrides, isolates
			return fmt.Sprintf("control character %U at byte %d is not allowed", c, i)
		}
	}
	return ""
}
