// Package alerts holds the Prometheus rule files that the server evaluates
// and the runbook page of every alert, embedded in the binaries so a server
// needs no files to start and `runbook explain` works anywhere.
package alerts

import (
	"embed"
	"fmt"
	"io/fs"
)

//go:embed *.rules.yml
var rules embed.FS

//go:embed runbooks/*.md
var runbooks embed.FS

// Rules returns the embedded rule files (*.rules.yml at the root).
func Rules() fs.FS { return rules }

// Runbook returns the runbook page of an alert (runbooks/<name>.md).
func Runbook(name string) ([]byte, error) {
	b, err := runbooks.ReadFile("runbooks/" + name + ".md")
	if err != nil {
		return nil, fmt.Errorf("no runbook page for alert %q: %w", name, err)
	}
	return b, nil
}
