package kvm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"caretaker/internal/guestmeta"
)

// genDomain is one domain of a generated test-driver node.
type genDomain struct {
	name, uuid string
	// runstate is libvirt's virDomainState: 1 running, 3 paused, 5 shutoff.
	runstate int
	meta     *guestmeta.Metadata
	// cluster and role are what the collector should report, from the
	// metadata or the name.
	cluster, role string
	bridge, mac   string
}

// genNode returns n domains in a mix of states, half of them with
// caretaker's metadata, most of the others named by the
// <cluster>-<role>-<n> convention and a few named otherwise, each with two
// disks and one bridged interface.
func genNode(n int) []genDomain {
	clusters := []string{"prod", "stage", "ci", "edge", "lab"}
	doms := make([]genDomain, n)
	for i := range doms {
		cluster := clusters[i%len(clusters)]
		role := "worker"
		if i%10 == 0 {
			role = "cp"
		}
		d := genDomain{
			uuid:     fmt.Sprintf("0c000000-0000-4000-8000-%012x", i+1),
			runstate: 1,
			bridge:   "br-" + cluster,
			mac:      fmt.Sprintf("52:54:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff),
		}
		switch i % 7 {
		case 0:
			d.runstate = 5
		case 1:
			d.runstate = 3
		}
		switch {
		case i%2 == 0:
			// The metadata wins over a name that says otherwise.
			d.name = fmt.Sprintf("guest%d", i)
			intent := guestmeta.IntentRunning
			if d.runstate == 5 {
				intent = guestmeta.IntentStopped
			}
			d.meta = &guestmeta.Metadata{Intent: intent, Cluster: cluster, Role: role}
			d.cluster, d.role = cluster, role
		case i%5 == 1:
			d.name = fmt.Sprintf("scratch%d", i)
		default:
			d.name = fmt.Sprintf("%s-%s-%d", cluster, role, i)
			d.cluster, d.role = cluster, role
		}
		doms[i] = d
	}
	return doms
}

// writeNode writes doms as a test-driver node file in dir and returns its
// absolute path, for test:///path or test+unix:///path.
func writeNode(tb testing.TB, dir string, doms []genDomain) string {
	tb.Helper()
	var b strings.Builder
	b.WriteString("<node>\n  <cpu><mhz>2000</mhz><model>x86_64</model><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads></cpu>\n  <memory>67108864</memory>\n")
	for _, d := range doms {
		fmt.Fprintf(&b, "  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\n    <name>%s</name>\n    <uuid>%s</uuid>\n", d.name, d.uuid)
		if d.meta != nil {
			x, err := d.meta.XML()
			if err != nil {
				tb.Fatal(err)
			}
			fmt.Fprintf(&b, "    <metadata>%s</metadata>\n", x)
		}
		fmt.Fprintf(&b, "    <memory unit='MiB'>1024</memory>\n    <currentMemory unit='MiB'>512</currentMemory>\n    <vcpu>2</vcpu>\n    <os><type>hvm</type></os>\n")
		fmt.Fprintf(&b, "    <devices>\n")
		for _, disk := range []string{"vda", "vdb"} {
			fmt.Fprintf(&b, "      <disk type='file' device='disk'><source file='/var/lib/libvirt/images/%s-%s.qcow2'/><target dev='%s' bus='virtio'/></disk>\n", d.name, disk, disk)
		}
		fmt.Fprintf(&b, "      <interface type='bridge'><mac address='%s'/><source bridge='%s'/></interface>\n", d.mac, d.bridge)
		fmt.Fprintf(&b, "    </devices>\n    <test:runstate>%d</test:runstate>\n  </domain>\n", d.runstate)
	}
	b.WriteString("</node>\n")
	path := filepath.Join(dir, fmt.Sprintf("node%d.xml", len(doms)))
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		tb.Fatalf("write test node: %v", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		tb.Fatal(err)
	}
	return abs
}
