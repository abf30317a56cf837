package kvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
	"caretaker/internal/needs"
)

const qemuURI = "qemu:///system"

// TestQEMUGuest runs a real QEMU guest (TCG) with a disk and an interface on
// a bridge of its own, and checks what only QEMU reports: CPU, vCPU delay,
// RSS, block and interface stats, the interface's bridge and device from the
// live XML. Then it kills QEMU and restarts the guest between two scrapes:
// the second scrape must show the guest running again and count the crash.
func TestQEMUGuest(t *testing.T) {
	t.Parallel()
	lv := qemuConnect(t)
	suffix := strconv.Itoa(os.Getpid())
	name := "ctk-kvm-crash-" + suffix
	bridge := "ctkbr" + suffix // at most 15 bytes: an interface name
	if len(bridge) > 15 {
		bridge = bridge[:15]
	}
	const mac = "52:54:00:c7:4b:01"

	run(t, "ip", "link", "add", bridge, "type", "bridge")
	t.Cleanup(func() { run(t, "ip", "link", "del", bridge) })
	run(t, "ip", "link", "set", bridge, "up")

	// Not t.TempDir: QEMU runs as its own user and must reach the disk.
	dir, err := os.MkdirTemp("", "ctk-kvm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "vda.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", disk, "16M")

	meta, err := guestmeta.Metadata{Intent: guestmeta.IntentRunning, Cluster: "ctk", Role: "probe"}.XML()
	if err != nil {
		t.Fatal(err)
	}
	xml, err := (&libvirtxml.Domain{
		Type:   "qemu",
		Name:   name,
		Memory: &libvirtxml.DomainMemory{Value: 64, Unit: "MiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: 2},
		OS: &libvirtxml.DomainOS{
			Type: &libvirtxml.DomainOSType{Arch: "x86_64", Machine: "pc", Type: "hvm"},
		},
		Metadata:   &libvirtxml.DomainMetadata{XML: meta},
		OnCrash:    "destroy",
		OnPoweroff: "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{{
				Device: "disk",
				Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2"},
				Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: disk}},
				Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
			}},
			Interfaces: []libvirtxml.DomainInterface{{
				MAC:    &libvirtxml.DomainInterfaceMAC{Address: mac},
				Source: &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: bridge}},
				Model:  &libvirtxml.DomainInterfaceModel{Type: "virtio"},
			}},
		},
	}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	dom, err := lv.DomainDefineXML(xml)
	if err != nil {
		t.Fatalf("define %s: %v", name, err)
	}
	t.Cleanup(func() {
		if active, _ := lv.DomainIsActive(dom); active == 1 {
			if err := lv.DomainDestroy(dom); err != nil {
				t.Errorf("destroy %s: %v", name, err)
			}
		}
		if err := lv.DomainUndefine(dom); err != nil {
			t.Errorf("undefine %s: %v", name, err)
		}
	})
	uuid := libvirtconn.UUIDString(dom.UUID)

	logger := testLogger(t)
	conn := libvirtconn.New(qemuURI, logger)
	t.Cleanup(func() { conn.Close() })
	// Other guests (another engineer's lab-*) may run beside this one.
	// A long libvirt timeout: on a loaded CI machine a scrape of a guest
	// that just started may take seconds, and this test is not about speed.
	c := New(conn, logger, WithDomainMatch(regexp.MustCompile("^"+regexp.QuoteMeta(name)+"$").MatchString), WithLibvirtTimeout(time.Minute))
	w := watchEvents(t, conn, c)

	if err := lv.DomainCreate(dom); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	w.await(t, name+" started", counted(eventStarted, 1))

	samples := scrape(t, c)
	wantSample(t, samples, "caretaker_kvm_domains{}", 1)
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_info{cluster="ctk",domain=%q,role="probe",uuid=%q}`, name, uuid), 1)
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_state{uuid=%q}`, uuid), float64(libvirt.DomainRunning))
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_vcpus{uuid=%q}`, uuid), 2)
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_memory_maximum_bytes{uuid=%q}`, uuid), 64<<20)
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_crashes_total{uuid=%q}`, uuid), 0)
	device := interfaceDevice(t, samples, uuid, bridge, mac)
	for _, key := range []string{
		fmt.Sprintf(`caretaker_kvm_domain_cpu_seconds_total{uuid=%q}`, uuid),
		fmt.Sprintf(`caretaker_kvm_domain_memory_rss_bytes{uuid=%q}`, uuid),
		fmt.Sprintf(`caretaker_kvm_domain_block_read_bytes_total{device="vda",uuid=%q}`, uuid),
		fmt.Sprintf(`caretaker_kvm_domain_block_write_requests_total{device="vda",uuid=%q}`, uuid),
		fmt.Sprintf(`caretaker_kvm_domain_interface_receive_bytes_total{device=%q,uuid=%q}`, device, uuid),
		fmt.Sprintf(`caretaker_kvm_domain_interface_transmit_drops_total{device=%q,uuid=%q}`, device, uuid),
	} {
		if _, ok := samples[key]; !ok {
			t.Errorf("no sample %s", key)
		}
	}
	// libvirt reports the delay only where the kernel keeps scheduler
	// statistics (/proc/<pid>/schedstat).
	if _, ok := samples[fmt.Sprintf(`caretaker_kvm_domain_vcpu_delay_seconds_total{uuid=%q}`, uuid)]; !ok {
		t.Logf("no vCPU delay reported: the host keeps no scheduler statistics")
	}

	// Kill QEMU (by its PID, from libvirt's PID file) and start the guest
	// again before the next scrape.
	pidFile := filepath.Join("/run/libvirt/qemu", name+".pid")
	pidText, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("read QEMU's PID: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
	if err != nil {
		t.Fatalf("QEMU's PID file %s: %v", pidFile, err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill QEMU (pid %d): %v", pid, err)
	}
	w.await(t, fmt.Sprintf("%s stopped %d (failed)", name, libvirt.DomainEventStoppedFailed), crashed(uuid, 1))
	if err := lv.DomainCreate(dom); err != nil {
		t.Fatalf("restart %s: %v", name, err)
	}
	w.await(t, name+" started", counted(eventStarted, 2))

	samples = scrape(t, c)
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_state{uuid=%q}`, uuid), float64(libvirt.DomainRunning))
	wantSample(t, samples, fmt.Sprintf(`caretaker_kvm_domain_crashes_total{uuid=%q}`, uuid), 1)
	wantSample(t, samples, `caretaker_kvm_lifecycle_events_total{event="stopped"}`, 1)
	wantSample(t, samples, `caretaker_kvm_lifecycle_events_total{event="started"}`, 2)
	// The restart gave the guest a new ID, and maybe a new device: the
	// identity was read again, from the new live XML.
	interfaceDevice(t, samples, uuid, bridge, mac)
}

