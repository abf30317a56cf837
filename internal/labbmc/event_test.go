package labbmc

import (
	"strings"
	"testing"
)

func TestParseEvent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		line string
		want event
		err  string
	}{
		{line: "power 1 pxe", want: event{Kind: eventPower, On: true, Boot: BootPXE}},
		{line: "power 0 none", want: event{Kind: eventPower, Boot: BootNone}},
		{line: "power 1 default", want: event{Kind: eventPower, On: true, Boot: BootDefault}},
		{line: "reset bios", want: event{Kind: eventReset, Boot: BootBIOS}},
		{line: "boot cdrom", want: event{Kind: eventBoot, Boot: BootCDROM}},
		{line: "", err: `want "power 0|1 DEVICE"`},
		{line: "power 1", err: `want "power 0|1 DEVICE"`},
		{line: "power 2 pxe", err: `power "2" is neither 0 nor 1`},
		{line: "power on pxe", err: `power "on" is neither 0 nor 1`},
		{line: "power 1 pxe ", err: `want "power 0|1 DEVICE"`},
		{line: "power  1 pxe", err: `want "power 0|1 DEVICE"`},
		{line: "power 1 pxe\r", err: `unknown boot device "pxe\r"`},
		{line: "power 1 floppy", err: `unknown boot device "floppy"`},
		{line: "boot PXE", err: `unknown boot device "PXE"`},
		{line: "reset", err: `want "power 0|1 DEVICE"`},
		{line: "identify 15 0", err: `want "power 0|1 DEVICE"`},
		{line: "power 1 " + strings.Repeat("x", 80), err: "line of 88 bytes, at most 64"},
	} {
		got, err := parseEvent(tc.line)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseEvent(%q) = %+v, %v; want an error containing %q", tc.line, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseEvent(%q) = %+v, %v; want %+v", tc.line, got, err, tc.want)
		}
	}
}

// FuzzParseEvent: any line either fails or is an event the script could
// have written, which prints back as the same line.
func FuzzParseEvent(f *testing.F) {
	for _, s := range []string{"power 1 pxe", "power 0 none", "reset default", "boot bios", "power 1 pxe\n", "boot", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		ev, err := parseEvent(line)
		if err != nil {
			if ev != (event{}) {
				t.Fatalf("parseEvent(%q) failed with %+v", line, ev)
			}
			return
		}
		var back string
		switch ev.Kind {
		case eventPower:
			on := "0"
			if ev.On {
				on = "1"
			}
			back = "power " + on + " " + ev.Boot
		case eventReset:
			back = "reset " + ev.Boot
		case eventBoot:
			back = "boot " + ev.Boot
		default:
			t.Fatalf("parseEvent(%q) = kind %d", line, ev.Kind)
		}
		if back != line {
			t.Fatalf("parseEvent(%q) = %+v, which is %q", line, ev, back)
		}
	})
}
