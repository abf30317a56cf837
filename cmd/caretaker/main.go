// Command caretaker is the appliance: `caretaker agent` on every host,
// `caretaker server` centrally, and `caretaker lab` to try both on one
// machine.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/common/promslog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
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
	logs := &logFlags{level: promslog.NewLevel(), format: promslog.NewFormat()}
	_ = logs.format.Set("logfmt")
	root := &cobra.Command{
		Use:   "caretaker",
		Short: "Monitoring-first observability and self-healing for KVM fleets",
		Long: `caretaker watches bare-metal hosts, their KVM guests and their overlays,
turns what it sees into Prometheus alerts, and heals what breaks.

  caretaker agent    on every host: /metrics and host-local actions
  caretaker server   centrally: embedded Prometheus, alert rules, remediation, API
  caretaker lab      both on one machine, with guests to break (make run)
  caretaker pxe      on the PXE network: the dnsmasq configuration that boots hosts
  caretaker certs    a small CA and the TLS certificates of the server and agents`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.Var(&flagValue{logs.level, "level"}, "log.level", "log level: debug, info, warn or error")
	pf.Var(&flagValue{logs.format, "format"}, "log.format", "log format: logfmt or json")
	root.AddCommand(newAgentCmd(logs), newServerCmd(logs), newLabCmd(logs), newPXECmd(), newCertsCmd(), newStateCmd())
	return root
}

type logFlags struct {
	level  *promslog.Level
	format *promslog.Format
}

func (l *logFlags) logger(w io.Writer) *slog.Logger {
	return promslog.New(&promslog.Config{Level: l.level, Format: l.format, Writer: w})
}

// flagValue adapts promslog's flag values to pflag.
type flagValue struct {
	v interface {
		String() string
		Set(string) error
	}
	typ string
}

func (f *flagValue) String() string     { return f.v.String() }
func (f *flagValue) Set(s string) error { return f.v.Set(s) }
func (f *flagValue) Type() string       { return f.typ }

var _ pflag.Value = (*flagValue)(nil)
