package clusters

import (
	"fmt"
	"slices"
	"strings"
)

// BaseImages are the volumes of the workers' storage pools that clusters'
// nodes may be overlays of: the server's default (provisioner.base_image),
// which a spec without base_image gets, and the others declared
// (provisioner.base_images). Any other name — another cluster's node
// disk, a path out of the pool — is refused before it reaches an agent.
// The zero value allows only the default, whatever it is.
type BaseImages struct {
	Default  string
	Declared []string
}

// Resolve returns the volume a spec's base_image names: the default for
// "", the name itself when it is the default or declared, else an error
// naming the images allowed.
func (b BaseImages) Resolve(name string) (string, error) {
	switch {
	case name == "":
		return b.Default, nil
	case name == b.Default, slices.Contains(b.Declared, name):
		return name, nil
	}
	if allowed := b.allowed(); allowed != "" {
		return "", fmt.Errorf("base_image %q: not a declared base image (provisioner.base_images); allowed: %s, or none for the default", name, allowed)
	}
	return "", fmt.Errorf("base_image %q: not a declared base image (provisioner.base_images declares none); omit it for the server's default", name)
}

// allowed lists the images a spec may name, the default first.
func (b BaseImages) allowed() string {
	var names []string
	if b.Default != "" {
		names = append(names, b.Default+" (the default)")
	}
	for _, d := range b.Declared {
		if d != b.Default && !slices.Contains(names, d) {
			names = append(names, d)
		}
	}
	return strings.Join(names, ", ")
}
