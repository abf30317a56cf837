package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"caretaker/internal/api"
	"caretaker/internal/version"
	"caretaker/remediation/guards"
	"caretaker/remediation/journal"
)

type options struct {
	url       string
	tokenFile string
	output    string
	timeout   time.Duration

	api *api.Client // made once, so the server that answered is remembered for the process
}

func newRootCmd(stdout, stderr io.Writer, getenv func(string) string) *cobra.Command {
	o := &options{}
	root := &cobra.Command{
		Use:   "runbook",
		Short: "The on-call CLI of caretaker",
		Long: `runbook asks a caretaker server what the fleet looks like and what its
remediation engine did, and acts through it: approve, deny or run actions,
pause remediation, reload the policy; create, scale and delete guest
clusters; add, remove and (re)provision bare-metal hosts.

What a token may do depends on its role on the server: a viewer reads; an
operator also approves, denies, runs and pauses; an admin also reloads the
policy. Changes are recorded under the token's name and role; --author
only adds whom you act for ("on behalf of"). They need a comment (-m).

It finds the server and its API token in this order: the --url and
--token-file flags, the RUNBOOK_URL and RUNBOOK_TOKEN variables, the config
file ~/.config/runbook/config.yml (url or urls, token or token_file;
RUNBOOK_CONFIG names another file). A running ` + "`caretaker lab`" + ` writes that
file, so against a lab runbook needs no flags.

Several servers (a clustered deployment) are given as urls: in the file or
as a comma-separated --url or RUNBOOK_URL. runbook asks the one that
answered last (at first the first), and tries the next only when it cannot
connect to one; a request a server may have received is never sent to
another.`,
		Example: `  runbook status
  runbook pending
  runbook approve 42 -m "checked, go ahead"
  runbook history --limit 20
  runbook cluster create lab --masters 1 --workers 2 --wait
  runbook host list
  runbook status -o json | jq '.guests[] | select(.state != "running")'
  RUNBOOK_URL=http://caretaker:9300 RUNBOOK_TOKEN=$(cat token) runbook status
  runbook status --url https://ct1:9300,https://ct2:9300,https://ct3:9300`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&o.url, "url", "", "server URL, or several separated by commas (default from RUNBOOK_URL, the config file, or "+defaultURL+")")
	pf.StringVar(&o.tokenFile, "token-file", "", "file holding the API bearer token")
	pf.StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	pf.DurationVar(&o.timeout, "timeout", 30*time.Second, "how long to wait for the server")

	root.AddCommand(newStatusCmd(o, getenv), newHistoryCmd(o, getenv), newShowCmd(o, getenv), newAlertsCmd(o, getenv), newExplainCmd(o, getenv),
		newPauseCmd(o, getenv), newResumeCmd(o, getenv), newPausesCmd(o, getenv),
		newPendingCmd(o, getenv), newDecideCmd(o, getenv, true), newDecideCmd(o, getenv, false), newRunCmd(o, getenv),
		newPolicyCmd(o, getenv), newClusterCmd(o, getenv), newHostCmd(o, getenv), newWhoAmICmd(o, getenv))
	root.AddCommand(version.Command("runbook", root))
	return root
}

func (o *options) client(getenv func(string) string) (*api.Client, error) {
	if o.output != "table" && o.output != "json" {
		return nil, fmt.Errorf("--output: want table or json, got %q", o.output)
	}
	if o.api != nil {
		return o.api, nil
	}
	c, err := resolve(getenv, o.url, o.tokenFile)
	if err != nil {
		return nil, err
	}
	o.api = api.NewClientURLs(c.URLs, c.Token, nil)
	return o.api, nil
}

// withClient runs fn with a client of the server and a context bounded by
// --timeout.
func (o *options) withClient(cmd *cobra.Command, getenv func(string) string, fn func(context.Context, *api.Client) error) error {
	c, err := o.client(getenv)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	defer cancel()
	return fn(ctx, c)
}

// printJSON prints v for `-o json`, indented; it is the CLI's output, not an
// HTTP answer (those are internal/httpjson's).
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newWhoAmICmd(o *options, getenv func(string) string) *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "The name and role of your token, as the server knows it",
		Long: `whoami asks the server which token runbook sends (RUNBOOK_TOKEN or
--token-file) and prints its name — what the journal records your actions
under — and its role: viewer, operator or admin.`,
		Example: `  runbook whoami
  runbook whoami -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				me, err := c.WhoAmI(ctx)
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), me)
				}
				printf(cmd.OutOrStdout(), "%s (%s)\n", me.Name, me.Role)
				return nil
			})
		},
	}
}

func newStatusCmd(o *options, getenv func(string) string) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "The servers and who leads, hosts, guests with their state, and firing alerts",
		Long: `status shows the caretaker servers (which one leads, its epoch, whether
each is healthy), the hosts and their agents, every guest with its state,
and the firing alerts. A server older than the servers list leaves that
section out; one that cannot tell its servers (etcd out of reach) still
shows the rest, and runbook then exits 1 with the reason.`,
		Example: `  runbook status
  runbook status -o json
  runbook status -o json | jq '.servers[] | select(.leader)'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				s, err := c.Status(ctx)
				if err != nil {
					return err
				}
				out := statusOutput{Status: s}
				out.Servers, err = c.Servers(ctx)
				var serr error
				if se, ok := errors.AsType[*api.StatusError](err); ok && se.Code == http.StatusNotFound {
					err = nil // a server older than /api/v1/servers
				} else if err != nil {
					serr = fmt.Errorf("list servers: %w", err)
				}
				if o.output == "json" {
					err = printJSON(cmd.OutOrStdout(), out)
				} else {
					err = printStatus(cmd.OutOrStdout(), out)
				}
				return cmp.Or(err, serr)
			})
		},
	}
}

