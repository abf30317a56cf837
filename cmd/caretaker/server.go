package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"caretaker/internal/config"
	"caretaker/internal/logflags"
	"caretaker/internal/server"
)

func newServerCmd(logs *logflags.Flags) *cobra.Command {
	var o server.Options
	var configFile string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the central server: embedded Prometheus, alert rules, remediation, API",
		Long: `The server scrapes the agents named in its configuration file into an
on-disk TSDB, evaluates the alert rules (embedded; --rules.dir overrides
them), hands firing alerts to the remediation engine, which acts through the
agents and records every decision in its journal, and serves the API that
runbook uses.`,
		Example: `  caretaker server --config.file /etc/caretaker/server.yml
  caretaker server --config.file server.yml --rules.dir ./alerts --log.level debug`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(configFile)
			if err != nil {
				return err
			}
			o.Config = cfg
			o.Logger = logs.Logger(cmd.ErrOrStderr())
			s, err := server.New(cmd.Context(), o)
			if err != nil {
				return err
			}
			defer s.Close()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for range hup {
					// ReloadPolicy logs the outcome; a broken file keeps the old policy.
					_ = s.ReloadPolicy()
				}
			}()
			return s.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config.file", "/etc/caretaker/server.yml", "server configuration file")
	f.StringVar(&o.ListenAddress, "web.listen-address", "127.0.0.1:9300", "address to serve the API and /metrics on")
	f.StringVar(&o.WebConfigFile, "web.config.file", "", "exporter-toolkit web config file (TLS, basic auth)")
	f.StringVar(&o.RulesDir, "rules.dir", "", "directory of *.rules.yml files replacing the embedded alert rules")
	return cmd
}
