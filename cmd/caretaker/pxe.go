package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"caretaker/internal/config"
	"caretaker/provisioner/pxe"
)

func newPXECmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pxe",
		Short: "Set up PXE boot on the provisioning network",
		Long: `The server serves iPXE scripts under /pxe/ (provisioner.pxe in its
configuration); DHCP and TFTP on the PXE network are dnsmasq's, configured by
caretaker pxe dnsmasq.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newPXEDnsmasqCmd())
	return cmd
}

// dnsmasqFlags are the flags of `caretaker pxe dnsmasq`.
type dnsmasqFlags struct {
	iface, mode, dhcpRange, subnet string
	lease                          time.Duration
	tftpRoot, ipxeBinary           string
	bootURL, configFile            string
	output                         string
	check                          bool
}

func newPXEDnsmasqCmd() *cobra.Command {
	var f dnsmasqFlags
	cmd := &cobra.Command{
		Use:   "dnsmasq --interface IFACE --mode dhcp|proxy [flags]",
		Short: "Write the dnsmasq configuration that PXE-boots hosts into iPXE and the server",
		Long: `Writes a dnsmasq.conf for the PXE network: PXE ROMs get the iPXE binary
over TFTP from --tftp-root, and iPXE gets the server's chain script,
<provisioner.pxe.base_url>/pxe/boot.ipxe. DNS is off; dnsmasq answers only
DHCP and TFTP on --interface.

Run it on the host that runs dnsmasq on the PXE network. --mode dhcp makes
dnsmasq the network's DHCP server, leasing --range; --mode proxy leaves the
leases to the DHCP server the network has and adds only the boot
information, for --subnet.

The boot URL is --boot-url, or else comes from the server's configuration
file (--config.file), read locally. The configuration goes to stdout, or
to --output, replaced at once so dnsmasq never reads half a file; with
--check, dnsmasq --test must accept it first (a rejected one is not
written). Then: dnsmasq --keep-in-foreground --conf-file=FILE.`,
		Example: `  # dnsmasq is the PXE network's DHCP server
  caretaker pxe dnsmasq --interface eth1 --mode dhcp \
    --range 192.168.50.100-192.168.50.200 --lease 12h \
    --boot-url http://192.168.50.1:9300/pxe/boot.ipxe \
    --check --output /etc/caretaker/dnsmasq.conf

  # beside the network's DHCP server; UEFI hosts; the boot URL from server.yml
  caretaker pxe dnsmasq --interface eth1 --mode proxy --subnet 192.168.50.0/24 \
    --ipxe-binary ipxe.efi --config.file /etc/caretaker/server.yml

  # the iPXE binaries in --tftp-root (Debian: apt-get install ipxe)
  mkdir -p /srv/tftp && cp /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/ipxe.efi /srv/tftp/

  # the configuration on stdout, checked by dnsmasq
  caretaker pxe dnsmasq --interface eth1 --mode proxy --subnet 192.168.50.0/24 \
    --boot-url http://192.168.50.1:9300/pxe/boot.ipxe --check`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := f.dnsmasqConfig(cmd)
			if err != nil {
				return err
			}
			var conf bytes.Buffer
			if err := pxe.RenderDnsmasq(&conf, d); err != nil {
				return err
			}
			return f.write(cmd.Context(), cmd.OutOrStdout(), conf.Bytes())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.iface, "interface", "", "the PXE network's interface on this host, e.g. eth1 (required)")
	fl.StringVar(&f.mode, "mode", "", "dhcp: dnsmasq leases --range; proxy: another DHCP server leases, dnsmasq adds the boot information for --subnet (required)")
	fl.StringVar(&f.dhcpRange, "range", "", "dhcp mode: the IPv4 addresses to lease, START-END, e.g. 192.168.50.100-192.168.50.200")
	fl.DurationVar(&f.lease, "lease", 0, "dhcp mode: the lease time, whole seconds, at least 2m (default dnsmasq's, 1h)")
	fl.StringVar(&f.subnet, "subnet", "", "proxy mode: the PXE network's IPv4 prefix, e.g. 192.168.50.0/24")
	fl.StringVar(&f.tftpRoot, "tftp-root", "/srv/tftp", "absolute path of the directory that holds --ipxe-binary, served over TFTP")
	fl.StringVar(&f.ipxeBinary, "ipxe-binary", "undionly.kpxe", "the iPXE that PXE ROMs load: undionly.kpxe (BIOS) or ipxe.efi (x86-64 UEFI)")
	fl.StringVar(&f.bootURL, "boot-url", "", "the chain script iPXE fetches (default: <provisioner.pxe.base_url of --config.file>/pxe/boot.ipxe)")
	fl.StringVar(&f.configFile, "config.file", "/etc/caretaker/server.yml", "the server's configuration file, for the boot URL when --boot-url is not given")
	fl.StringVarP(&f.output, "output", "o", "", "write the configuration to this file instead of stdout")
	fl.BoolVar(&f.check, "check", false, "check the configuration with dnsmasq --test first (needs dnsmasq)")
	_ = cmd.MarkFlagRequired("interface")
	_ = cmd.MarkFlagRequired("mode")
	return cmd
}

