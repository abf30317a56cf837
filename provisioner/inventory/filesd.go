package inventory

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// targetGroup is one group of a Prometheus file_sd file.
type targetGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// FileSDTargets renders hosts as a Prometheus file_sd JSON file: one group
// per host, by name, whose target is the host's agent and whose labels are
// host=<name>, role=<role> and the host's labels. Hosts must be valid (as
// Load and Store.Add leave them): validation keeps host and role out of
// the labels.
func FileSDTargets(hosts []Host) []byte {
	hosts = slices.SortedFunc(slices.Values(hosts), func(a, b Host) int { return strings.Compare(a.Name, b.Name) })
	groups := make([]targetGroup, 0, len(hosts))
	for _, h := range hosts {
		labels := maps.Clone(h.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		labels["host"] = h.Name
		labels["role"] = h.Role
		groups = append(groups, targetGroup{Targets: []string{h.Agent}, Labels: labels})
	}
	b, _ := json.MarshalIndent(groups, "", "  ") // strings only: cannot fail
	return append(b, '\n')
}

// WriteFileSD writes FileSDTargets(hosts) to path atomically: Prometheus
// reads either the old file or the new one, never half of one. The
// temporary file's name ends in ".tmp…", so a file_sd glob for *.json
// does not pick it up.
func WriteFileSD(path string, hosts []Host) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write file_sd %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("write file_sd %s: %w", path, err)
		}
	}()
	if _, err := f.Write(FileSDTargets(hosts)); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
