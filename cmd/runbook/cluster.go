package main

import (
	"context"
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
	"caretaker/provisioner/clusters"
)

const (
	// defaultWaitTimeout replaces --timeout's default under --wait: creating
	// a cluster's nodes takes minutes, not seconds.
	defaultWaitTimeout  = 10 * time.Minute
	defaultPollInterval = 2 * time.Second
)

// waitFlags are the flags of a command that can wait for the server's
// asynchronous work to finish.
type waitFlags struct {
	wait     bool
	interval time.Duration
}

func (f *waitFlags) add(cmd *cobra.Command, what string) {
	cmd.Flags().BoolVar(&f.wait, "wait", false, "wait until "+what+" (bounded by --timeout, 10m by default with --wait)")
	cmd.Flags().DurationVar(&f.interval, "poll-interval", defaultPollInterval, "with --wait, how often to ask the server")
}

// check validates the flags and, under --wait, gives --timeout its longer
// default unless it was set.
func (f *waitFlags) check(cmd *cobra.Command, o *options) error {
	if f.interval <= 0 {
		return fmt.Errorf("--poll-interval: want a positive duration, got %s", f.interval)
	}
	if f.wait && !cmd.Flags().Changed("timeout") {
		o.timeout = defaultWaitTimeout
	}
	return nil
}

func newClusterCmd(o *options, getenv func(string) string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Create, list, show, scale and delete guest Kubernetes clusters",
		Long: `A guest cluster is a set of KVM guests (its nodes, in pools of masters and
workers) on the fleet's hosts, joined by a VXLAN overlay of its own. The
server creates, places and deletes nodes asynchronously: create, scale and
delete return at once, or follow the work with --wait. Reading needs a viewer
token, changing an operator token.`,
		Example: `  runbook cluster create lab --masters 1 --workers 2 --wait
  runbook cluster list
  runbook cluster show lab
  runbook cluster scale lab worker 5 --wait
  runbook cluster delete lab --yes`,
	}
	cmd.AddCommand(newClusterCreateCmd(o, getenv), newClusterListCmd(o, getenv), newClusterShowCmd(o, getenv),
		newClusterScaleCmd(o, getenv), newClusterDeleteCmd(o, getenv))
	return cmd
}

// poolFlags size one pool; the master pool's fall back to the common ones.
type poolFlags struct {
	vcpus        int
	memory, disk sizeFlag
}

