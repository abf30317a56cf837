package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"caretaker/internal/lab"
	"caretaker/internal/logflags"
)

func newLabCmd(logs *logflags.Flags) *cobra.Command {
	o := lab.DefaultOptions()
	home, _ := os.UserHomeDir()
	o.RunbookConfig = filepath.Join(home, ".config", "runbook", "config.yml")
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run a server and two hosts' agents with small guests on this machine",
		Long: `The lab is caretaker's embedded default: on one machine, with no
configuration, it starts a server and the agents of two hosts, each with a
few small guests named lab-<host>-<n>, and keeps running until Ctrl-C, which
removes what it created.

Where libvirtd with QEMU is installed (Debian: libvirt-daemon-system and
qemu-system-x86) the guests are real QEMU guests; as root the lab starts
libvirtd if it is not running. Otherwise every host uses libvirt's test
driver, in memory, in a libvirtd the lab starts for it (the package
libvirt-daemon is needed), and the lab says so.

As root with QEMU, every host is a network namespace on a shared underlay
(agents on 10.198.X.0/24, VXLAN on 10.199.X.0/24); the guests (96 MiB)
boot Debian's kernel with a busybox initramfs (deploy/setup.sh run
fetches them), take an address in 10.77.0.0/16 and answer ping and HTTP;
the lab's clusters lab and lab-b have a VXLAN overlay across the hosts;
and each host has an IPMI BMC (ipmi_sim) through which the server can
power-cycle and reinstall it over PXE.

Kill a guest's qemu process or virsh destroy it, and the lab restarts it
with no human action; runbook (configured by the lab) shows what happened.

With QEMU guests, as root, the hosts can also take guest clusters:
runbook cluster create places one node per host (nodes of 64 MiB fit), in a
storage pool of 64 MiB base image the lab makes (the nodes boot no OS),
each host's overlay in its namespace. Ctrl-C removes the nodes too.

With --servers 2 to 5, the servers are ` + "`caretaker server`" + ` processes that
share their state in an etcd the lab runs as a process too (Debian's
etcd-server; without it the lab builds one into the user's cache
directory, which takes minutes): one leads and acts, the others monitor.
They serve on --web.listen-address's port and the ones after it, each
logging to <data.dir>/server-sN.log. Kill the leader (runbook status shows
it; the lab prints its pid) and another leads within the lease TTL and a
second or two; the lab starts the killed one again after 2 s.`,
		Example: `  caretaker lab
  caretaker lab --guests-per-host 5
  caretaker lab --hosts 6 --guests-per-host 0   # room for a 6-node cluster
  caretaker lab --driver test --web.listen-address 127.0.0.1:9400
  caretaker lab --data.dir /var/lib/caretaker-lab   # keep the TSDB and journal
  caretaker lab --servers 3                         # three servers on etcd: try a failover
  caretaker lab --policy my-policy.yml              # e.g. rules that wait for an approval
  caretaker lab --chaos list                        # the faults the game day can inject
  caretaker lab --chaos all --servers 2             # game day: every fault, then a scoreboard (make chaos)
  caretaker lab --chaos qemu-kill,vxlan-delete -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Out = cmd.OutOrStdout()
			o.Logger = logs.Logger(cmd.ErrOrStderr())
			if o.Chaos != "" {
				return lab.GameDay(cmd.Context(), o, cmd.ErrOrStderr())
			}
			for _, f := range []string{"output", "chaos.hold"} {
				if cmd.Flags().Changed(f) {
					return fmt.Errorf("--%s is the game day's: use it with --chaos", f)
				}
			}
			return lab.Run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ListenAddress, "web.listen-address", o.ListenAddress, "address of the lab's server (API and /metrics)")
	f.IntVar(&o.Servers, "servers", o.Servers, "number of servers: 1 in the lab's process, or 2 to 5 server processes on an etcd, one leading")
	f.DurationVar(&o.LeaseTTL, "cluster.lease-ttl", o.LeaseTTL, "with --servers 2 or more: the leader's lease (whole seconds, at least 2s)")
	f.StringVar(&o.DataDir, "data.dir", "", "keep the TSDB, journal and tokens here (default: a temporary directory removed at exit)")
	f.StringVar(&o.Driver, "driver", o.Driver, "guests: auto (QEMU if libvirtd has it, else test), qemu or test")
	f.StringVar(&o.LibvirtURI, "libvirt.uri", o.LibvirtURI, "libvirtd for real QEMU guests")
	f.IntVar(&o.Hosts, "hosts", o.Hosts, "number of simulated hosts")
	f.IntVar(&o.GuestsPerHost, "guests-per-host", o.GuestsPerHost, "guests on each host (0-50)")
	f.BoolVar(&o.Clusters, "clusters", o.Clusters, "let runbook cluster create make guest clusters on the hosts (QEMU guests, as root)")
	f.StringVar(&o.GuestPrefix, "guest-prefix", o.GuestPrefix, "prefix of every guest's name (must start with lab-)")
	f.StringVar(&o.RunbookConfig, "runbook.config", o.RunbookConfig, "runbook config file to point at the lab (empty: leave runbook alone)")
	f.DurationVar(&o.ScrapeInterval, "scrape.interval", o.ScrapeInterval, "how often the server scrapes the agents")
	f.DurationVar(&o.EvaluationInterval, "evaluation.interval", o.EvaluationInterval, "how often the server evaluates alert rules")
	f.StringVar(&o.PolicyFile, "policy", "", "remediation policy file for the server (default: the embedded one, which restarts crashed guests)")
	f.BoolVar(&o.Events, "events", o.Events, "have the server follow the agents' libvirt event streams and heal at once (--events=false: only the rules, at the intervals)")
	f.StringVar(&o.Chaos, "chaos", "", "game day: inject these faults (NAME[,NAME…], all, or list to show them), print a scoreboard and stop")
	f.DurationVar(&o.ChaosHold, "chaos.hold", lab.DefaultChaosHold, "game day: how long libvirtd-stop keeps libvirtd stopped")
	f.StringVarP(&o.ChaosOutput, "output", "o", "table", "game day: scoreboard as table or json")
	return cmd
}
