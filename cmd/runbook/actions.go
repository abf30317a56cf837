package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"caretaker/internal/api"
	"caretaker/remediation/journal"
)

// changeFlags are what every command that changes something takes: who
// (default: the server records the token's name) and why.
type changeFlags struct {
	author  string
	comment string
}

func (f *changeFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.author, "author", "", "whom you act for; recorded as \"on behalf of\" beside your API token's name")
	cmd.Flags().StringVarP(&f.comment, "comment", "m", "", "why (required)")
}

func (f *changeFlags) check() error {
	if strings.TrimSpace(f.comment) == "" {
		return errors.New("--comment (-m): required, so the journal says why")
	}
	return nil
}

func newPendingCmd(o *options, getenv func(string) string) *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "pending",
		Short: "Actions held by a guard or waiting for a human's approval",
		Long: `Lists the journal's actions in state pending (held by a guard: a window,
a pause, the circuit breaker…) or awaiting_approval (the policy wants a
human's yes; approve or deny them before they expire).`,
		Example: `  runbook pending
  runbook pending -o json | jq '.records[] | select(.state == "awaiting_approval") | .id'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				h, err := c.Actions(ctx, api.HistoryFilter{Limit: limit,
					States: []journal.State{journal.StatePending, journal.StateAwaitingApproval}})
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), h)
				}
				return printPending(cmd.OutOrStdout(), h.Records, time.Now())
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", api.DefaultHistoryLimit, "how many actions to show")
	return cmd
}

func printPending(w io.Writer, recs []journal.Record, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGE\tSTATE\tACTION\tTARGET\tALERT\tEXPIRES")
	for _, r := range recs {
		expires := "-"
		if r.Approval != nil && !r.Approval.Expires.IsZero() {
			expires = r.Approval.Expires.Local().Format(time.DateTime) + " (in " + r.Approval.Expires.Sub(now).Round(time.Second).String() + ")"
		}
		printf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, since(now, r.Created), r.State, r.Action,
			targetOf(r), firstNonEmpty(r.Alert, "-"), expires)
	}
	if len(recs) == 0 {
		fmt.Fprintln(tw, "(nothing pending or awaiting approval)")
	}
	return tw.Flush()
}

// targetOf names what a record acts on.
func targetOf(r journal.Record) string {
	if r.Target != "" {
		return r.Target
	}
	if r.Domain != "" {
		return r.Host + "/" + r.Domain
	}
	return firstNonEmpty(r.Host, "-")
}

func newDecideCmd(o *options, getenv func(string) string, approve bool) *cobra.Command {
	verb, short, example := "deny", "Deny an action awaiting approval: it is cancelled", `  runbook deny 42 -m "the guest is being migrated, leave it"`
	if approve {
		verb, short, example = "approve", "Approve an action awaiting approval: it runs when the other guards allow",
			`  runbook approve 42 -m "checked the host, go ahead"
  runbook approve 42 -m "ok" --author alice`
	}
	var f changeFlags
	cmd := &cobra.Command{
		Use:     verb + " ACTION-ID",
		Short:   short,
		Long:    short + ".\nNeeds an operator token. See runbook pending for the actions awaiting approval.",
		Example: example,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			if err := f.check(); err != nil {
				return err
			}
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				send := c.Deny
				if approve {
					send = c.Approve
				}
				r, err := send(ctx, id, api.DecisionRequest{Author: f.author, Comment: f.comment})
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), r)
				}
				printf(cmd.OutOrStdout(), "%sd action %d (%s on %s): now %s\n", verb, r.ID, r.Action, targetOf(r), r.State)
				return nil
			})
		},
	}
	f.add(cmd)
	return cmd
}

func newRunCmd(o *options, getenv func(string) string) *cobra.Command {
	var f changeFlags
	var dryRun bool
	var labels []string
	cmd := &cobra.Command{
		Use:   "run ACTION TARGET",
		Short: "Run a remediation action by hand, through the same guards and journal",
		Long: `Asks the server to run ACTION on TARGET now. The guards still decide
(pauses, windows, the circuit breaker, rate limits), the journal records the
intent before anything is done, and the command returns as soon as it is
recorded: follow the action with runbook show ACTION-ID. --dry-run records
the guards' decisions and executes nothing. Needs an operator token.

TARGET is host/uuid for a guest action, host for reprovision-host, and
host/cluster for repair-overlay.`,
		Example: `  runbook run restart-vm host-a/6f1c1c2e-0c1d-4b7a-9f55-2d1f0c7a0001 -m "guest hung, console dead"
  runbook run repair-overlay host-a/prod-1 --dry-run -m "what would the guards say?"
  runbook run run-command host-a --label service=kubelet -m "restart kubelet"`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			lm, err := parseLabels(labels)
			if err != nil {
				return err
			}
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				r, err := c.Run(ctx, api.RunRequest{Action: args[0], Target: args[1], Labels: lm, DryRun: dryRun,
					Author: f.author, Comment: f.comment})
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), r)
				}
				what := "recorded"
				if r.DryRun {
					what = "recorded as a dry run"
				}
				printf(cmd.OutOrStdout(), "%s action %d: %s on %s, now %s (follow it: runbook show %d)\n",
					what, r.ID, r.Action, targetOf(r), r.State, r.ID)
				return nil
			})
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "record what the guards decide; execute nothing")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "a template value for the action, key=value (repeatable)")
	return cmd
}

func parseLabels(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: want key=value", kv)
		}
		m[k] = v
	}
	return m, nil
}

func parseID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("action id: want a positive integer (see runbook history or runbook pending), got %q", s)
	}
	return id, nil
}
