package kvm

import (
	"fmt"
	"strings"

	"github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"caretaker/internal/guestmeta"
)

// identity is what the collector knows of a domain beyond its stats: its
// caretaker metadata and its interfaces, read from the domain's XML. It is
// cached per UUID (see identityCache), because reading it costs one or two
// round trips per domain, which on every scrape would cost more than the
// bulk stats call itself.
type identity struct {
	meta    guestmeta.Metadata
	hasMeta bool
	ifaces  []iface
}

// iface is one network interface of a domain.
type iface struct {
	// device is the host-side device (vnet0), the name libvirt's
	// interface stats use. Only running domains have one.
	device string
	// bridge is the host bridge the interface is plugged into, empty
	// when it is on none (macvtap, user networking) or the domain's
	// definition does not say (a libvirt network, while shut off).
	bridge string
	mac    string
}

// readIdentity reads a domain's identity from its XML: caretaker's
// metadata from the persistent definition, where an intent set with
// --config lands (the live one would miss it until the next restart), and
// the interfaces from the live definition, which alone has their host-side
// devices and the bridges of interfaces on a libvirt network. An inactive
// domain has only the one definition, read once.
func readIdentity(conn *libvirt.Libvirt, dom libvirt.Domain, active bool) (identity, error) {
	// For a transient domain, INACTIVE returns the live definition.
	persistent, err := conn.DomainGetXMLDesc(dom, libvirt.DomainXMLInactive)
	if err != nil {
		return identity{}, fmt.Errorf("get persistent domain XML: %w", err)
	}
	live := persistent
	if active {
		if live, err = conn.DomainGetXMLDesc(dom, 0); err != nil {
			return identity{}, fmt.Errorf("get live domain XML: %w", err)
		}
	}
	return parseIdentity(persistent, live)
}

// parseIdentity parses the metadata of the persistent definition and the
// interfaces of the live one.
func parseIdentity(persistentXML, liveXML string) (identity, error) {
	var def libvirtxml.Domain
	if err := def.Unmarshal(persistentXML); err != nil {
		return identity{}, fmt.Errorf("parse persistent domain XML: %w", err)
	}
	var id identity
	if def.Metadata != nil {
		m, ok, err := guestmeta.FromDomain(def.Metadata.XML)
		if err != nil {
			return identity{}, err
		}
		id.meta, id.hasMeta = m, ok
	}
	if liveXML != persistentXML {
		def = libvirtxml.Domain{}
		if err := def.Unmarshal(liveXML); err != nil {
			return identity{}, fmt.Errorf("parse live domain XML: %w", err)
		}
	}
	if def.Devices != nil {
		for _, ni := range def.Devices.Interfaces {
			id.ifaces = append(id.ifaces, interfaceOf(ni))
		}
	}
	return id, nil
}

func interfaceOf(ni libvirtxml.DomainInterface) iface {
	var f iface
	if ni.Target != nil {
		f.device = ni.Target.Dev
	}
	if ni.MAC != nil {
		f.mac = ni.MAC.Address
	}
	if s := ni.Source; s != nil {
		switch {
		case s.Bridge != nil:
			f.bridge = s.Bridge.Bridge
		case s.Network != nil:
			// Only the live definition of a running domain names
			// the network's bridge.
			f.bridge = s.Network.Bridge
		}
	}
	return f
}

// ClusterRoleFromName reads a guest's cluster and role from its name when
// the domain has no caretaker metadata, by the naming convention
// <cluster>-<role>-<n>: the last dash-separated field is the node's number,
// the one before it is the role (so a role has no dash), and everything
// before that is the cluster, which may have dashes. "prod-worker-3" is node
// 3 of role worker in cluster prod, "prod-eu-cp-1" node 1 of role cp in
// cluster prod-eu. Other names give false.
func ClusterRoleFromName(name string) (cluster, role string, ok bool) {
	rest, n, found := cutLast(name, "-")
	if !found || !isDecimal(n) {
		return "", "", false
	}
	cluster, role, found = cutLast(rest, "-")
	if !found || cluster == "" || role == "" {
		return "", "", false
	}
	return cluster, role, true
}

func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

func isDecimal(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// clusterRole is the cluster and role the domain_info metric reports: the
// metadata's when it names either, the name's otherwise. The two are not
// mixed, so that a guest does not end up with its cluster from one source
// and its role from the other.
func clusterRole(name string, id *identity) (cluster, role string) {
	if id != nil && id.hasMeta && (id.meta.Cluster != "" || id.meta.Role != "") {
		return id.meta.Cluster, id.meta.Role
	}
	cluster, role, _ = ClusterRoleFromName(name)
	return cluster, role
}