func newHistoryCmd(o *options, getenv func(string) string) *cobra.Command {
	var f api.HistoryFilter
	var since time.Duration
	cmd := &cobra.Command{
		Use:   "history",
		Short: "The remediation journal, newest first",
		Example: `  runbook history
  runbook history --target lab-host-a-1 --since 24h
  runbook history --result failed --limit 5 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.Limit < 1 {
				return fmt.Errorf("--limit: want at least 1, got %d", f.Limit)
			}
			if since > 0 {
				f.Since = time.Now().Add(-since)
			}
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				h, err := c.History(ctx, f)
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), h)
				}
				return printHistory(cmd.OutOrStdout(), h.Records)
			})
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.Limit, "limit", api.DefaultHistoryLimit, "how many records to show")
	fl.StringVar(&f.Target, "target", "", "only this host, guest (domain or uuid) or host/uuid")
	fl.StringVar(&f.Action, "action", "", "only this action, e.g. restart-vm")
	fl.StringVar(&f.Result, "result", "", "only records in this state: pending, awaiting_approval, running, verifying, succeeded, failed, cancelled, expired, skipped, interrupted")
	fl.DurationVar(&since, "since", 0, "only records from the last such duration, e.g. 24h")
	return cmd
}

func newShowCmd(o *options, getenv func(string) string) *cobra.Command {
	return &cobra.Command{
		Use:   "show ACTION-ID",
		Short: "One journal record in full: the alert, every guard's decision, the approval, the transitions",
		Example: `  runbook show 42
  runbook show 42 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				r, err := c.Record(ctx, id)
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), r)
				}
				return printRecord(cmd.OutOrStdout(), r)
			})
		},
	}
}

// seenBy says what raised a record's alert: an agent's libvirt event or
// the rules (or an Alertmanager).
func seenBy(r journal.Record) string {
	switch {
	case r.Author != "":
		return "a human (runbook run)"
	case r.FromEvent:
		return "an agent's libvirt event"
	default:
		return "the alert rules"
	}
}

func printRecord(w io.Writer, r journal.Record) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	rows := [][2]string{
		{"id", strconv.FormatUint(r.ID, 10)},
		{"recorded", at(r.Created)},
		{"alert", firstNonEmpty(r.Alert, "-")},
		{"alert started", at(r.AlertStartsAt)},
		{"seen by", seenBy(r)},
		{"fingerprint", firstNonEmpty(r.Fingerprint, "-")},
		{"rule", firstNonEmpty(r.Rule, "-")},
		{"action", r.Action},
		{"step", strconv.Itoa(r.Step)},
		{"target", targetOf(r)},
		{"host", firstNonEmpty(r.Host, "-")},
		{"guest", firstNonEmpty(r.Domain, "-") + " (" + firstNonEmpty(r.UUID, "-") + ")"},
		{"cluster", firstNonEmpty(r.Cluster, "-")},
		{"labels", formatLabels(r.Labels)},
		{"author", authorOf(r.Author, r.AuthorRole, r.OnBehalfOf)}, // set for an action run by hand
		{"comment", firstNonEmpty(r.Comment, "-")},
		{"dry run", yesNo(r.DryRun, "yes: nothing was executed", "no")},
		{"result", string(r.State)},
		{"attempt", strconv.Itoa(r.Attempt)},
		{"decision", firstNonEmpty(r.Reason, "-")},
		{"error", firstNonEmpty(r.Error, "-")},
		{"started", at(r.Started)},
		{"finished", at(r.Finished)},
	}
	if r.HealSeconds > 0 {
		rows = append(rows, [2]string{"healed in", fmt.Sprintf("%.1fs after the alert started", r.HealSeconds)})
	}
	for _, row := range rows {
		printf(tw, "%s\t%s\n", row[0], row[1])
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "GUARD\tVERDICT\tRETRY AT\tREASON")
	for _, d := range r.Decisions {
		printf(tw, "%s\t%s\t%s\t%s\n", d.Guard, d.Verdict, at(d.RetryAt), oneLine(d.Reason))
	}
	if len(r.Decisions) == 0 {
		fmt.Fprintln(tw, "(no guard decisions recorded)")
	}
	fmt.Fprintln(tw)
	if a := r.Approval; a != nil {
		fmt.Fprintln(tw, "APPROVAL\tREQUESTED\tEXPIRES\tDECIDED\tBY\tCOMMENT")
		printf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.State, at(a.Requested), at(a.Expires), at(a.Decided),
			authorOf(a.Author, a.AuthorRole, a.OnBehalfOf), firstNonEmpty(oneLine(a.Comment), "-"))
	} else {
		fmt.Fprintln(tw, "(no approval needed)")
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "AT\tSTATE\tNOTE")
	for _, t := range r.Transitions {
		printf(tw, "%s\t%s\t%s\n", atPrecise(t.At), t.State, oneLine(t.Note))
	}
	if len(r.Transitions) == 0 {
		fmt.Fprintln(tw, "(no transitions recorded)")
	}
	if r.Output != "" {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "OUTPUT")
		// Indented, each line escaped: the output is the program's, never a row.
		printf(tw, "%s\n", verbatim(indent(escapeLines(strings.TrimRight(r.Output, "\n")), "  ")))
	}
	return tw.Flush()
}

