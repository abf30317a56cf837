package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"caretaker/internal/api"
	"caretaker/remediation/guards"
)

// pauseFlags are what pause and resume share.
type pauseFlags struct {
	target  string
	author  string
	comment string
	dur     time.Duration
}

func (f *pauseFlags) add(cmd *cobra.Command, withDuration bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.target, "target", guards.Everything, `what to pause: "*" for all remediation, or one guest as host/uuid`)
	fl.StringVar(&f.author, "author", "", "who pauses (default: the name of your API token)")
	fl.StringVarP(&f.comment, "comment", "m", "", "why (required)")
	if withDuration {
		fl.DurationVar(&f.dur, "for", 0, "how long, e.g. 2h (required)")
	}
}

func newPauseCmd(o *options, getenv func(string) string) *cobra.Command {
	var f pauseFlags
	cmd := &cobra.Command{
		Use:   "pause",
		Short: "Pause automatic remediation, for the whole fleet or one guest",
		Long: `Pauses automatic remediation until the pause expires or is resumed. Alerts
that arrive meanwhile are recorded in the journal as skipped, once each, and
acted on when they are re-sent after the pause. Pauses live in the server's
memory for now: a server restart ends them. Needs an operator token.`,
		Example: `  runbook pause --for 2h -m "storage maintenance on rack 3"
  runbook pause --target host-a/6f1c1c2e-0c1d-4b7a-9f55-2d1f0c7a0001 --for 30m -m "debugging"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.dur <= 0 {
				return errors.New("--for: required, e.g. --for 2h")
			}
			if f.comment == "" {
				return errors.New("--comment (-m): required, so the next on-call knows why remediation is paused")
			}
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				p, err := c.Pause(ctx, api.PauseRequest{Target: f.target, Author: f.author, Comment: f.comment, Duration: f.dur.String()})
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), p)
				}
				printf(cmd.OutOrStdout(), "paused %s until %s\n", describeTarget(p.Target), p.Until.Local().Format(time.DateTime))
				return nil
			})
		},
	}
	f.add(cmd, true)
	return cmd
}

func newResumeCmd(o *options, getenv func(string) string) *cobra.Command {
	var target string
	cmd := &cobra.Command{
		Use:     "resume",
		Short:   "End the pauses of the fleet or of one guest",
		Example: "  runbook resume\n  runbook resume --target host-a/6f1c1c2e-0c1d-4b7a-9f55-2d1f0c7a0001",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				if err := c.Resume(ctx, target); err != nil {
					return err
				}
				printf(cmd.OutOrStdout(), "resumed %s\n", describeTarget(target))
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&target, "target", guards.Everything, `"*" for the global pause, or host/uuid`)
	return cmd
}

func newPausesCmd(o *options, getenv func(string) string) *cobra.Command {
	return &cobra.Command{
		Use:     "pauses",
		Short:   "The remediation pauses in force",
		Example: "  runbook pauses\n  runbook pauses -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				ps, err := c.Pauses(ctx)
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), ps)
				}
				return printPauses(cmd.OutOrStdout(), ps)
			})
		},
	}
}

func printPauses(w io.Writer, ps []guards.Pause) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tAUTHOR\tSINCE\tUNTIL\tCOMMENT")
	for _, p := range ps {
		printf(tw, "%s\t%s\t%s\t%s\t%s\n", describeTarget(p.Target), authorOf(p.Author, p.AuthorRole, p.OnBehalfOf),
			p.Since.Local().Format(time.DateTime), p.Until.Local().Format(time.DateTime), p.Comment)
	}
	if len(ps) == 0 {
		fmt.Fprintln(tw, "(no pauses: remediation runs)")
	}
	return tw.Flush()
}

func describeTarget(t string) string {
	if t == guards.Everything {
		return "all remediation"
	}
	return t
}
