package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"caretaker/collectors/overlay"
	"caretaker/internal/overlaynet"
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
	// Underlay, Local, Port and MTU are needed only to repair the
	// overlay (see overlaynet.Desired for their defaults); the
	// collector does without them, and a repair without Underlay fails.
	Underlay string `yaml:"underlay"`
	Local    string `yaml:"local"`
	Port     int    `yaml:"port"`
	MTU      int    `yaml:"mtu"`
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
		errs = append(errs, o.validateRepairFields(fmt.Sprintf("overlays[%d]", i))...)
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

// validateRepairFields checks the fields only a repair uses, with the same
// rules as overlaynet.Desired.Validate, so that a file that loads can be
// repaired. path is the overlay's, "overlays[i]".
func (o OverlayConfig) validateRepairFields(path string) []error {
	var errs []error
	if o.Bridge != "" && o.Bridge == o.Device {
		errs = append(errs, yamlfile.Errorf(path+".bridge", "%q is also the overlay's device", o.Bridge))
	}
	if o.Underlay != "" {
		switch {
		case len(o.Underlay) > 15: // IFNAMSIZ - 1
			errs = append(errs, yamlfile.Errorf(path+".underlay", "%q: longer than 15 bytes", o.Underlay))
		case o.Underlay == "." || o.Underlay == "..", strings.ContainsAny(o.Underlay, "/: \t\n"):
			errs = append(errs, yamlfile.Errorf(path+".underlay", "%q: not a valid interface name", o.Underlay))
		case o.Underlay == o.Device || o.Underlay == o.Bridge:
			errs = append(errs, yamlfile.Errorf(path+".underlay", "%q is also the overlay's device or bridge", o.Underlay))
		}
	}
	if o.Local != "" {
		if ip := net.ParseIP(o.Local); ip == nil || ip.IsUnspecified() || ip.IsMulticast() {
			errs = append(errs, yamlfile.Errorf(path+".local", "%q is not a unicast IP address", o.Local))
		}
	}
	if o.Port < 0 || o.Port > 65535 {
		errs = append(errs, yamlfile.Errorf(path+".port", "%d: out of range 1-65535", o.Port))
	}
	if o.MTU != 0 && (o.MTU < 68 || o.MTU > 65535) {
		errs = append(errs, yamlfile.Errorf(path+".mtu", "%d: out of range 68-65535", o.MTU))
	}
	return errs
}

// Desired is the overlay as overlaynet.Ensure makes the host have it. The
// file must have been validated (LoadFile does).
func (o OverlayConfig) Desired() overlaynet.Desired {
	d := overlaynet.Desired{
		Cluster:  o.Cluster,
		Device:   o.Device,
		Bridge:   o.Bridge,
		VNI:      o.VNI,
		Underlay: o.Underlay,
		Port:     o.Port,
		MTU:      o.MTU,
	}
	if o.Local != "" {
		d.Local = net.ParseIP(o.Local)
	}
	for _, p := range o.Peers {
		d.Peers = append(d.Peers, net.ParseIP(p.Address))
	}
	return d
}

// DesiredOverlays is every overlay of the file as Config.OverlayRepairs
// takes them.
func (f *File) DesiredOverlays() []overlaynet.Desired {
	out := make([]overlaynet.Desired, 0, len(f.Overlays))
	for _, o := range f.Overlays {
		out = append(out, o.Desired())
	}
	return out
}
