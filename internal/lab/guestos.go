package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"libvirt.org/go/libvirtxml"

	"caretaker/internal/guestos"
)

// makeBoot readies the guest OS (guestos) for the lab's guests, with the
// lab's network: Debian's kernel and a busybox initramfs, in a directory
// QEMU (uid libvirt-qemu) can read, removed with the lab. Without the
// pieces (deploy/setup.sh run fetches them) the guests boot nothing and
// noBoot says why.
func (r *labRun) makeBoot() error {
	if r.net == nil {
		r.noBoot = "no guest OS: it needs the lab's network (" + r.noNet + ")"
		return nil
	}
	if err := guestos.Check(guestos.DefaultDir); err != nil {
		r.noBoot = "no guest OS: " + err.Error()
		return nil
	}
	dir := poolDir(r.dataDir, labPool(r.o.GuestPrefix)+"-os")
	img, err := guestos.Build(guestos.DefaultDir, dir)
	if err != nil {
		return fmt.Errorf("guest OS: %w", err)
	}
	r.undo.add("remove "+dir, func() error { return os.RemoveAll(dir) })
	r.boot = func(d *libvirtxml.Domain, name string, addr netip.Prefix) error {
		if d.Devices == nil || len(d.Devices.Interfaces) != 1 {
			return errors.New("a guest that boots needs its one NIC")
		}
		b, err := guestos.Domain(name, img, guestos.Guest{Hostname: name, Addr: addr}, d.Devices.Interfaces[0],
			filepath.Join(dir, name+".console.log"))
		if err != nil {
			return err
		}
		b.Metadata = d.Metadata
		*d = b
		return nil
	}
	return nil
}
