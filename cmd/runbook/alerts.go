package main

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/spf13/cobra"

	"caretaker/alerts"
	"caretaker/internal/api"
)

func newAlertsCmd(o *options, getenv func(string) string) *cobra.Command {
	return &cobra.Command{
		Use:   "alerts [MATCHER...]",
		Short: "Firing and pending alerts, filtered by label matchers as amtool does",
		Long: `Lists the server's firing and pending alerts. Matchers filter them as in
amtool: label=value, label!=value, label=~regex, label!~regex (regexps are
anchored); a bare word matches the alert's name.`,
		Example: `  runbook alerts
  runbook alerts GuestCrashed
  runbook alerts severity=critical host=~"host-(a|b)"
  runbook alerts -o json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			matchers, err := parseMatchers(args)
			if err != nil {
				return err
			}
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				all, err := c.Alerts(ctx)
				if err != nil {
					return err
				}
				var out []api.PromAlert
				for _, a := range all {
					if matchAll(matchers, a.Labels) {
						out = append(out, a)
					}
				}
				sortAlerts(out)
				if o.output == "json" {
					if out == nil {
						out = []api.PromAlert{}
					}
					return printJSON(cmd.OutOrStdout(), out)
				}
				return printAlerts(cmd.OutOrStdout(), out, time.Now())
			})
		},
	}
}

// parseMatchers reads amtool-style matchers.
func parseMatchers(args []string) ([]*labels.Matcher, error) {
	// label<op>value; the value may be double-quoted.
	matcherRE := regexp.MustCompile(`^([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(.*)$`)
	alertName := regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	var ms []*labels.Matcher
	for _, arg := range args {
		m := matcherRE.FindStringSubmatch(arg)
		if m == nil {
			if !alertName.MatchString(arg) {
				return nil, fmt.Errorf("matcher %q: want label=value, label!=value, label=~regex, label!~regex or an alert name", arg)
			}
			m = []string{arg, "alertname", "=", arg}
		}
		value := m[3]
		if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
			value = value[1 : len(value)-1]
		}
		typ := map[string]labels.MatchType{"=": labels.MatchEqual, "!=": labels.MatchNotEqual,
			"=~": labels.MatchRegexp, "!~": labels.MatchNotRegexp}[m[2]]
		lm, err := labels.NewMatcher(typ, m[1], value)
		if err != nil {
			return nil, fmt.Errorf("matcher %q: %w", arg, err)
		}
		ms = append(ms, lm)
	}
	return ms, nil
}

func matchAll(ms []*labels.Matcher, l map[string]string) bool {
	for _, m := range ms {
		if !m.Matches(l[m.Name]) {
			return false
		}
	}
	return true
}

func sortAlerts(as []api.PromAlert) {
	sort.SliceStable(as, func(i, j int) bool {
		a, b := as[i], as[j]
		if a.State != b.State {
			return a.State == "firing" // firing before pending
		}
		if a.Labels["alertname"] != b.Labels["alertname"] {
			return a.Labels["alertname"] < b.Labels["alertname"]
		}
		return a.Labels["host"]+a.Labels["domain"] < b.Labels["host"]+b.Labels["domain"]
	})
}

func printAlerts(w io.Writer, as []api.PromAlert, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ALERT\tSTATE\tSEVERITY\tHOST\tSINCE\tSUMMARY")
	for _, a := range as {
		var active time.Time
		if a.ActiveAt != nil {
			active = *a.ActiveAt
		}
		printf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Labels["alertname"], a.State, a.Labels["severity"],
			a.Labels["host"], since(now, active), a.Annotations["summary"])
	}
	if len(as) == 0 {
		fmt.Fprintln(tw, "(no alerts)")
	}
	return tw.Flush()
}

// explanation is `runbook explain -o json`.
type explanation struct {
	Alert     string          `json:"alert"`
	Group     string          `json:"group"`
	Rule      api.PromRule    `json:"rule"`
	Instances []api.PromAlert `json:"instances"`
	Runbook   string          `json:"runbook"`
}

func newExplainCmd(o *options, getenv func(string) string) *cobra.Command {
	return &cobra.Command{
		Use:   "explain ALERT",
		Short: "An alert's rule, its current instances and its runbook page",
		Example: `  runbook explain GuestCrashed
  runbook explain GuestCrashed -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				groups, err := c.Rules(ctx)
				if err != nil {
					return err
				}
				var e *explanation
				var names []string
				for _, g := range groups {
					for _, r := range g.Rules {
						names = append(names, r.Name)
						if r.Name == name && r.Type == "alerting" && e == nil {
							e = &explanation{Alert: name, Group: g.Name, Rule: r, Instances: r.Alerts}
						}
					}
				}
				if e == nil {
					sort.Strings(names)
					return fmt.Errorf("the server has no alerting rule %q (it has: %s)", name, strings.Join(names, ", "))
				}
				if e.Instances == nil {
					e.Instances = []api.PromAlert{}
				}
				if page, err := alerts.Runbook(name); err == nil {
					e.Runbook = string(page)
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), e)
				}
				return printExplanation(cmd.OutOrStdout(), e, time.Now())
			})
		},
	}
}

