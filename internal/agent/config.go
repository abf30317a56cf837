package agent

import (
	"errors"
	"fmt"
	"os"
	"time"

	"caretaker/internal/overlayspec"
	"caretaker/internal/yamlfile"
)

// File is the agent's optional configuration file (--config.file): what
// the host is expected to have, which the collectors check the host
// against. The server PUTs the same overlays (overlayspec.Overlay) for the
// guest clusters it provisions.
type File struct {
	// Overlays are the guest clusters' VXLAN overlays this host should
	// have, with the remote VTEPs (host and address) each must reach. A
	// repair also needs the underlay; local, port and mtu have defaults
	// (see overlayspec.Overlay).
	Overlays []overlayspec.Overlay `yaml:"overlays"`
	// NeighborStaleAfter also counts a peer's underlay neighbour entry as
	// stale when unconfirmed for longer (0: only FAILED/INCOMPLETE count).
	NeighborStaleAfter time.Duration `yaml:"neighbor_stale_after"`
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

// Validate implements yamlfile.Validator. The overlays are checked as
// the overlay collector and a repair check them (overlayspec), so that a
// file that loads is expected and, given an underlay, repaired as written.
func (f *File) Validate() error {
	var errs []error
	if f.NeighborStaleAfter < 0 {
		errs = append(errs, yamlfile.Errorf("neighbor_stale_after", "must not be negative"))
	}
	for _, p := range overlayspec.SetProblems(f.Overlays) {
		errs = append(errs, yamlfile.Errorf(fmt.Sprintf("overlays[%d].%s", p.Index, p.Field), "%s", p.Detail))
	}
	return errors.Join(errs...)
}
