package promapi

import (
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseTime(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{in: "1700000000", want: time.Unix(1700000000, 0)},
		{in: "1700000000.123", want: time.Unix(1700000000, 123_000_000)},
		{in: "1700000000.1236", want: time.Unix(1700000000, 124_000_000)}, // rounded to ms
		{in: "-1.5", want: time.Unix(-1, -500_000_000)},
		{in: "1e9", want: time.Unix(1e9, 0)},
		{in: "2023-11-14T22:13:20Z", want: time.Unix(1700000000, 0)},
		{in: "2023-11-14T23:13:20.5+01:00", want: time.Unix(1700000000, 500_000_000)},
		{in: minTime().Format(time.RFC3339Nano), want: minTime()},
		{in: maxTime().Format(time.RFC3339Nano), want: maxTime()},
		{in: "", wantErr: `cannot parse "" to a valid timestamp`},
		{in: "now", wantErr: `cannot parse "now" to a valid timestamp`},
		{in: "2023-11-14", wantErr: `cannot parse "2023-11-14" to a valid timestamp`},
	}
	for _, tt := range tests {
		got, err := parseTime(tt.in)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("parseTime(%q) error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("parseTime(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{in: "15", want: 15 * time.Second},
		{in: "0.5", want: 500 * time.Millisecond},
		{in: "15s", want: 15 * time.Second},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "1d", want: 24 * time.Hour},
		{in: "1w", want: 7 * 24 * time.Hour},
		{in: "-5", want: -5 * time.Second},
		{in: "0", want: 0},
		{in: "", wantErr: `cannot parse "" to a valid duration`},
		{in: "5 minutes", wantErr: `cannot parse "5 minutes" to a valid duration`},
		{in: "1e300", wantErr: `cannot parse "1e300" to a valid duration. It overflows int64`},
		{in: "NaN", wantErr: `cannot parse "NaN" to a valid duration. It overflows int64`},
		{in: "9223372036.854775807", wantErr: `cannot parse "9223372036.854775807" to a valid duration. It overflows int64`},
	}
	for _, tt := range tests {
		got, err := parseDuration(tt.in)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("parseDuration(%q) error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseLimit(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"", 0, false},
		{"0", 0, false},
		{"10", 10, false},
		{"-1", 0, true},
		{"ten", 0, true},
	}
	for _, tt := range tests {
		got, err := parseLimitParam(tt.in)
		if (err != nil) != tt.wantErr || (!tt.wantErr && got != tt.want) {
			t.Errorf("parseLimitParam(%q) = %d, %v", tt.in, got, err)
		}
	}
}

// The time and duration parameters come from any HTTP client: they must
// never panic, and what they accept must be sane.
func FuzzParseTime(f *testing.F) {
	for _, s := range []string{"1700000000", "1700000000.1236", "-1.5", "1e300", "NaN", "+Inf", "0x1p-2",
		"2023-11-14T22:13:20Z", "2023-11-14T23:13:20.5+01:00", minTime().Format(time.RFC3339Nano), ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseTime(s)
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Errorf("parseTime(%q) error %q does not quote the input", s, err)
			}
			return
		}
		again, err := parseTime(s)
		if err != nil || !again.Equal(got) {
			t.Errorf("parseTime(%q) not deterministic: %v then %v, %v", s, got, again, err)
		}
		if f, ferr := strconv.ParseFloat(s, 64); ferr == nil && !math.IsNaN(f) && math.Abs(f) < 1e12 {
			// Unix seconds are rounded to milliseconds.
			if got.Nanosecond()%int(time.Millisecond) != 0 {
				t.Errorf("parseTime(%q) = %v, not whole milliseconds", s, got)
			}
			secs := float64(got.Unix()) + float64(got.Nanosecond())/1e9
			if d := math.Abs(secs - f); d > 0.0005+math.Abs(f)*1e-15 {
				t.Errorf("parseTime(%q) = %v, %gs away", s, got, d)
			}
		}
	})
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"15", "0.5", "15s", "1h30m", "1d", "1w", "1y", "-5", "1e300", "NaN", "-Inf",
		"9223372036.854775807", "5m1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseDuration(s)
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Errorf("parseDuration(%q) error %q does not quote the input", s, err)
			}
			return
		}
		if f, ferr := strconv.ParseFloat(s, 64); ferr == nil {
			if want := time.Duration(f * float64(time.Second)); got != want {
				t.Errorf("parseDuration(%q) = %v, want %v", s, got, want)
			}
			return
		}
		if got < 0 {
			t.Errorf("parseDuration(%q) = %v: Prometheus durations are not negative", s, got)
		}
	})
}
