package guards

import (
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC) // a DST change day elsewhere; UTC has none

func at(d time.Duration) time.Time { return t0.Add(d) }

func TestBackoffJitterBounds(t *testing.T) {
	p := TargetPolicy{BackoffBase: 10 * time.Second, BackoffMax: 80 * time.Second, Jitter: 0.5}
	tests := []struct {
		name     string
		failures int
		j        float64
		want     time.Duration
	}{
		{"no failure", 0, 0.5, 0},
		{"first, centre", 1, 0.5, 10 * time.Second},
		{"first, low bound", 1, 0, 5 * time.Second},
		{"first, high bound", 1, 1, 15 * time.Second},
		{"second doubles", 2, 0.5, 20 * time.Second},
		{"fourth reaches the cap", 4, 0.5, 80 * time.Second},
		{"capped before jitter, low", 10, 0, 40 * time.Second},
		{"capped before jitter, high", 10, 1, 120 * time.Second},
		{"huge count does not overflow", 1000, 0.5, 80 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Backoff(tt.failures, tt.j); got != tt.want {
				t.Errorf("Backoff(%d, %v) = %s, want %s", tt.failures, tt.j, got, tt.want)
			}
		})
	}
	uncapped := TargetPolicy{BackoffBase: time.Second}
	if got := uncapped.Backoff(200, 0.5); got <= 0 {
		t.Errorf("uncapped Backoff(200) = %s, want positive", got)
	}
}

func TestRecordJitterSource(t *testing.T) {
	var h TargetHistory
	h.Record(t0, Failed, func() float64 { return 0.25 })
	h.Record(t0, Failed, func() float64 { return 7 }) // clamped
	h.Record(t0, Failed, nil)
	got := []float64{h.Attempts[0].Jitter, h.Attempts[1].Jitter, h.Attempts[2].Jitter}
	want := []float64{0.25, 1, 0.5}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("attempt %d jitter = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestDecide(t *testing.T) {
	p := TargetPolicy{
		Cooldown:    5 * time.Minute,
		BackoffBase: 10 * time.Minute,
		BackoffMax:  time.Hour,
		Jitter:      0.2,
		MaxAttempts: 3,
		Window:      time.Hour,
	}
	ok := func(d time.Duration) Attempt { return Attempt{At: at(d), Outcome: Succeeded, Jitter: 0.5} }
	fail := func(d time.Duration, j float64) Attempt { return Attempt{At: at(d), Outcome: Failed, Jitter: j} }
	tests := []struct {
		name     string
		attempts []Attempt
		now      time.Duration
		want     Verdict
		retryAt  time.Duration // from t0; checked when want is not Allow
		reason   string
	}{
		{"first attempt", nil, 0, Allow, 0, "allowed: no earlier attempt on vm-1"},
		{"in cooldown", []Attempt{ok(0)}, 5*time.Minute - time.Second, Wait, 5 * time.Minute,
			"waiting: cooldown of 5m on vm-1 after the attempt at 2026-03-29T01:00:00Z, until 2026-03-29T01:05:00Z"},
		{"exactly at cooldown end", []Attempt{ok(0)}, 5 * time.Minute, Allow, 0, "allowed: cooldown of 5m on vm-1 is over"},
		{"backoff, centre jitter", []Attempt{fail(0, 0.5)}, 9 * time.Minute, Wait, 10 * time.Minute,
			"waiting: backoff after 1 failed attempt on vm-1, retry at 2026-03-29T01:10:00Z"},
		{"backoff end, low jitter", []Attempt{fail(0, 0)}, 8 * time.Minute, Allow, 0, "allowed: retry after 1 failed attempt on vm-1"},
		{"just before backoff end, low jitter", []Attempt{fail(0, 0)}, 8*time.Minute - time.Nanosecond, Wait, 8 * time.Minute, ""},
		{"high jitter bound", []Attempt{fail(0, 1)}, 12*time.Minute - time.Nanosecond, Wait, 12 * time.Minute, ""},
		{"second failure doubles", []Attempt{fail(0, 0.5), fail(15*time.Minute, 0.5)}, 30 * time.Minute, Wait, 35 * time.Minute, ""},
		{"success resets backoff to cooldown", []Attempt{fail(0, 0.5), ok(15 * time.Minute)}, 20 * time.Minute, Allow, 0, ""},
		{"budget spent within window", []Attempt{fail(0, 0.5), fail(15*time.Minute, 0.5), fail(40*time.Minute, 0.5)}, 59 * time.Minute, Escalate, 60 * time.Minute,
			"escalate: 3 attempts on vm-1 within 1h (limit 3)"},
		{"window slides: oldest exactly a window old has left", []Attempt{fail(0, 0.5), fail(15*time.Minute, 0.5), fail(20*time.Minute, 0.5)}, 60 * time.Minute, Allow, 0, ""},
		{"successes count toward the budget", []Attempt{ok(0), ok(10 * time.Minute), ok(20 * time.Minute)}, 30 * time.Minute, Escalate, 60 * time.Minute, ""},
		{"escalation clears once attempts age out", []Attempt{ok(0), ok(10 * time.Minute), ok(20 * time.Minute)}, 70 * time.Minute, Allow, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(p, TargetHistory{Target: "vm-1", Attempts: tt.attempts}, at(tt.now))
			if d.Verdict != tt.want {
				t.Fatalf("verdict %s (%s), want %s", d.Verdict, d.Reason, tt.want)
			}
			if d.Guard != GuardTarget {
				t.Errorf("guard %q", d.Guard)
			}
			if tt.want != Allow && !d.RetryAt.Equal(at(tt.retryAt)) {
				t.Errorf("retry at %s, want %s", d.RetryAt, at(tt.retryAt))
			}
			if tt.reason != "" && d.Reason != tt.reason {
				t.Errorf("reason\n got %q\nwant %q", d.Reason, tt.reason)
			}
		})
	}
}

func TestDecideUnlimitedAndWholeHistory(t *testing.T) {
	h := TargetHistory{Target: "vm", Attempts: []Attempt{{At: t0, Outcome: Succeeded}, {At: t0, Outcome: Succeeded}}}
	if d := Decide(TargetPolicy{}, h, at(time.Second)); d.Verdict != Allow {
		t.Errorf("no limits: %s", d.Reason)
	}
	d := Decide(TargetPolicy{MaxAttempts: 2}, h, at(1000*time.Hour))
	if d.Verdict != Escalate || !d.RetryAt.IsZero() || !strings.Contains(d.Reason, "2 attempts on vm (limit 2)") {
		t.Errorf("zero window counts all history: %+v", d)
	}
}

func TestTargetPolicyValidate(t *testing.T) {
	tests := []struct {
		name string
		p    TargetPolicy
		err  string
	}{
		{"zero is valid", TargetPolicy{}, ""},
		{"negative", TargetPolicy{Cooldown: -1}, "negative"},
		{"base over max", TargetPolicy{BackoffBase: 2 * time.Minute, BackoffMax: time.Minute}, "exceeds backoff_max"},
		{"jitter over 1", TargetPolicy{Jitter: 1.5}, "jitter 1.5"},
		{"negative attempts", TargetPolicy{MaxAttempts: -1}, "max_attempts -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err %v, want containing %q", err, tt.err)
			}
		})
	}
}
