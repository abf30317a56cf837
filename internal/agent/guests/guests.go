// Package guests turns a guest-cluster node's desired state into a libvirt
// domain on one host: a qcow2 overlay on a base image in a storage pool, a
// first-boot seed (a cloud-init NoCloud "cidata" ISO, or an Ignition config
// handed over fw_cfg), a NIC on the cluster's bridge and caretaker's
// <metadata>, which the kvm collector reads. Create is idempotent; Recreate
// is the remediation engine's recreate-vm: the node comes back clean, with
// the same UUID. The agent runs it for PUT and DELETE /api/v1/nodes/{name};
// the server's cluster reconciler decides what nodes there should be.
package guests

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"

	"libvirt.org/go/libvirtxml"

	"caretaker/internal/guestmeta"
)

// Roles a node can have.
const (
	RoleMaster = "master"
	RoleWorker = "worker"
)

// Node is the desired state of one guest-cluster node.
type Node struct {
	Cluster     string
	Name        string // the domain's name, also the prefix of its volumes
	Role        string // RoleMaster or RoleWorker
	VCPUs       int
	MemoryBytes uint64 // a whole number of KiB
	DiskBytes   uint64 // virtual size of the overlay
	Bridge      string // the cluster's bridge, br-<cluster>
	// MAC is optional; empty derives one from Cluster and Name (see MAC).
	MAC string
	// BaseImage is the name of the base image's volume in Pool, which
	// must be a directory pool.
	BaseImage string
	Pool      string
	// Either UserData (with optional MetaData) for cloud-init NoCloud, or
	// Ignition. Empty MetaData gets an instance-id and hostname of Name.
	UserData, MetaData string
	Ignition           string
	// UUID is optional; Recreate keeps the domain's UUID either way.
	UUID string
}

// Volume names in the pool, derived from the node's name.
func overlayVolume(name string) string  { return name + ".qcow2" }
func seedVolume(name string) string     { return name + "-cidata.iso" }
func ignitionVolume(name string) string { return name + ".ign" }

// ignitionFWCfgName is the fw_cfg key Ignition reads its config from on
// QEMU (Fedora CoreOS, RHCOS, Flatcar).
const ignitionFWCfgName = "opt/com.coreos/config"

