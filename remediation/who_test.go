package remediation

import (
	"context"
	"strings"
	"testing"

	"caretaker/remediation/guards"
	"caretaker/remediation/policy"
)

// A manual run and an approval keep the token's name and role as the
// author, and what the request named only as "on behalf of": in the
// record, the approval and the notes.
func TestAuthorIsTheIdentity(t *testing.T) {
	f := newFixture(t, withPolicy(t, approvalPolicy))
	crash(t, f.hosts)
	f.handle(crashedAlert())
	r := f.only(t)
	got, err := f.engine.Answer(r.ID, false, guards.Who{Name: "olga", Role: "operator", OnBehalfOf: "alice"}, "not now")
	if err != nil {
		t.Fatal(err)
	}
	if last := got.Transitions[len(got.Transitions)-1].Note; !strings.Contains(last, "denied by olga (operator) on behalf of alice: not now") {
		t.Errorf("denial note = %q", last)
	}

	rec, err := f.engine.Run(context.Background(), ManualRequest{Action: policy.ActionRestartVM, Target: testHost + "/" + testUUID,
		Author: "olga", AuthorRole: "operator", OnBehalfOf: "alice", Comment: "bring it back", DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Author != "olga" || rec.AuthorRole != "operator" || rec.OnBehalfOf != "alice" ||
		!strings.Contains(rec.Reason, "asked by olga (operator) on behalf of alice") {
		t.Errorf("manual record: author %q role %q on behalf of %q, reason %q", rec.Author, rec.AuthorRole, rec.OnBehalfOf, rec.Reason)
	}
}
