package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"caretaker/collectors/overlay"
	"caretaker/internal/yamlfile"
)

// File is the agent's optional configuration file (--config.file): what
// the host is expected to have, which the collectors check the host
// against. The provisioner will feed the same expectations later.
type File struct {
	// Overlays are the guest clusters' VXLAN overlays this host should
	// have, with the remote VTEPs each must reach.
	Overlays []OverlayConfig `yaml:"overlays"`
	// NeighborStaleAfter also counts a peer's underlay neighbour entry as
	// stale when unconfirmed for longer (0: only FAILED/INCOMPLETE count).
	NeighborStaleAfter time.Duration `yaml:"neighbor_stale_after"`
}

// OverlayConfig is one overlay in the agent's configuration file.
type OverlayConfig struct {
	Cluster string       `yaml:"cluster"`
	Device  string       `yaml:"device"`
	Bridge  string       `yaml:"bridge"`
	VNI     int          `yaml:"vni"`
	Peers   []PeerConfig `yaml:"peers"`
}

// PeerConfig is a remote host's VTEP.
type PeerConfig struct {
	Host    string `yaml:"host"`
	Address string `yaml:"address"`
}

// LoadFile reads the agent's configuration file strictly; errors name the
// file, the line and the field.
func LoadFile(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent config: %w", err)
	}
	var f File
	if err := yamlfile.Decode(path, data, &f); err != nil {
		return nil, err
	}
	return &f, nil
}

// Validate implements yamlfile.Validator.
func (f *File) Validate() error {
	var errs []error
	if f.NeighborStaleAfter < 0 {
		errs = append(errs, yamlfile.Errorf("neighbor_stale_after", "must not be negative"))
	}
	for i, o := range f.Overlays {
		for j, p := range o.Peers {
			if net.ParseIP(p.Address) == nil {
				errs = append(errs, yamlfile.Errorf(fmt.Sprintf("overlays[%d].peers[%d].address", i, j), "%q is not an IP address", p.Address))
			}
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	all := f.OverlayList()
	for i := range all {
		err := overlay.ValidateOverlays(all[i : i+1])
		if err == nil {
			continue
		}
		problems := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			problems = j.Unwrap()
		}
		for _, p := range problems {
			// Drop the collector's "overlay 0 (cluster x)" prefix: the path says which.
			if inner := errors.Unwrap(p); inner != nil {
				p = inner
			}
			errs = append(errs, yamlfile.Errorf(fmt.Sprintf("overlays[%d]", i), "%v", p))
		}
	}
	if len(errs) == 0 {
		if err := overlay.ValidateOverlays(all); err != nil {
			errs = append(errs, yamlfile.Errorf("overlays", "%v", err))
		}
	}
	return errors.Join(errs...)
}

// OverlayList is the file's overlays as the overlay collector takes them.
func (f *File) OverlayList() []overlay.Overlay {
	out := make([]overlay.Overlay, 0, len(f.Overlays))
	for _, o := range f.Overlays {
		ov := overlay.Overlay{Cluster: o.Cluster, Device: o.Device, Bridge: o.Bridge, VNI: o.VNI}
		for _, p := range o.Peers {
			ov.Peers = append(ov.Peers, overlay.Peer{Host: p.Host, Address: net.ParseIP(p.Address)})
		}
		out = append(out, ov)
	}
	return out
}
