package guestos

import (
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"caretaker/internal/golden"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestCmdline(t *testing.T) {
	for _, tt := range []struct {
		name    string
		g       Guest
		want    string
		wantErr string
	}{
		{"plain", Guest{Hostname: "lab-host-a-1", Addr: netip.MustParsePrefix("10.77.1.3/16")},
			"console=ttyS0 panic=0 quiet caretaker.ip=10.77.1.3/16 caretaker.hostname=lab-host-a-1", ""},
		{"gateway and dotted name", Guest{Hostname: "g1.lab", Addr: netip.MustParsePrefix("192.0.2.10/24"), Gateway: netip.MustParseAddr("192.0.2.1")},
			"console=ttyS0 panic=0 quiet caretaker.ip=192.0.2.10/24 caretaker.hostname=g1.lab caretaker.gw=192.0.2.1", ""},
		{"empty hostname", Guest{Addr: netip.MustParsePrefix("10.77.1.3/16")}, "", "want 1 to 253 characters"},
		{"space in hostname", Guest{Hostname: "a b", Addr: netip.MustParsePrefix("10.77.1.3/16")}, "", "is not a letter"},
		{"injection", Guest{Hostname: "a init=/bin/sh", Addr: netip.MustParsePrefix("10.77.1.3/16")}, "", "is not a letter"},
		{"underscore", Guest{Hostname: "lab_host", Addr: netip.MustParsePrefix("10.77.1.3/16")}, "", "is not a letter"},
		{"leading hyphen", Guest{Hostname: "-a", Addr: netip.MustParsePrefix("10.77.1.3/16")}, "", "neither starting nor ending"},
		{"empty label", Guest{Hostname: "a..b", Addr: netip.MustParsePrefix("10.77.1.3/16")}, "", "dot-separated labels"},
		{"label too long", Guest{Hostname: strings.Repeat("a", 64), Addr: netip.MustParsePrefix("10.77.1.3/16")}, "", "dot-separated labels"},
		{"no address", Guest{Hostname: "a"}, "", "want an IPv4 prefix"},
		{"IPv6", Guest{Hostname: "a", Addr: netip.MustParsePrefix("fd00::3/64")}, "", "want an IPv4 prefix"},
		{"host route", Guest{Hostname: "a", Addr: netip.MustParsePrefix("10.77.1.3/32")}, "", "want a host address in a subnet"},
		{"network address", Guest{Hostname: "a", Addr: netip.MustParsePrefix("10.77.0.0/16")}, "", "want a host address in a subnet"},
		{"gateway elsewhere", Guest{Hostname: "a", Addr: netip.MustParsePrefix("10.77.1.3/16"), Gateway: netip.MustParseAddr("10.78.0.1")}, "", "want another IPv4 address of 10.77.0.0/16"},
		{"gateway is itself", Guest{Hostname: "a", Addr: netip.MustParsePrefix("10.77.1.3/16"), Gateway: netip.MustParseAddr("10.77.1.3")}, "", "want another IPv4 address"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Cmdline(tt.g)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Cmdline(%+v) = %q, %v; want an error containing %q", tt.g, got, err, tt.wantErr)
				}
				if _, err := DomainOS(Image{Kernel: "k", Initrd: "i"}, tt.g); err == nil {
					t.Errorf("DomainOS accepted what Cmdline refuses")
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Cmdline(%+v) = %q, %v; want %q", tt.g, got, err, tt.want)
			}
		})
	}
}

// fakeDir makes a guest OS directory as deploy/setup.sh does, of small
// stand-in files.
func fakeDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		kernelFile:  "kernel",
		busyboxFile: "busybox",
		versionFile: "linux-image-6.1.0-57-amd64 6.1.192-3\n",
	}
	for _, m := range modules() {
		files[filepath.Join(modulesDir, m+".ko")] = "module " + m
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestCheck(t *testing.T) {
	dir := fakeDir(t)
	if err := Check(dir); err != nil {
		t.Fatalf("Check of a complete directory: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, modulesDir, "virtio_net.ko")); err != nil {
		t.Fatal(err)
	}
	err := Check(dir)
	if err == nil {
		t.Fatal("Check accepted a directory without virtio_net.ko")
	}
	for _, want := range []string{"virtio_net.ko", "bash deploy/setup.sh run"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Check error %q does not name %q", err, want)
		}
	}
	if _, err := Build(dir, t.TempDir()); err == nil {
		t.Error("Build of an incomplete directory succeeded")
	}
}

// cpioEntry is one entry of a newc archive, as readCPIO reads it.
type cpioEntry struct {
	name         string
	mode         uint32
	rdev         string
	data         []byte
	ino, nlink   uint32
	uid, gid     uint32
	mtime        uint32
	nameWithNull uint32
}

// readCPIO reads a newc archive up to its trailer, independently of
// cpioWriter: header fields by their offsets, and the padding checked.
func readCPIO(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var entries []cpioEntry
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("cpio header at %d, field %d: %v", off, i, err)
		}
		return uint32(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at offset %d", off)
		}
		e := cpioEntry{ino: field(0), mode: field(1), uid: field(2), gid: field(3), nlink: field(4), mtime: field(5),
			rdev: fmt.Sprintf("%d,%d", field(9), field(10)), nameWithNull: field(11)}
		size := int(field(6))
		nameEnd := off + 110 + int(e.nameWithNull)
		if b[nameEnd-1] != 0 {
			t.Fatalf("cpio name at %d not NUL-terminated", off)
		}
		e.name = string(b[off+110 : nameEnd-1])
		dataOff := align(nameEnd)
		e.data = b[dataOff : dataOff+size]
		off = align(dataOff + size)
		if e.name == "TRAILER!!!" {
			if off != len(b) {
				t.Errorf("%d bytes after the trailer", len(b)-off)
			}
			return entries
		}
		entries = append(entries, e)
	}
}

