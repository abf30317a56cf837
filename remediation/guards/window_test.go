package guards

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestParseSelector(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{"", "", ""},
		{"rack=r1", "rack=r1", ""},
		{"role=kvm, rack=r1", "rack=r1,role=kvm", ""},
		{"rack=", "rack=", ""}, // the label is empty or absent: no match unless present and empty
		{"rack", "", `parse selector "rack": "rack" is not label=value`},
		{"=r1", "", `"" is not a valid label name`},
		{"1rack=r1", "", `"1rack" is not a valid label name`},
		{"rack=r1,rack=r2", "", "label rack given twice"},
		{"rack=r1,", "", `"" is not label=value`},
		{"a=b=c", "", "contains '='"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			s, err := ParseSelector(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want containing %q", err, tt.err)
				}
				return
			}
			if err != nil || s.String() != tt.want {
				t.Fatalf("got %q, %v; want %q", s, err, tt.want)
			}
		})
	}
}

func TestSelectorMatches(t *testing.T) {
	labels := map[string]string{"rack": "r1", "role": "kvm"}
	tests := []struct {
		sel  string
		want bool
	}{
		{"", true},
		{"rack=r1", true},
		{"rack=r1,role=kvm", true},
		{"rack=r2", false},
		{"rack=r1,zone=a", false},
		{"zone=", false},
	}
	for _, tt := range tests {
		s, err := ParseSelector(tt.sel)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Matches(labels); got != tt.want {
			t.Errorf("%q matches = %v, want %v", tt.sel, got, tt.want)
		}
	}
}

func mustWindow(t *testing.T, name string, kind WindowKind, sched string, d time.Duration, sel string) Window {
	t.Helper()
	w, err := NewWindow(name, kind, sched, d, sel)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func TestWindowActive(t *testing.T) {
	day := func(h, m int) time.Time { return time.Date(2026, 3, 29, h, m, 0, 0, time.UTC) }
	nightly := mustWindow(t, "nightly", Maintenance, "0 23 * * *", 2*time.Hour, "")
	rack := mustWindow(t, "rack-r1", Maintenance, "30 9 * * 1-5", time.Hour, "rack=r1")
	daily := mustWindow(t, "daily", Freeze, "@daily", 30*time.Minute, "")
	r1 := map[string]string{"rack": "r1"}
	r2 := map[string]string{"rack": "r2"}
	monday := func(h, m int) time.Time { return time.Date(2026, 3, 30, h, m, 0, 0, time.UTC) }
	tests := []struct {
		name   string
		w      Window
		labels map[string]string
		now    time.Time
		want   bool
		end    time.Time
	}{
		{"before start", nightly, nil, day(22, 59), false, time.Time{}},
		{"exactly at start", nightly, nil, day(23, 0), true, day(25, 0)},
		{"spans midnight", nightly, nil, day(24, 30), true, day(25, 0)},
		{"a nanosecond before its end", nightly, nil, day(25, 0).Add(-time.Nanosecond), true, day(25, 0)},
		{"exactly at its end", nightly, nil, day(25, 0), false, time.Time{}},
		{"early morning, the previous night's", nightly, nil, day(0, 59), true, day(1, 0)},
		{"selector matches on a weekday", rack, r1, monday(10, 0), true, monday(10, 30)},
		{"selector does not match", rack, r2, monday(10, 0), false, time.Time{}},
		{"weekend", rack, r1, day(10, 0), false, time.Time{}},
		{"descriptor", daily, nil, day(0, 29), true, day(0, 30)},
		{"descriptor over", daily, nil, day(0, 30), false, time.Time{}},
		{"non-UTC now is read in UTC", nightly, nil, day(23, 30).In(time.FixedZone("CEST", 2*3600)), true, day(25, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, end := tt.w.Covers(tt.labels, tt.now)
			if ok != tt.want || !end.Equal(tt.end) {
				t.Fatalf("Covers = %v, %s; want %v, %s", ok, end, tt.want, tt.end)
			}
		})
	}

	ws := Windows{rack, nightly}
	ok, which := ws.Active(r1, day(23, 30))
	if want := `maintenance "nightly" (0 23 * * * for 2h) over the fleet until 2026-03-30T01:00:00Z`; !ok || which != want {
		t.Errorf("Active = %v %q, want %q", ok, which, want)
	}
	ok, which = ws.Active(r1, monday(9, 30))
	if want := `maintenance "rack-r1" (30 9 * * 1-5 for 1h) over hosts with rack=r1 until 2026-03-30T10:30:00Z`; !ok || which != want {
		t.Errorf("Active = %v %q, want %q", ok, which, want)
	}
	d := ws.Decide(r1, monday(9, 30))
	if d.Verdict != Wait || !d.RetryAt.Equal(monday(10, 30)) || !strings.HasPrefix(d.Reason, `waiting: maintenance "rack-r1"`) {
		t.Errorf("Decide = %+v", d)
	}
	if d := ws.Decide(r2, monday(9, 30)); d.Verdict != Allow {
		t.Errorf("Decide for r2 = %+v", d)
	}
}

func TestNewWindowErrors(t *testing.T) {
	tests := []struct {
		name, kind, sched, sel string
		d                      time.Duration
		err                    string
	}{
		{"w", "freeze", "0 25 * * *", "", time.Hour, `window "w": parse schedule "0 25 * * *": `},
		{"w", "freeze", "* * * *", "", time.Hour, `parse schedule "* * * *"`},
		{"w", "freeze", "0 0 * * * *", "", time.Hour, `parse schedule "0 0 * * * *"`},
		{"w", "freeze", "@every 1h", "", time.Hour, "@every has no fixed start"},
		{"w", "freeze", "@sometimes", "", time.Hour, `parse schedule "@sometimes"`},
		{"w", "freeze", "CRON_TZ=Europe/Berlin 0 1 * * *", "", time.Hour, "windows are in UTC"},
		{"w", "freeze", "TZ=", "", time.Hour, "windows are in UTC"},
		{"w", "holiday", "@daily", "", time.Hour, `kind "holiday"`},
		{"w", "freeze", "@daily", "", 0, "duration 0s is not positive"},
		{"w", "freeze", "@daily", "rack", time.Hour, `parse selector "rack"`},
		{"", "freeze", "@daily", "", time.Hour, "no name"},
	}
	for _, tt := range tests {
		t.Run(tt.sched, func(t *testing.T) {
			_, err := NewWindow(tt.name, WindowKind(tt.kind), tt.sched, tt.d, tt.sel)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err %v, want containing %q", err, tt.err)
			}
		})
	}
}

