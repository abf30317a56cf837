package lab

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"caretaker/internal/golden"
)

var updateRunbook = flag.Bool("update-runbook", false, "rewrite the runbook config golden files in testdata")

// The file the lab writes for runbook: url for one server (as ever),
// urls for several; the stop puts back what was there.
func TestRunbookConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		urls []string
	}{
		{"one", []string{"http://127.0.0.1:9300"}},
		{"three", []string{"http://127.0.0.1:9300", "http://127.0.0.1:9310", "http://127.0.0.1:9320"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "runbook", "config.yml")
			const before = "url: http://mine:9300\ntoken_file: /home/me/token\n"
			os.MkdirAll(filepath.Dir(path), 0o700)
			if err := os.WriteFile(path, []byte(before), 0o600); err != nil {
				t.Fatal(err)
			}
			restore, err := writeRunbookConfigURLs(path, tc.urls, "lab-token")
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			golden.Compare(t, "testdata/runbook-"+tc.name+".yml", got, *updateRunbook)
			if err := restore(); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(path); string(b) != before {
				t.Errorf("after the stop the file holds %q, want %q back", b, before)
			}
		})
	}
	if _, err := writeRunbookConfigURLs(filepath.Join(t.TempDir(), "c.yml"), nil, "t"); err == nil {
		t.Error("no URL: want an error")
	}
}
