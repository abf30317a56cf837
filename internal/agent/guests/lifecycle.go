package guests

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/guestmeta"
	"caretaker/internal/libvirtconn"
)

// Create makes the node's volumes where missing, defines its domain (or
// redefines it when the definition differs from n), and starts it unless it
// runs. It returns the domain's UUID. Calling it again changes nothing; a
// redefinition of a running domain takes effect at its next start.
func Create(conn *libvirt.Libvirt, n Node, opts ...Option) (string, error) {
	if err := n.Validate(); err != nil {
		return "", err
	}
	uuid, err := create(conn, n, opts)
	if err != nil {
		return "", fmt.Errorf("create node %q: %w", n.Name, err)
	}
	return uuid, nil
}

// create is Create of a valid node; its errors say what failed, and the
// caller which node it was making.
func create(conn *libvirt.Libvirt, n Node, opts []Option) (string, error) {
	// Another node's domain of that name keeps its volumes too.
	if err := ownedOrAbsent(conn, n); err != nil {
		return "", err
	}
	if err := EnsureVolumes(conn, n); err != nil {
		return "", err
	}
	if n.Ignition != "" {
		path, err := volumePath(conn, n.Pool, ignitionVolume(n.Name))
		if err != nil {
			return "", err
		}
		opts = append(slices.Clip(opts), IgnitionFile(path))
	}
	dom, found, err := lookupDomain(conn, n.Name)
	if err != nil {
		return "", err
	}
	if found {
		if err := checkOwner(conn, dom, n); err != nil {
			return "", err
		}
		dom, err = updateDomain(conn, dom, n, opts)
	} else {
		dom, err = defineDomain(conn, n, opts)
	}
	if err != nil {
		return "", err
	}
	active, err := conn.DomainIsActive(dom)
	if err != nil {
		return "", err
	}
	if active == 0 {
		if err := conn.DomainCreate(dom); err != nil && !isCode(err, libvirt.ErrOperationInvalid) {
			return "", fmt.Errorf("start domain: %w", err)
		}
	}
	return libvirtconn.UUIDString(dom.UUID), nil
}

// Recreate is recreate-vm: it destroys and undefines the node's domain,
// deletes its overlay and seed so that nothing of the broken node is kept,
// and creates it again from n with the same UUID (n.UUID, or else the old
// domain's). A domain of that name that is not n's (checkOwner) is left
// alone: the error matches ErrNotThisNode.
func Recreate(conn *libvirt.Libvirt, n Node, opts ...Option) (string, error) {
	if err := n.Validate(); err != nil {
		return "", err
	}
	uuid, err := remove(conn, n)
	if err != nil {
		return "", fmt.Errorf("recreate node %q: %w", n.Name, err)
	}
	if n.UUID == "" {
		n.UUID = uuid
	}
	// Once, not "recreate node: create node: …".
	got, err := create(conn, n, opts)
	if err != nil {
		return "", fmt.Errorf("recreate node %q: %w", n.Name, err)
	}
	return got, nil
}

// Delete destroys and undefines the node's domain and deletes its volumes
// from its pool; of n it uses Name, Cluster, UUID and Pool. What is
// already gone is not an error. A domain of that name that is not n's
// (checkOwner) is left alone, volumes and all: the error matches
// ErrNotThisNode.
func Delete(conn *libvirt.Libvirt, n Node) error {
	if !nameRe.MatchString(n.Name) || !nameRe.MatchString(n.Cluster) || n.Pool == "" || n.UUID != "" && !uuidRe.MatchString(n.UUID) {
		return fmt.Errorf("delete node %q of cluster %q in pool %q: want a valid name, cluster and UUID, and a pool", n.Name, n.Cluster, n.Pool)
	}
	if _, err := remove(conn, n); err != nil {
		return fmt.Errorf("delete node %q: %w", n.Name, err)
	}
	return nil
}

