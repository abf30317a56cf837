package guestos

import (
	"net/netip"
	"testing"

	"libvirt.org/go/libvirtxml"

	"caretaker/internal/golden"
)

// TestDomainXML pins the domain XML a guest needs, as the lab would make
// it of DomainOS, Features, Devices and Interface, and checks that it
// reads back.
func TestDomainXML(t *testing.T) {
	g := Guest{Hostname: "lab-host-a-1", Addr: netip.MustParsePrefix("10.77.1.3/16")}
	img := Image{Kernel: "/var/lib/caretaker/guest-os/vmlinuz", Initrd: "/var/lib/caretaker/guest-os/initrd.gz"}
	osx, err := DomainOS(img, g)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DomainOS(Image{}, g); err == nil {
		t.Error("DomainOS accepted an image without files")
	}
	for _, log := range []string{"", "/var/log/caretaker/lab-host-a-1.console"} {
		d, err := Domain("lab-host-a-1", img, g, Interface("ctk-br0", "52:54:00:12:34:56"), log)
		if err != nil {
			t.Fatal(err)
		}
		if d.OS.Cmdline != osx.Cmdline {
			t.Errorf("Domain's command line %q, DomainOS's %q", d.OS.Cmdline, osx.Cmdline)
		}
		xml, err := d.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		name := "testdata/domain-pty.xml"
		if log != "" {
			name = "testdata/domain-log.xml"
		}
		golden.Compare(t, name, []byte(xml+"\n"), *update)
		var back libvirtxml.Domain
		if err := back.Unmarshal(xml); err != nil {
			t.Fatalf("unmarshal %s: %v", name, err)
		}
		if back.OS.Cmdline != osx.Cmdline || len(back.Devices.Panics) != 1 || back.Devices.Panics[0].Model != "isa" {
			t.Errorf("%s read back: os %+v, panics %+v", name, back.OS, back.Devices.Panics)
		}
	}
}