func TestWindowJSON(t *testing.T) {
	w := mustWindow(t, "nightly", Freeze, "0 23 * * *", 2*time.Hour, "role=kvm,rack=r1")
	raw, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"name":"nightly","kind":"freeze","schedule":"0 23 * * *","duration":7200000000000,"selector":"rack=r1,role=kvm"}`; string(raw) != want {
		t.Errorf("json %s, want %s", raw, want)
	}
	var back Window
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if ok, _ := back.Covers(map[string]string{"rack": "r1", "role": "kvm"}, time.Date(2026, 1, 1, 23, 0, 0, 0, time.UTC)); !ok {
		t.Error("decoded window does not cover its span")
	}
	err = json.Unmarshal([]byte(`{"name":"x","kind":"freeze","schedule":"bad","duration":1}`), &back)
	if err == nil || !strings.Contains(err.Error(), `parse schedule "bad"`) {
		t.Errorf("bad schedule err %v", err)
	}
}

func FuzzParseSchedule(f *testing.F) {
	for _, s := range []string{"0 23 * * *", "@daily", "@every 1h", "*/5 * * * 1-5", "0 0 31 2 *", "CRON_TZ=UTC 0 1 * * *", "", "TZ="} {
		f.Add(s)
	}
	now := time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, expr string) {
		s, err := ParseSchedule(expr)
		if err != nil {
			if !strings.Contains(err.Error(), "parse schedule") {
				t.Fatalf("error does not name the expression: %v", err)
			}
			return
		}
		// A schedule that never fires (31 February) gives the zero time.
		if next := s.Next(now); !next.IsZero() && !next.After(now) {
			t.Fatalf("%q: next %s not after %s", expr, next, now)
		}
	})
}

func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{"", "rack=r1", "a=b,c=d", "a", "=", "a=b,a=c", " a = b "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseSelector(in)
		if err != nil {
			if !strings.Contains(err.Error(), "parse selector") {
				t.Fatalf("error does not name the selector: %v", err)
			}
			return
		}
		again, err := ParseSelector(s.String())
		if err != nil || again.String() != s.String() {
			t.Fatalf("%q -> %q does not round-trip: %q %v", in, s, again, err)
		}
		labels := map[string]string{}
		for _, p := range s.pairs {
			labels[p[0]] = p[1]
		}
		if !s.Matches(labels) {
			t.Fatalf("%q does not match its own labels", in)
		}
	})
}
