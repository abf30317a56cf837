package fleet

import (
	"context"

	"caretaker/internal/agentapi"
	"caretaker/internal/overlayspec"
	"caretaker/provisioner/clusters"
)

// nodes makes the clusters' nodes and overlays through the hosts' agents.
type nodes struct{ p *Provisioner }

func (n nodes) CreateNode(ctx context.Context, host string, s clusters.NodeSpec) (string, error) {
	// The store took only declared images; a record made before, or an
	// image since dropped from provisioner.base_images, stops here.
	base, err := n.p.images.Resolve(s.BaseImage)
	if err != nil {
		return "", err
	}
	c, err := n.p.agents.Client(host)
	if err != nil {
		return "", err
	}
	// Replace: the reconciler creates a node only when it is missing or
	// must be re-created clean. The agent replaces only a domain with the
	// node's UUID and cluster, never another cluster's of the same name.
	// The seed names the node; the image's own cloud-init configuration
	// does the rest.
	resp, err := c.PutNode(ctx, agentapi.NodeRequest{Cluster: s.Cluster, Name: s.Name, Role: s.Role, VCPUs: s.VCPUs,
		MemoryBytes: s.MemoryBytes, DiskBytes: s.DiskBytes, Bridge: s.Bridge, MAC: s.MAC, BaseImage: base, UUID: s.UUID,
		UserData: "#cloud-config\nhostname: " + s.Name + "\n"}, true)
	if err != nil {
		return "", err // the reconciler says which node on which host
	}
	return resp.UUID, nil
}

func (n nodes) DeleteNode(ctx context.Context, host string, id clusters.NodeID) error {
	c, err := n.p.agents.Client(host)
	if err != nil {
		return err
	}
	return c.DeleteNode(ctx, id.Cluster, id.Name, id.UUID)
}

func (n nodes) NodeRunning(ctx context.Context, host, uuid string) (bool, error) {
	return n.p.agents.GuestRunning(ctx, host, uuid)
}

// EnsureOverlay PUTs the overlay to the host's agent as the reconciler
// made it, peers named, so that the agent's overlay collector labels each
// peer with its host.
func (n nodes) EnsureOverlay(ctx context.Context, host string, o overlayspec.Overlay) error {
	c, err := n.p.agents.Client(host)
	if err != nil {
		return err
	}
	_, err = c.PutOverlay(ctx, o.Cluster, o)
	return err
}

func (n nodes) RemoveOverlay(ctx context.Context, host, cluster string) error {
	c, err := n.p.agents.Client(host)
	if err != nil {
		return err
	}
	return c.DeleteOverlay(ctx, cluster)
}
