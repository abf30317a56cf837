package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"caretaker/collectors/overlay"
	"caretaker/internal/agentapi"
	"caretaker/internal/httpjson"
	"caretaker/internal/overlaynet"
	"caretaker/internal/overlayspec"
)

// putOverlay is the overlay of cluster as the body of PUT
// /api/v1/overlays/{cluster} gives it (overlayspec.Overlay, serialised as
// is). A peer without a host, as servers sent before peers were named, is
// named by its address. Errors name the field.
func putOverlay(cluster string, o overlayspec.Overlay) (overlayspec.Overlay, error) {
	o.Cluster = cluster
	o.Peers = slices.Clone(o.Peers)
	for i, p := range o.Peers {
		if p.Host != "" {
			continue
		}
		o.Peers[i].Host = p.Address
		if a, err := overlayspec.ParseAddr(p.Address); err == nil {
			o.Peers[i].Host = a.String()
		}
	}
	if err := o.ValidateRepair(); err != nil {
		return overlayspec.Overlay{}, fmt.Errorf("overlay of cluster %q: %w", cluster, err)
	}
	return o, nil
}

// maxOverlayBody caps a PUT overlay's body: a few hundred bytes per peer.
const maxOverlayBody = 256 << 10

// repairTimeout bounds one overlay change's netlink calls.
const repairTimeout = 30 * time.Second

// overlays are the overlays the agent knows it should have: those of its
// configuration file and those the server PUT since the agent started. It
// answers the overlay endpoints and keeps the overlay collector's
// expectations in step.
type overlays struct {
	a         *Agent
	collector *overlay.Collector
	// mu runs one change at a time, and guards the maps: two repairs at
	// once would both find a device missing and the second would fail
	// to create it.
	mu sync.Mutex
	// desired are the overlays a repair makes, by cluster; expected the
	// overlay collector's, by cluster, in order of arrival.
	desired  map[string]overlayspec.Overlay
	expected []overlayspec.Overlay
}

func newOverlays(a *Agent, collector *overlay.Collector) *overlays {
	o := &overlays{
		a:         a,
		collector: collector,
		desired:   make(map[string]overlayspec.Overlay, len(a.cfg.OverlayRepairs)),
		expected:  slices.Clone(a.cfg.Overlays),
	}
	for _, d := range a.cfg.OverlayRepairs {
		o.desired[d.Cluster] = d
	}
	return o
}

// withExpected returns o.expected with cluster's overlay replaced by e, or
// removed when e is nil.
func (o *overlays) withExpected(cluster string, e *overlayspec.Overlay) []overlayspec.Overlay {
	out := make([]overlayspec.Overlay, 0, len(o.expected)+1)
	replaced := false
	for _, x := range o.expected {
		switch {
		case x.Cluster != cluster:
			out = append(out, x)
		case e != nil && !replaced:
			out = append(out, *e)
			replaced = true
		}
	}
	if e != nil && !replaced {
		out = append(out, *e)
	}
	return out
}

// handleRepair answers POST /api/v1/overlays/{cluster}/repair.
func (o *overlays) handleRepair(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, r, http.MethodPost)
		return
	}
	cluster := r.PathValue("cluster")
	o.mu.Lock()
	defer o.mu.Unlock()
	d, ok := o.desired[cluster]
	if !ok {
		httpjson.Compact.Error(w, http.StatusNotFound, fmt.Sprintf("no overlay for cluster %q in the agent's configuration", cluster))
		return
	}
	o.ensure(w, r, "repair", d)
}

// handleOverlay answers PUT and DELETE /api/v1/overlays/{cluster}.
func (o *overlays) handleOverlay(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPut:
		o.put(w, r)
	case http.MethodDelete:
		o.delete(w, r)
	default:
		methodNotAllowed(w, r, "PUT, DELETE")
	}
}