// remove stops and undefines the domain and deletes the node's volumes,
// returning the domain's UUID ("" when there was none). It touches nothing
// when the domain of that name is not n's.
func remove(conn *libvirt.Libvirt, n Node) (string, error) {
	dom, found, err := lookupDomain(conn, n.Name)
	if err != nil {
		return "", err
	}
	var uuid string
	if found {
		if err := checkOwner(conn, dom, n); err != nil {
			return "", err
		}
		uuid = libvirtconn.UUIDString(dom.UUID)
		// Not running (any more) is what destroy wants.
		if err := conn.DomainDestroy(dom); err != nil && !isCode(err, libvirt.ErrOperationInvalid) {
			return "", fmt.Errorf("destroy domain: %w", err)
		}
		flags := libvirt.DomainUndefineManagedSave | libvirt.DomainUndefineSnapshotsMetadata |
			libvirt.DomainUndefineCheckpointsMetadata | libvirt.DomainUndefineNvram
		if err := conn.DomainUndefineFlags(dom, flags); err != nil && !isCode(err, libvirt.ErrNoDomain) {
			return "", fmt.Errorf("undefine domain: %w", err)
		}
	}
	pool, err := activePool(conn, n.Pool)
	if err != nil {
		return "", err
	}
	if err := deleteVolumes(conn, pool, overlayVolume(n.Name), seedVolume(n.Name), ignitionVolume(n.Name)); err != nil {
		return "", err
	}
	return uuid, nil
}

// ErrNotThisNode is matched by the error of Create, Recreate and Delete
// when a domain of the node's name exists and is not the node meant: one
// without caretaker's metadata (not a node: an operator's own guest), of
// another cluster, or with another UUID. Nothing of it is changed.
var ErrNotThisNode = errors.New("the domain of that name is not this node")

// notThisNode is an ErrNotThisNode with the reason.
type notThisNode struct{ reason string }

func (e notThisNode) Error() string { return e.reason }
func (e notThisNode) Is(target error) bool {
	return target == ErrNotThisNode
}

// checkOwner says why dom, the domain named n.Name, is not n's: it lacks
// caretaker's metadata, its metadata names another cluster, or (when
// n.UUID is set) it has another UUID. nil when it is n's.
func checkOwner(conn *libvirt.Libvirt, dom libvirt.Domain, n Node) error {
	uuid := libvirtconn.UUIDString(dom.UUID)
	el, err := conn.DomainGetMetadata(dom, int32(libvirt.DomainMetadataElement), libvirt.OptString{guestmeta.Namespace}, libvirt.DomainAffectConfig)
	if isCode(err, libvirt.ErrNoDomainMetadata) {
		return notThisNode{fmt.Sprintf("domain %s (UUID %s) has no caretaker metadata: it is not a node of a guest cluster, and is left alone", n.Name, uuid)}
	}
	if err != nil {
		return fmt.Errorf("read domain metadata: %w", err)
	}
	meta, err := guestmeta.Parse(el)
	if err != nil {
		return notThisNode{fmt.Sprintf("domain %s (UUID %s) has unreadable caretaker metadata (%v), and is left alone", n.Name, uuid, err)}
	}
	if meta.Cluster != n.Cluster {
		return notThisNode{fmt.Sprintf("domain %s (UUID %s) is a node of cluster %q, not of %q, and is left alone", n.Name, uuid, meta.Cluster, n.Cluster)}
	}
	if n.UUID != "" && !strings.EqualFold(n.UUID, uuid) {
		return notThisNode{fmt.Sprintf("domain %s exists with UUID %s, not the node's %s, and is left alone", n.Name, uuid, n.UUID)}
	}
	return nil
}

// ownedOrAbsent is checkOwner of the domain named n.Name, nil when there
// is none.
func ownedOrAbsent(conn *libvirt.Libvirt, n Node) error {
	dom, found, err := lookupDomain(conn, n.Name)
	if err != nil || !found {
		return err
	}
	return checkOwner(conn, dom, n)
}

// lookupDomain returns the named domain, and false when there is none.
func lookupDomain(conn *libvirt.Libvirt, name string) (libvirt.Domain, bool, error) {
	dom, err := conn.DomainLookupByName(name)
	if isCode(err, libvirt.ErrNoDomain) {
		return dom, false, nil
	}
	if err != nil {
		return dom, false, fmt.Errorf("look up domain: %w", err)
	}
	return dom, true, nil
}

func volumePath(conn *libvirt.Libvirt, poolName, name string) (string, error) {
	pool, err := activePool(conn, poolName)
	if err != nil {
		return "", err
	}
	vol, err := conn.StorageVolLookupByName(pool, name)
	if err != nil {
		return "", fmt.Errorf("look up volume %q: %w", name, err)
	}
	path, err := conn.StorageVolGetPath(vol)
	if err != nil {
		return "", fmt.Errorf("path of volume %q: %w", name, err)
	}
	return path, nil
}

func defineDomain(conn *libvirt.Libvirt, n Node, opts []Option) (libvirt.Domain, error) {
	s, err := DomainXML(n, opts...)
	if err != nil {
		return libvirt.Domain{}, err
	}
	dom, err := conn.DomainDefineXML(s)
	if err != nil {
		return libvirt.Domain{}, fmt.Errorf("define domain: %w", err)
	}
	return dom, nil
}

