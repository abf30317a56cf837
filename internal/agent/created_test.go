package agent

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"caretaker/internal/agentapi"
)

func TestOwns(t *testing.T) {
	t.Parallel()
	filtered := &Agent{cfg: Config{DomainFilter: regexp.MustCompile(`^lab-host-a-\d+$`)}}
	filtered.created.add("c1-workers-1")
	filtered.created.add("c1-masters-0")
	filtered.created.remove("c1-masters-0")
	for _, tt := range []struct {
		a    *Agent
		name string
		want bool
	}{
		{filtered, "lab-host-a-1", true},
		{filtered, "lab-host-b-1", false},
		{filtered, "c1-workers-1", true},
		{filtered, "c1-workers-10", false},
		{filtered, "c1-masters-0", false}, // deleted
		{&Agent{}, "anything", true},      // no filter: every domain
	} {
		if got := tt.a.owns(tt.name); got != tt.want {
			t.Errorf("owns(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// A node the agent created is its own in the actions API and in /metrics
// although its name is not the domain filter's, until it is deleted.
func TestCreatedNodesAreOwned(t *testing.T) {
	t.Parallel()
	a := newTestAgent(t, Config{Token: token, DomainFilter: regexp.MustCompile(`^up$`)})
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	c := agentapi.NewClient(srv.URL, token, srv.Client())
	scrape := func() string {
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Body.String()
	}
	const downInfo = `domain="down"`

	for _, step := range []struct {
		what     string
		change   func()
		wantGet  int
		inScrape bool
	}{
		{"before", func() {}, http.StatusNotFound, false},
		{"created", func() { a.created.add("down") }, http.StatusOK, true},
		{"deleted", func() { a.created.remove("down") }, http.StatusNotFound, false},
	} {
		step.change()
		_, err := c.Domain(t.Context(), downUUID)
		var se *agentapi.StatusError
		switch {
		case step.wantGet == http.StatusOK && err != nil:
			t.Errorf("%s: Domain(down): %v, want it found", step.what, err)
		case step.wantGet != http.StatusOK && (!errors.As(err, &se) || se.Code != step.wantGet):
			t.Errorf("%s: Domain(down): %v, want %d", step.what, err, step.wantGet)
		}
		if got := strings.Contains(scrape(), downInfo); got != step.inScrape {
			t.Errorf("%s: /metrics has %s: %v, want %v", step.what, downInfo, got, step.inScrape)
		}
		if !strings.Contains(scrape(), `domain="up"`) {
			t.Errorf("%s: /metrics lacks the filter's domain up", step.what)
		}
	}
}
