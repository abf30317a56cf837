package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"caretaker/internal/api"
	"caretaker/internal/yamlfile"
	"caretaker/provisioner/bmc"
	"caretaker/provisioner/hoststate"
	"caretaker/provisioner/inventory"
)

func newHostCmd(o *options, getenv func(string) string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "host",
		Short: "The bare-metal hosts: inventory and provisioning",
		Long: `The inventory is the hosts of the server's inventory file and those added
through the API; the provisioner drives each one through registered →
powering-on → pxe-booting → installing → ready (or failed). Reading needs a
viewer token; adding, removing and (re)provisioning need an admin token.`,
		Example: `  runbook host list
  runbook host show host-a
  runbook host add -f host-c.yml
  runbook host reprovision host-a -m "disk replaced"`,
	}
	cmd.AddCommand(newHostListCmd(o, getenv), newHostShowCmd(o, getenv), newHostAddCmd(o, getenv),
		newHostRemoveCmd(o, getenv), newHostProvisionCmd(o, getenv, false), newHostProvisionCmd(o, getenv, true))
	return cmd
}

// hostRow is a host of the inventory joined with its provisioning state;
// either may be missing.
type hostRow struct {
	Name         string                 `json:"name"`
	Inventory    *inventory.Host        `json:"inventory,omitempty"`
	Provisioning *hoststate.Host        `json:"provisioning,omitempty"`
	History      []hoststate.Transition `json:"history,omitempty"`
}

// noProvisioner reports whether err is the 404 of a server without a
// provisioner (or, for one host, one the provisioner does not track).
func noProvisioner(err error) bool {
	var se *api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// joinHosts pairs inventory hosts with their states, by name; a state with
// no inventory host (removed from the file) still gets a row.
func joinHosts(inv []inventory.Host, states []hoststate.Host) []hostRow {
	rows := make([]hostRow, 0, len(inv))
	byName := map[string]int{}
	for i := range inv {
		byName[inv[i].Name] = len(rows)
		rows = append(rows, hostRow{Name: inv[i].Name, Inventory: &inv[i]})
	}
	for i := range states {
		if j, ok := byName[states[i].Name]; ok {
			rows[j].Provisioning = &states[i]
			continue
		}
		rows = append(rows, hostRow{Name: states[i].Name, Provisioning: &states[i]})
	}
	return rows
}

func newHostListCmd(o *options, getenv func(string) string) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "Every host of the inventory with its provisioning state",
		Long: `Lists the inventory joined with the provisioner's state of each host. A
server without a provisioner shows the inventory only.`,
		Example: "  runbook host list\n  runbook host list -o json | jq '.hosts[] | select(.provisioning.state == \"failed\") | .name'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				inv, err := c.Hosts(ctx)
				if err != nil {
					return err
				}
				states, err := c.HostStates(ctx)
				withStates := true
				if noProvisioner(err) {
					withStates = false
					fmt.Fprintln(cmd.ErrOrStderr(), "runbook: the server has no provisioner (404): showing the inventory only")
				} else if err != nil {
					return err
				}
				rows := joinHosts(inv, states)
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), struct {
						Hosts []hostRow `json:"hosts"`
					}{rows})
				}
				return printHosts(cmd.OutOrStdout(), rows, withStates)
			})
		},
	}
}

func stateOf(h *hoststate.Host) string {
	if h == nil {
		return "-"
	}
	s := string(h.State)
	if h.Cordoned {
		s += ",cordoned"
	}
	return s
}

func printHosts(w io.Writer, rows []hostRow, withStates bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if withStates {
		fmt.Fprintln(tw, "NAME\tROLE\tSTATE\tMACS\tLABELS\tAGENT\tLAST ERROR")
	} else {
		fmt.Fprintln(tw, "NAME\tROLE\tMACS\tLABELS\tAGENT")
	}
	for _, r := range rows {
		role, macs, labels, agent := "(not in the inventory)", "-", "-", "-"
		if h := r.Inventory; h != nil {
			role, macs, labels, agent = h.Role, strings.Join(h.MACs, ","), formatLabels(h.Labels), h.Agent
		}
		if !withStates {
			printf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Name, role, macs, labels, agent)
			continue
		}
		lastErr := "-"
		if r.Provisioning != nil {
			lastErr = firstNonEmpty(oneLine(r.Provisioning.LastError), "-")
		}
		printf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, role, stateOf(r.Provisioning), macs, labels, agent, lastErr)
	}
	if len(rows) == 0 {
		fmt.Fprintln(tw, "(no hosts in the inventory)")
	}
	return tw.Flush()
}

