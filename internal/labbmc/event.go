package labbmc

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Boot devices, as ipmi_sim names them to its chassis_control program
// (the Boot Device Selector of the boot flags parameter).
const (
	// BootNone is no override: the host boots as it always does.
	BootNone = "none"
	// BootPXE is a boot from the network.
	BootPXE     = "pxe"
	BootDefault = "default" // the default hard disk
	BootCDROM   = "cdrom"
	BootBIOS    = "bios" // the BIOS setup
)

// bootDevices are every device ipmi_sim passes on.
var bootDevices = []string{BootNone, BootPXE, BootDefault, BootCDROM, BootBIOS}

// maxEventLine bounds one line of the chassis script; its longest is
// "power 1 default\n".
const maxEventLine = 64

// eventKind is what a line of the chassis script reports.
type eventKind int

const (
	eventPower eventKind = iota + 1 // the power changed to On
	eventReset                      // a running host was reset: off and on again
	eventBoot                       // the boot device was set to Boot
)

// event is one parsed line of the chassis script.
type event struct {
	Kind eventKind
	On   bool   // eventPower only
	Boot string // the boot device set, or (power, reset) the one booted from
}

// parseEvent parses one line the chassis script wrote, without its
// newline. It is strict: exactly
//
//	power 0|1 DEVICE   the power changed; DEVICE is the boot device then
//	reset DEVICE       a running host was reset and boots from DEVICE
//	boot DEVICE        the boot device was set
//
// with single spaces and DEVICE one of bootDevices. Anything else is an
// error: the FIFO is outside input.
func parseEvent(line string) (event, error) {
	if len(line) > maxEventLine {
		return event{}, fmt.Errorf("chassis event: line of %d bytes, at most %d", len(line), maxEventLine)
	}
	f := strings.Split(line, " ")
	ev, err := parseFields(f)
	if err != nil {
		return event{}, fmt.Errorf("chassis event %q: %w", line, err)
	}
	if !slices.Contains(bootDevices, ev.Boot) {
		return event{}, fmt.Errorf("chassis event %q: unknown boot device %q", line, ev.Boot)
	}
	return ev, nil
}

func parseFields(f []string) (event, error) {
	switch {
	case len(f) == 3 && f[0] == "power":
		var on bool
		switch f[1] {
		case "0":
		case "1":
			on = true
		default:
			return event{}, fmt.Errorf("power %q is neither 0 nor 1", f[1])
		}
		return event{Kind: eventPower, On: on, Boot: f[2]}, nil
	case len(f) == 2 && f[0] == "reset":
		return event{Kind: eventReset, Boot: f[1]}, nil
	case len(f) == 2 && f[0] == "boot":
		return event{Kind: eventBoot, Boot: f[1]}, nil
	}
	return event{}, errors.New(`want "power 0|1 DEVICE", "reset DEVICE" or "boot DEVICE"`)
}
