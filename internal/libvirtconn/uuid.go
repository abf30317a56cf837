package libvirtconn

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/digitalocean/go-libvirt"
)

// UUIDString formats a domain's UUID as libvirt does (virsh domuuid):
// lowercase, 8-4-4-4-12 hex digits.
func UUIDString(u libvirt.UUID) string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:36], u[10:16])
	return string(b[:])
}

// ParseUUID parses a UUID of the form UUIDString prints, in either case,
// or its 32 hex digits without dashes (as libvirt accepts them).
func ParseUUID(s string) (libvirt.UUID, error) {
	var u libvirt.UUID
	h := s
	if len(h) == 36 && h[8] == '-' && h[13] == '-' && h[18] == '-' && h[23] == '-' {
		h = strings.ReplaceAll(h, "-", "")
	}
	if len(h) != 32 {
		return u, fmt.Errorf("malformed UUID %q", s)
	}
	if _, err := hex.Decode(u[:], []byte(h)); err != nil {
		return u, fmt.Errorf("malformed UUID %q", s)
	}
	return u, nil
}

// LookupDomain returns the domain with the UUID s (virDomainLookupByUUIDString).
// A malformed s is an error of libvirt's kind VIR_ERR_INVALID_ARG, as
// libvirt's own look-up gives; an unknown one VIR_ERR_NO_DOMAIN.
func LookupDomain(l *libvirt.Libvirt, s string) (libvirt.Domain, error) {
	u, err := ParseUUID(s)
	if err != nil {
		return libvirt.Domain{}, libvirt.Error{Code: uint32(libvirt.ErrInvalidArg), Message: "invalid argument: " + err.Error()}
	}
	return l.DomainLookupByUUID(u)
}
