package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"caretaker/internal/api"
	"caretaker/remediation/policy"
)

func newPolicyCmd(o *options, getenv func(string) string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check, show and reload the remediation policy",
		Example: `  runbook policy check /etc/caretaker/policy.yml
  runbook policy reload
  runbook policy show`,
	}
	cmd.AddCommand(newPolicyCheckCmd(), newPolicyShowCmd(o, getenv), newPolicyReloadCmd(o, getenv))
	return cmd
}

// errReported is returned once the problems are printed: exit 1, nothing
// more to say.
var errReported = errors.New("the policy has errors")

func newPolicyCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a policy file offline, as the server would load it",
		Long: `Loads FILE exactly as the server does and prints "ok: N rules", or every
problem as file:line: field: message and exits 1. Needs no server: run it
before you install a policy and reload.`,
		Example: `  runbook policy check policy.yml && sudo install policy.yml /etc/caretaker/ && runbook policy reload`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := policy.Load(args[0])
			if err != nil {
				for _, line := range api.ErrorLines(err) {
					printf(cmd.OutOrStdout(), "%s\n", line)
				}
				return errReported
			}
			printf(cmd.OutOrStdout(), "ok: %d rules\n", len(p.Rules))
			return nil
		},
	}
}

func newPolicyShowCmd(o *options, getenv func(string) string) *cobra.Command {
	return &cobra.Command{
		Use:     "show",
		Short:   "The policy in force: its file, when it was loaded, its rules, and the last failed reload",
		Example: "  runbook policy show\n  runbook policy show -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				s, err := c.Policy(ctx)
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), s)
				}
				return printPolicy(cmd.OutOrStdout(), s)
			})
		},
	}
}

func newPolicyReloadCmd(o *options, getenv func(string) string) *cobra.Command {
	return &cobra.Command{
		Use:   "reload",
		Short: "Have the server load its policy file again",
		Long: `Has the server load its policy file again (as SIGHUP does) and put it in
force for the alerts handled from then on. If the file does not load, the
server keeps the old policy and runbook prints the file's problems and exits
1. Needs an admin token.`,
		Example: "  runbook policy reload\n  runbook policy reload -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				s, err := c.ReloadPolicy(ctx)
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), s)
				}
				printf(cmd.OutOrStdout(), "reloaded %s: %d rules\n", policyFile(s), len(s.Rules))
				return nil
			})
		},
	}
}

func policyFile(s api.PolicyStatus) string {
	return firstNonEmpty(s.File, "the embedded default policy")
}

func printPolicy(w io.Writer, s api.PolicyStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	printf(tw, "file\t%s\n", policyFile(s))
	printf(tw, "loaded\t%s\n", s.LoadedAt.Local().Format(time.DateTime))
	if e := s.LastError; e != nil {
		printf(tw, "last reload\tFAILED at %s; the policy below stayed in force:\n", e.At.Local().Format(time.DateTime))
		for _, line := range e.Errors {
			printf(tw, "\t  %s\n", line)
		}
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "RULE\tACTION\tESCALATE\tAPPROVAL")
	for _, r := range s.Rules {
		printf(tw, "%s\t%s\t%s\t%s\n", r.Name, r.Action, firstNonEmpty(strings.Join(r.Escalate, " → "), "-"),
			yesNo(r.Approval, "required", "-"))
	}
	return tw.Flush()
}