func newHostShowCmd(o *options, getenv func(string) string) *cobra.Command {
	return &cobra.Command{
		Use:     "show NAME",
		Short:   "One host: its inventory entry, its provisioning state and its transitions",
		Example: "  runbook host show host-a\n  runbook host show host-a -o json | jq .history",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				h, err := c.Host(ctx, args[0])
				if err != nil {
					return err
				}
				row := hostRow{Name: h.Name, Inventory: &h}
				st, hist, err := c.HostState(ctx, args[0])
				switch {
				case noProvisioner(err):
				case err != nil:
					return err
				default:
					row.Provisioning, row.History = &st, hist
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), row)
				}
				return printHost(cmd.OutOrStdout(), row)
			})
		},
	}
}

func printHost(w io.Writer, r hostRow) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	h := r.Inventory
	rows := [][2]string{
		{"name", r.Name},
		{"role", h.Role},
		{"serial", firstNonEmpty(h.Serial, "-")},
		{"macs", strings.Join(h.MACs, " ") + " (PXE boots from the first)"},
		{"labels", formatLabels(h.Labels)},
		{"agent", h.Agent},
		{"bmc", h.BMC.Type + " " + h.BMC.Address + " user " + firstNonEmpty(h.BMC.Username, "-")},
		{"bmc password file", firstNonEmpty(h.BMC.PasswordFile, "-")},
	}
	if h.CPUs > 0 || h.MemoryBytes > 0 {
		cpus, mem := "CPUs from the agent", "memory from the agent" // 0: learnt from the agent
		if h.CPUs > 0 {
			cpus = fmt.Sprintf("%d CPUs", h.CPUs)
		}
		if h.MemoryBytes > 0 {
			mem = formatSize(h.MemoryBytes) + " memory"
		}
		rows = append(rows, [2]string{"capacity", cpus + ", " + mem})
	}
	if p := r.Provisioning; p != nil {
		next := "-"
		if !p.NextTry.IsZero() {
			next = at(p.NextTry)
		}
		rows = append(rows,
			[2]string{"state", stateOf(p)},
			[2]string{"since", at(p.Since)},
			[2]string{"attempt", fmt.Sprint(p.Attempt)},
			[2]string{"next try", next},
			[2]string{"last error", firstNonEmpty(p.LastError, "-")})
	} else {
		rows = append(rows, [2]string{"state", "- (not tracked by the provisioner, or the server has none)"})
	}
	for _, row := range rows {
		printf(tw, "%s\t%s\n", row[0], row[1])
	}
	if r.Provisioning == nil {
		return tw.Flush()
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "AT\tFROM\tTO\tATTEMPT\tCOMMANDS\tREASON")
	for _, t := range r.History {
		cmds := make([]string, len(t.Commands))
		for i, c := range t.Commands {
			cmds[i] = string(c)
		}
		printf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", atPrecise(t.At), firstNonEmpty(string(t.From), "-"), t.To, t.Attempt,
			firstNonEmpty(strings.Join(cmds, ","), "-"), oneLine(t.Reason))
	}
	if len(r.History) == 0 {
		fmt.Fprintln(tw, "(no transitions recorded)")
	}
	return tw.Flush()
}

// parseHostFile reads one host in the inventory file's format: YAML, or
// JSON (which YAML reads too), strictly; errors name file:line: field.
// The server validates the values.
func parseHostFile(name string, data []byte) (inventory.Host, error) {
	var h inventory.Host
	if err := yamlfile.Decode(name, data, &h); err != nil {
		return inventory.Host{}, err
	}
	return h, nil
}