func printExplanation(w io.Writer, e *explanation, now time.Time) error {
	printf(w, "%s  (group %s, %s)\n\n", e.Alert, e.Group, e.Rule.Health)
	fmt.Fprintln(w, "RULE")
	printf(w, "%s\n", verbatim(indent(escapeLines(strings.TrimSpace(e.Rule.Query)), "  ")))
	if e.Rule.Duration > 0 {
		printf(w, "  for: %s\n", time.Duration(e.Rule.Duration*float64(time.Second)))
	}
	keys := make([]string, 0, len(e.Rule.Labels))
	for k := range e.Rule.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		printf(w, "  %s: %s\n", k, e.Rule.Labels[k])
	}
	printf(w, "\nINSTANCES (%d)\n", len(e.Instances))
	if err := printAlerts(w, e.Instances, now); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nRUNBOOK")
	if e.Runbook == "" {
		printf(w, "  (no runbook page for %s)\n", e.Alert)
		return nil
	}
	_, err := io.WriteString(w, renderMarkdown(escapeLines(e.Runbook), 78))
	return err
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// renderMarkdown renders the runbook pages' small Markdown for a terminal:
// headings in capitals, emphasis and code marks dropped, paragraphs and
// list items wrapped at width.
func renderMarkdown(md string, width int) string {
	emphasis := regexp.MustCompile(`\*\*([^*]+)\*\*|\*([^*]+)\*|` + "`([^`]+)`")
	listItem := regexp.MustCompile(`^(\d+\.|[-*])\s+`)
	var b strings.Builder
	var para []string
	first, rest := "  ", "  " // indents of a paragraph's first and later lines
	flush := func() {
		if len(para) > 0 {
			text := emphasis.ReplaceAllString(strings.Join(para, " "), "$1$2$3")
			b.WriteString(wrap(text, width, first, rest))
		}
		para = nil
		first, rest = "  ", "  "
	}
	for _, line := range strings.Split(md, "\n") {
		t := strings.TrimSpace(line)
		switch {
		case t == "":
			flush()
			b.WriteString("\n")
		case strings.HasPrefix(t, "#"):
			flush()
			b.WriteString("  " + strings.ToUpper(strings.TrimSpace(strings.TrimLeft(t, "#"))) + "\n")
		case listItem.MatchString(t):
			flush()
			m := listItem.FindString(t)
			first, rest = fmt.Sprintf("  %-3s", strings.TrimSpace(m)), "     "
			para = append(para, strings.TrimSpace(t[len(m):]))
		default:
			para = append(para, t)
		}
	}
	flush()
	return strings.TrimRight(b.String(), "\n") + "\n"
}

func wrap(text string, width int, first, rest string) string {
	var b strings.Builder
	line := first
	n := len(first)
	for i, word := range strings.Fields(text) {
		if i > 0 && n+1+len(word) > width {
			b.WriteString(strings.TrimRight(line, " ") + "\n")
			line, n = rest, len(rest)
		} else if i > 0 {
			line += " "
			n++
		}
		line += word
		n += len(word)
	}
	b.WriteString(line + "\n")
	return b.String()
}
