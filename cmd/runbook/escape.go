package main

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"unicode/utf8"

	"caretaker/internal/api"
)

// escape makes s safe to print in one cell of a terminal table: every
// control character — C0 (newline, carriage return, tab, ESC…), DEL, C1,
// the Unicode line and paragraph separators and the bidirectional
// overrides — and every byte that is not UTF-8 is shown as a visible
// escape (`\n`, `\x1b`, `\u202e`), so a field from the server (an alert's
// label, a reason, a command's output) can neither start a new row nor
// move the cursor, clear the screen or reorder the text. Everything
// runbook prints in its table and text output passes through it; -o json
// is left to encoding/json, which escapes on its own.
func escape(s string) string {
	i := strings.IndexFunc(s, unsafeRune)
	if i < 0 && utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for len(s) > 0 {
		r, size := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[0])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafeRune(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[:size])
		}
		s = s[size:]
	}
	return b.String()
}

func unsafeRune(r rune) bool {
	switch {
	case r < 0x20, r >= 0x7f && r <= 0x9f: // C0, DEL, C1
		return true
	case r == 0x2028, r == 0x2029: // line and paragraph separators
		return true
	case r == 0x200e, r == 0x200f, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069: // bidi marks and overrides
		return true
	}
	return false
}

// escapeLines escapes each line of s and keeps the line breaks: for what
// runbook itself lays out on several lines (a command's output block, a
// rule's query, an error listing failed nodes).
func escapeLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = escape(l)
	}
	return strings.Join(lines, "\n")
}

// verbatim is text runbook has already escaped (with escapeLines) and laid
// out itself; printf passes it as it is.
type verbatim string

// printf is fmt.Fprintf for everything runbook shows in a table or as
// text: the format is runbook's own (its tabs separate cells, its
// newlines end rows), every argument that is a string, an error or a
// fmt.Stringer is escaped first.
func printf(w io.Writer, format string, args ...any) {
	for i, a := range args {
		args[i] = escapeArg(a)
	}
	fmt.Fprintf(w, format, args...)
}

func escapeArg(a any) any {
	switch v := a.(type) {
	case nil:
		return nil
	case verbatim:
		return string(v)
	case string:
		return escape(v)
	case error:
		return escape(v.Error())
	case fmt.Stringer:
		return escape(v.String())
	}
	if rv := reflect.ValueOf(a); rv.Kind() == reflect.String { // journal.State and the like
		return escape(rv.String())
	}
	return a
}

// errorText is how main prints an error: the lines runbook composed stay
// lines, each escaped, while the message and each detail line from the
// server (a StatusError) are escaped whole, so they cannot add lines.
func errorText(err error) string {
	msg := err.Error()
	if se, ok := errors.AsType[*api.StatusError](err); ok {
		clean := &api.StatusError{Code: se.Code, Msg: escape(se.Msg)}
		for _, d := range se.Details {
			clean.Details = append(clean.Details, escape(d)) // one line each, as the server listed them
		}
		msg = strings.Replace(msg, se.Error(), clean.Error(), 1)
	}
	return escapeLines(msg)
}
