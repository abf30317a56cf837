package audit

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"

	"caretaker/remediation/journal"
)

var t0 = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

func TestStateTime(t *testing.T) {
	created, started, finished := t0, t0.Add(time.Second), t0.Add(5*time.Second)
	full := journal.Record{Created: created, Started: started, Finished: finished}
	tests := []struct {
		state journal.State
		rec   journal.Record
		want  time.Time
	}{
		{journal.StatePending, full, created},
		{journal.StateSkipped, full, created},
		{journal.StateRunning, full, started},
		{journal.StateRunning, journal.Record{Created: created}, created},
		{journal.StateSucceeded, full, finished},
		{journal.StateFailed, full, finished},
		{journal.StateInterrupted, full, finished},
		{journal.StateFailed, journal.Record{Created: created, Started: started}, started},
		{journal.StateSucceeded, journal.Record{}, time.Time{}},
	}
	for _, tt := range tests {
		tt.rec.State = tt.state
		if got := stateTime(tt.rec); !got.Equal(tt.want) {
			t.Errorf("stateTime(%s %+v) = %s, want %s", tt.state, tt.rec, got, tt.want)
		}
	}
}

func TestStreamLabels(t *testing.T) {
	tests := []struct {
		name     string
		rec      journal.Record
		external map[string]string
		want     string
	}{
		{
			"guest by domain",
			journal.Record{Host: "kvm-3", Domain: "web-1", UUID: "u-1", Action: "restart-vm", State: journal.StateSucceeded},
			nil,
			`{action="restart-vm", guest="web-1", host="kvm-3", job="caretaker-remediation", result="succeeded"}`,
		},
		{
			"guest by uuid",
			journal.Record{Host: "kvm-3", UUID: "4f0c-11", Action: "recreate-vm", State: journal.StateFailed},
			nil,
			`{action="recreate-vm", guest="4f0c-11", host="kvm-3", job="caretaker-remediation", result="failed"}`,
		},
		{
			"host action: no guest",
			journal.Record{Host: "kvm-9", Action: "reprovision-host", State: journal.StatePending},
			map[string]string{"cluster": "dc1", "zone": "a"},
			`{action="reprovision-host", cluster="dc1", host="kvm-9", job="caretaker-remediation", result="pending", zone="a"}`,
		},
		{
			"quoting",
			journal.Record{Host: `odd"host\`, Action: "x", State: journal.StateSkipped},
			nil,
			`{action="x", host="odd\"host\\", job="caretaker-remediation", result="skipped"}`,
		},
	}
	p := parser.NewParser(parser.Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := streamLabels(tt.rec, tt.external)
			if got != tt.want {
				t.Fatalf("streamLabels = %s\nwant            %s", got, tt.want)
			}
			// Loki parses the labels string with the PromQL metric parser.
			ls, err := p.ParseMetric(got)
			if err != nil {
				t.Fatalf("Loki could not parse %s: %v", got, err)
			}
			if ls.Get("host") != tt.rec.Host {
				t.Errorf("parsed host = %q, want %q", ls.Get("host"), tt.rec.Host)
			}
		})
	}
}

func TestBuildPushRequest(t *testing.T) {
	a := journal.Record{ID: 1, Host: "kvm-1", Domain: "web-1", Action: "restart-vm", State: journal.StateSucceeded}
	b := journal.Record{ID: 2, Host: "kvm-2", Domain: "db-1", Action: "restart-vm", State: journal.StateSucceeded}
	c := journal.Record{ID: 3, Host: "kvm-1", Domain: "web-1", Action: "restart-vm", State: journal.StateSucceeded}
	// Logged out of time order and interleaved between streams.
	entries := []entry{
		{a, t0.Add(2 * time.Second)},
		{b, t0.Add(time.Second)},
		{c, t0},
		{a, t0}, // same instant as c: keeps the order logged
	}
	req, err := buildPushRequest(entries, nil)
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		labels string
		ids    []uint64
		ts     []time.Time
	}
	wants := []want{
		{`{action="restart-vm", guest="db-1", host="kvm-2", job="caretaker-remediation", result="succeeded"}`, []uint64{2}, []time.Time{t0.Add(time.Second)}},
		{`{action="restart-vm", guest="web-1", host="kvm-1", job="caretaker-remediation", result="succeeded"}`, []uint64{3, 1, 1}, []time.Time{t0, t0, t0.Add(2 * time.Second)}},
	}
	if len(req.Streams) != len(wants) {
		t.Fatalf("%d streams, want %d: %+v", len(req.Streams), len(wants), req.Streams)
	}
	for i, w := range wants {
		s := req.Streams[i]
		if s.Labels != w.labels {
			t.Errorf("stream %d labels %s, want %s", i, s.Labels, w.labels)
		}
		if len(s.Entries) != len(w.ids) {
			t.Fatalf("stream %d: %d entries, want %d", i, len(s.Entries), len(w.ids))
		}
		for j, e := range s.Entries {
			var rec journal.Record
			if err := json.Unmarshal([]byte(e.Line), &rec); err != nil {
				t.Fatalf("stream %d entry %d: line %q: %v", i, j, e.Line, err)
			}
			if rec.ID != w.ids[j] || !e.Timestamp.Equal(w.ts[j]) {
				t.Errorf("stream %d entry %d = record %d at %s, want %d at %s", i, j, rec.ID, e.Timestamp, w.ids[j], w.ts[j])
			}
		}
	}
}
