// Package agentcmd is the agent's command line, shared by `caretaker agent`
// and the lean `caretaker-agent` binary, which links neither the server nor
// the embedded Prometheus.
package agentcmd

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"caretaker/collectors/kvm"
	"caretaker/internal/agent"
	"caretaker/internal/config"
)

// New returns the agent's command. invocation is how it is run — "caretaker
// agent" or "caretaker-agent": its last word is the command's name and the
// examples use all of it. newLogger makes the logger from the log flags.
func New(invocation string, newLogger func(io.Writer) *slog.Logger) *cobra.Command {
	words := strings.Fields(invocation)
	var (
		cfg        agent.Config
		tokenFile  string
		configFile string
	)
	cmd := &cobra.Command{
		Use:   words[len(words)-1],
		Short: "Serve this host's metrics and host-local actions",
		Long: `The agent runs on every hypervisor host. It serves /metrics from three
collectors — host (procfs: CPU, memory, pressure, disks, filesystems,
network, KVM commitment), kvm (every defined libvirt domain with its state,
the reason for it, and its resources) and overlay (VXLAN devices, bridges,
FDB and neighbour entries, checked against --config.file) — and host-local
actions for the server (start a domain, create and delete guest-cluster
nodes in --guests.pool, make, repair and remove VXLAN overlays), which need
the server's bearer token. /metrics?collect[]=kvm selects collectors.`,
		Example: fmt.Sprintf(`  %[1]s
  %[1]s --libvirt.uri qemu:///system --action.token-file /etc/caretaker/agent.token
  %[1]s --config.file /etc/caretaker/agent.yml --web.config.file /etc/caretaker/web.yml
  curl -s 'localhost:9301/metrics?collect[]=kvm'`, invocation),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tuneMemory()
			logger := newLogger(cmd.ErrOrStderr())
			if tokenFile != "" {
				t, err := config.ReadSecret(tokenFile)
				if err != nil {
					return err
				}
				cfg.Token = t
			}
			if configFile != "" {
				f, err := agent.LoadFile(configFile)
				if err != nil {
					return err
				}
				cfg.Overlays, cfg.NeighborStaleAfter = f.Overlays, f.NeighborStaleAfter
				cfg.OverlayRepairs = f.Overlays
			}
			cfg.Logger = logger
			a, err := agent.New(cfg)
			if err != nil {
				return err
			}
			defer a.Close()
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ListenAddress, "web.listen-address", ":9301", "address to serve /metrics and actions on")
	f.StringVar(&cfg.WebConfigFile, "web.config.file", "", "exporter-toolkit web config file (TLS, basic auth)")
	f.StringVar(&cfg.LibvirtURI, "libvirt.uri", "qemu:///system", "libvirt URI of this host's libvirtd, spoken to over its unix socket: driver:///path or driver+unix:///path[?socket=/path]; remote transports are refused")
	f.DurationVar(&cfg.LibvirtTimeout, "libvirt.timeout", kvm.DefaultLibvirtTimeout, "longest a scrape, or an action's look-up, waits on libvirt: a frozen libvirtd gives caretaker_kvm_up 0 and actions 503, not a hung agent")
	f.DurationVar(&cfg.ScrapeTimeout, "scrape.timeout", 10*time.Second, "longest a collector may take in one scrape")
	f.StringVar(&configFile, "config.file", "", "agent configuration file: the overlays this host should have (see deploy/agent.example.yml)")
	f.StringVar(&cfg.ProcFS, "path.procfs", "/proc", "procfs mount point")
	f.StringVar(&cfg.SysFS, "path.sysfs", "/sys", "sysfs mount point")
	f.StringVar(&cfg.RootFS, "path.rootfs", "/", "the host's root filesystem (when the agent runs in a container): mount points are statted and dev/kvm is looked up under it")
	f.StringVar(&cfg.NetNS, "path.netns", "", "network namespace the overlay collector reads, e.g. /var/run/netns/host (default: the agent's own)")
	f.StringVar(&cfg.GuestPool, "guests.pool", agent.DefaultGuestPool, "libvirt storage pool (directory pool with the base images) for guest nodes' disks")
	f.StringVar(&cfg.GuestDomainType, "guests.domain-type", agent.DefaultGuestDomainType, "domain type of guest nodes: kvm, or qemu (TCG) where /dev/kvm is not usable; qemu also declares that the host needs no /dev/kvm (caretaker_host_kvm_required 0)")
	f.IntVar(&cfg.GuestMaxVCPUs, "guests.max-vcpus", 0, "most vCPUs a guest node may ask for (0: the host's CPUs)")
	f.Uint64Var(&cfg.GuestMaxMemoryBytes, "guests.max-memory-bytes", 0, "most memory a guest node may ask for, in bytes (0: the host's memory)")
	f.Uint64Var(&cfg.GuestMaxDiskBytes, "guests.max-disk-bytes", agent.DefaultGuestMaxDiskBytes, "largest disk a guest node may ask for, in bytes")
	f.StringVar(&cfg.StateDir, "state.dir", "", "directory the agent keeps what must outlive a restart in: the highest leader epoch it has seen (clustered servers); empty keeps it in memory")
	f.StringVar(&tokenFile, "action.token-file", "", "file holding the server's bearer token for actions")
	return cmd
}
