package httpjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"caretaker/internal/httpjson/httpjsontest"
)

type request struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

func TestDecode(t *testing.T) {
	const limit = 64
	for _, tc := range []struct {
		name, body string
		want       request
		code       int    // 0: accepted
		msg        string // the error's whole message
		cause      error  // errors.Is the error
	}{
		{name: "object", body: `{"name":"a","count":2}`, want: request{"a", 2}},
		{name: "white space around", body: " \n{\"name\":\"a\"}\n\t ", want: request{Name: "a"}},
		{name: "exactly the limit", body: `{"name":"` + strings.Repeat("x", limit-11) + `"}`, want: request{Name: strings.Repeat("x", limit-11)}},
		{name: "unknown field", body: `{"name":"a","cpus":2}`, code: 400, msg: `request body: unknown field "cpus"`},
		{name: "wrong type", body: `{"count":"2"}`, code: 400, msg: "request body: cannot unmarshal string into Go struct field request.count of type int"},
		{name: "not an object", body: `[1]`, code: 400, msg: "request body: cannot unmarshal array into Go value of type httpjson.request"},
		{name: "trailing object", body: `{"name":"a"} {}`, code: 400, msg: "request body: unexpected data after the JSON object", cause: ErrTrailingData},
		{name: "trailing garbage", body: `{"name":"a"}x`, code: 400, msg: "request body: unexpected data after the JSON object", cause: ErrTrailingData},
		{name: "trailing bracket", body: `{"name":"a"}]`, code: 400, msg: "request body: unexpected data after the JSON object", cause: ErrTrailingData},
		{name: "empty", body: ``, code: 400, msg: "request body: empty; want a JSON object", cause: ErrEmpty},
		{name: "only blanks", body: " \n ", code: 400, msg: "request body: empty; want a JSON object", cause: ErrEmpty},
		{name: "truncated", body: `{"name":`, code: 400, msg: "request body: unexpected EOF"},
		{name: "syntax", body: `{"name" "a"}`, code: 400, msg: "request body: invalid character '\"' after object key"},
		{name: "over the limit", body: `{"name":"` + strings.Repeat("x", limit) + `"}`, code: 413, msg: "request body: larger than 64 bytes"},
		{name: "over the limit after the value", body: `{"name":"a"}` + strings.Repeat(" ", limit), code: 413, msg: "request body: larger than 64 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			var got request
			err := Decode(rec, httptest.NewRequest("POST", "/", strings.NewReader(tc.body)), &got, limit)
			if tc.code == 0 {
				if err != nil || got != tc.want {
					t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
				}
				return
			}
			be, ok := errors.AsType[*BodyError](err)
			if !ok || be.Status != tc.code || err.Error() != tc.msg {
				t.Fatalf("got %#v (%v), want %d %q", err, err, tc.code, tc.msg)
			}
			if tc.cause != nil && !errors.Is(err, tc.cause) {
				t.Errorf("%v is not %v", err, tc.cause)
			}
			if _, tooBig := errors.AsType[*http.MaxBytesError](err); tooBig != (tc.code == 413) {
				t.Errorf("%v: MaxBytesError %v, want %v", err, tooBig, tc.code == 413)
			}
			// The answer carries the status and the message.
			WriteDecodeError(rec, err)
			var body struct{ Error string }
			if rec.Code != tc.code || json.Unmarshal(rec.Body.Bytes(), &body) != nil || body.Error != tc.msg {
				t.Errorf("answer %d %s, want %d %q", rec.Code, rec.Body, tc.code, tc.msg)
			}
		})
	}
}

func TestWrite(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(http.ResponseWriter)
		code  int
		body  string
	}{
		{"indented", func(w http.ResponseWriter) { Write(w, 201, map[string]int{"a": 1}) }, 201, "{\n  \"a\": 1\n}\n"},
		{"compact", func(w http.ResponseWriter) { Compact.Write(w, 200, map[string]int{"a": 1}) }, 200, "{\"a\":1}\n"},
		{"error", func(w http.ResponseWriter) { Error(w, 404, "no host h1") }, 404, "{\n  \"error\": \"no host h1\"\n}\n"},
		{"compact error", func(w http.ResponseWriter) { Compact.Error(w, 409, "busy") }, 409, "{\"error\":\"busy\"}\n"},
		{"other error as decode error", func(w http.ResponseWriter) { Compact.DecodeError(w, errors.New("bad")) }, 400, "{\"error\":\"bad\"}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			tc.write(rec)
			if rec.Code != tc.code || rec.Body.String() != tc.body || rec.Header().Get("Content-Type") != "application/json" {
				t.Errorf("got %d %q %q, want %d %q application/json", rec.Code, rec.Header().Get("Content-Type"), rec.Body, tc.code, tc.body)
			}
		})
	}
}

