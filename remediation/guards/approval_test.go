package guards

import (
	"strings"
	"testing"
	"time"
)

func TestApproval(t *testing.T) {
	type step struct {
		op      string // approve, deny
		author  string
		comment string
		at      time.Duration
		err     string
	}
	tests := []struct {
		name    string
		steps   []step
		now     time.Duration
		want    Verdict
		expired bool
		reason  string
	}{
		{"pending", nil, 0, Wait, false, "waiting: approval of reprovision-host on h1 pending since 2026-03-29T01:00:00Z, expires at 2026-03-29T02:00:00Z"},
		{"a moment before expiry", nil, time.Hour - time.Nanosecond, Wait, false, ""},
		{"expired exactly at TTL", nil, time.Hour, Escalate, true, "escalate: approval of reprovision-host on h1 requested at 2026-03-29T01:00:00Z expired at 2026-03-29T02:00:00Z unanswered"},
		{"approved", []step{{"approve", "ana", "disk replaced", time.Minute, ""}}, 2 * time.Hour, Allow, false,
			"allowed: approved by ana at 2026-03-29T01:01:00Z: disk replaced"},
		{"denied", []step{{"deny", "ana", "hardware on order", time.Minute, ""}}, 2 * time.Minute, Skip, false,
			"skipped: denied by ana at 2026-03-29T01:01:00Z: hardware on order"},
		{"approve after expiry", []step{{"approve", "ana", "ok", time.Hour, "approve reprovision-host on h1: expired at 2026-03-29T02:00:00Z"}}, time.Hour, Escalate, true, ""},
		{"no author", []step{{"approve", "", "ok", 0, "no author"}}, 0, Wait, false, ""},
		{"no comment", []step{{"deny", "ana", "", 0, "deny reprovision-host on h1: no comment"}}, 0, Wait, false, ""},
		{"decided twice", []step{{"approve", "ana", "ok", 0, ""}, {"deny", "bo", "no", 0, "already approved by ana"}}, 0, Allow, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := NewApproval("h1", "reprovision-host", time.Hour, t0)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range tt.steps {
				f := a.Approve
				if s.op == "deny" {
					f = a.Deny
				}
				err := f(s.author, s.comment, at(s.at))
				if s.err == "" && err != nil || s.err != "" && (err == nil || !strings.Contains(err.Error(), s.err)) {
					t.Fatalf("%s: err %v, want %q", s.op, err, s.err)
				}
			}
			if got := a.Expired(at(tt.now)); got != tt.expired {
				t.Errorf("Expired = %v, want %v", got, tt.expired)
			}
			d := a.Decide(at(tt.now))
			if d.Verdict != tt.want {
				t.Fatalf("verdict %s (%s), want %s", d.Verdict, d.Reason, tt.want)
			}
			if tt.reason != "" && d.Reason != tt.reason {
				t.Errorf("reason\n got %q\nwant %q", d.Reason, tt.reason)
			}
		})
	}
	if _, err := NewApproval("h1", "x", 0, t0); err == nil {
		t.Error("zero TTL accepted")
	}
	var none *Approval
	if d := none.Decide(t0); d.Verdict != Wait {
		t.Errorf("nil approval: %+v", d)
	}
}
