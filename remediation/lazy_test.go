package remediation

import (
	"testing"
	"time"

	"caretaker/remediation/journal"
)

// A rule evaluation or a tick with nothing to record writes nothing: no
// write transaction, no fsync, no journal lock held on the rule goroutine.
func TestNothingToWriteCommitsNothing(t *testing.T) {
	f := newFixture(t)
	crash(t, f.hosts)
	f.handle(crashedAlert())
	if r := f.only(t); r.State != journal.StateSucceeded {
		t.Fatalf("record is %s, want succeeded", r.State)
	}
	before := f.journal.PagesWritten()

	f.clock.Advance(time.Minute)
	f.handle(crashedAlert()) // re-sent by the next evaluation: handled already
	unmatched := crashedAlert()
	unmatched.Labels = map[string]string{"alertname": "NoRuleForThis"}
	unmatched.Name = "NoRuleForThis"
	f.handle(unmatched)
	f.tick()
	f.handle() // an evaluation with no alerts at all

	if n := f.journal.PagesWritten() - before; n != 0 {
		t.Errorf("evaluations and a tick with nothing to record wrote %d journal pages", n)
	}
	if n := len(f.records(t)); n != 1 {
		t.Errorf("journal holds %d records, want 1", n)
	}
}
