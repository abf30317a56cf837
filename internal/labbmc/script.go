package labbmc

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Bounds of what the firmware takes from the server.
const (
	// maxScript bounds one iPXE script.
	maxScript = 64 << 10
	// maxLine bounds one line of a script.
	maxLine = 8 << 10
	// maxCommands bounds the commands of one boot, chained scripts included.
	maxCommands = 256
	// maxChainDepth bounds scripts chaining scripts.
	maxChainDepth = 4
	// maxImage bounds a fetched kernel, initrd or other image.
	maxImage = 256 << 20
)

// iPXE commands the firmware runs.
const (
	cmdChain    = "chain"
	cmdImgfetch = "imgfetch"
	cmdKernel   = "kernel"
	cmdInitrd   = "initrd"
	cmdEcho     = "echo"
	cmdBoot     = "boot"
)

// command is one line of an iPXE script.
type command struct {
	Line int    // from 1
	Name string // one of the cmd constants
	// URL is the image's URL as written, before settings are expanded
	// (chain, imgfetch, kernel, initrd).
	URL string
}

// scriptMagic starts every iPXE script.
const scriptMagic = "#!ipxe"

// isScript reports whether b is an iPXE script, as iPXE tells one by its
// first line.
func isScript(b []byte) bool {
	line, _, _ := strings.Cut(string(b[:min(len(b), 256)]), "\n")
	return strings.TrimRight(line, " \t\r") == scriptMagic
}

// parseScript parses an iPXE script into the commands the firmware runs.
// It is strict: the first line is "#!ipxe"; then blank lines, comments
// ("#…"), echo (ignored), chain/imgfetch/kernel/initrd URL [ARGS…] and
// boot without arguments. Options (--name), labels, goto, || and &&,
// settings commands and every other command are errors, as are control
// characters, invalid UTF-8 and anything beyond the size bounds.
func parseScript(b []byte) ([]command, error) {
	if len(b) > maxScript {
		return nil, fmt.Errorf("script of %d bytes, at most %d", len(b), maxScript)
	}
	if !utf8.Valid(b) {
		return nil, errors.New("script is not valid UTF-8")
	}
	lines := strings.Split(string(b), "\n")
	if strings.TrimRight(lines[0], " \t\r") != scriptMagic {
		return nil, fmt.Errorf("line 1: %q is not %q: not an iPXE script", truncate(lines[0]), scriptMagic)
	}
	var cmds []command
	for i, l := range lines[1:] {
		n := i + 2
		l = strings.TrimSuffix(l, "\r")
		if len(l) > maxLine {
			return nil, fmt.Errorf("line %d: %d bytes, at most %d", n, len(l), maxLine)
		}
		if j := strings.IndexFunc(l, func(r rune) bool { return r != '\t' && (r < ' ' || r == 0x7f) }); j >= 0 {
			return nil, fmt.Errorf("line %d: control character %q", n, l[j])
		}
		f := strings.Fields(l)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		c := command{Line: n, Name: f[0]}
		switch f[0] {
		case cmdEcho:
			// Its text is shown, never run.
		case cmdBoot:
			if len(f) > 1 {
				return nil, fmt.Errorf("line %d: boot takes no arguments here, got %q", n, truncate(strings.Join(f[1:], " ")))
			}
		case cmdChain, cmdImgfetch, cmdKernel, cmdInitrd:
			if len(f) < 2 {
				return nil, fmt.Errorf("line %d: %s without a URL", n, f[0])
			}
			if strings.HasPrefix(f[1], "-") {
				return nil, fmt.Errorf("line %d: %s option %q is not supported", n, f[0], truncate(f[1]))
			}
			for _, a := range f[1:] {
				if a == "||" || a == "&&" {
					return nil, fmt.Errorf("line %d: %q is not supported", n, a)
				}
			}
			c.URL = f[1]
		default:
			return nil, fmt.Errorf("line %d: command %q is not supported (only chain, imgfetch, kernel, initrd, echo, boot)", n, truncate(f[0]))
		}
		if len(cmds) == maxCommands {
			return nil, fmt.Errorf("line %d: more than %d commands", n, maxCommands)
		}
		cmds = append(cmds, c)
	}
	return cmds, nil
}

// settingRE matches one ${…} setting reference.
var settingRE = regexp.MustCompile(`\$\{[^}]*\}?`)

// expand replaces the iPXE settings in s the firmware knows: the MAC as
// ${net0/mac} or ${mac} (colons) and with :hexhyp (hyphens), and ${uuid}
// (empty when the host has none, as iPXE expands an unset setting). Any
// other setting is an error, not an empty string: the script expects
// something this firmware does not have.
func expand(s string, mac net.HardwareAddr, uuid string) (string, error) {
	var errs []error
	out := settingRE.ReplaceAllStringFunc(s, func(ref string) string {
		switch ref {
		case "${net0/mac}", "${mac}":
			return mac.String()
		case "${net0/mac:hexhyp}", "${mac:hexhyp}":
			return strings.ReplaceAll(mac.String(), ":", "-")
		case "${uuid}":
			return uuid
		}
		if !strings.HasSuffix(ref, "}") {
			errs = append(errs, fmt.Errorf("unterminated setting %q", truncate(ref)))
		} else {
			errs = append(errs, fmt.Errorf("unknown setting %q", truncate(ref)))
		}
		return ""
	})
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	return out, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
