// Command caretaker-agent is the agent alone: what `caretaker agent` runs,
// with the same flags, in a binary that links neither the server nor the
// embedded Prometheus (its TSDB, scrape, rules, and their cloud SDKs), so
// that it stays small in memory on every host.
package main

// #include <malloc.h>
// #include <stdlib.h>
//
// // Before the Go runtime starts a thread: glibc gives each thread that
// // first calls malloc an arena of its own (up to 8 per core), and
// // libvirt's C allocations run on whichever threads cgo calls run on —
// // seven arenas of a few hundred KiB each here. Two are plenty for the
// // agent; MALLOC_ARENA_MAX in the environment wins.
// __attribute__((constructor)) static void caretaker_agent_arenas(void) {
// 	if (getenv("MALLOC_ARENA_MAX") == NULL)
// 		mallopt(M_ARENA_MAX, 2);
// }
import "C"

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