// interfaceDevice returns the device of the interface_info sample of the
// interface with the given bridge and MAC, failing unless there is exactly
// one.
func interfaceDevice(t *testing.T, samples map[string]float64, uuid, bridge, mac string) string {
	t.Helper()
	re := regexp.MustCompile(fmt.Sprintf(`^caretaker_kvm_domain_interface_info\{bridge=%q,device="([^"]+)",mac=%q,uuid=%q\}$`,
		bridge, mac, uuid))
	var devices []string
	for key := range samples {
		if m := re.FindStringSubmatch(key); m != nil {
			devices = append(devices, m[1])
		}
	}
	if len(devices) != 1 {
		t.Fatalf("interface_info of %s on %s: devices %q, want one", mac, bridge, devices)
	}
	return devices[0]
}

// qemuConnect connects to the system libvirtd, skipping unless it runs, we
// are root, and it can run x86_64 guests of domain type qemu.
func qemuConnect(t *testing.T) *libvirt.Libvirt {
	t.Helper()
	needs.Libvirtd(t)
	needs.Programs(t, "ip", "qemu-img")
	lv, err := libvirtconn.Dial(qemuURI)
	if err != nil {
		needs.Missing(t, "connect to %s: %v", qemuURI, err)
	}
	t.Cleanup(func() { lv.Disconnect() })
	capsXML, err := lv.ConnectGetCapabilities()
	if err != nil {
		t.Fatalf("capabilities of %s: %v", qemuURI, err)
	}
	var caps libvirtxml.Caps
	if err := caps.Unmarshal(capsXML); err != nil {
		t.Fatalf("capabilities of %s: %v", qemuURI, err)
	}
	for _, g := range caps.Guests {
		if g.Arch.Name != "x86_64" {
			continue
		}
		for _, d := range g.Arch.Domains {
			if d.Type == "qemu" {
				return lv
			}
		}
	}
	needs.Missing(t, "%s cannot run x86_64 guests of domain type qemu (Debian package qemu-system-x86)", qemuURI)
	return nil
}

// run runs a command (no shell) with a timeout.
func run(t *testing.T, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out[max(0, len(out)-4096):])
	}
}
