package guests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/agent/guests/gueststest"
	"caretaker/internal/guestmeta"
)

// lab is a storage pool with a base image and a bridge of one test's own.
type lab struct {
	conn   *libvirt.Libvirt
	pool   libvirt.StoragePool
	name   string // pool name, also the bridge's
	base   string // the base image's path
	bridge string
}

func newLab(t *testing.T) *lab {
	t.Helper()
	h := gueststest.New(t, "ctg", "isoinfo")
	return &lab{conn: h.Conn, pool: h.Pool, name: h.Name, bridge: h.Name,
		base: filepath.Join(h.Dir, gueststest.BaseImage)}
}

func (l *lab) node(name string) Node {
	return Node{
		Cluster: "cttest", Name: name, Role: RoleWorker, VCPUs: 1,
		MemoryBytes: 64 << 20, DiskBytes: 128 << 20,
		Bridge: l.bridge, BaseImage: "base.qcow2", Pool: l.name,
		UserData: "#cloud-config\nhostname: " + name + "\n",
	}
}

// create creates n and deletes it when the test ends, whatever happened.
func (l *lab) create(t *testing.T, n Node) string {
	t.Helper()
	t.Cleanup(func() {
		if err := Delete(l.conn, n); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	uuid, err := Create(l.conn, n, DomainType(TypeQEMU))
	if err != nil {
		t.Fatal(err)
	}
	return uuid
}

func (l *lab) volume(t *testing.T, name string) libvirtxml.StorageVolume {
	t.Helper()
	vol, err := l.conn.StorageVolLookupByName(l.pool, name)
	if err != nil {
		t.Fatalf("volume %s: %v", name, err)
	}
	s, err := l.conn.StorageVolGetXMLDesc(vol, 0)
	if err != nil {
		t.Fatal(err)
	}
	var v libvirtxml.StorageVolume
	if err := v.Unmarshal(s); err != nil {
		t.Fatal(err)
	}
	return v
}

func (l *lab) volumeNames(t *testing.T) []string {
	t.Helper()
	if err := l.conn.StoragePoolRefresh(l.pool, 0); err != nil {
		t.Fatal(err)
	}
	n, err := l.conn.StoragePoolNumOfVolumes(l.pool)
	if err != nil {
		t.Fatal(err)
	}
	names, err := l.conn.StoragePoolListVolumes(l.pool, n)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

func TestCreateRecreateDelete(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	n := l.node(l.name + "-w0")
	uuid := l.create(t, n)

	dom, err := l.conn.DomainLookupByName(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	assertRunning(t, l.conn, dom)
	id := dom.ID

	// Idempotent: same UUID, not restarted, no volume replaced.
	again, err := Create(l.conn, n, DomainType(TypeQEMU))
	if err != nil || again != uuid {
		t.Fatalf("second Create: %q, %v; want %q", again, err, uuid)
	}
	if dom2, err := l.conn.DomainLookupByName(n.Name); err != nil || dom2.ID != id {
		t.Errorf("second Create restarted the domain: id %d, then %d (%v)", id, dom2.ID, err)
	}
	// ... and the definition libvirt keeps reads as equal to the node's,
	// so Create does not redefine it each time.
	have, err := definedShape(l.conn, dom)
	if err != nil {
		t.Fatal(err)
	}
	n.UUID = uuid
	want, err := domain(n, []Option{DomainType(TypeQEMU)})
	if err != nil {
		t.Fatal(err)
	}
	n.UUID = ""
	if w := shape(want, guestmeta.Metadata{Intent: "running", Cluster: n.Cluster, Role: n.Role}); have != w {
		t.Errorf("defined domain differs from the node's:\n%s\nwant\n%s", have, w)
	}

	// The live definition: metadata, NIC, disks.
	meta, err := l.conn.DomainGetMetadata(dom, int32(libvirt.DomainMetadataElement), libvirt.OptString{guestmeta.Namespace}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := guestmeta.Parse(meta); err != nil || m != (guestmeta.Metadata{Intent: "running", Cluster: "cttest", Role: "worker"}) {
		t.Errorf("metadata %+v, %v", m, err)
	}
	s, err := l.conn.DomainGetXMLDesc(dom, 0)
	if err != nil {
		t.Fatal(err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(s); err != nil {
		t.Fatal(err)
	}
	nic := d.Devices.Interfaces[0]
	if nic.Source.Bridge.Bridge != l.bridge || nic.MAC.Address != n.mac() || nic.Model.Type != "virtio" {
		t.Errorf("NIC %+v %+v %+v; want bridge %s, mac %s, virtio", nic.Source.Bridge, nic.MAC, nic.Model, l.bridge, n.mac())
	}
	var disks []string
	for _, dk := range d.Devices.Disks {
		disks = append(disks, dk.Device+":"+dk.Target.Dev+":"+dk.Source.Volume.Volume)
	}
	if want := []string{"disk:vda:" + n.Name + ".qcow2", "cdrom:sda:" + n.Name + "-cidata.iso"}; fmt.Sprint(disks) != fmt.Sprint(want) {
		t.Errorf("disks %v, want %v", disks, want)
	}

	// The overlay sits on the base image; the seed has both files.
	ov := l.volume(t, n.Name+".qcow2")
	if ov.BackingStore == nil || ov.BackingStore.Path != l.base || ov.Capacity.Value != n.DiskBytes {
		t.Errorf("overlay backing store %+v capacity %+v; want %s, %d bytes", ov.BackingStore, ov.Capacity, l.base, n.DiskBytes)
	}
	seed := l.volume(t, n.Name+"-cidata.iso").Target.Path
	assertSeed(t, seed, n.UserData, "instance-id: "+n.Name+"\nlocal-hostname: "+n.Name+"\n")

	// Break the node: stop it and change its overlay. Recreate must bring
	// it back running, same UUID, with a fresh overlay and the new seed.
	if err := l.conn.DomainDestroy(dom); err != nil {
		t.Fatal(err)
	}
	ovVol, err := l.conn.StorageVolLookupByName(l.pool, n.Name+".qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.conn.StorageVolResize(ovVol, 2*n.DiskBytes, 0); err != nil {
		t.Fatal(err)
	}
	n.UserData = "#cloud-config\nhostname: changed\n"
	got, err := Recreate(l.conn, n, DomainType(TypeQEMU))
	if err != nil || got != uuid {
		t.Fatalf("Recreate: %q, %v; want UUID %q", got, err, uuid)
	}
	dom2, err := l.conn.DomainLookupByName(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	assertRunning(t, l.conn, dom2)
	if ov := l.volume(t, n.Name+".qcow2"); ov.Capacity.Value != n.DiskBytes || ov.BackingStore == nil || ov.BackingStore.Path != l.base {
		t.Errorf("overlay after Recreate: capacity %d, backing %+v; want a fresh %d-byte overlay on %s", ov.Capacity.Value, ov.BackingStore, n.DiskBytes, l.base)
	}
	assertSeed(t, seed, n.UserData, "instance-id: "+n.Name+"\nlocal-hostname: "+n.Name+"\n")

	if err := Delete(l.conn, n); err != nil {
		t.Fatal(err)
	}
	if _, err := l.conn.DomainLookupByName(n.Name); !isCode(err, libvirt.ErrNoDomain) {
		t.Errorf("domain after Delete: %v, want no domain", err)
	}
	if names := l.volumeNames(t); fmt.Sprint(names) != "[base.qcow2]" {
		t.Errorf("volumes after Delete: %v, want only base.qcow2", names)
	}
	if err := Delete(l.conn, n); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}

// TestCreateUpdatesDefinition changes the node's memory: Create must
// redefine the domain, keeping its UUID.
func TestCreateUpdatesDefinition(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	n := l.node(l.name + "-w1")
	uuid := l.create(t, n)
	n.MemoryBytes = 96 << 20
	got, err := Create(l.conn, n, DomainType(TypeQEMU))
	if err != nil || got != uuid {
		t.Fatalf("Create: %q, %v; want %q", got, err, uuid)
	}
	dom, err := l.conn.DomainLookupByName(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.conn.DomainGetXMLDesc(dom, libvirt.DomainXMLInactive)
	if err != nil {
		t.Fatal(err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(s); err != nil {
		t.Fatal(err)
	}
	if d.Memory.Value != 96<<10 {
		t.Errorf("defined memory %d %s, want %d KiB", d.Memory.Value, d.Memory.Unit, 96<<10)
	}
	n.UUID = "00000000-0000-0000-0000-000000000001"
	if _, err := Create(l.conn, n, DomainType(TypeQEMU)); !errors.Is(err, ErrNotThisNode) || !strings.Contains(err.Error(), "exists with UUID "+uuid) {
		t.Errorf("Create with another UUID: %v", err)
	}
}

// TestIgnition starts a node whose Ignition config QEMU reads from fw_cfg:
// the start fails if QEMU cannot read the file.
func TestIgnition(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	n := l.node(l.name + "-m0")
	n.Role, n.UserData, n.Ignition = RoleMaster, "", `{"ignition":{"version":"3.4.0"}}`
	l.create(t, n)
	dom, err := l.conn.DomainLookupByName(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	assertRunning(t, l.conn, dom)
	path := l.volume(t, n.Name+".ign").Target.Path
	if b, err := os.ReadFile(path); err != nil || string(b) != n.Ignition {
		t.Errorf("ignition volume: %q, %v", b, err)
	}
	if names := l.volumeNames(t); fmt.Sprint(names) != fmt.Sprintf("[base.qcow2 %s.ign %s.qcow2]", n.Name, n.Name) {
		t.Errorf("volumes: %v", names)
	}
}

func TestEnsureVolumesNoBase(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	n := l.node(l.name + "-w2")
	n.BaseImage = "missing.qcow2"
	err := EnsureVolumes(l.conn, n)
	if err == nil || !strings.Contains(err.Error(), `base image: no volume "missing.qcow2" in pool "`+l.name+`"`) {
		t.Errorf("got %v", err)
	}
}

func assertRunning(t *testing.T, conn *libvirt.Libvirt, dom libvirt.Domain) {
	t.Helper()
	state, reason, err := conn.DomainGetState(dom, 0)
	if err != nil || libvirt.DomainState(state) != libvirt.DomainRunning {
		t.Fatalf("domain state %d (reason %d), %v; want running", state, reason, err)
	}
}

func assertSeed(t *testing.T, iso, userData, metaData string) {
	t.Helper()
	if info := run(t, "isoinfo", "-d", "-i", iso); !strings.Contains(info, "Volume id: cidata") {
		t.Errorf("seed volume id: %s", info)
	}
	for name, want := range map[string]string{"user-data": userData, "meta-data": metaData} {
		// Read through Rock Ridge, as Linux mounts it for cloud-init.
		if got := run(t, "isoinfo", "-R", "-i", iso, "-x", "/"+name); got != want {
			t.Errorf("seed %s: %q, want %q", name, got, want)
		}
	}
}

// run runs a command (no shell) with a timeout and returns its output.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return string(out)
}

// TestRecreateFailureNamesTheNodeOnce: a node whose bridge is missing is
// defined but does not start; Recreate's error says which node once, then
// what failed (not "recreate node: create node: start domain").
func TestRecreateFailureNamesTheNodeOnce(t *testing.T) {
	l := newLab(t)
	n := l.node(l.name + "-nobridge")
	n.Bridge = l.name + "-x" // no such bridge
	t.Cleanup(func() {
		if err := Delete(l.conn, n); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	_, err := Recreate(l.conn, n, DomainType(TypeQEMU))
	t.Logf("Recreate: %v", err)
	want := `recreate node "` + n.Name + `": start domain: `
	if err == nil || !strings.HasPrefix(err.Error(), want) || strings.Count(err.Error(), n.Name) != 1 {
		t.Errorf("Recreate with a missing bridge: %v; want %q and libvirt's reason, naming the node once", err, want+"…")
	}
}