// put makes the host have the overlay in the body, and from then on
// expects it there (collector) and repairs it (/repair). A valid overlay
// is remembered even when the host cannot be made to match it yet (no
// underlay): the collector then reports it missing, which it is.
func (o *overlays) put(w http.ResponseWriter, r *http.Request) {
	cluster := r.PathValue("cluster")
	var req overlayspec.Overlay
	if err := httpjson.Decode(w, r, &req, maxOverlayBody); err != nil {
		httpjson.Compact.DecodeError(w, err)
		return
	}
	d, err := putOverlay(cluster, req)
	if err != nil {
		httpjson.Compact.Error(w, http.StatusBadRequest, err.Error())
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	expected := o.withExpected(cluster, &d)
	// Another cluster's overlay with the same device, or peers the
	// collector cannot tell apart, would make the collector drop one.
	if err := overlay.ValidateOverlays(expected); err != nil {
		httpjson.Compact.Error(w, http.StatusConflict, fmt.Sprintf("overlay of cluster %q conflicts with the overlays this host has: %v", cluster, err))
		return
	}
	o.desired[cluster] = d
	o.expected = expected
	o.collector.SetOverlays(expected)
	o.ensure(w, r, "ensure", d)
}

// ensure runs overlaynet.Ensure for d and answers the request; o.mu is held.
func (o *overlays) ensure(w http.ResponseWriter, r *http.Request, verb string, d overlayspec.Overlay) {
	logger := o.a.logger.With("action", verb+"-overlay", "cluster", d.Cluster, "device", d.Device)
	ctx, cancel := context.WithTimeout(r.Context(), repairTimeout)
	defer cancel()
	h, err := overlaynet.Open(ctx, o.a.cfg.NetNS)
	if err != nil {
		logger.Warn(verb+" overlay failed", "err", err)
		httpjson.Compact.Error(w, http.StatusInternalServerError, fmt.Sprintf("%s overlay of cluster %s: %v", verb, d.Cluster, err))
		return
	}
	defer h.Close()
	changes, err := overlaynet.Ensure(h, d)
	if err != nil {
		// The changes made before the failure stay on the host: say so.
		logger.Warn(verb+" overlay failed", "err", err, "changes", changes)
		code := http.StatusInternalServerError
		if errors.Is(err, overlaynet.ErrConflict) {
			code = http.StatusConflict
		}
		msg := fmt.Sprintf("%s overlay of cluster %s: %v", verb, d.Cluster, err)
		if len(changes) > 0 {
			msg += fmt.Sprintf(" (changed before the failure: %s)", strings.Join(changes, "; "))
		}
		httpjson.Compact.Error(w, code, msg)
		return
	}
	if len(changes) > 0 {
		logger.Info("changed overlay", "changes", changes)
	} else {
		logger.Info("overlay already as desired")
	}
	httpjson.Compact.Write(w, http.StatusOK, agentapi.OverlayRepair{Cluster: d.Cluster, Changes: changes})
}

// delete removes the cluster's VXLAN device and bridge and forgets the
// overlay. It refuses while the bridge has ports other than the VXLAN
// device (guests' taps): deleting the bridge would cut a live guest off.
// Names come from the overlay the agent knows, else the provisioner's
// vx-<cluster> and br-<cluster>.
func (o *overlays) delete(w http.ResponseWriter, r *http.Request) {
	cluster := r.PathValue("cluster")
	o.mu.Lock()
	defer o.mu.Unlock()
	device, bridge := "vx-"+cluster, "br-"+cluster
	if d, ok := o.desired[cluster]; ok {
		device, bridge = d.Device, d.Bridge
	} else if i := slices.IndexFunc(o.expected, func(e overlayspec.Overlay) bool { return e.Cluster == cluster }); i >= 0 {
		device, bridge = o.expected[i].Device, o.expected[i].Bridge
	}
	logger := o.a.logger.With("action", "delete-overlay", "cluster", cluster, "device", device, "bridge", bridge)

	ctx, cancel := context.WithTimeout(r.Context(), repairTimeout)
	defer cancel()
	h, err := overlaynet.Open(ctx, o.a.cfg.NetNS)
	if err != nil {
		logger.Warn("delete overlay failed", "err", err)
		httpjson.Compact.Error(w, http.StatusInternalServerError, fmt.Sprintf("delete overlay of cluster %s: %v", cluster, err))
		return
	}
	defer h.Close()
	deleted, err := removeOverlay(h, device, bridge)
	if err != nil {
		logger.Warn("delete overlay failed", "err", err, "deleted", deleted)
		code := http.StatusInternalServerError
		if errors.Is(err, overlaynet.ErrConflict) {
			code = http.StatusConflict
		}
		httpjson.Compact.Error(w, code, fmt.Sprintf("delete overlay of cluster %s: %v", cluster, err))
		return
	}
	delete(o.desired, cluster)
	o.expected = o.withExpected(cluster, nil)
	o.collector.SetOverlays(o.expected)
	logger.Info("deleted overlay", "deleted", deleted)
	w.WriteHeader(http.StatusNoContent)
}

// removeOverlay deletes the VXLAN device and the bridge where they exist,
// and returns what it deleted. It checks everything before deleting
// anything, so that a refusal (ErrConflict) changes nothing.
func removeOverlay(h *netlink.Handle, device, bridge string) ([]string, error) {
	vx, err := existingLink(h, device, "vxlan")
	if err != nil {
		return nil, err
	}
	br, err := existingLink(h, bridge, "bridge")
	if err != nil {
		return nil, err
	}
	if br != nil {
		links, err := h.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list links: %w", err)
		}
		var others []string
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index && (vx == nil || l.Attrs().Index != vx.Attrs().Index) {
				others = append(others, l.Attrs().Name)
			}
		}
		if len(others) > 0 {
			return nil, fmt.Errorf("bridge %s: %w: it still has ports %s besides the vxlan device (guests' interfaces?): delete the nodes first", bridge, overlaynet.ErrConflict, strings.Join(others, ", "))
		}
	}
	var deleted []string
	for _, l := range []netlink.Link{vx, br} {
		if l == nil {
			continue
		}
		if err := h.LinkDel(l); err != nil {
			return deleted, fmt.Errorf("delete %s %s: %w", l.Type(), l.Attrs().Name, err)
		}
		deleted = append(deleted, l.Attrs().Name)
	}
	return deleted, nil
}

// existingLink returns the device called name, nil if there is none (or
// the name cannot be one), or an ErrConflict if it is not of kind typ: the
// agent deletes only what an overlay is made of.
func existingLink(h *netlink.Handle, name, typ string) (netlink.Link, error) {
	if overlayspec.ValidIfName(name) != nil {
		return nil, nil
	}
	l, err := h.LinkByName(name)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("look up %s %s: %w", typ, name, err)
	case l.Type() != typ:
		return nil, fmt.Errorf("check %s %s: %w: it is a %s device, not a %s; left alone", typ, name, overlaynet.ErrConflict, l.Type(), typ)
	}
	return l, nil
}
