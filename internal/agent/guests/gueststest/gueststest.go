// Package gueststest gives tests of guest nodes what a host gives them: a
// libvirt directory storage pool with a base image, and a bridge, both of
// the test's own on the real libvirtd, removed when the test ends.
package gueststest

import (
	"context"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
)

// URI is the libvirtd the tests use.
const URI = "qemu:///system"

// BaseImage is the base image volume in every Host's pool: an empty
// 64 MiB qcow2 disk.
const BaseImage = "base.qcow2"

// Host is a storage pool with a base image and a bridge. The pool and the
// bridge share one name.
type Host struct {
	Conn *libvirt.Libvirt
	Pool libvirt.StoragePool
	Name string
	Dir  string // the pool's directory
}

// New makes a Host named after the prefix, the process and the test
// (hostName). It skips the test without root, libvirtd or the tools
// (tools are checked with exec.LookPath; ip, qemu-img and genisoimage are
// always needed).
func New(t *testing.T, prefix string, tools ...string) *Host {
	t.Helper()
	needs.Libvirtd(t)
	needs.Programs(t, append([]string{"ip", "qemu-img", "genisoimage"}, tools...)...)
	conn, err := libvirtconn.Dial(URI)
	if err != nil {
		needs.Missing(t, "connect to %s: %v", URI, err)
	}
	t.Cleanup(func() { conn.Disconnect() })

	h := &Host{Conn: conn, Name: hostName(prefix, os.Getpid(), t.Name())}
	// Not t.TempDir: QEMU runs as its own user and must reach the pool.
	if h.Dir, err = os.MkdirTemp("", "ctk-guests-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(h.Dir) })
	if err := os.Chmod(h.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	poolXML, err := (&libvirtxml.StoragePool{Type: "dir", Name: h.Name, Target: &libvirtxml.StoragePoolTarget{Path: h.Dir}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if h.Pool, err = conn.StoragePoolDefineXML(poolXML, 0); err != nil {
		t.Fatalf("define pool %s: %v", h.Name, err)
	}
	t.Cleanup(func() {
		_ = conn.StoragePoolDestroy(h.Pool)
		if err := conn.StoragePoolUndefine(h.Pool); err != nil {
			t.Errorf("undefine pool %s: %v", h.Name, err)
		}
	})
	if err := conn.StoragePoolCreate(h.Pool, 0); err != nil {
		t.Fatalf("start pool %s: %v", h.Name, err)
	}
	Run(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(h.Dir, BaseImage), "64M")
	if err := conn.StoragePoolRefresh(h.Pool, 0); err != nil {
		t.Fatal(err)
	}
	Run(t, "ip", "link", "add", h.Name, "type", "bridge")
	t.Cleanup(func() { Run(t, "ip", "link", "del", h.Name) })
	Run(t, "ip", "link", "set", h.Name, "up")
	return h
}

// Run runs a command (no shell) with a timeout and returns its output;
// a failure fails the test with the command's output.
func Run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
	return string(out)
}

// hostName is prefix + the process ID + a hash of the test's name, both
// in base 36: at most 15 bytes (a bridge name's limit) for a prefix of up
// to 3, and one name per test and process. A piece of the test's name
// would not do: cut to 15 bytes, TestCreateRecreateDelete and
// TestCreateUpdatesDefinition of a process with a 6-digit PID share one.
func hostName(prefix string, pid int, test string) string {
	h := fnv.New32a()
	h.Write([]byte(test))
	name := prefix + strconv.FormatInt(int64(pid), 36) + strconv.FormatUint(uint64(h.Sum32()), 36)
	return name[:min(len(name), 15)]
}
