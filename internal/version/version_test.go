package version

import (
	"bytes"
	"runtime"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestGetDefaults(t *testing.T) {
	defer func(v, c string) { Version, Commit = v, c }(Version, Commit)
	Version, Commit = "", "abc123"
	i := Get()
	if i.Version != "dev" || i.Commit != "abc123" || i.GoVersion != runtime.Version() {
		t.Fatalf("Get() = %+v", i)
	}
	if got, want := i.String(), "dev (commit abc123, "+runtime.Version()+")"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}

func TestCommand(t *testing.T) {
	defer func(v, c string) { Version, Commit = v, c }(Version, Commit)
	Version, Commit = "v1.2.3-4-gabcdef0", "abcdef0123"
	want := "tool v1.2.3-4-gabcdef0 (commit abcdef0123, " + runtime.Version() + ")\n"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		root := &cobra.Command{Use: "tool", RunE: func(*cobra.Command, []string) error { return nil }}
		root.AddCommand(Command("tool", root))
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(args)
		if err := root.Execute(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if out.String() != want {
			t.Errorf("%s: %q, want %q", strings.Join(args, " "), out.String(), want)
		}
	}
}
