// Package guestos makes the lab's QEMU guests boot a real Linux: Debian's
// kernel, direct kernel boot, with a tiny busybox initramfs built here in
// Go. Each guest loads its virtio NIC's driver, takes the address the
// kernel command line gives it, answers ping, and serves on port 80
//
//	GET /cgi-bin/ping?A.B.C.D  200 "reachable" or 502 "unreachable" (400 for a bad query)
//	GET /cgi-bin/panic         200, then a kernel panic, which QEMU's pvpanic
//	                           device reports: libvirt sees the domain crash
//	GET /cgi-bin/info          hostname, address, uptime
//
// The kernel, busybox and the modules are not installed but copied out of
// Debian's packages into DefaultDir by `deploy/setup.sh run` (as root).
// Check says whether they are there, Build makes a guest's kernel and
// initrd of them, Cmdline, DomainOS and Devices what the domain XML needs,
// and Ping, Client, AskPing and Panic talk to a guest from inside a network
// namespace.
package guestos

import (
	"bytes"
	"compress/gzip"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// DefaultDir is where deploy/setup.sh puts the kernel, busybox and modules.
const DefaultDir = "/var/cache/caretaker/guest-os"

// setupFix says how to fill DefaultDir.
const setupFix = "bash deploy/setup.sh run (as root)"

// The pieces in a guest OS directory, as deploy/setup.sh writes them.
const (
	kernelFile  = "vmlinuz"
	busyboxFile = "busybox"
	modulesDir  = "modules"
	versionFile = "VERSION"
)

// InitrdName is the file name of the initramfs Build writes.
const InitrdName = "initrd.gz"

// KernelName is the file name of the kernel Build writes.
const KernelName = "vmlinuz"

// modules are the kernel modules the guest loads, in dependency order:
// the virtio NIC (virtio_net over virtio_pci) and the ISA pvpanic device
// (pvpanic-mmio, which binds ACPI's QEMU0001). deploy/setup.sh copies the
// same list.
func modules() []string {
	return []string{
		"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
		"failover", "net_failover", "virtio_net",
		"pvpanic", "pvpanic-mmio",
	}
}

// applets are the busybox applets /init and the CGI scripts run, made
// symlinks to /bin/busybox.
func applets() []string {
	return []string{
		"cat", "cut", "dmesg", "hostname", "httpd", "insmod", "ip", "ls", "mount",
		"ping", "ps", "sh", "sleep", "uptime",
	}
}

//go:embed rootfs
var rootfs embed.FS

// Check says whether dir holds what Build needs: nil when it does, else an
// error naming what is missing and how to fetch it.
func Check(dir string) error {
	var missing []string
	for _, f := range inputs(dir) {
		st, err := os.Stat(f)
		if err != nil || !st.Mode().IsRegular() || st.Size() == 0 {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("guest OS in %s incomplete: missing %s; fetch Debian's kernel and busybox with: %s",
			dir, strings.Join(missing, ", "), setupFix)
	}
	return nil
}

// inputs are the files of dir that Build reads.
func inputs(dir string) []string {
	files := []string{
		filepath.Join(dir, versionFile),
		filepath.Join(dir, kernelFile),
		filepath.Join(dir, busyboxFile),
	}
	for _, m := range modules() {
		files = append(files, filepath.Join(dir, modulesDir, m+".ko"))
	}
	return files
}

// Image is a guest OS as QEMU boots it: a kernel and an initramfs, files
// readable by everyone (QEMU runs as libvirt-qemu).
type Image struct {
	Kernel string
	Initrd string
}

// Build writes into outDir (created 0755) the kernel and initrd.gz, a gzip
// newc cpio of /init, busybox, the modules and the web server's scripts,
// made of dir (DefaultDir, as deploy/setup.sh fills it). It builds the
// initramfs in memory every time (some 50 ms: 2.5 MB through gzip) and
// replaces a file of outDir only when its bytes differ, by a rename: a
// QEMU starting meanwhile reads the old file or the new, whole.
func Build(dir, outDir string) (Image, error) {
	if err := Check(dir); err != nil {
		return Image{}, fmt.Errorf("build guest OS: %w", err)
	}
	kernel, err := os.ReadFile(filepath.Join(dir, kernelFile))
	if err != nil {
		return Image{}, fmt.Errorf("build guest OS: %w", err)
	}
	initrd, err := initramfs(dir)
	if err != nil {
		return Image{}, fmt.Errorf("build guest OS initramfs of %s: %w", dir, err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return Image{}, fmt.Errorf("build guest OS: %w", err)
	}
	// MkdirAll leaves an existing directory's mode, and the umask may
	// have narrowed a new one.
	if err := os.Chmod(outDir, 0o755); err != nil {
		return Image{}, fmt.Errorf("build guest OS: %w", err)
	}
	img := Image{Kernel: filepath.Join(outDir, KernelName), Initrd: filepath.Join(outDir, InitrdName)}
	for f, data := range map[string][]byte{img.Kernel: kernel, img.Initrd: initrd} {
		if err := writeIfChanged(f, data); err != nil {
			return Image{}, fmt.Errorf("build guest OS: %w", err)
		}
	}
	return img, nil
}

// writeIfChanged makes name hold data, mode 0644: left alone when it does,
// else written next to it and renamed over it.
func writeIfChanged(name string, data []byte) error {
	if old, err := os.ReadFile(name); err == nil && bytes.Equal(old, data) {
		st, err := os.Stat(name)
		if err == nil && st.Mode().Perm() == 0o644 {
			return nil
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer os.Remove(tmp.Name()) // once renamed, there is nothing to remove
	_, err = tmp.Write(data)
	err = errors.Join(err, tmp.Chmod(0o644), tmp.Close())
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// initramfs returns the gzipped newc cpio the guest boots.
func initramfs(dir string) ([]byte, error) {
	var buf bytes.Buffer
	// No name and no mtime in the gzip header: the same inputs make the
	// same bytes, which writeIfChanged relies on.
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	if err := writeRootfs(newCPIOWriter(zw), dir); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	return buf.Bytes(), nil
}

// writeRootfs writes the guest's file system into c and closes it.
func writeRootfs(c *cpioWriter, dir string) error {
	for _, d := range []string{"bin", "dev", "etc", "etc/caretaker", "lib", "lib/modules", "proc", "sys", "www"} {
		c.Dir(d, 0o755)
	}
	// The kernel opens /dev/console for /init before /init mounts
	// devtmpfs over /dev.
	c.CharDev("dev/console", 0o600, 5, 1)
	bb, err := os.ReadFile(filepath.Join(dir, busyboxFile))
	if err != nil {
		return err
	}
	c.File("bin/busybox", 0o755, bb)
	for _, a := range applets() {
		c.Symlink("bin/"+a, "busybox")
	}
	for _, m := range modules() {
		ko, err := os.ReadFile(filepath.Join(dir, modulesDir, m+".ko"))
		if err != nil {
			return err
		}
		c.File("lib/modules/"+m+".ko", 0o644, ko)
	}
	c.File("etc/caretaker/modules", 0o644, []byte(strings.Join(modules(), "\n")+"\n"))
	version, err := os.ReadFile(filepath.Join(dir, versionFile))
	if err != nil {
		return err
	}
	c.File("etc/caretaker/version", 0o644, version)
	// The embedded tree: /init and /www. Directories before their
	// entries, as fs.WalkDir visits them.
	err = fs.WalkDir(rootfs, "rootfs", func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == "rootfs" {
			return err
		}
		name := strings.TrimPrefix(p, "rootfs/")
		if d.IsDir() {
			if name != "www" {
				c.Dir(name, 0o755)
			}
			return nil
		}
		data, err := rootfs.ReadFile(p)
		if err != nil {
			return err
		}
		perm := fs.FileMode(0o644)
		if name == "init" || path.Dir(name) == "www/cgi-bin" {
			perm = 0o755
		}
		c.File(name, perm, data)
		return nil
	})
	if err != nil {
		return err
	}
	return c.Close()
}

// Guest is what one guest is told on its kernel command line.
type Guest struct {
	// Hostname is a DNS name: labels of letters, digits and hyphens.
	Hostname string
	// Addr is the IPv4 address and prefix of the guest's NIC.
	Addr netip.Prefix
	// Gateway, when valid, is the guest's default route.
	Gateway netip.Addr
}

// Validate says what is wrong with g, if anything.
func (g Guest) Validate() error {
	if err := validHostname(g.Hostname); err != nil {
		return err
	}
	if !g.Addr.IsValid() || !g.Addr.Addr().Is4() {
		return fmt.Errorf("guest %s: address %q: want an IPv4 prefix such as 10.77.1.3/16", g.Hostname, g.Addr)
	}
	if g.Addr.Bits() == 0 || g.Addr.Bits() == 32 || g.Addr.Masked().Addr() == g.Addr.Addr() {
		return fmt.Errorf("guest %s: address %s: want a host address in a subnet, such as 10.77.1.3/16", g.Hostname, g.Addr)
	}
	if g.Gateway.IsValid() && (!g.Gateway.Is4() || !g.Addr.Contains(g.Gateway) || g.Gateway == g.Addr.Addr()) {
		return fmt.Errorf("guest %s: gateway %s: want another IPv4 address of %s", g.Hostname, g.Gateway, g.Addr.Masked())
	}
	return nil
}

func validHostname(h string) error {
	if h == "" || len(h) > 253 {
		return fmt.Errorf("guest hostname %q: want 1 to 253 characters", h)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("guest hostname %q: want dot-separated labels of 1 to 63 characters, neither starting nor ending with '-'", h)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("guest hostname %q: %q is not a letter, digit, '-' or '.'", h, r)
			}
		}
	}
	return nil
}

// Cmdline is the kernel command line of guest g: the serial console,
// no reboot on panic (the guest stays crashed for libvirt to see) and
// what /init reads, such as
//
//	console=ttyS0 panic=0 quiet caretaker.ip=10.77.1.3/16 caretaker.hostname=lab-host-a-1
func Cmdline(g Guest) (string, error) {
	if err := g.Validate(); err != nil {
		return "", err
	}
	s := fmt.Sprintf("console=ttyS0 panic=0 quiet caretaker.ip=%s caretaker.hostname=%s", g.Addr, g.Hostname)
	if g.Gateway.IsValid() {
		s += " caretaker.gw=" + g.Gateway.String()
	}
	return s, nil
}
