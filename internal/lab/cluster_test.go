package lab

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
)

var clusterHosts = flag.Int("cluster-hosts", 6, "hosts of TestLabClusterCreate's lab, and nodes of its cluster (half masters)")

// TestLabClusterCreate runs the real lab with hosts and no guests of its
// own, creates a guest cluster of one node per host through runbook, checks
// in libvirt that every node runs with caretaker's metadata naming the
// cluster, deletes the cluster and stops the lab, which must leave no node,
// pool or namespace behind. It logs the seconds from `runbook cluster
// create` to all nodes running (make bench reports them).
func TestLabClusterCreate(t *testing.T) {
	requireQEMU(t)
	if err := checkClusters(); err != nil {
		needs.Missing(t, "the lab makes no clusters here: %v", err)
	}
	n := *clusterHosts
	if n < 2 || n > 26 {
		t.Fatalf("-cluster-hosts %d: want 2 to 26", n)
	}
	masters, workers := n/2, n-n/2
	bin := buildBinaries(t)
	dir := t.TempDir()
	rbConfig := filepath.Join(dir, "runbook.yml")
	// Names of this run's own: the lab's guests, pool and namespaces
	// (prefix) and the cluster's nodes and bridge (<cluster>-…, br-<cluster>).
	sweepStale(t, "bench")
	prefix, cluster := ownPrefix("bench"), fmt.Sprintf("lc%d", os.Getpid())
	pool := labPool(prefix)

	conn, err := libvirtconn.Dial(systemURI)
	if err != nil {
		t.Fatal(err)
	}
	// Closed after the cleanup below, which uses it (cleanups run last first).
	t.Cleanup(func() { conn.Disconnect() })

	// Whatever happened, leave no node behind: registered first, this
	// runs after the lab's cleanup has stopped it.
	t.Cleanup(func() {
		if _, err := removeNodes(conn, pool); err != nil {
			t.Errorf("remove leftover nodes: %v", err)
		}
	})
	lab := startLab(t, bin, nil, nil, "--driver", "qemu",
		"--web.listen-address", "127.0.0.1:0", "--runbook.config", rbConfig,
		"--guest-prefix", prefix, "--hosts", strconv.Itoa(n), "--guests-per-host", "0",
		"--data.dir", filepath.Join(dir, "data"))
	exited := lab.exited

	runbook := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(bin, "runbook"), args...)
		cmd.Env = append(os.Environ(), "RUNBOOK_CONFIG="+rbConfig, "RUNBOOK_URL=", "RUNBOOK_TOKEN=")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		b, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("runbook %v: %w: %s", args, err, stderr.String())
		}
		return string(b), nil
	}

	await(t, exited, 2*time.Minute, fmt.Sprintf("%d ready hosts", n), func() bool {
		if _, err := os.Stat(rbConfig); err != nil {
			return false
		}
		b, err := runbook("host", "list", "-o", "json")
		if err != nil {
			return false
		}
		var list struct {
			Hosts []struct {
				Provisioning *struct {
					State string `json:"state"`
				} `json:"provisioning"`
			} `json:"hosts"`
		}
		if json.Unmarshal([]byte(b), &list) != nil {
			return false
		}
		ready := 0
		for _, h := range list.Hosts {
			if h.Provisioning != nil && h.Provisioning.State == "ready" {
				ready++
			}
		}
		return ready == n
	})

	start := time.Now()
	created, err := runbook("cluster", "create", cluster, "--masters", strconv.Itoa(masters), "--workers", strconv.Itoa(workers),
		"--vcpus", "1", "--memory", "64MiB", "--disk", "64MiB", "--wait", "--timeout", "3m", "--poll-interval", "100ms")
	wall := time.Since(start).Seconds()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`cluster ` + cluster + ` ready: (\d+) nodes running after ([0-9.]+) s`).FindStringSubmatch(created)
	if m == nil || m[1] != strconv.Itoa(n) {
		t.Fatalf("runbook cluster create printed %q, want \"cluster %s ready: %d nodes running after … s\"", created, cluster, n)
	}
	t.Logf("cluster create: %d nodes running after %s s (runbook's count; wall %.1f s)", n, m[2], wall)

	nodes := clusterNodes(t, conn, cluster)
	if len(nodes) != n {
		t.Errorf("libvirt has nodes %v, want %d", nodes, n)
	}
	for name, st := range nodes {
		if want := "running, cluster " + cluster; st != want {
			t.Errorf("node %s: %s, want %s", name, st, want)
		}
	}

	if _, err := runbook("cluster", "delete", cluster, "--yes", "--wait", "--timeout", "2m"); err != nil {
		t.Fatal(err)
	}
	if left := clusterNodes(t, conn, cluster); len(left) > 0 {
		t.Errorf("nodes left after runbook cluster delete: %v", left)
	}

	// Ctrl-C removes what the lab made for clusters.
	if err := lab.stop(); err != nil {
		t.Fatalf("lab exited with %v after SIGINT", err)
	}
	if _, err := conn.StoragePoolLookupByName(pool); err == nil {
		t.Errorf("storage pool %s is left after the lab stopped", pool)
	}
	for i := range n {
		ns := netnsName(prefix, "host-"+string(rune('a'+i)))
		if _, err := os.Stat(filepath.Join("/var/run/netns", ns)); err == nil {
			t.Errorf("network namespace %s is left after the lab stopped", ns)
		}
	}
}

// clusterNodes returns the domains named <cluster>-… with their state and
// the cluster their caretaker metadata names, as "running, cluster <name>".
func clusterNodes(t *testing.T, conn *libvirt.Libvirt, cluster string) map[string]string {
	t.Helper()
	doms, _, err := conn.ConnectListAllDomains(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, d := range doms {
		name := d.Name
		if !strings.HasPrefix(name, cluster+"-") {
			continue
		}
		state := "not running"
		if s, _, err := conn.DomainGetState(d, 0); err == nil && libvirt.DomainState(s) == libvirt.DomainRunning {
			state = "running"
		}
		meta := "no caretaker metadata"
		if x, err := conn.DomainGetMetadata(d, int32(libvirt.DomainMetadataElement), libvirt.OptString{guestmeta.Namespace}, libvirt.DomainAffectConfig); err == nil {
			if md, err := guestmeta.Parse(x); err == nil {
				meta = "cluster " + md.Cluster
			}
		}
		out[name] = state + ", " + meta
	}
	return out
}