var (
	// nameRe keeps names usable as a domain name, a file name in the pool
	// and a hostname label.
	nameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// bridgeRe is a Linux interface name (at most 15 bytes), in the
	// characters bridges are named with.
	bridgeRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`)
	uuidRe   = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
)

// Validate reports the first field of n that cannot make a domain, naming
// the node and the field.
func (n Node) Validate() error {
	if err := n.validate(); err != nil {
		return fmt.Errorf("node %q of cluster %q: %w", n.Name, n.Cluster, err)
	}
	return nil
}

func (n Node) validate() error {
	for _, f := range []struct{ field, value string }{
		{"cluster", n.Cluster}, {"name", n.Name},
	} {
		if !nameRe.MatchString(f.value) {
			return fmt.Errorf("%s %q: want 1-63 lowercase letters, digits and dashes, not starting or ending with a dash", f.field, f.value)
		}
	}
	if n.Role != RoleMaster && n.Role != RoleWorker {
		return fmt.Errorf("role %q: want %q or %q", n.Role, RoleMaster, RoleWorker)
	}
	if n.VCPUs < 1 {
		return fmt.Errorf("vcpus %d: want at least 1", n.VCPUs)
	}
	if n.MemoryBytes < 1<<20 || n.MemoryBytes%1024 != 0 {
		return fmt.Errorf("memory %d bytes: want at least 1 MiB, a whole number of KiB", n.MemoryBytes)
	}
	if n.DiskBytes == 0 {
		return errors.New("disk bytes: want more than 0")
	}
	if !bridgeRe.MatchString(n.Bridge) {
		return fmt.Errorf("bridge %q: want an interface name of 1-15 letters, digits, '-', '_' or '.'", n.Bridge)
	}
	if n.MAC != "" {
		hw, err := net.ParseMAC(n.MAC)
		if err != nil || len(hw) != 6 || hw[0]&1 != 0 {
			return fmt.Errorf("mac %q: want a unicast MAC such as 52:54:00:12:34:56", n.MAC)
		}
	}
	if n.Pool == "" {
		return errors.New("pool: empty")
	}
	if n.BaseImage == "" || strings.Contains(n.BaseImage, "/") {
		return fmt.Errorf("base image %q: want a volume name in pool %q", n.BaseImage, n.Pool)
	}
	switch {
	case n.Ignition != "" && (n.UserData != "" || n.MetaData != ""):
		return errors.New("ignition and user data/meta data both set: want one seed")
	case n.Ignition == "" && n.UserData == "":
		return errors.New("neither user data nor ignition set: want one seed")
	}
	if n.UUID != "" && !uuidRe.MatchString(n.UUID) {
		return fmt.Errorf("uuid %q: want the form 01234567-89ab-cdef-0123-456789abcdef", n.UUID)
	}
	return nil
}

// mac returns the node's MAC address: n.MAC when set, otherwise one derived
// from the cluster and the name under QEMU's 52:54:00 prefix (locally
// administered), so that a re-created node keeps its address and lease.
func (n Node) mac() string {
	if n.MAC != "" {
		hw, _ := net.ParseMAC(n.MAC)
		return hw.String()
	}
	sum := sha256.Sum256([]byte(n.Cluster + "/" + n.Name))
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", sum[0], sum[1], sum[2])
}

// Domain types.
const (
	TypeKVM  = "kvm"
	TypeQEMU = "qemu" // TCG: for hosts without usable /dev/kvm, and tests
)

type config struct {
	domainType   string
	ignitionFile string
}

// Option changes how a node's domain is built.
type Option func(*config)

// DomainType sets the domain type, TypeKVM (the default) or TypeQEMU.
func DomainType(t string) Option { return func(c *config) { c.domainType = t } }

// IgnitionFile gives the host path of the node's Ignition config, which
// QEMU reads at start. Create sets it from the pool's volume; DomainXML
// needs it for a node with Ignition.
func IgnitionFile(path string) Option { return func(c *config) { c.ignitionFile = path } }

func buildConfig(opts []Option) (config, error) {
	c := config{domainType: TypeKVM}
	for _, o := range opts {
		o(&c)
	}
	if c.domainType != TypeKVM && c.domainType != TypeQEMU {
		return c, fmt.Errorf("domain type %q: want %q or %q", c.domainType, TypeKVM, TypeQEMU)
	}
	return c, nil
}

// DomainXML returns the libvirt domain definition of n.
func DomainXML(n Node, opts ...Option) (string, error) {
	d, err := domain(n, opts)
	if err != nil {
		return "", err
	}
	s, err := d.Marshal()
	if err != nil {
		return "", fmt.Errorf("encode domain of node %q: %w", n.Name, err)
	}
	return s + "\n", nil
}

func domain(n Node, opts []Option) (*libvirtxml.Domain, error) {
	if err := n.Validate(); err != nil {
		return nil, err
	}
	c, err := buildConfig(opts)
	if err != nil {
		return nil, fmt.Errorf("domain of node %q: %w", n.Name, err)
	}
	meta, err := guestmeta.Metadata{Intent: guestmeta.IntentRunning, Cluster: n.Cluster, Role: n.Role}.XML()
	if err != nil {
		return nil, fmt.Errorf("domain of node %q: %w", n.Name, err)
	}
	d := &libvirtxml.Domain{
		Type:     c.domainType,
		Name:     n.Name,
		UUID:     strings.ToLower(n.UUID),
		Metadata: &libvirtxml.DomainMetadata{XML: meta},
		Memory:   &libvirtxml.DomainMemory{Value: uint(n.MemoryBytes / 1024), Unit: "KiB"},
		VCPU:     &libvirtxml.DomainVCPU{Value: uint(n.VCPUs)},
		OS: &libvirtxml.DomainOS{
			Type:        &libvirtxml.DomainOSType{Arch: "x86_64", Type: "hvm"},
			BootDevices: []libvirtxml.DomainBootDevice{{Dev: "hd"}},
		},
		// ACPI lets a graceful shutdown reach the guest.
		Features: &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}, APIC: &libvirtxml.DomainFeatureAPIC{}},
		// A crash stays visible as "shut off (crashed)" for the collector
		// and the remediation engine instead of being restarted unseen.
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{{
				Device: "disk",
				Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2", Discard: "unmap"},
				Source: &libvirtxml.DomainDiskSource{Volume: &libvirtxml.DomainDiskSourceVolume{Pool: n.Pool, Volume: overlayVolume(n.Name)}},
				Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
			}},
			Interfaces: []libvirtxml.DomainInterface{{
				MAC:    &libvirtxml.DomainInterfaceMAC{Address: n.mac()},
				Source: &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: n.Bridge}},
				Model:  &libvirtxml.DomainInterfaceModel{Type: "virtio"},
			}},
			Serials: []libvirtxml.DomainSerial{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainSerialTarget{Port: new(uint)},
			}},
			Consoles: []libvirtxml.DomainConsole{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: new(uint)},
			}},
		},
	}
	if c.domainType == TypeKVM {
		// Current node images (RHEL 9, CoreOS) need x86-64-v2, which
		// QEMU's default CPU model lacks.
		d.CPU = &libvirtxml.DomainCPU{Mode: "host-passthrough"}
	}
	if n.Ignition != "" {
		if c.ignitionFile == "" {
			return nil, fmt.Errorf("domain of node %q: node has an Ignition config but no IgnitionFile option gives its path", n.Name)
		}
		d.SysInfo = []libvirtxml.DomainSysInfo{{FWCfg: &libvirtxml.DomainSysInfoFWCfg{
			Entry: []libvirtxml.DomainSysInfoEntry{{Name: ignitionFWCfgName, File: c.ignitionFile}},
		}}}
	} else {
		// The seed is read-only and only read at first boot; SATA works
		// on both the pc and q35 machine types.
		d.Devices.Disks = append(d.Devices.Disks, libvirtxml.DomainDisk{
			Device:   "cdrom",
			Driver:   &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
			Source:   &libvirtxml.DomainDiskSource{Volume: &libvirtxml.DomainDiskSourceVolume{Pool: n.Pool, Volume: seedVolume(n.Name)}},
			Target:   &libvirtxml.DomainDiskTarget{Dev: "sda", Bus: "sata"},
			ReadOnly: &libvirtxml.DomainDiskReadOnly{},
		})
	}
	return d, nil
}

// metaData is the NoCloud meta-data of n: its own, or an instance id and
// hostname of its name.
func (n Node) metaData() string {
	if n.MetaData != "" {
		return n.MetaData
	}
	return "instance-id: " + n.Name + "\nlocal-hostname: " + n.Name + "\n"
}
