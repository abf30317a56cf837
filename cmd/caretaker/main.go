// Command caretaker is the appliance: `caretaker agent` on every host,
// `caretaker server` centrally, and `caretaker lab` to try both on one
// machine.
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
		fmt.Fprintln(os.Stderr, "caretaker:", err)
		os.Exit(1)
	}
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	logs := logflags.New()
	root := &cobra.Command{
		Use:   "caretaker",
		Short: "Monitoring-first observability and self-healing for KVM fleets",
		Long: `caretaker watches bare-metal hosts, their KVM guests and their overlays,
turns what it sees into Prometheus alerts, and heals what breaks.

  caretaker agent    on every host: /metrics and host-local actions (the
                     lean caretaker-agent binary runs the same)
  caretaker server   centrally: embedded Prometheus, alert rules, remediation, API
  caretaker lab      both on one machine, with guests to break (make run)
  caretaker pxe      on the PXE network: the dnsmasq configuration that boots hosts
  caretaker certs    a small CA and the TLS certificates of the server and agents`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	logs.Register(root.PersistentFlags())
	root.AddCommand(agentcmd.New("caretaker agent", logs.Logger), newServerCmd(logs), newLabCmd(logs), newPXECmd(), newCertsCmd(), newStateCmd())
	root.AddCommand(version.Command("caretaker", root))
	return root
}
