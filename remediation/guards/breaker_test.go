package guards

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestParseThreshold(t *testing.T) {
	tests := []struct {
		in   string
		want Threshold
		err  string
	}{
		{"3", Threshold{Value: 3}, ""},
		{"0", Threshold{Value: 0}, ""},
		{"40%", Threshold{Value: 40, Percent: true}, ""},
		{"100%", Threshold{Value: 100, Percent: true}, ""},
		{"0%", Threshold{Value: 0, Percent: true}, ""},
		{"", Threshold{}, `parse threshold "": want a count like "3" or a percentage like "40%"`},
		{"%", Threshold{}, `want a count`},
		{"101%", Threshold{}, `parse threshold "101%": a percentage must be at most 100%`},
		{"-1", Threshold{}, `"-1" is not a whole number`},
		{"+1", Threshold{}, `"+1" is not a whole number`},
		{"4.5%", Threshold{}, `"4.5" is not a whole number`},
		{" 3", Threshold{}, `not a whole number`},
		{"40%%", Threshold{}, `"40%" is not a whole number`},
		{"99999999999999999999", Threshold{}, `value out of range`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseThreshold(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want containing %q", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
			if got.String() != tt.in {
				t.Errorf("String() = %q", got.String())
			}
		})
	}
}

func TestThresholdExceeded(t *testing.T) {
	tests := []struct {
		th               string
		unhealthy, total int
		want             bool
	}{
		{"40%", 4, 10, false}, // exactly at the threshold
		{"40%", 5, 10, true},
		{"40%", 7, 10, true},
		{"40%", 1, 3, false}, // 33%
		{"40%", 2, 3, true},  // 67%
		{"40%", 2, 5, false}, // 40% exactly, no rounding
		{"0%", 0, 10, false},
		{"0%", 1, 10, true},
		{"100%", 10, 10, false},
		{"3", 3, 10, false},
		{"3", 4, 10, true},
		{"40%", 0, 0, false},
	}
	for _, tt := range tests {
		th, err := ParseThreshold(tt.th)
		if err != nil {
			t.Fatal(err)
		}
		if got := th.Exceeded(tt.unhealthy, tt.total); got != tt.want {
			t.Errorf("%s: %d of %d exceeded = %v, want %v", tt.th, tt.unhealthy, tt.total, got, tt.want)
		}
	}
}

func TestBreakerHysteresis(t *testing.T) {
	type obs struct {
		at               time.Duration
		unhealthy, total int
		open             bool
	}
	tests := []struct {
		name string
		obs  []obs
	}{
		{"at threshold stays closed", []obs{{0, 4, 10, false}, {time.Minute, 4, 10, false}}},
		{"opens over threshold", []obs{{0, 4, 10, false}, {time.Minute, 5, 10, true}}},
		{"closes exactly after CloseAfter calm", []obs{
			{0, 7, 10, true},
			{1 * time.Minute, 2, 10, true},
			{10*time.Minute + 59*time.Second, 2, 10, true}, // not early
			{11 * time.Minute, 2, 10, false},
		}},
		{"a relapse restarts the calm period", []obs{
			{0, 7, 10, true},
			{1 * time.Minute, 2, 10, true},
			{8 * time.Minute, 5, 10, true},
			{9 * time.Minute, 4, 10, true},
			{11 * time.Minute, 4, 10, true},
			{18*time.Minute + 59*time.Second, 0, 10, true},
			{19 * time.Minute, 0, 10, false},
		}},
		{"reopens after closing", []obs{{0, 9, 10, true}, {time.Minute, 0, 10, true}, {11 * time.Minute, 0, 10, false}, {12 * time.Minute, 9, 10, true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := newBreaker("40%", 10*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			for i, o := range tt.obs {
				s := b.Observe(o.unhealthy, o.total, at(o.at))
				if s.Open != o.open {
					t.Fatalf("observation %d (%d of %d at +%s): open %v, want %v (%+v)", i, o.unhealthy, o.total, o.at, s.Open, o.open, s)
				}
			}
		})
	}
}

func TestBreakerStateAndDecision(t *testing.T) {
	b, err := newBreaker("40%", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if d := b.State.Decide(); d.Verdict != Allow || d.Reason != "allowed: circuit breaker closed, the fleet not yet observed" {
		t.Errorf("fresh: %+v", d)
	}
	b.Observe(1, 10, at(0))
	s := b.Observe(7, 10, at(time.Minute))
	if !s.Open || !s.Since.Equal(at(time.Minute)) || s.Why != "7 of 10 targets unhealthy (threshold 40%)" {
		t.Errorf("state %+v", s)
	}
	if d := s.Decide(); d.Verdict != Skip || d.Reason != "skipped: circuit breaker open, 7 of 10 targets unhealthy (threshold 40%)" {
		t.Errorf("decision %+v", d)
	}
	s = b.Observe(8, 10, at(2*time.Minute))
	if !s.Since.Equal(at(time.Minute)) {
		t.Errorf("since moved while open: %s", s.Since)
	}
	s = b.Observe(1, 10, at(3*time.Minute))
	if d := s.Decide(); !strings.HasSuffix(d.Reason, "; at or under the threshold since 2026-03-29T01:03:00Z") {
		t.Errorf("calm decision %q", d.Reason)
	}
	s = b.Observe(1, 10, at(13*time.Minute))
	if s.Open || !s.Since.Equal(at(13*time.Minute)) || s.Why != "1 of 10 targets unhealthy (threshold 40%), at or under it since 2026-03-29T01:03:00Z" {
		t.Errorf("closed state %+v", s)
	}
	// The state survives the journal.
	raw, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"threshold":"40%"`) {
		t.Errorf("threshold not in its configured form: %s", raw)
	}
	var back Breaker
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if back.State != b.State || back.Threshold != b.Threshold {
		t.Errorf("round trip %+v, want %+v", back, *b)
	}
	if _, err := newBreaker("lots", time.Minute); err == nil || !strings.Contains(err.Error(), `parse threshold "lots"`) {
		t.Errorf("bad threshold err %v", err)
	}
}

func FuzzParseThreshold(f *testing.F) {
	for _, s := range []string{"3", "40%", "", "%", "101%", "-1", "4.5%", "00%", "1e3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		th, err := ParseThreshold(s)
		if err != nil {
			if !strings.Contains(err.Error(), "parse threshold") {
				t.Fatalf("error does not name the operation: %v", err)
			}
			return
		}
		if th.Value < 0 || th.Percent && th.Value > 100 {
			t.Fatalf("%q parsed to %+v", s, th)
		}
		again, err := ParseThreshold(th.String())
		if err != nil || again != th {
			t.Fatalf("%q -> %q does not round-trip: %+v %v", s, th.String(), again, err)
		}
	})
}

// newBreaker returns a closed breaker, as the engine's is before its
// first observation.
func newBreaker(threshold string, closeAfter time.Duration) (*Breaker, error) {
	t, err := ParseThreshold(threshold)
	if err != nil {
		return nil, err
	}
	return &Breaker{Threshold: t, CloseAfter: closeAfter}, nil
}
