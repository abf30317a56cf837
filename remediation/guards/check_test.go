package guards

import (
	"encoding/json"
	"slices"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	c := Candidate{Action: "restart-vm", Target: "vm-1", Host: "h1", HostLabels: map[string]string{"rack": "r1"}}
	freeze, err := NewWindow("freeze", Freeze, "0 0 * * *", 24*time.Hour, "rack=r1")
	if err != nil {
		t.Fatal(err)
	}
	open := BreakerState{Open: true, Why: "7 of 10 targets unhealthy (threshold 40%)"}
	pause := Pause{Target: "vm-1", Author: "ana", Comment: "debugging", Until: at(time.Hour)}
	approved := &Approval{State: Approved, Author: "bo", Comment: "go", Decided: t0}
	tests := []struct {
		name    string
		in      Inputs
		verdict Verdict
		execute bool
		reason  string
		refused []string // guards that did not allow, in order
	}{
		{"all clear", Inputs{}, Allow, true, "allowed: restart-vm on vm-1 passed all 8 guards", nil},
		{"pause first of several", Inputs{Pauses: Pauses{pause}, Breaker: open, MaxInFlight: 1, InFlight: 1}, Wait, false,
			"waiting: vm-1 paused by ana until 2026-03-29T02:00:00Z: debugging",
			[]string{GuardPause, GuardBreaker, GuardConcurrency}},
		{"window", Inputs{Windows: Windows{freeze}}, Wait, false,
			`waiting: freeze "freeze" (0 0 * * * for 24h) over hosts with rack=r1 until 2026-03-30T00:00:00Z`, []string{GuardWindow}},
		{"breaker", Inputs{Breaker: open}, Skip, false,
			"skipped: circuit breaker open, 7 of 10 targets unhealthy (threshold 40%)", []string{GuardBreaker}},
		{"dependency", Inputs{UnhealthyHosts: map[string]string{"h1": "unreachable"}}, Skip, false,
			"skipped: host h1 is unreachable: the host is handled first", []string{GuardDependency}},
		{"escalate", Inputs{Target: TargetPolicy{MaxAttempts: 1, Window: time.Hour}, History: TargetHistory{Attempts: []Attempt{{At: t0, Outcome: Failed}}}},
			Escalate, false, "escalate: 1 attempt on vm-1 within 1h (limit 1)", []string{GuardTarget}},
		{"rate", Inputs{Rate: RateLimit{Max: 1, Per: time.Hour}, Starts: []time.Time{t0}}, Wait, false,
			"waiting: restart-vm started 1 time in the last 1h (limit 1), next at 2026-03-29T02:00:00Z", []string{GuardRate}},
		{"needs approval", Inputs{NeedsApproval: true}, Wait, false,
			"waiting: the action needs approval; none requested yet", []string{GuardApproval}},
		{"approved", Inputs{NeedsApproval: true, Approval: approved}, Allow, true, "allowed: restart-vm on vm-1 passed all 8 guards", nil},
		{"dry run allowed", Inputs{DryRun: true}, Allow, false, "dry-run: not executed; allowed: restart-vm on vm-1 passed all 8 guards", nil},
		{"dry run refused", Inputs{DryRun: true, Breaker: open}, Skip, false,
			"dry-run: not executed; skipped: circuit breaker open, 7 of 10 targets unhealthy (threshold 40%)", []string{GuardBreaker}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Check(c, tt.in, at(30*time.Minute))
			if r.Verdict != tt.verdict || r.Execute != tt.execute || r.Reason != tt.reason {
				t.Fatalf("got %s execute=%v %q\nwant %s execute=%v %q", r.Verdict, r.Execute, r.Reason, tt.verdict, tt.execute, tt.reason)
			}
			var guards, refused []string
			for _, d := range r.Decisions {
				guards = append(guards, d.Guard)
				if d.Reason == "" {
					t.Errorf("%s: no reason", d.Guard)
				}
				if !d.Allowed() {
					refused = append(refused, d.Guard)
				}
			}
			if !slices.Equal(guards, Order()) {
				t.Errorf("guards %v, want %v", guards, Order())
			}
			if !slices.Equal(refused, tt.refused) {
				t.Errorf("refused %v, want %v", refused, tt.refused)
			}
			if _, err := json.Marshal(r); err != nil {
				t.Errorf("marshal result: %v", err)
			}
		})
	}
}
