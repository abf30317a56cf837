package kvm

import (
	"fmt"

	"github.com/digitalocean/go-libvirt"

	"caretaker/internal/guestmeta"
)

// statedIntent is the intent caretaker's metadata states: whether the
// domain is meant to run, and whether the metadata says at all (stated
// false: the domain's autostart flag decides). An intent this version does
// not know counts as not meant to run. It is the one rule behind
// caretaker_kvm_domain_intended_running and DomainIntendedRunning.
func statedIntent(ident *identity) (running, stated bool) {
	if ident == nil || !ident.hasMeta || ident.meta.Intent == "" {
		return false, false
	}
	return ident.meta.Intent == guestmeta.IntentRunning, true
}

// DomainIntendedRunning reads whether dom is meant to run, as the
// collector's caretaker_kvm_domain_intended_running says: the intent in
// caretaker's metadata of its persistent definition, else its autostart
// flag (also when the definition cannot be read). It makes one or two
// round trips to libvirt; bound them (libvirtconn.Conn.Call).
func DomainIntendedRunning(conn *libvirt.Libvirt, dom libvirt.Domain) (bool, error) {
	ident, identErr := readIdentity(conn, dom, false)
	var ip *identity
	if identErr == nil {
		ip = &ident
	}
	if running, stated := statedIntent(ip); stated {
		return running, nil
	}
	autostart, err := conn.DomainGetAutostart(dom)
	if err != nil {
		if identErr != nil {
			return false, fmt.Errorf("read intent of domain: %w; read its autostart flag: %w", identErr, err)
		}
		return false, fmt.Errorf("read autostart flag of domain: %w", err)
	}
	return autostart != 0, nil
}
