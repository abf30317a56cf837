package clusters

import (
	"context"
	"fmt"

	"caretaker/provisioner/placement"
)

// Plan is placement's answer for a cluster before it is created: whether
// all its nodes fit on the ready hosts now, why not, and where each would
// go. It promises nothing: the hosts may change before the create.
type Plan struct {
	Fits   bool          `json:"fits"`
	Reason string        `json:"reason,omitempty"`
	Nodes  []PlannedNode `json:"nodes"`
}

// PlannedNode is one node of a Plan; Host is "" when the plan does not fit.
type PlannedNode struct {
	Name string `json:"name"`
	Pool string `json:"pool"`
	Host string `json:"host,omitempty"`
}

// Plan checks spec as a create would (an invalid spec, a taken name: the
// store's errors) and asks placement where its nodes would go on the
// ready hosts now. A spec that does not fit is a Plan with Fits false and
// placement's reason, not an error.
func (r *Reconciler) Plan(ctx context.Context, spec Spec) (Plan, error) {
	if err := r.o.Store.CheckNew(spec); err != nil {
		return Plan{}, fmt.Errorf("plan cluster: %w", err)
	}
	var todo []placement.Node
	plan := Plan{Nodes: []PlannedNode{}}
	for _, p := range spec.Pools {
		for i := range p.Count {
			name := NodeName(spec.Name, p.Name, i)
			todo = append(todo, placement.Node{Cluster: spec.Name, Name: name, VCPUs: p.VCPUs, MemoryBytes: p.MemoryBytes})
			plan.Nodes = append(plan.Nodes, PlannedNode{Name: name, Pool: p.Name})
		}
	}
	hosts, err := r.o.Hosts.ReadyHosts(ctx)
	if err != nil {
		return Plan{}, fmt.Errorf("plan cluster %s: list ready hosts: %w", spec.Name, err)
	}
	placed, err := placement.Place(hosts, todo, r.o.Config.Ratios)
	if err != nil {
		plan.Reason = err.Error()
		if len(hosts) == 0 {
			plan.Reason = "no worker host is ready: " + plan.Reason
		}
		return plan, nil
	}
	for i := range plan.Nodes {
		plan.Nodes[i].Host = placed[plan.Nodes[i].Name]
	}
	plan.Fits = true
	return plan, nil
}
