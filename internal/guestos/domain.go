package guestos

import (
	"fmt"

	"libvirt.org/go/libvirtxml"
)

// MemoryMiB is the memory a guest needs, measured with Debian 12's kernel
// 6.1 under TCG: in 64 MiB it does not boot (the guest resets over and
// over while the kernel decompresses itself, before printing a line); in
// 96 MiB it boots and some 25 MiB remain available once busybox's httpd
// runs (/cgi-bin/info says how much).
const MemoryMiB = 96

// DomainOS is the <os> of guest g booting img directly: the kernel, the
// initrd and Cmdline(g), on QEMU's i440FX machine. Besides it, the domain
// needs <features> of Features, the devices of Devices and a NIC of
// Interface (testdata/domain-*.xml show the whole), and
// <on_crash>destroy</on_crash> for a panic to leave it shut off, reason
// crashed.
func DomainOS(img Image, g Guest) (*libvirtxml.DomainOS, error) {
	cmdline, err := Cmdline(g)
	if err != nil {
		return nil, err
	}
	if img.Kernel == "" || img.Initrd == "" {
		return nil, fmt.Errorf("guest %s: image without kernel or initrd (%+v): run guestos.Build", g.Hostname, img)
	}
	return &libvirtxml.DomainOS{
		Type:    &libvirtxml.DomainOSType{Arch: "x86_64", Machine: "pc", Type: "hvm"},
		Kernel:  img.Kernel,
		Initrd:  img.Initrd,
		Cmdline: cmdline,
	}, nil
}

// Features are the domain's <features>: ACPI, without which the kernel
// finds no pvpanic device (QEMU announces it as ACPI's QEMU0001) and no PCI
// interrupt routing, and the APIC.
func Features() *libvirtxml.DomainFeatureList {
	return &libvirtxml.DomainFeatureList{
		ACPI: &libvirtxml.DomainFeature{},
		APIC: &libvirtxml.DomainFeatureAPIC{},
	}
}

// Devices are the devices a guest needs besides its NIC, which is
// Interface's: the ISA pvpanic device, through which the guest's kernel
// panic makes libvirt report the domain crashed (and, with
// <on_crash>destroy</on_crash>, shut off with reason crashed), and the
// serial console ttyS0 that /init and the kernel write to. consoleLog,
// when not "", is a file that receives the console (written by libvirt's
// virtlogd, as root); else the console is a pty (virsh console).
func Devices(consoleLog string) libvirtxml.DomainDeviceList {
	serial := libvirtxml.DomainSerial{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainSerialTarget{Port: new(uint(0))},
	}
	if consoleLog != "" {
		serial.Source = &libvirtxml.DomainChardevSource{File: &libvirtxml.DomainChardevSourceFile{Path: consoleLog}}
	}
	return libvirtxml.DomainDeviceList{
		Serials: []libvirtxml.DomainSerial{serial},
		Panics: []libvirtxml.DomainPanic{{
			Model:   "isa",
			Address: &libvirtxml.DomainAddress{ISA: &libvirtxml.DomainAddressISA{IOBase: new(uint(0x505))}},
		}},
	}
}

// Interface is the guest's NIC: virtio (the driver the initramfs loads),
// on bridge; mac may be "" for libvirt to choose one.
func Interface(bridge, mac string) libvirtxml.DomainInterface {
	nic := libvirtxml.DomainInterface{
		Source: &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: bridge}},
		Model:  &libvirtxml.DomainInterfaceModel{Type: "virtio"},
	}
	if mac != "" {
		nic.MAC = &libvirtxml.DomainInterfaceMAC{Address: mac}
	}
	return nic
}

// Domain is a whole guest of name that boots img as g: TCG (domain type
// qemu, so no /dev/kvm is needed), MemoryMiB, one vCPU, the OS, ACPI,
// Devices(consoleLog) with nic, and shut off when it crashes or powers
// off. The caller adds its metadata.
func Domain(name string, img Image, g Guest, nic libvirtxml.DomainInterface, consoleLog string) (libvirtxml.Domain, error) {
	osx, err := DomainOS(img, g)
	if err != nil {
		return libvirtxml.Domain{}, err
	}
	devices := Devices(consoleLog)
	devices.Interfaces = []libvirtxml.DomainInterface{nic}
	return libvirtxml.Domain{
		Type:       "qemu",
		Name:       name,
		Memory:     &libvirtxml.DomainMemory{Value: MemoryMiB, Unit: "MiB"},
		VCPU:       &libvirtxml.DomainVCPU{Value: 1},
		OS:         osx,
		Features:   Features(),
		Devices:    &devices,
		OnCrash:    "destroy",
		OnPoweroff: "destroy",
	}, nil
}