func newHostAddCmd(o *options, getenv func(string) string) *cobra.Command {
	var (
		file   string
		h      inventory.Host
		labels []string
	)
	cmd := &cobra.Command{
		Use:   "add (-f FILE | --name NAME --mac MAC --bmc-address ADDR ...)",
		Short: "Add a host to the inventory",
		Long: `Adds a host to the inventory, given by flags or as a file (-f, YAML or JSON)
in the format of one entry of the inventory file. The BMC password is never
sent: --bmc-password-file is the absolute path of a file ON THE SERVER that
holds it. The server validates the host and refuses a name, MAC or serial
another host has (409). Needs an admin token.`,
		Example: `  runbook host add --name host-c --mac 52:54:00:aa:bb:cc --bmc-type ipmi --bmc-address 10.0.0.13 \
      --bmc-user admin --bmc-password-file /etc/caretaker/bmc/host-c --role worker --label rack=r1 --label zone=z1
  runbook host add -f host-c.yml
  # host-c.yml:
  #   name: host-c
  #   macs: [52:54:00:aa:bb:cc]
  #   bmc: {type: redfish, address: https://10.0.0.13, username: admin, password_file: host-c}   # in the server's provisioner.bmc.secrets_dir
  #   role: worker
  #   labels: {rack: r1}`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				var set []string
				cmd.Flags().Visit(func(f *pflag.Flag) {
					if f.Name != "file" && cmd.LocalFlags().Lookup(f.Name) != nil {
						set = append(set, "--"+f.Name)
					}
				})
				if len(set) > 0 {
					return fmt.Errorf("-f and %s: give the host either in a file or by flags, not both", strings.Join(set, ", "))
				}
				data, err := os.ReadFile(file)
				if err != nil {
					return fmt.Errorf("-f: %w", err)
				}
				if h, err = parseHostFile(file, data); err != nil {
					return err
				}
			} else {
				if h.Name == "" {
					return errors.New("--name: required (or give the host as a file with -f)")
				}
				lm, err := parseLabels(labels)
				if err != nil {
					return err
				}
				h.Labels = lm
			}
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				stored, err := c.AddHost(ctx, h)
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), stored)
				}
				printf(cmd.OutOrStdout(), "added host %s (%s, boots from %s, agent %s); provision it: runbook host provision %s -m ...\n",
					stored.Name, stored.Role, firstMAC(stored), stored.Agent, stored.Name)
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&file, "file", "f", "", "the host as YAML or JSON, in the inventory file's format")
	fl.StringVar(&h.Name, "name", "", "host name, a DNS label; also its host label in Prometheus")
	fl.StringVar(&h.Serial, "serial", "", "serial number")
	fl.StringSliceVar(&h.MACs, "mac", nil, "MAC address (repeatable; the first is the NIC it PXE-boots from)")
	fl.StringVar(&h.BMC.Type, "bmc-type", bmc.TypeIPMI, "BMC type: ipmi or redfish")
	fl.StringVar(&h.BMC.Address, "bmc-address", "", "BMC address: host[:port] for IPMI, an https URL for Redfish")
	fl.StringVar(&h.BMC.Username, "bmc-user", "", "BMC user name")
	fl.StringVar(&h.BMC.PasswordFile, "bmc-password-file", "", "name of the file holding the BMC password in the server's provisioner.bmc.secrets_dir")
	fl.StringVar(&h.Role, "role", inventory.RoleWorker, "role: worker (runs guests) or monitoring")
	fl.StringArrayVar(&labels, "label", nil, "a label for the host's metrics, key=value, e.g. rack=r1 (repeatable)")
	fl.StringVar(&h.Agent, "agent", "", "host:port of the host's caretaker agent (default NAME:9301)")
	return cmd
}

func firstMAC(h inventory.Host) string {
	if len(h.MACs) == 0 {
		return "-"
	}
	return h.MACs[0]
}

func newHostRemoveCmd(o *options, getenv func(string) string) *cobra.Command {
	var (
		yes     bool
		comment string
	)
	cmd := &cobra.Command{
		Use:   "remove NAME --yes",
		Short: "Remove a host added through the API from the inventory",
		Long: `Removes the host NAME from the inventory; the provisioner and the agents'
scrape targets forget it. Hosts of the inventory file are removed by editing
the file (the server answers 409). The server records the removal (the
host's name, serial and MACs) with the token's name and role and the
--comment; viewers read the records at GET /api/v1/hosts?removed=true.
Needs --yes and an admin token.`,
		Example: `  runbook host remove host-c --yes
  runbook host remove host-c --yes --comment "rack swap"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				return fmt.Errorf("host remove takes %s out of the inventory: add --yes if you mean it", args[0])
			}
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				if err := c.RemoveHost(ctx, args[0], comment); err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), map[string]string{"removed": args[0]})
				}
				printf(cmd.OutOrStdout(), "removed host %s from the inventory\n", args[0])
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm the removal")
	cmd.Flags().StringVar(&comment, "comment", "", "why, kept in the server's record of the removal")
	return cmd
}

func newHostProvisionCmd(o *options, getenv func(string) string, re bool) *cobra.Command {
	verb := "provision"
	short := "Provision a registered or failed host: PXE boot once, power-cycle, install"
	long := `Starts provisioning NAME: the server sets its next boot to PXE, power-cycles
it through its BMC and follows it through pxe-booting and installing to
ready, retrying with backoff. Follow it with runbook host show NAME. Needs
-m and an admin token.`
	example := `  runbook host provision host-c -m "new host, rack r1"`
	if re {
		verb = "reprovision"
		short = "Reprovision a host: cordon it, move its guests off, reinstall it"
		long = `Reinstalls NAME: the server cordons it (no new guests), moves its guests to
other hosts, then provisions it as provision does; ready lifts the cordon.
Follow it with runbook host show NAME. Needs -m and an admin token.`
		example = `  runbook host reprovision host-a -m "disk replaced"
  runbook host reprovision host-a -m "kernel panic loop" --author alice -o json`
	}
	var f changeFlags
	cmd := &cobra.Command{
		Use:     verb + " NAME",
		Short:   short,
		Long:    long,
		Example: example,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				send := c.Provision
				if re {
					send = c.Reprovision
				}
				h, err := send(ctx, args[0], f.author, f.comment)
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), api.HostStateDetail{Host: h})
				}
				printf(cmd.OutOrStdout(), "%s of %s started: now %s, attempt %d (follow it: runbook host show %s)\n",
					verb, h.Name, stateOf(&h), h.Attempt, h.Name)
				return nil
			})
		},
	}
	f.add(cmd)
	return cmd
}
