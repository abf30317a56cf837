// Package version is what a caretaker binary says about its build: the
// version (git describe), the git commit and the Go version. `make build`
// sets Version, Commit and Date with
//
//	go build -ldflags "-X caretaker/internal/version.Version=… -X caretaker/internal/version.Commit=… -X caretaker/internal/version.Date=…"
//
// A plain `go build` leaves them "dev", "" and "": the commit then comes
// from the build information Go records when it builds inside a git work
// tree, where it can.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set at build time with -ldflags -X (strings only).
var (
	// Version is `git describe --tags --always --dirty`, "dev" when unset.
	Version = "dev"
	// Commit is the full git commit hash.
	Commit = ""
	// Date is the commit's time, UTC, as YYYYMMDDhhmmss (what the Debian
	// packages' development versions are ordered by).
	Date = ""
)

// Info is a binary's build.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	Date      string `json:"date,omitempty"`
	GoVersion string `json:"go_version"`
}

// Get returns this binary's build.
func Get() Info {
	i := Info{Version: Version, Commit: Commit, Date: Date, GoVersion: runtime.Version()}
	if i.Version == "" {
		i.Version = "dev"
	}
	if i.Commit == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					i.Commit = s.Value
				}
			}
		}
	}
	return i
}

// String is the one line `caretaker version` prints:
//
//	caretaker 570bc08-dirty (commit 570bc08…, go1.26.8)
func (i Info) String() string {
	commit := i.Commit
	if commit == "" {
		commit = "unknown"
	}
	return fmt.Sprintf("%s (commit %s, %s)", i.Version, commit, i.GoVersion)
}