func newClusterCreateCmd(o *options, getenv func(string) string) *cobra.Command {
	var (
		masters, workers int
		common, master   poolFlags
		baseImage        string
		plan             bool
		w                waitFlags
	)
	common.memory.n, common.disk.n = 4<<30, 20<<30
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a guest cluster with a master pool and a worker pool",
		Long: `Creates the cluster NAME with the pools "master" (--masters nodes) and
"worker" (--workers nodes). --vcpus, --memory and --disk size every node;
--master-vcpus, --master-memory and --master-disk size the masters
differently. Sizes take a unit: 4GiB, 512MiB, 20G, 512M (G and M are binary,
as for QEMU), or plain bytes.

With --wait, runbook follows the nodes until every one runs (exit 0), some
node fails (exit 1, with each failed node's error) or --timeout passes
(exit 1; the server carries on). With --plan, runbook only asks where the
nodes would go on the ready hosts now and creates nothing (exit 1 when they
do not fit, with placement's reason). Needs an operator token.`,
		Example: `  runbook cluster create lab --masters 3 --workers 3 --vcpus 2 --memory 4GiB --disk 20GiB
  runbook cluster create lab --masters 1 --master-memory 8GiB --workers 5 --wait --timeout 15m
  runbook cluster create ci --workers 2 --base-image debian-12.qcow2 -o json
  runbook cluster create big --workers 20 --memory 64GiB --plan`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := w.check(cmd, o); err != nil {
				return err
			}
			mp := master
			if mp.vcpus == 0 {
				mp.vcpus = common.vcpus
			}
			if !mp.memory.set {
				mp.memory = common.memory
			}
			if !mp.disk.set {
				mp.disk = common.disk
			}
			spec := clusters.Spec{Name: args[0], BaseImage: baseImage, Pools: []clusters.Pool{
				{Name: "master", Role: clusters.RoleMaster, Count: masters, VCPUs: mp.vcpus, MemoryBytes: mp.memory.n, DiskBytes: mp.disk.n},
				{Name: "worker", Role: clusters.RoleWorker, Count: workers, VCPUs: common.vcpus, MemoryBytes: common.memory.n, DiskBytes: common.disk.n},
			}}
			// The server checks the same; checking here names the flags.
			if err := spec.Validate(); err != nil {
				return fmt.Errorf("cluster %s: %s", spec.Name, flagNames(cmd, err))
			}
			if plan {
				return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
					return printPlan(cmd, o, c, spec)
				})
			}
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				start := time.Now()
				cl, err := c.CreateCluster(ctx, spec)
				if err != nil {
					return err
				}
				if w.wait {
					if cl, err = waitReady(ctx, c, cl, w.interval, progressOut(cmd, o), start); err != nil {
						return err
					}
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), cl)
				}
				if !w.wait {
					printf(cmd.OutOrStdout(), "cluster %s accepted: %d nodes, VNI %d (follow it: runbook cluster show %s)\n",
						cl.Name, len(cl.Nodes), cl.VNI, cl.Name)
				}
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&masters, "masters", 3, "master nodes")
	fl.IntVar(&workers, "workers", 3, "worker nodes")
	fl.IntVar(&common.vcpus, "vcpus", 2, "vCPUs of each node")
	fl.Var(&common.memory, "memory", "memory of each node, e.g. 4GiB")
	fl.Var(&common.disk, "disk", "disk of each node, e.g. 20GiB")
	fl.IntVar(&master.vcpus, "master-vcpus", 0, "vCPUs of each master (default --vcpus)")
	fl.Var(&master.memory, "master-memory", "memory of each master (default --memory)")
	fl.Var(&master.disk, "master-disk", "disk of each master (default --disk)")
	fl.StringVar(&baseImage, "base-image", "", "volume the nodes' disks are cloned from (default: the server's)")
	fl.BoolVar(&plan, "plan", false, "only show where the nodes would go now; create nothing")
	w.add(cmd, "every node runs")
	return cmd
}

