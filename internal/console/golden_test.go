package console

import (
	"flag"
	"path/filepath"
	"regexp"
	"testing"

	"caretaker/internal/golden"
)

var update = flag.Bool("update", false, "rewrite the golden pages in testdata/")

// scrub replaces what differs between runs in a page: the session's CSRF
// token and the static files' versions.
func scrub(body string) []byte {
	body = regexp.MustCompile(`name="csrf" value="[^"]*"`).ReplaceAllString(body, `name="csrf" value="CSRF"`)
	body = regexp.MustCompile(`\?v=[0-9a-f]{12}`).ReplaceAllString(body, "?v=VERSION")
	return []byte(body)
}

// Whole pages at a fixed time, as a viewer and as an operator see them.
func TestGoldenPages(t *testing.T) {
	f := newFixture(t, fixtureOptions{now: start})
	viewer, operator := f.browser(), f.browser()
	viewer.signIn("vera")
	operator.signIn("otto")
	for _, tc := range []struct {
		file string
		b    *browser
		path string
	}{
		{"fleet.golden.html", viewer, "/console/?host=hv-1"},
		{"record.golden.html", viewer, "/console/actions/1"},
		{"remediation.golden.html", operator, "/console/remediation"},
	} {
		p := tc.b.get(tc.path)
		if p.code != 200 {
			t.Fatalf("GET %s: %d", tc.path, p.code)
		}
		golden.Compare(t, filepath.Join("testdata", tc.file), scrub(p.body), *update)
	}
}
