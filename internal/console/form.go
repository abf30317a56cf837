package console

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"caretaker/provisioner/clusters"
)

// The names of the two pools Create Cluster makes.
const (
	masterPool = "master"
	workerPool = "worker"
)

// clusterForm is the Create Cluster form as typed, kept to show again.
type clusterForm struct {
	Name, Masters, Workers, VCPUs, MemoryMiB, DiskGiB, BaseImage string
}

// defaultClusterForm is the form's first values: a small cluster.
var defaultClusterForm = clusterForm{Masters: "1", Workers: "2", VCPUs: "2", MemoryMiB: "2048", DiskGiB: "20"}

func clusterFormFrom(v url.Values) clusterForm {
	g := func(k string) string { return strings.TrimSpace(v.Get(k)) }
	return clusterForm{Name: g("name"), Masters: g("masters"), Workers: g("workers"), VCPUs: g("vcpus"),
		MemoryMiB: g("memory_mib"), DiskGiB: g("disk_gib"), BaseImage: g("base_image")}
}

// spec reads the form into a spec: a master and a worker pool of
// identical nodes. It checks only that the numbers are numbers of a sane
// size, one problem per field; the API checks the rest (names, ranges, the
// fleet's capacity) and says so in its own words.
func (f clusterForm) spec() (clusters.Spec, []string) {
	var problems []string
	num := func(field, v string, bits int) uint64 {
		if v == "" {
			problems = append(problems, field+": required")
			return 0
		}
		n, err := strconv.ParseUint(v, 10, bits)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: want a whole number from 0 to %d, got %q", field, uint64(1)<<bits-1, clip(v)))
			return 0
		}
		return n
	}
	masters := num("masters", f.Masters, 16)
	workers := num("workers", f.Workers, 16)
	vcpus := num("vcpus", f.VCPUs, 16)
	mem := num("memory_mib", f.MemoryMiB, 32)
	disk := num("disk_gib", f.DiskGiB, 32)
	if f.Name == "" {
		problems = append(problems, "name: required")
	}
	pool := func(name, role string, count uint64) clusters.Pool {
		return clusters.Pool{Name: name, Role: role, Count: int(count), VCPUs: int(vcpus), MemoryBytes: mem << 20, DiskBytes: disk << 30}
	}
	return clusters.Spec{
		Name:      f.Name,
		BaseImage: f.BaseImage,
		Pools:     []clusters.Pool{pool(masterPool, clusters.RoleMaster, masters), pool(workerPool, clusters.RoleWorker, workers)},
	}, problems
}

// clip shortens a value quoted back in a message.
func clip(s string) string {
	const n = 40
	for i := range s {
		if i >= n {
			return s[:i] + "…"
		}
	}
	return s
}
