// Package alerts holds the Prometheus rule files that the server evaluates,
// embedded in the binary so a server needs no files to start.
package alerts

import (
	"embed"
	"io/fs"
)

//go:embed *.rules.yml
var rules embed.FS

// Rules returns the embedded rule files (*.rules.yml at the root).
func Rules() fs.FS { return rules }