// printPlan shows placement's answer for spec: each node's host, or why
// the cluster does not fit (an error: exit 1).
func printPlan(cmd *cobra.Command, o *options, c *api.Client, spec clusters.Spec) error {
	p, err := c.PlanCluster(cmd.Context(), spec)
	if err != nil {
		return err
	}
	if o.output == "json" {
		if err := printJSON(cmd.OutOrStdout(), p); err != nil {
			return err
		}
	} else if p.Fits {
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tPOOL\tHOST")
		for _, n := range p.Nodes {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", n.Name, n.Pool, n.Host)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		printf(cmd.OutOrStdout(), "cluster %s fits: %d nodes (nothing created)\n", spec.Name, len(p.Nodes))
	}
	if !p.Fits {
		return fmt.Errorf("cluster %s does not fit now: %s", spec.Name, p.Reason)
	}
	return nil
}

// flagNames rewrites a spec's validation errors in terms of the create
// command's flags, one per line. A master's size not given by its own
// flag came from the common one, and the message says so.
func flagNames(cmd *cobra.Command, err error) string {
	master := func(f, common string) string {
		if cmd.Flags().Changed(f) {
			return "--" + f
		}
		return "--" + common + " (for the masters)"
	}
	r := strings.NewReplacer(
		"pools[0].count", "--masters", "pools[1].count", "--workers",
		"pools[0].vcpus", master("master-vcpus", "vcpus"), "pools[1].vcpus", "--vcpus",
		"pools[0].memory_bytes", master("master-memory", "memory"), "pools[1].memory_bytes", "--memory",
		"pools[0].disk_bytes", master("master-disk", "disk"), "pools[1].disk_bytes", "--disk",
		"base_image", "--base-image")
	return strings.ReplaceAll(r.Replace(err.Error()), "\n", "; ")
}

// progressOut is where --wait's progress lines go: stdout for tables,
// stderr when stdout carries JSON.
func progressOut(cmd *cobra.Command, o *options) io.Writer {
	if o.output == "json" {
		return cmd.ErrOrStderr()
	}
	return cmd.OutOrStdout()
}

// nodeCounts counts a cluster's nodes by state.
func nodeCounts(c clusters.Cluster) map[string]int {
	n := map[string]int{}
	for _, x := range c.Nodes {
		n[x.State]++
	}
	return n
}

// progress is one line of --wait: "3/6 nodes running (2 creating, 1 pending)".
func progress(c clusters.Cluster) string {
	n := nodeCounts(c)
	s := fmt.Sprintf("%d/%d nodes running", n[clusters.NodeRunning], len(c.Nodes))
	var rest []string
	for _, st := range []string{clusters.NodeCreating, clusters.NodePending, clusters.NodeDeleting, clusters.NodeFailed} {
		if n[st] > 0 {
			rest = append(rest, fmt.Sprintf("%d %s", n[st], st))
		}
	}
	if len(rest) > 0 {
		s += " (" + strings.Join(rest, ", ") + ")"
	}
	return s
}

// failedNodes lists each failed node with its error, one per line.
func failedNodes(c clusters.Cluster) string {
	var b strings.Builder
	for _, n := range c.Nodes {
		if n.State == clusters.NodeFailed {
			printf(&b, "\n  %s (host %s): %s", n.Name, firstNonEmpty(n.Host, "-"), firstNonEmpty(n.Error, "no error recorded"))
		}
	}
	return b.String()
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

// waitReady polls the cluster every interval until it is ready, degraded or
// ctx ends, printing a progress line to w whenever the nodes' states
// change. cl is the cluster as last seen.
func waitReady(ctx context.Context, c *api.Client, cl clusters.Cluster, interval time.Duration, w io.Writer, start time.Time) (clusters.Cluster, error) {
	last := ""
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		switch cl.Phase {
		case clusters.PhaseReady:
			printf(w, "cluster %s ready: %d nodes running after %s\n", cl.Name, len(cl.Nodes), seconds(time.Since(start)))
			return cl, nil
		case clusters.PhaseDegraded:
			return cl, fmt.Errorf("cluster %s degraded after %s: %d/%d nodes failed (the server retries them; see runbook cluster show %s):%s",
				cl.Name, seconds(time.Since(start)), nodeCounts(cl)[clusters.NodeFailed], len(cl.Nodes), cl.Name, failedNodes(cl))
		case clusters.PhaseDeleting:
			return cl, fmt.Errorf("cluster %s is being deleted", cl.Name)
		}
		if p := progress(cl); p != last {
			printf(w, "%s\n", p)
			last = p
		}
		t.Reset(interval)
		select {
		case <-ctx.Done():
			return cl, waitTimedOut(cl.Name, "ready", start, progress(cl))
		case <-t.C:
		}
		next, err := c.Cluster(ctx, cl.Name)
		if ctx.Err() != nil {
			return cl, waitTimedOut(cl.Name, "ready", start, progress(cl))
		}
		if err != nil {
			return cl, fmt.Errorf("wait for cluster %s: %w", cl.Name, err)
		}
		cl = next
	}
}

func waitTimedOut(name, what string, start time.Time, state string) error {
	return fmt.Errorf("cluster %s not %s after %s (--timeout): %s; the server carries on (follow it: runbook cluster show %s)",
		name, what, seconds(time.Since(start)), state, name)
}

// waitDeleted polls until the server no longer knows the cluster.
func waitDeleted(ctx context.Context, c *api.Client, cl clusters.Cluster, interval time.Duration, w io.Writer, start time.Time) error {
	last := ""
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		if p := fmt.Sprintf("%d nodes left", len(cl.Nodes)); p != last {
			printf(w, "%s\n", p)
			last = p
		}
		t.Reset(interval)
		select {
		case <-ctx.Done():
			return waitTimedOut(cl.Name, "deleted", start, last)
		case <-t.C:
		}
		next, err := c.Cluster(ctx, cl.Name)
		var se *api.StatusError
		switch {
		case ctx.Err() != nil:
			return waitTimedOut(cl.Name, "deleted", start, last)
		case errors.As(err, &se) && se.Code == http.StatusNotFound:
			printf(w, "cluster %s deleted after %s\n", cl.Name, seconds(time.Since(start)))
			return nil
		case err != nil:
			return fmt.Errorf("wait for cluster %s: %w", cl.Name, err)
		}
		cl = next
	}
}

