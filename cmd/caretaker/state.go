package main

import (
	"github.com/spf13/cobra"

	"caretaker/internal/config"
	"caretaker/internal/server"
)

func newStateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "state",
		Short: "Move a server's durable state",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newStateImportCmd())
	return cmd
}

func newStateImportCmd() *cobra.Command {
	var configFile, from string
	cmd := &cobra.Command{
		Use:   "import",
		Short: "Copy a single server's state (bbolt files) into the etcd of a cluster",
		Long: `A single server keeps its journal, webhook inbox, inventory, host states
and guest clusters in bbolt files in its data directory. Clustered servers
keep them in etcd. Stop the single server, add the cluster section to its
server.yml, then import its data directory once, before any clustered
server starts: the etcd prefix must be empty. Then start the servers.`,
		Example: `  systemctl stop caretaker-server
  caretaker state import --config.file /etc/caretaker/server.yml --from /var/lib/caretaker
  systemctl start caretaker-server`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(configFile)
			if err != nil {
				return err
			}
			if from == "" {
				from = cfg.Path(cfg.DataDir)
			}
			return server.ImportState(cfg, from, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config.file", "/etc/caretaker/server.yml", "server configuration file with the cluster section to import into")
	f.StringVar(&from, "from", "", "data directory of the single server (default: the configuration's data_dir)")
	return cmd
}
