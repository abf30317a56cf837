// Command mkdeb writes caretaker's Debian packages (see package debpkg):
//
//	go run ./internal/debpkg/mkdeb --bin bin --out bin/pkg --version "$(git describe --tags --always --dirty)" --date 20260101120000
//
// It prints the path of each .deb it wrote. `make package` runs it.
package main

import (
	"flag"
	"fmt"
	"os"

	"caretaker/internal/debpkg"
)

func main() {
	var b debpkg.Build
	var describe, date string
	flag.StringVar(&b.Bin, "bin", "bin", "directory holding caretaker, caretaker-agent and runbook")
	flag.StringVar(&b.Root, "root", ".", "the repository (deploy/, README.md)")
	flag.StringVar(&b.Out, "out", "bin/pkg", "directory to write the .deb files to")
	flag.StringVar(&describe, "version", "dev", "git describe --tags --always --dirty")
	flag.StringVar(&date, "date", "", "the commit's time, YYYYMMDDhhmmss (orders untagged builds)")
	flag.Parse()
	v, err := debpkg.DebianVersion(describe, date)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkdeb:", err)
		os.Exit(1)
	}
	b.Version = v
	paths, err := b.Write()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkdeb:", err)
		os.Exit(1)
	}
	for _, p := range paths {
		fmt.Println(p)
	}
}
