package guests

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/guestmeta"
)

// Create makes the node's volumes where missing, defines its domain (or
// redefines it when the definition differs from n), and starts it unless it
// runs. It returns the domain's UUID. Calling it again changes nothing; a
// redefinition of a running domain takes effect at its next start.
func Create(conn *libvirt.Connect, n Node, opts ...Option) (string, error) {
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
func create(conn *libvirt.Connect, n Node, opts []Option) (string, error) {
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
	dom, err := lookupDomain(conn, n.Name)
	if err != nil {
		return "", err
	}
	if dom != nil {
		if err := checkOwner(dom, n); err != nil {
			dom.Free()
			return "", err
		}
		dom, err = updateDomain(conn, dom, n, opts)
	} else {
		dom, err = defineDomain(conn, n, opts)
	}
	if err != nil {
		return "", err
	}
	defer dom.Free()
	uuid, err := dom.GetUUIDString()
	if err != nil {
		return "", fmt.Errorf("read UUID: %w", err)
	}
	active, err := dom.IsActive()
	if err != nil {
		return "", err
	}
	if !active {
		if err := dom.Create(); err != nil && !isCode(err, libvirt.ERR_OPERATION_INVALID) {
			return "", fmt.Errorf("start domain: %w", err)
		}
	}
	return uuid, nil
}

// Recreate is recreate-vm: it destroys and undefines the node's domain,
// deletes its overlay and seed so that nothing of the broken node is kept,
// and creates it again from n with the same UUID (n.UUID, or else the old
// domain's). A domain of that name that is not n's (checkOwner) is left
// alone: the error matches ErrNotThisNode.
func Recreate(conn *libvirt.Connect, n Node, opts ...Option) (string, error) {
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
func Delete(conn *libvirt.Connect, n Node) error {
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
func remove(conn *libvirt.Connect, n Node) (string, error) {
	dom, err := lookupDomain(conn, n.Name)
	if err != nil {
		return "", err
	}
	var uuid string
	if dom != nil {
		defer dom.Free()
		if err := checkOwner(dom, n); err != nil {
			return "", err
		}
		if uuid, err = dom.GetUUIDString(); err != nil {
			return "", fmt.Errorf("read UUID: %w", err)
		}
		// Not running (any more) is what destroy wants.
		if err := dom.Destroy(); err != nil && !isCode(err, libvirt.ERR_OPERATION_INVALID) {
			return "", fmt.Errorf("destroy domain: %w", err)
		}
		flags := libvirt.DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
			libvirt.DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.DOMAIN_UNDEFINE_NVRAM
		if err := dom.UndefineFlags(flags); err != nil && !isCode(err, libvirt.ERR_NO_DOMAIN) {
			return "", fmt.Errorf("undefine domain: %w", err)
		}
	}
	pool, err := activePool(conn, n.Pool)
	if err != nil {
		return "", err
	}
	defer pool.Free()
	if err := deleteVolumes(pool, overlayVolume(n.Name), seedVolume(n.Name), ignitionVolume(n.Name)); err != nil {
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
func checkOwner(dom *libvirt.Domain, n Node) error {
	uuid, err := dom.GetUUIDString()
	if err != nil {
		return fmt.Errorf("read UUID: %w", err)
	}
	el, err := dom.GetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, guestmeta.Namespace, libvirt.DOMAIN_AFFECT_CONFIG)
	if isCode(err, libvirt.ERR_NO_DOMAIN_METADATA) {
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
func ownedOrAbsent(conn *libvirt.Connect, n Node) error {
	dom, err := lookupDomain(conn, n.Name)
	if err != nil || dom == nil {
		return err
	}
	defer dom.Free()
	return checkOwner(dom, n)
}

// lookupDomain returns the named domain, or nil when there is none.
func lookupDomain(conn *libvirt.Connect, name string) (*libvirt.Domain, error) {
	dom, err := conn.LookupDomainByName(name)
	if isCode(err, libvirt.ERR_NO_DOMAIN) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up domain: %w", err)
	}
	return dom, nil
}

func volumePath(conn *libvirt.Connect, poolName, name string) (string, error) {
	pool, err := activePool(conn, poolName)
	if err != nil {
		return "", err
	}
	defer pool.Free()
	vol, err := pool.LookupStorageVolByName(name)
	if err != nil {
		return "", fmt.Errorf("look up volume %q: %w", name, err)
	}
	defer vol.Free()
	path, err := vol.GetPath()
	if err != nil {
		return "", fmt.Errorf("path of volume %q: %w", name, err)
	}
	return path, nil
}

func defineDomain(conn *libvirt.Connect, n Node, opts []Option) (*libvirt.Domain, error) {
	s, err := DomainXML(n, opts...)
	if err != nil {
		return nil, err
	}
	dom, err := conn.DomainDefineXML(s)
	if err != nil {
		return nil, fmt.Errorf("define domain: %w", err)
	}
	return dom, nil
}

// updateDomain redefines dom from n when its persistent definition differs
// in what n decides. It keeps dom's UUID, and refuses a different n.UUID:
// that is another machine under the same name.
func updateDomain(conn *libvirt.Connect, dom *libvirt.Domain, n Node, opts []Option) (*libvirt.Domain, error) {
	uuid, err := dom.GetUUIDString()
	if err != nil {
		dom.Free()
		return nil, fmt.Errorf("read UUID: %w", err)
	}
	if n.UUID != "" && !strings.EqualFold(n.UUID, uuid) {
		dom.Free()
		return nil, fmt.Errorf("domain exists with UUID %s, not the node's %s", uuid, n.UUID)
	}
	n.UUID = uuid
	want, err := domain(n, opts)
	if err != nil {
		dom.Free()
		return nil, err
	}
	have, err := definedShape(dom)
	if err != nil {
		dom.Free()
		return nil, err
	}
	wantMeta := guestmeta.Metadata{Intent: guestmeta.IntentRunning, Cluster: n.Cluster, Role: n.Role}
	if have == shape(want, wantMeta) {
		return dom, nil
	}
	dom.Free()
	return defineDomain(conn, n, opts)
}

// definedShape reads the persistent definition of dom as shape does.
func definedShape(dom *libvirt.Domain) (string, error) {
	s, err := dom.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE)
	if err != nil {
		return "", fmt.Errorf("read domain definition: %w", err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(s); err != nil {
		return "", fmt.Errorf("read domain definition: %w", err)
	}
	var meta guestmeta.Metadata
	el, err := dom.GetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, guestmeta.Namespace, libvirt.DOMAIN_AFFECT_CONFIG)
	switch {
	case isCode(err, libvirt.ERR_NO_DOMAIN_METADATA):
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
