// Command caretaker-agent is the agent alone: what `caretaker agent` runs,
// with the same flags, in a binary that links neither the server nor the
// embedded Prometheus (its TSDB, scrape, rules, and their cloud SDKs), so
// that it stays small in memory on every host.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"caretaker/internal/agentcmd"
	"caretaker/internal/logflags"
	"caretaker/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd(os.Stdout, os.Stderr).ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "caretaker-agent:", err)
		os.Exit(1)
	}
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	logs := logflags.New()
	root := agentcmd.New("caretaker-agent", logs.Logger)
	root.SilenceUsage, root.SilenceErrors = true, true
	root.SetOut(stdout)
	root.SetErr(stderr)
	logs.Register(root.PersistentFlags())
	root.AddCommand(version.Command("caretaker-agent", root))
	return root
}