func newClusterListCmd(o *options, getenv func(string) string) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "The guest clusters: phase, nodes running, VNI, age",
		Example: "  runbook cluster list\n  runbook cluster list -o json | jq '.[] | select(.phase != \"ready\") | .name'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				cs, err := c.Clusters(ctx)
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), cs)
				}
				return printClusters(cmd.OutOrStdout(), cs, time.Now())
			})
		},
	}
}

func printClusters(w io.Writer, cs []clusters.Cluster, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPHASE\tNODES\tVNI\tAGE")
	for _, c := range cs {
		printf(tw, "%s\t%s\t%d/%d\t%d\t%s\n", c.Name, c.Phase, nodeCounts(c)[clusters.NodeRunning], len(c.Nodes), c.VNI, since(now, c.Created))
	}
	if len(cs) == 0 {
		fmt.Fprintln(tw, "(no clusters)")
	}
	return tw.Flush()
}

func newClusterShowCmd(o *options, getenv func(string) string) *cobra.Command {
	return &cobra.Command{
		Use:     "show NAME",
		Short:   "One guest cluster: its pools, every node with its host, state and error, its overlays",
		Example: "  runbook cluster show lab\n  runbook cluster show lab -o json | jq '.nodes[] | select(.state == \"failed\")'",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				cl, err := c.Cluster(ctx, args[0])
				if err != nil {
					return err
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), cl)
				}
				return printCluster(cmd.OutOrStdout(), cl, time.Now())
			})
		},
	}
}

func printCluster(w io.Writer, c clusters.Cluster, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	rows := [][2]string{
		{"name", c.Name},
		{"phase", c.Phase},
		{"nodes", progress(c)},
		{"vni", strconv.Itoa(c.VNI)},
		{"bridge", clusters.Bridge(c.Name)},
		{"base image", firstNonEmpty(c.BaseImage, "(the server's default)")},
		{"created", at(c.Created) + " (" + since(now, c.Created) + " ago)"},
		{"updated", at(c.Updated)},
	}
	// who, by the server's record of the token, not by what a client said
	if by := c.CreatedBy; by != nil {
		rows = append(rows, [2]string{"created by", oneLine(by.String()) + " at " + at(by.At)})
	}
	if by := c.ChangedBy; by != nil {
		rows = append(rows, [2]string{"changed by", oneLine(by.String()) + " at " + at(by.At)})
	}
	for _, row := range rows {
		printf(tw, "%s\t%s\n", row[0], row[1])
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "POOL\tROLE\tCOUNT\tVCPUS\tMEMORY\tDISK")
	for _, p := range c.Pools {
		printf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", p.Name, p.Role, p.Count, p.VCPUs, formatSize(p.MemoryBytes), formatSize(p.DiskBytes))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NAME\tPOOL\tROLE\tHOST\tSTATE\tERROR")
	for _, n := range c.Nodes {
		printf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Pool, n.Role, firstNonEmpty(n.Host, "-"), n.State, firstNonEmpty(oneLine(n.Error), "-"))
	}
	if len(c.Nodes) == 0 {
		fmt.Fprintln(tw, "(no nodes)")
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "OVERLAY ON\tPEERS")
	for _, h := range slices.Sorted(maps.Keys(c.Overlays)) {
		printf(tw, "%s\t%s\n", h, firstNonEmpty(strings.Join(c.Overlays[h].PeerAddrs(), " "), "-"))
	}
	if len(c.Overlays) == 0 {
		fmt.Fprintln(tw, "(no overlays in place yet)")
	}
	return tw.Flush()
}

