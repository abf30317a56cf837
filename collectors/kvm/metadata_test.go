package kvm

import (
	"fmt"
	"testing"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
)

// TestMetadataThroughLibvirt checks that the element Metadata.XML writes is
// accepted by virDomainSetMetadata and in a domain definition, and reads back
// from the domain's XML (readIdentity), for running and shut-off domains.
func TestMetadataThroughLibvirt(t *testing.T) {
	t.Parallel()
	needs.Libvirtd(t)
	// A node of the test's own: test:///default is shared by every
	// client of libvirtd.
	conn, err := libvirtconn.Dial("test://" + writeNode(t, t.TempDir(), nil))
	if err != nil {
		t.Fatalf("open test driver: %v", err)
	}
	t.Cleanup(func() { conn.Disconnect() })

	want := guestmeta.Metadata{Intent: guestmeta.IntentRunning, Cluster: "lab", Role: "worker"}
	elem, err := want.XML()
	if err != nil {
		t.Fatal(err)
	}

	embedded, err := conn.DomainDefineXML(fmt.Sprintf(`<domain type="test">
  <name>metadata-embedded</name>
  <metadata>%s</metadata>
  <memory>65536</memory>
  <os><type>hvm</type></os>
</domain>`, elem))
	if err != nil {
		t.Fatalf("define a domain with the element embedded: %v", err)
	}

	set, err := conn.DomainDefineXML(`<domain type="test">
  <name>metadata-set</name>
  <memory>65536</memory>
  <os><type>hvm</type></os>
</domain>`)
	if err != nil {
		t.Fatalf("define a domain: %v", err)
	}
	if err := conn.DomainCreate(set); err != nil {
		t.Fatalf("start domain: %v", err)
	}
	err = conn.DomainSetMetadata(set, int32(libvirt.DomainMetadataElement), libvirt.OptString{elem}, libvirt.OptString{guestmeta.Prefix},
		libvirt.OptString{guestmeta.Namespace}, libvirt.DomainAffectConfig|libvirt.DomainAffectLive)
	if err != nil {
		t.Fatalf("SetMetadata(%s): %v", elem, err)
	}

	for _, dom := range []libvirt.Domain{embedded, set} {
		active, err := conn.DomainIsActive(dom)
		if err != nil {
			t.Fatalf("%s: IsActive: %v", dom.Name, err)
		}
		got, err := readIdentity(conn, dom, active == 1)
		if err != nil || !got.hasMeta || got.meta != want {
			t.Errorf("%s: readIdentity = %+v, %v; want metadata %+v", dom.Name, got, err, want)
		}
	}
}
