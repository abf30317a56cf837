package console

import (
	"cmp"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"caretaker/internal/overlayspec"
	"caretaker/provisioner/clusters"
)

// progress counts a cluster's nodes.
type progress struct {
	Running, Total, Failed int
}

func progressOf(c clusters.Cluster) progress {
	var p progress
	for _, n := range c.Nodes {
		if n.State == clusters.NodeDeleting {
			continue
		}
		p.Total++
		switch n.State {
		case clusters.NodeRunning:
			p.Running++
		case clusters.NodeFailed:
			p.Failed++
		}
	}
	return p
}

type clusterRow struct {
	clusters.Cluster
	Progress progress
}

type clustersData struct {
	base
	ProvNote string
	Clusters []clusterRow
	Form     clusterForm
	FormErr  []string
	// Plan is the placement's answer to the form; PlanErr why there is none.
	Plan    *clusters.Plan
	PlanErr string
}

func (c *Console) clustersPage(w http.ResponseWriter, r *http.Request, s *session) {
	c.showClusters(w, r, s, http.StatusOK, defaultClusterForm, nil, nil, "")
}

// showClusters renders the cluster list and the Create Cluster form as
// typed, with its problems or the placement's answer.
func (c *Console) showClusters(w http.ResponseWriter, r *http.Request, s *session, status int, f clusterForm, formErr []string, plan *clusters.Plan, planErr string) {
	ctx, cancel := ctx(r)
	defer cancel()
	d := clustersData{base: c.base(r, s, "clusters", "Guest clusters"), Form: f, FormErr: formErr, Plan: plan, PlanErr: planErr}
	d.Path = "/console/clusters"
	d.Forms = d.May("POST", "/api/v1/clusters")
	cs, err := c.client(r, s).Clusters(ctx)
	if c.apiError(w, r, s, err) {
		return
	}
	if err != nil {
		d.ProvNote = provNote(err)
		d.Forms = false
	}
	for _, cl := range cs {
		d.Clusters = append(d.Clusters, clusterRow{Cluster: cl, Progress: progressOf(cl)})
	}
	slices.SortFunc(d.Clusters, func(a, b clusterRow) int { return cmp.Compare(a.Name, b.Name) })
	c.render(w, r, status, "clusters", d)
}

// createCluster creates the cluster of the form, or with plan=1 asks the
// placement whether it fits and shows the form again with the answer.
func (c *Console) createCluster(w http.ResponseWriter, r *http.Request, s *session) {
	f := clusterFormFrom(r.PostForm)
	spec, problems := f.spec()
	if len(problems) > 0 {
		c.showClusters(w, r, s, http.StatusBadRequest, f, problems, nil, "")
		return
	}
	ctx, cancel := ctx(r)
	defer cancel()
	if r.PostForm.Get("plan") == "1" {
		p, err := c.client(r, s).PlanCluster(ctx, spec)
		if c.apiError(w, r, s, err) {
			return
		}
		if err != nil {
			c.showClusters(w, r, s, http.StatusOK, f, nil, nil, errText(err))
			return
		}
		c.showClusters(w, r, s, http.StatusOK, f, nil, &p, "")
		return
	}
	cl, err := c.client(r, s).CreateCluster(ctx, spec)
	if c.apiError(w, r, s, err) {
		return
	}
	if err != nil {
		c.showClusters(w, r, s, code(err), f, []string{errText(err)}, nil, "")
		return
	}
	c.done(w, r, s, "/console/clusters/"+url.PathEscape(cl.Name),
		fmt.Sprintf("Creating cluster %s: %d nodes to place and start.", cl.Name, progressOf(cl).Total))
}

// overlayRow is a cluster's overlay on one host.
type overlayRow struct {
	Host string
	overlayspec.Overlay
}

type clusterData struct {
	base
	Cluster  clusters.Cluster
	Progress progress
	Overlays []overlayRow
	// ScaleErr, ScalePool and ScaleCount: a failed scale as typed.
	ScaleErr, ScalePool, ScaleCount string
	DeleteErr, DeleteConfirm        string
}