func newClusterScaleCmd(o *options, getenv func(string) string) *cobra.Command {
	var w waitFlags
	cmd := &cobra.Command{
		Use:   "scale NAME POOL COUNT",
		Short: "Set the node count of one of a cluster's pools",
		Long: `Sets POOL's node count to COUNT. New nodes get the lowest free indexes;
surplus nodes are deleted highest index first. With --wait, runbook follows
the nodes until every one runs. Needs an operator token.`,
		Example: `  runbook cluster scale lab worker 5
  runbook cluster scale lab worker 2 --wait`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := w.check(cmd, o); err != nil {
				return err
			}
			count, err := strconv.Atoi(args[2])
			if err != nil || count < 0 {
				return fmt.Errorf("COUNT: want a number of nodes (0 or more), got %q", args[2])
			}
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				start := time.Now()
				cl, err := c.ScaleCluster(ctx, args[0], args[1], count)
				if err != nil {
					return err
				}
				if w.wait {
					if cl, err = waitReady(ctx, c, cl, w.interval, progressOut(cmd, o), start); err != nil {
						return err
					}
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), cl)
				}
				if !w.wait {
					printf(cmd.OutOrStdout(), "cluster %s pool %s scaled to %d: %s (follow it: runbook cluster show %s)\n",
						cl.Name, args[1], count, progress(cl), cl.Name)
				}
				return nil
			})
		},
	}
	w.add(cmd, "every node runs")
	return cmd
}

func newClusterDeleteCmd(o *options, getenv func(string) string) *cobra.Command {
	var (
		w       waitFlags
		yes     bool
		comment string
	)
	cmd := &cobra.Command{
		Use:   "delete NAME --yes",
		Short: "Delete a guest cluster: its nodes, their disks and its overlays",
		Long: `Deletes the cluster NAME: every node's domain and disk, then its overlays,
then its record. This destroys the guests and their data, so it needs --yes.
With --wait, runbook follows the deletion until the server no longer knows
the cluster. The cluster's changed_by records the token's name and role
and the --comment. Needs an admin token.`,
		Example: `  runbook cluster delete lab --yes
  runbook cluster delete lab --yes --wait --comment "demo over"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				return fmt.Errorf("cluster delete destroys every node of %s and its disk: add --yes if you mean it", args[0])
			}
			if err := w.check(cmd, o); err != nil {
				return err
			}
			return o.withClient(cmd, getenv, func(ctx context.Context, c *api.Client) error {
				start := time.Now()
				cl, err := c.DeleteCluster(ctx, args[0], comment)
				if err != nil {
					return err
				}
				if w.wait {
					if err := waitDeleted(ctx, c, cl, w.interval, progressOut(cmd, o), start); err != nil {
						return err
					}
				}
				if o.output == "json" {
					return printJSON(cmd.OutOrStdout(), cl)
				}
				if !w.wait {
					printf(cmd.OutOrStdout(), "cluster %s is being deleted: %d nodes (follow it: runbook cluster show %s)\n", cl.Name, len(cl.Nodes), cl.Name)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm: the nodes and their disks are destroyed")
	cmd.Flags().StringVar(&comment, "comment", "", "why, recorded in the cluster's changed_by")
	w.add(cmd, "the cluster is gone")
	return cmd
}
