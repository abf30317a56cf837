package kvm

import (
	"fmt"
	"testing"

	"libvirt.org/go/libvirt"

	"caretaker/internal/guestmeta"
)

// TestMetadataThroughLibvirt checks that the element Metadata.XML writes is
// accepted by virDomainSetMetadata and in a domain definition, and reads back
// from the domain's XML (readIdentity), for running and shut-off domains.
func TestMetadataThroughLibvirt(t *testing.T) {
	t.Parallel()
	conn, err := libvirt.NewConnect("test:///default")
	if err != nil {
		t.Fatalf("open test driver: %v", err)
	}
	t.Cleanup(func() { conn.Close() })

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
	t.Cleanup(func() { embedded.Undefine(); embedded.Free() })

	set, err := conn.DomainDefineXML(`<domain type="test">
  <name>metadata-set</name>
  <memory>65536</memory>
  <os><type>hvm</type></os>
</domain>`)
	if err != nil {
		t.Fatalf("define a domain: %v", err)
	}
	t.Cleanup(func() { set.Destroy(); set.Undefine(); set.Free() })
	if err := set.Create(); err != nil {
		t.Fatalf("start domain: %v", err)
	}
	err = set.SetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, elem, guestmeta.Prefix, guestmeta.Namespace,
		libvirt.DOMAIN_AFFECT_CONFIG|libvirt.DOMAIN_AFFECT_LIVE)
	if err != nil {
		t.Fatalf("SetMetadata(%s): %v", elem, err)
	}

	for _, dom := range []*libvirt.Domain{embedded, set} {
		name, _ := dom.GetName()
		active, err := dom.IsActive()
		if err != nil {
			t.Fatalf("%s: IsActive: %v", name, err)
		}
		got, err := readIdentity(dom, active)
		if err != nil || !got.hasMeta || got.meta != want {
			t.Errorf("%s: readIdentity = %+v, %v; want metadata %+v", name, got, err, want)
		}
	}
}