// dnsmasqConfig turns the flags into what RenderDnsmasq takes, refusing
// flags of the other mode: a --range that proxy mode would ignore is a
// mistake, and serving DHCP on a network that has a server is a worse one.
func (f *dnsmasqFlags) dnsmasqConfig(cmd *cobra.Command) (pxe.DnsmasqConfig, error) {
	d := pxe.DnsmasqConfig{Interface: f.iface, Mode: f.mode, TFTPRoot: f.tftpRoot, IPXEBinary: f.ipxeBinary}
	changed := cmd.Flags().Changed
	switch f.mode {
	case "dhcp":
		if changed("subnet") {
			return d, errors.New("--subnet is for --mode proxy; --mode dhcp leases --range")
		}
		r, err := parseRange(f.dhcpRange)
		if err != nil {
			return d, err
		}
		d.Range, d.Range.Lease = r, f.lease
	case "proxy":
		if changed("range") || changed("lease") {
			return d, errors.New("--range and --lease are for --mode dhcp; --mode proxy leaves the leases to the network's DHCP server and needs --subnet")
		}
		if f.subnet == "" {
			return d, errors.New("--mode proxy needs --subnet, the PXE network's IPv4 prefix, e.g. 192.168.50.0/24")
		}
		p, err := netip.ParsePrefix(f.subnet)
		if err != nil {
			return d, fmt.Errorf("--subnet %q: want an IPv4 prefix such as 192.168.50.0/24", f.subnet)
		}
		d.Subnet = p
	default:
		return d, fmt.Errorf("--mode %q: want dhcp (dnsmasq leases --range) or proxy (beside the network's DHCP server, for --subnet)", f.mode)
	}
	var err error
	d.HTTPBootURL, err = f.resolveBootURL()
	return d, err
}

// parseRange parses START-END.
func parseRange(s string) (pxe.DHCPRange, error) {
	if s == "" {
		return pxe.DHCPRange{}, errors.New("--mode dhcp needs --range START-END, the addresses dnsmasq leases, e.g. 192.168.50.100-192.168.50.200")
	}
	start, end, ok := strings.Cut(s, "-")
	a, aerr := netip.ParseAddr(strings.TrimSpace(start))
	b, berr := netip.ParseAddr(strings.TrimSpace(end))
	if !ok || aerr != nil || berr != nil {
		return pxe.DHCPRange{}, fmt.Errorf("--range %q: want START-END, e.g. 192.168.50.100-192.168.50.200", s)
	}
	return pxe.DHCPRange{Start: a, End: b}, nil
}

// resolveBootURL returns --boot-url, or the chain script of the server
// whose configuration --config.file holds.
func (f *dnsmasqFlags) resolveBootURL() (string, error) {
	if f.bootURL != "" {
		return f.bootURL, nil
	}
	cfg, err := config.Load(f.configFile)
	if err != nil {
		return "", fmt.Errorf("no --boot-url, and the server's configuration (--config.file) gives none: %w", err)
	}
	if cfg.Provisioner.PXE.BaseURL == "" {
		return "", fmt.Errorf("no --boot-url, and %s sets no provisioner.pxe.base_url", f.configFile)
	}
	return pxe.BootScriptURL(cfg.Provisioner.PXE.BaseURL), nil
}

// write checks conf if asked to, then writes it to --output, replacing
// the file at once, or to stdout.
func (f *dnsmasqFlags) write(ctx context.Context, stdout io.Writer, conf []byte) error {
	dir := os.TempDir()
	if f.output != "" {
		dir = filepath.Dir(f.output)
	} else if !f.check {
		_, err := stdout.Write(conf)
		return err
	}
	tmp, err := os.CreateTemp(dir, ".dnsmasq-*.conf")
	if err != nil {
		return fmt.Errorf("write dnsmasq config: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if _, err := tmp.Write(conf); err != nil {
		tmp.Close()
		return fmt.Errorf("write dnsmasq config: %w", err)
	}
	if err := errors.Join(tmp.Chmod(0o644), tmp.Close()); err != nil {
		return fmt.Errorf("write dnsmasq config: %w", err)
	}
	if f.check {
		if err := checkDnsmasq(ctx, tmp.Name()); err != nil {
			return err
		}
	}
	if f.output == "" {
		_, err := stdout.Write(conf)
		return err
	}
	if err := os.Rename(tmp.Name(), f.output); err != nil {
		return fmt.Errorf("write dnsmasq config: %w", err)
	}
	return nil
}

// checkDnsmasq runs dnsmasq --test on the configuration at path.
func checkDnsmasq(ctx context.Context, path string) error {
	bin, err := lookDnsmasq()
	if err != nil {
		return fmt.Errorf("--check: dnsmasq is not installed (Debian: apt-get install dnsmasq): %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--test", "--conf-file="+path).CombinedOutput()
	if err != nil {
		const limit = 4 << 10
		if len(out) > limit {
			out = out[:limit]
		}
		return fmt.Errorf("--check: dnsmasq --test rejects the configuration (%w): %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// lookDnsmasq finds dnsmasq on PATH or in /usr/sbin, which a user's PATH
// may lack.
func lookDnsmasq() (string, error) {
	bin, err := exec.LookPath("dnsmasq")
	if err == nil {
		return bin, nil
	}
	if bin, serr := exec.LookPath("/usr/sbin/dnsmasq"); serr == nil {
		return bin, nil
	}
	return "", err
}
