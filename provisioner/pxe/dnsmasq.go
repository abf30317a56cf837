package pxe

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"path"
	"regexp"
	"strings"
	"time"
)

// DnsmasqConfig describes the dnsmasq that PXE-boots hosts on one network.
type DnsmasqConfig struct {
	Interface string // the PXE network's interface, e.g. "eth1"
	// Mode is "dhcp" (dnsmasq is the network's DHCP server and leases
	// Range) or "proxy" (another DHCP server leases addresses; dnsmasq
	// adds only the boot information, for Subnet).
	Mode   string
	Range  DHCPRange    // dhcp mode
	Subnet netip.Prefix // proxy mode
	// TFTPRoot holds IPXEBinary: undionly.kpxe for BIOS PXE ROMs,
	// ipxe.efi for x86-64 UEFI.
	TFTPRoot   string
	IPXEBinary string
	// HTTPBootURL is the chain script iPXE fetches: <base>/pxe/boot.ipxe.
	HTTPBootURL string
}

// BootScriptURL is the chain script, GET /pxe/boot.ipxe, of the server
// that booting hosts reach at baseURL (provisioner.pxe.base_url).
func BootScriptURL(baseURL string) string {
	return strings.TrimRight(baseURL, "/") + "/pxe/boot.ipxe"
}

// DHCPRange is the addresses dnsmasq leases in dhcp mode.
type DHCPRange struct {
	Start, End netip.Addr
	Lease      time.Duration // 0 means dnsmasq's default, one hour
}

var (
	ifaceRE  = regexp.MustCompile(`^[A-Za-z0-9_.@-]{1,15}$`)
	binaryRE = regexp.MustCompile(`^[A-Za-z0-9_.+-]+\.[A-Za-z0-9]+$`)
)

// Validate checks d; every value is also checked for characters that
// would let it break out of its line of dnsmasq.conf.
func (d DnsmasqConfig) Validate() error {
	var errs []error
	if !ifaceRE.MatchString(d.Interface) {
		errs = append(errs, fmt.Errorf("interface %q: want an interface name such as eth1", d.Interface))
	}
	switch d.Mode {
	case "dhcp":
		r := d.Range
		switch {
		case !r.Start.Is4() || !r.End.Is4():
			errs = append(errs, fmt.Errorf("range %v-%v: want two IPv4 addresses", r.Start, r.End))
		case r.End.Less(r.Start):
			errs = append(errs, fmt.Errorf("range %v-%v: end is before start", r.Start, r.End))
		}
		if r.Lease < 0 || (r.Lease > 0 && r.Lease < 2*time.Minute) || r.Lease%time.Second != 0 {
			errs = append(errs, fmt.Errorf("range lease %v: want whole seconds, at least 2m (dnsmasq's minimum)", r.Lease))
		}
	case "proxy":
		if !d.Subnet.IsValid() || !d.Subnet.Addr().Is4() {
			errs = append(errs, fmt.Errorf("subnet %v: want an IPv4 prefix such as 192.168.50.0/24", d.Subnet))
		}
	default:
		errs = append(errs, fmt.Errorf("mode %q: want dhcp or proxy", d.Mode))
	}
	if !path.IsAbs(d.TFTPRoot) || strings.ContainsAny(d.TFTPRoot, ",\r\n") {
		errs = append(errs, fmt.Errorf("tftp root %q: want an absolute path without commas", d.TFTPRoot))
	}
	if !binaryRE.MatchString(d.IPXEBinary) {
		errs = append(errs, fmt.Errorf("ipxe binary %q: want a file name with its suffix, such as undionly.kpxe", d.IPXEBinary))
	}
	if u, err := url.Parse(d.HTTPBootURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		strings.ContainsAny(d.HTTPBootURL, ", \t\r\n\"") {
		errs = append(errs, fmt.Errorf("http boot url %q: want an http(s) URL without commas, quotes or spaces", d.HTTPBootURL))
	}
	return errors.Join(errs...)
}

// RenderDnsmasq writes a dnsmasq.conf for d. PXE ROMs get IPXEBinary over
// TFTP; iPXE (recognised by its user class or option 175) gets
// HTTPBootURL instead, which breaks the loop of iPXE loading itself.
func RenderDnsmasq(w io.Writer, d DnsmasqConfig) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("render dnsmasq config: %w", err)
	}
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("# Rendered by caretaker (provisioner/pxe); edits are overwritten.")
	line("# DNS is off: this dnsmasq only answers DHCP and TFTP for PXE boots.")
	line("port=0")
	line("interface=%s", d.Interface)
	line("bind-interfaces")
	switch d.Mode {
	case "dhcp":
		lease := "1h"
		if d.Range.Lease > 0 {
			lease = fmt.Sprintf("%d", int64(d.Range.Lease/time.Second))
		}
		line("dhcp-range=%s,%s,%s", d.Range.Start, d.Range.End, lease)
	case "proxy":
		line("# Another server leases the addresses; dnsmasq adds the boot information.")
		p := d.Subnet.Masked()
		mask := net.CIDRMask(p.Bits(), 32)
		line("dhcp-range=%s,proxy,%s", p.Addr(), net.IP(mask).String())
	}
	line("enable-tftp")
	line("tftp-root=%s", d.TFTPRoot)
	line("# iPXE says who it is by user class \"iPXE\" or by option 175.")
	line("dhcp-userclass=set:ipxe,iPXE")
	line("dhcp-match=set:ipxe,175")
	switch d.Mode {
	case "dhcp":
		line("dhcp-boot=tag:!ipxe,%s", d.IPXEBinary)
		line("dhcp-boot=tag:ipxe,%s", d.HTTPBootURL)
	case "proxy":
		csa := "x86PC"
		if strings.HasSuffix(d.IPXEBinary, ".efi") {
			csa = "X86-64_EFI"
		}
		// The binary's suffix stops dnsmasq adding the PXE layer suffix ".0".
		line("pxe-service=tag:!ipxe,%s,\"PXE chainload to iPXE\",%s", csa, d.IPXEBinary)
		line("pxe-service=tag:ipxe,%s,\"iPXE boot script\",%s", csa, d.HTTPBootURL)
	}
	line("log-dhcp")
	_, err := io.WriteString(w, b.String())
	return err
}