func (c *Console) clusterPage(w http.ResponseWriter, r *http.Request, s *session) {
	c.showCluster(w, r, s, http.StatusOK, clusterData{})
}

// showCluster renders one cluster; typed carries a failed form as typed.
func (c *Console) showCluster(w http.ResponseWriter, r *http.Request, s *session, status int, typed clusterData) {
	name := r.PathValue("name")
	ctx, cancel := ctx(r)
	defer cancel()
	cl, err := c.client(r, s).Cluster(ctx, name)
	if c.apiError(w, r, s, err) {
		return
	}
	if err != nil {
		if unavailable(err) {
			c.problem(w, r, s, http.StatusNotFound, "Guest clusters", provNote(err))
			return
		}
		c.problem(w, r, s, code(err), "Cluster "+name, "The cluster could not be read: "+errText(err))
		return
	}
	d := typed
	d.base = c.base(r, s, "clusters", "Cluster "+cl.Name)
	d.Path = "/console/clusters/" + url.PathEscape(cl.Name)
	d.Forms = cl.Phase != clusters.PhaseDeleting && (d.May("PATCH", "/api/v1/clusters/{name}/pools/{pool}") || d.May("DELETE", "/api/v1/clusters/{name}"))
	d.Cluster, d.Progress = cl, progressOf(cl)
	for host, o := range cl.Overlays {
		d.Overlays = append(d.Overlays, overlayRow{Host: host, Overlay: o})
	}
	slices.SortFunc(d.Overlays, func(a, b overlayRow) int { return cmp.Compare(a.Host, b.Host) })
	c.render(w, r, status, "cluster", d)
}

func (c *Console) scaleCluster(w http.ResponseWriter, r *http.Request, s *session) {
	name, pool, count := r.PathValue("name"), r.PostForm.Get("pool"), strings.TrimSpace(r.PostForm.Get("count"))
	typed := clusterData{ScalePool: pool, ScaleCount: count}
	n, err := strconv.ParseUint(count, 10, 16)
	if err != nil {
		typed.ScaleErr = fmt.Sprintf("count: want a whole number of nodes, got %q", clip(count))
		c.showCluster(w, r, s, http.StatusBadRequest, typed)
		return
	}
	ctx, cancel := ctx(r)
	defer cancel()
	_, err = c.client(r, s).ScaleCluster(ctx, name, pool, int(n))
	if c.apiError(w, r, s, err) {
		return
	}
	if err != nil {
		typed.ScaleErr = errText(err)
		c.showCluster(w, r, s, code(err), typed)
		return
	}
	c.done(w, r, s, "/console/clusters/"+url.PathEscape(name), fmt.Sprintf("Scaling pool %s of %s to %d nodes.", pool, name, n))
}

// deleteCluster deletes the cluster when the name typed to confirm is its
// name.
func (c *Console) deleteCluster(w http.ResponseWriter, r *http.Request, s *session) {
	name, confirm := r.PathValue("name"), r.PostForm.Get("confirm")
	if confirm != name {
		c.showCluster(w, r, s, http.StatusBadRequest, clusterData{DeleteConfirm: confirm,
			DeleteErr: "To delete the cluster, type its name, " + name + ", exactly. Nothing was deleted."})
		return
	}
	ctx, cancel := ctx(r)
	defer cancel()
	_, err := c.client(r, s).DeleteCluster(ctx, name, oneLine(r.PostForm.Get("comment")))
	if c.apiError(w, r, s, err) {
		return
	}
	if err != nil {
		c.showCluster(w, r, s, code(err), clusterData{DeleteConfirm: confirm, DeleteErr: errText(err)})
		return
	}
	c.done(w, r, s, "/console/clusters/"+url.PathEscape(name), "Deleting cluster "+name+": its nodes and overlays are being removed.")
}