func TestInitramfs(t *testing.T) {
	dir := fakeDir(t)
	out := filepath.Join(t.TempDir(), "img")
	img, err := Build(dir, out)
	if err != nil {
		t.Fatal(err)
	}
	gz, err := os.ReadFile(img.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	entries := readCPIO(t, raw)
	var list bytes.Buffer
	seen := map[string]bool{}
	inos := map[uint32]bool{}
	for _, e := range entries {
		if e.uid != 0 || e.gid != 0 || e.mtime != 0 {
			t.Errorf("%s: uid %d gid %d mtime %d, want 0 0 0", e.name, e.uid, e.gid, e.mtime)
		}
		if inos[e.ino] {
			t.Errorf("%s: inode %d used twice", e.name, e.ino)
		}
		inos[e.ino] = true
		if d := filepath.Dir(e.name); d != "." && !seen[d] {
			t.Errorf("%s comes before its directory %s", e.name, d)
		}
		seen[e.name] = true
		fmt.Fprintf(&list, "%06o %s", e.mode, e.name)
		switch e.mode & 0o170000 {
		case modeSymlink:
			fmt.Fprintf(&list, " -> %s", e.data)
		case modeCharDev:
			fmt.Fprintf(&list, " %s", e.rdev)
		}
		list.WriteByte('\n')
	}
	golden.Compare(t, "testdata/initramfs.golden", list.Bytes(), *update)

	// The files carry what they were made of.
	byName := map[string][]byte{}
	for _, e := range entries {
		byName[e.name] = e.data
	}
	initScript, _ := rootfs.ReadFile("rootfs/init")
	for name, want := range map[string]string{
		"bin/busybox":               "busybox",
		"lib/modules/virtio_net.ko": "module virtio_net",
		"etc/caretaker/modules":     strings.Join(modules(), "\n") + "\n",
		"init":                      string(initScript),
	} {
		if got := string(byName[name]); got != want {
			t.Errorf("%s holds %q, want %q", name, got, want)
		}
	}
}

func TestBuildFilesAndIdempotence(t *testing.T) {
	dir := fakeDir(t)
	out := filepath.Join(t.TempDir(), "img")
	img, err := Build(dir, out)
	if err != nil {
		t.Fatal(err)
	}
	if img.Kernel != filepath.Join(out, "vmlinuz") || img.Initrd != filepath.Join(out, "initrd.gz") {
		t.Errorf("Build = %+v", img)
	}
	st, err := os.Stat(out)
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("out dir: %v, %v; want mode 0755", st.Mode(), err)
	}
	before := map[string]os.FileInfo{}
	for _, f := range []string{img.Kernel, img.Initrd} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, want 0644", f, st.Mode())
		}
		before[f] = st
	}
	kernel, _ := os.ReadFile(img.Kernel)
	if string(kernel) != "kernel" {
		t.Errorf("kernel holds %q", kernel)
	}

	// Unchanged inputs: the very same files (no rename happened).
	if _, err := Build(dir, out); err != nil {
		t.Fatal(err)
	}
	for f, st := range before {
		now, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if !os.SameFile(st, now) {
			t.Errorf("%s replaced although its inputs did not change", f)
		}
	}
	// A changed module: a new initrd, the same kernel.
	if err := os.WriteFile(filepath.Join(dir, modulesDir, "pvpanic.ko"), []byte("module pvpanic v2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(dir, out); err != nil {
		t.Fatal(err)
	}
	for f, changed := range map[string]bool{img.Kernel: false, img.Initrd: true} {
		now, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if os.SameFile(before[f], now) == changed {
			t.Errorf("%s: replaced %v, want %v", f, !os.SameFile(before[f], now), changed)
		}
	}
	left, _ := filepath.Glob(filepath.Join(out, ".*"))
	if len(left) > 0 {
		t.Errorf("temporary files left in %s: %v", out, left)
	}
}