func at(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}

// atPrecise keeps milliseconds: transitions often come within a second.
func atPrecise(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05.000")
}

func formatLabels(l map[string]string) string {
	if len(l) == 0 {
		return "-"
	}
	keys := slices.Sorted(maps.Keys(l))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+strconv.Quote(l[k]))
	}
	return strings.Join(parts, " ")
}

func yesNo(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}

// statusOutput is what `runbook status` shows: the server's status and,
// from a server that lists them, the servers.
type statusOutput struct {
	api.Status
	Servers []api.ServerStatus `json:"servers,omitzero"` // nil: the server does not list them
}

func printStatus(w io.Writer, s statusOutput) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if s.Servers != nil {
		fmt.Fprintln(tw, "NAME\tADDRESS\tLEADER\tEPOCH\tHEALTHY")
		for _, sv := range s.Servers {
			printf(tw, "%s\t%s\t%s\t%d\t%s\n", sv.Name, firstNonEmpty(sv.Address, "-"), yesNo(sv.Leader, "yes", "no"),
				sv.Epoch, yesNo(sv.Healthy, "yes", "NO"))
		}
		if len(s.Servers) == 0 {
			fmt.Fprintln(tw, "(no servers listed)")
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintln(tw, "HOST\tAGENT\tAGENT UP\tLIBVIRT\tGUESTS")
	for _, h := range s.Hosts {
		printf(tw, "%s\t%s\t%s\t%s\t%d\n", h.Name, h.Agent, yesNo(h.AgentUp, "up", "DOWN"),
			yesNo(h.LibvirtUp, "up", "DOWN"), h.Guests)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "HOST\tGUEST\tSTATE\tREASON\tMEANT TO\tUUID")
	for _, g := range s.Guests {
		printf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", g.Host, g.Domain, g.State, g.Reason,
			yesNo(g.IntendedRunning, "run", "stop"), g.UUID)
	}
	if len(s.Guests) == 0 {
		fmt.Fprintln(tw, "(no guests)")
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "ALERT\tSTATE\tHOST\tGUEST\tSINCE\tSUMMARY")
	for _, a := range s.Alerts {
		printf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Name, a.State, a.Labels["host"], a.Labels["domain"],
			since(s.Time, a.ActiveAt), a.Annotations["summary"])
	}
	if len(s.Alerts) == 0 {
		fmt.Fprintln(tw, "(no alerts firing)")
	}
	return tw.Flush()
}

func printHistory(w io.Writer, recs []journal.Record) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME\tALERT\tACTION\tHOST\tGUEST\tRESULT\tHEALED IN\tBY\tDETAIL")
	for _, r := range recs {
		heal := "-"
		if r.HealSeconds > 0 {
			heal = fmt.Sprintf("%.1fs", r.HealSeconds)
		}
		detail := r.Error
		if detail == "" {
			detail = r.Reason
		}
		printf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Created.Local().Format("2006-01-02 15:04:05"),
			r.Alert, r.Action, r.Host, firstNonEmpty(r.Domain, r.UUID), r.State, heal, authorOf(r.Author, r.AuthorRole, r.OnBehalfOf), oneLine(detail))
	}
	if len(recs) == 0 {
		fmt.Fprintln(tw, "(the journal is empty: no remediation has been decided yet)")
	}
	return tw.Flush()
}

// authorOf names who made a change: the server's token name and role,
// and whom they said they acted for ("olga (operator) on behalf of
// alice"); "-" for the engine's own decisions.
func authorOf(name, role, onBehalfOf string) string {
	if name == "" {
		return "-"
	}
	return guards.DescribeAuthor(name, role, onBehalfOf)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func since(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return now.Sub(t).Round(time.Second).String()
}
