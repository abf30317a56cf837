package guards

import (
	"testing"
	"time"
)

func TestConcurrency(t *testing.T) {
	tests := []struct {
		limit, inFlight int
		want            Verdict
		reason          string
	}{
		{0, 50, Allow, "allowed: 50 actions in flight (no limit)"},
		{3, 2, Allow, "allowed: 2 actions in flight (limit 3)"},
		{3, 3, Wait, "waiting: 3 actions in flight (limit 3)"},
		{3, 4, Wait, "waiting: 4 actions in flight (limit 3)"},
	}
	for _, tt := range tests {
		d := Concurrency(tt.limit, tt.inFlight)
		if d.Verdict != tt.want || d.Reason != tt.reason {
			t.Errorf("Concurrency(%d, %d) = %s %q, want %s %q", tt.limit, tt.inFlight, d.Verdict, d.Reason, tt.want, tt.reason)
		}
	}
}

func TestRateLimit(t *testing.T) {
	r := RateLimit{Max: 2, Per: 10 * time.Minute}
	tests := []struct {
		name    string
		r       RateLimit
		starts  []time.Duration
		now     time.Duration
		want    Verdict
		retryAt time.Duration
	}{
		{"none yet", r, nil, 0, Allow, 0},
		{"one in window", r, []time.Duration{0}, time.Minute, Allow, 0},
		{"full", r, []time.Duration{0, 2 * time.Minute}, 5 * time.Minute, Wait, 10 * time.Minute},
		{"oldest exactly Per ago has left", r, []time.Duration{0, 2 * time.Minute}, 10 * time.Minute, Allow, 0},
		{"unsorted starts", r, []time.Duration{2 * time.Minute, 0}, 5 * time.Minute, Wait, 10 * time.Minute},
		{"over the limit frees later", r, []time.Duration{0, time.Minute, 2 * time.Minute}, 5 * time.Minute, Wait, 11 * time.Minute},
		{"future starts ignored", r, []time.Duration{6 * time.Minute, 7 * time.Minute}, 5 * time.Minute, Allow, 0},
		{"no limit", RateLimit{}, []time.Duration{0, 0, 0}, 0, Allow, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var starts []time.Time
			for _, s := range tt.starts {
				starts = append(starts, at(s))
			}
			d := tt.r.Decide("restart-vm", starts, at(tt.now))
			if d.Verdict != tt.want {
				t.Fatalf("verdict %s (%s), want %s", d.Verdict, d.Reason, tt.want)
			}
			if tt.want == Wait && !d.RetryAt.Equal(at(tt.retryAt)) {
				t.Errorf("retry at %s, want %s", d.RetryAt, at(tt.retryAt))
			}
		})
	}
}

func TestDependency(t *testing.T) {
	bad := map[string]string{"h1": "", "h2": "unreachable"}
	tests := []struct {
		host   string
		want   Verdict
		reason string
	}{
		{"h1", Skip, "skipped: host h1 is unhealthy: the host is handled first"},
		{"h2", Skip, "skipped: host h2 is unreachable: the host is handled first"},
		{"h3", Allow, "allowed: host h3 is healthy"},
		{"", Allow, "allowed: the action has no host"},
	}
	for _, tt := range tests {
		d := Dependency(tt.host, bad)
		if d.Verdict != tt.want || d.Reason != tt.reason {
			t.Errorf("Dependency(%q) = %s %q, want %s %q", tt.host, d.Verdict, d.Reason, tt.want, tt.reason)
		}
	}
}
