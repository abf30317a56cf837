package main

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"caretaker/internal/api"
	"caretaker/remediation/journal"
)

// hostile carries what an alert label may hold to fool a terminal: clear
// the screen, return to the line's start, and a fake history row.
const hostile = "lab-host-a-1\x1b[2J\r\n99\t2026-01-01 00:00:00\tFake\trestart-vm\thost-z\tvictim\tsucceeded\u202e\u009b31m\x7f\xff"

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"plain host-a/ü":      "plain host-a/ü",
		"\x1b[2J":             `\x1b[2J`,
		"a\r\nb\tc":           `a\r\nb\tc`,
		"del\x7f c1\u009b":    `del\x7f c1\u009b`,
		"bidi\u202e ls\u2028": `bidi\u202e ls\u2028`,
		"bad\xff":             `bad\xff`,
	} {
		if got := escape(in); got != want {
			t.Errorf("escape(%q) = %q, want %q", in, got, want)
		}
	}
}

// A record whose labels, names, reason, error and output carry terminal
// escapes and a fake row: history and show print every field on its own
// line of the table, with the control characters visible; -o json stays
// JSON with the raw values.
func TestHistoryAndShowEscapeFields(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	rec := journal.Record{ID: 2, Created: now, Alert: "GuestCrashed" + hostile, Action: "restart-vm", Host: "host-a" + hostile,
		Domain: hostile, UUID: "u1", State: journal.StateFailed, Reason: "reason " + hostile, Error: "error " + hostile,
		Labels:  map[string]string{"alertname": "GuestCrashed", "domain": hostile, "x\x1b[2Jkey": "v"},
		Comment: "comment " + hostile, Output: "line one\nline two " + hostile,
		Transitions: []journal.Transition{{At: now, State: journal.StateFailed, Note: "note " + hostile}}}
	b := fixedBackend{recs: []journal.Record{rec}}
	srv := httptest.NewServer(api.NewHandler(api.Options{Backend: b, Auth: testAuth(t), Logger: slog.New(slog.DiscardHandler)}))
	defer srv.Close()

	check := func(name, out string, wantLines int) {
		t.Helper()
		for _, bad := range []string{"\x1b", "\r", "\x7f", "\u009b", "\u202e", "\xff"} {
			if strings.Contains(out, bad) {
				t.Errorf("%s prints %q raw:\n%s", name, bad, out)
			}
		}
		if strings.Contains(out, "\n99") {
			t.Errorf("%s shows the fake row as a row:\n%s", name, out)
		}
		if !strings.Contains(out, `\x1b[2J\r\n99\t2026-01-01`) {
			t.Errorf("%s lacks the visible escapes:\n%s", name, out)
		}
		if n := strings.Count(out, "\n"); n != wantLines {
			t.Errorf("%s has %d lines, want %d:\n%s", name, n, wantLines, out)
		}
	}
	out, err := run(t, srv.URL, "history")
	if err != nil {
		t.Fatal(err)
	}
	check("history", out, 2) // the header and one record

	out, err = run(t, srv.URL, "show", "2")
	if err != nil {
		t.Fatal(err)
	}
	// 23 fields, blank, guard header and "(no guard decisions)", blank,
	// "(no approval needed)", blank, transition header and one transition,
	// blank, OUTPUT and the output's three lines (its own line break kept,
	// indented).
	check("show", out, 23+3+2+3+5)
	if !strings.Contains(out, "\n  line two lab-host-a-1\\x1b[2J\\r\n  99\\t2026") {
		t.Errorf("show: the output's lines are not escaped and indented:\n%s", out)
	}

	out, err = run(t, srv.URL, "history", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var h api.History
	if err := json.Unmarshal([]byte(out), &h); err != nil || len(h.Records) != 1 || h.Records[0].Labels["domain"] != strings.ToValidUTF8(hostile, "\uFFFD") {
		t.Errorf("history -o json does not carry the raw label: %v\n%s", err, out)
	}
}

// A server's error message is escaped whole; the lines runbook lays out
// itself stay lines.
func TestErrorText(t *testing.T) {
	se := &api.StatusError{Code: 409, Msg: "busy\n99\tfake row\x1b[2J", Details: []string{"a\x1b]0;title\x07", "b"}}
	got := errorText(errors.Join(errors.New("cluster x degraded:\n  node-1: \x1b[31mred"), se))
	want := "cluster x degraded:\n  node-1: \\x1b[31mred\nconflict (409): busy\\n99\\tfake row\\x1b[2J\n  a\\x1b]0;title\\x07\n  b"
	if got != want {
		t.Errorf("errorText =\n%q\nwant\n%q", got, want)
	}
}