// updateDomain redefines dom from n when its persistent definition differs
// in what n decides. It keeps dom's UUID, and refuses a different n.UUID:
// that is another machine under the same name.
func updateDomain(conn *libvirt.Libvirt, dom libvirt.Domain, n Node, opts []Option) (libvirt.Domain, error) {
	uuid := libvirtconn.UUIDString(dom.UUID)
	if n.UUID != "" && !strings.EqualFold(n.UUID, uuid) {
		return libvirt.Domain{}, fmt.Errorf("domain exists with UUID %s, not the node's %s", uuid, n.UUID)
	}
	n.UUID = uuid
	want, err := domain(n, opts)
	if err != nil {
		return libvirt.Domain{}, err
	}
	have, err := definedShape(conn, dom)
	if err != nil {
		return libvirt.Domain{}, err
	}
	wantMeta := guestmeta.Metadata{Intent: guestmeta.IntentRunning, Cluster: n.Cluster, Role: n.Role}
	if have == shape(want, wantMeta) {
		return dom, nil
	}
	return defineDomain(conn, n, opts)
}

// definedShape reads the persistent definition of dom as shape does.
func definedShape(conn *libvirt.Libvirt, dom libvirt.Domain) (string, error) {
	s, err := conn.DomainGetXMLDesc(dom, libvirt.DomainXMLInactive)
	if err != nil {
		return "", fmt.Errorf("read domain definition: %w", err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(s); err != nil {
		return "", fmt.Errorf("read domain definition: %w", err)
	}
	var meta guestmeta.Metadata
	el, err := conn.DomainGetMetadata(dom, int32(libvirt.DomainMetadataElement), libvirt.OptString{guestmeta.Namespace}, libvirt.DomainAffectConfig)
	switch {
	case isCode(err, libvirt.ErrNoDomainMetadata):
	case err != nil:
		return "", fmt.Errorf("read domain metadata: %w", err)
	default:
		if meta, err = guestmeta.Parse(el); err != nil {
			return "", err
		}
	}
	return shape(&d, meta), nil
}

// shape renders what DomainXML decides of a definition, leaving out what
// libvirt adds (addresses, controllers, defaults), so that the definition
// libvirt returns compares equal to the one it was given.
func shape(d *libvirtxml.Domain, meta guestmeta.Metadata) string {
	var b strings.Builder
	fmt.Fprintf(&b, "type=%s name=%s meta=%+v on=%s/%s/%s\n", d.Type, d.Name, meta, d.OnPoweroff, d.OnReboot, d.OnCrash)
	if d.Memory != nil {
		fmt.Fprintf(&b, "memory=%d%s\n", d.Memory.Value, d.Memory.Unit)
	}
	if d.VCPU != nil {
		fmt.Fprintf(&b, "vcpus=%d\n", d.VCPU.Value)
	}
	// libvirt fills in a custom CPU where none was asked for.
	if d.CPU != nil && d.CPU.Mode == "host-passthrough" {
		b.WriteString("cpu=host-passthrough\n")
	}
	if d.Devices != nil {
		for _, disk := range d.Devices.Disks {
			fmt.Fprintf(&b, "disk=%s", disk.Device)
			if disk.Driver != nil {
				fmt.Fprintf(&b, " %s", disk.Driver.Type)
			}
			if disk.Source != nil && disk.Source.Volume != nil {
				fmt.Fprintf(&b, " %s/%s", disk.Source.Volume.Pool, disk.Source.Volume.Volume)
			}
			if disk.Target != nil {
				fmt.Fprintf(&b, " %s:%s", disk.Target.Bus, disk.Target.Dev)
			}
			b.WriteString("\n")
		}
		for _, nic := range d.Devices.Interfaces {
			b.WriteString("nic=")
			if nic.MAC != nil {
				b.WriteString(strings.ToLower(nic.MAC.Address))
			}
			if nic.Source != nil && nic.Source.Bridge != nil {
				b.WriteString(" " + nic.Source.Bridge.Bridge)
			}
			if nic.Model != nil {
				b.WriteString(" " + nic.Model.Type)
			}
			b.WriteString("\n")
		}
	}
	for _, si := range d.SysInfo {
		if si.FWCfg != nil {
			for _, e := range si.FWCfg.Entry {
				fmt.Fprintf(&b, "fwcfg=%s=%s\n", e.Name, e.File)
			}
		}
	}
	return b.String()
}