func TestUnauthorized(t *testing.T) {
	rec := httptest.NewRecorder()
	Compact.Unauthorized(rec, "caretaker", "missing or invalid bearer token")
	if rec.Code != 401 || rec.Header().Get("WWW-Authenticate") != `Bearer realm="caretaker"` || rec.Body.String() != "{\"error\":\"missing or invalid bearer token\"}\n" {
		t.Errorf("got %d %q %s", rec.Code, rec.Header().Get("WWW-Authenticate"), rec.Body)
	}
}

// A refusal is sent without reading the request's body first: a client
// that announces a body and never sends it gets its answer at once.
func TestRefusalDoesNotAwaitBody(t *testing.T) {
	for _, code := range []int{http.StatusUnauthorized, http.StatusForbidden, http.StatusRequestEntityTooLarge, http.StatusTooManyRequests} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if code == http.StatusUnauthorized {
				Compact.Unauthorized(w, "caretaker", "missing bearer token")
				return
			}
			Compact.Error(w, code, "no")
		}))
		if got := httpjsontest.StatusWithoutBody(t, srv.Listener.Addr().String(), "POST", "/"); got != code {
			t.Errorf("answer %d before the body, want %d", got, code)
		}
		srv.Close()
	}
}

func TestBearerToken(t *testing.T) {
	for _, tc := range []struct {
		header, token string
		ok            bool
	}{
		{"Bearer s3cret", "s3cret", true},
		{"bearer s3cret", "s3cret", true},
		{"BEARER s3cret", "s3cret", true},
		{"Bearer  s3cret ", "s3cret", true},
		{"Bearer", "", false},
		{"Bearer ", "", false},
		{"Bearer    ", "", false},
		{"Basic s3cret", "", false},
		{"Bearers3cret", "", false},
		{"s3cret", "", false},
		{"", "", false},
	} {
		token, ok := BearerToken(tc.header)
		if token != tc.token || ok != tc.ok {
			t.Errorf("BearerToken(%q) = %q, %v; want %q, %v", tc.header, token, ok, tc.token, tc.ok)
		}
	}
}

func TestTokenMatches(t *testing.T) {
	for _, tc := range []struct {
		got, want string
		match     bool
	}{
		{"s3cret", "s3cret", true},
		{"s3cre", "s3cret", false},
		{"s3cret!", "s3cret", false},
		{"S3cret", "s3cret", false},
		{"", "s3cret", false},
		{"", "", false}, // no secret configured accepts nothing
		{"x", "", false},
	} {
		if m := TokenMatches(tc.got, tc.want); m != tc.match {
			t.Errorf("TokenMatches(%q, %q) = %v", tc.got, tc.want, m)
		}
	}
}

// FuzzDecode: whatever the body, Decode does not panic; what it accepts is
// one JSON value within the limit, and what it refuses is a 400 or, only
// for a body over the limit, a 413.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"name":"a","count":1}`, `{"name":"a"} {}`, `{"name":"a"}x`, `{"cpus":1}`,
		``, ` `, `{"count":"1"}`, `[]`, `null`, `{"name":"` + strings.Repeat("x", 80) + `"}`,
		`{"name":"a"}` + strings.Repeat(" ", 70), `{"name":"\u00e9"}`, `{"count":1e3}`, `{`,
	} {
		f.Add([]byte(s))
	}
	const limit = 64
	f.Fuzz(func(t *testing.T, body []byte) {
		var v request
		err := Decode(httptest.NewRecorder(), httptest.NewRequest("POST", "/", bytes.NewReader(body)), &v, limit)
		if err == nil {
			if len(body) > limit || !json.Valid(body) {
				t.Fatalf("accepted %q (%d bytes, limit %d)", body, len(body), limit)
			}
			return
		}
		be, ok := errors.AsType[*BodyError](err)
		switch {
		case !ok:
			t.Fatalf("%q: error %T %v, want a *BodyError", body, err, err)
		case be.Status == http.StatusRequestEntityTooLarge && len(body) <= limit:
			t.Fatalf("%q: 413 for %d bytes, limit %d", body, len(body), limit)
		case be.Status != http.StatusRequestEntityTooLarge && be.Status != http.StatusBadRequest:
			t.Fatalf("%q: status %d", body, be.Status)
		case !strings.HasPrefix(err.Error(), "request body: ") || be.Reason == "":
			t.Fatalf("%q: message %q", body, err)
		}
	})
}
