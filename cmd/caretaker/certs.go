package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"caretaker/internal/pki"
)

func newCertsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Make a small CA and issue the server's and agents' TLS certificates",
		Long: `The server and the agents talk over mutually authenticated TLS: the server
checks that an agent's certificate names the address it dials (the host part
of hosts[].agent, the inventory's agent or a file_sd target), and each agent
accepts only the server's client certificate. These commands make a small CA
(ECDSA P-256; ca.key mode 0600) and issue those certificates; an existing PKI
does as well, given the same names and key usages (see README, "Server–agent
TLS").

  certs init                   ca.crt and ca.key in --dir
  certs issue agent NAME       NAME.crt/.key: serverAuth, SANs NAME and --san
  certs issue server NAME      NAME.crt/.key: clientAuth (and serverAuth)

Nothing is overwritten without --force.`,
		Example: `  # once, on the server
  caretaker certs init --dir /etc/caretaker/pki
  caretaker certs issue server caretaker-server --dir /etc/caretaker/pki

  # one per host: its name and the address the server dials
  for h in hv-a1:10.0.0.11 hv-a2:10.0.0.12; do
    caretaker certs issue agent ${h%%:*} --san ${h#*:} --dir /etc/caretaker/pki --out /etc/caretaker/pki/agents
  done
  # then copy ca.crt, hv-a1.crt and hv-a1.key to hv-a1 (its key only to it)`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newCertsInitCmd(), newCertsIssueCmd())
	return cmd
}

func newCertsInitCmd() *cobra.Command {
	var (
		dir, name string
		validity  time.Duration
		force     bool
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Make the CA: ca.crt and ca.key in --dir",
		Long: `init makes a certificate authority, ca.crt and ca.key (mode 0600) in --dir.
It refuses to replace an existing CA unless --force is given: every
certificate the old CA issued would stop being trusted.`,
		Example: `  caretaker certs init --dir /etc/caretaker/pki
  caretaker certs init --dir /etc/caretaker/pki --validity 87600h --common-name "rack 3 caretaker CA"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.InitCA(dir, name, validity, force)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CA %q in %s (%s, %s), valid until %s\n", ca.Cert.Subject.CommonName, dir,
				pki.CACertFile, pki.CAKeyFile, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory of the CA (required)")
	f.StringVar(&name, "common-name", "caretaker CA", "the CA's common name")
	f.DurationVar(&validity, "validity", 10*365*24*time.Hour, "how long the CA is valid")
	f.BoolVar(&force, "force", false, "replace an existing CA")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

func newCertsIssueCmd() *cobra.Command {
	var (
		dir, out string
		sans     []string
		validity time.Duration
		force    bool
	)
	cmd := &cobra.Command{
		Use:   "issue agent|server NAME",
		Short: "Issue an agent's or the server's certificate, signed by the CA of --dir",
		Long: `issue makes a key (mode 0600) and a certificate signed by the CA of --dir,
written as NAME.crt and NAME.key in --out (default --dir).

  agent NAME    an agent's serving certificate (serverAuth). NAME (the host's
                name) and every --san are its SANs; one of them must be the
                host part of the agent's address in server.yml or the
                inventory, which is what the server verifies.
  server NAME   the server's client certificate (clientAuth, and serverAuth
                so it can serve the server's own API too). Agents allow it by
                NAME (their web config's client_allowed_sans).`,
		Example: `  caretaker certs issue server caretaker-server --dir /etc/caretaker/pki
  caretaker certs issue agent hv-a1 --san 10.0.0.11 --san hv-a1.dc1.example.net --dir /etc/caretaker/pki --out /tmp/hv-a1`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			usage := pki.Usage(args[0])
			if usage != pki.Agent && usage != pki.Server {
				return fmt.Errorf("certs issue: %q: want agent or server", args[0])
			}
			ca, err := pki.LoadCA(dir)
			if err != nil {
				return err
			}
			if out == "" {
				out = dir
			}
			crt, key, err := ca.Issue(out, pki.Request{Name: args[1], SANs: sans, Usage: usage, Validity: validity}, force)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s certificate %s, key %s\n", usage, crt, key)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory of the CA (required)")
	f.StringVar(&out, "out", "", "directory to write NAME.crt and NAME.key (default --dir)")
	f.StringArrayVar(&sans, "san", nil, "another DNS name or IP address the certificate names (repeatable)")
	f.DurationVar(&validity, "validity", 365*24*time.Hour, "how long the certificate is valid (at most the CA's)")
	f.BoolVar(&force, "force", false, "replace an existing NAME.crt and NAME.key")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}
