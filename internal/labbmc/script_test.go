package labbmc

import (
	"net"
	"slices"
	"strings"
	"testing"
)

func TestParseScript(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, script string
		want         []command
		err          string
	}{
		{name: "the server's chain script",
			script: "#!ipxe\nchain http://10.0.0.1:9300/pxe/ipxe?mac=${net0/mac:hexhyp}&uuid=${uuid}\n",
			want:   []command{{Line: 2, Name: "chain", URL: "http://10.0.0.1:9300/pxe/ipxe?mac=${net0/mac:hexhyp}&uuid=${uuid}"}}},
		{name: "lab profile",
			script: "#!ipxe\necho caretaker lab: reporting the boot\nimgfetch http://s/pxe/booted?token=ab\n",
			want:   []command{{Line: 2, Name: "echo"}, {Line: 3, Name: "imgfetch", URL: "http://s/pxe/booted?token=ab"}}},
		{name: "kernel profile, CRLF, comments and blank lines",
			script: "#!ipxe \r\n# a comment\r\n\r\n\tkernel /vmlinuz console=ttyS0 url=http://x/cc\r\ninitrd /initrd.img\r\nboot\r\n",
			want:   []command{{Line: 4, Name: "kernel", URL: "/vmlinuz"}, {Line: 5, Name: "initrd", URL: "/initrd.img"}, {Line: 6, Name: "boot"}}},
		{name: "magic only", script: "#!ipxe", want: nil},
		{name: "no magic", script: "chain http://x/\n", err: `line 1: "chain http://x/" is not "#!ipxe"`},
		{name: "shell script", script: "#!/bin/sh\n", err: "not an iPXE script"},
		{name: "empty", script: "", err: "not an iPXE script"},
		{name: "unknown command", script: "#!ipxe\ndhcp\n", err: `line 2: command "dhcp" is not supported`},
		{name: "goto", script: "#!ipxe\nimgfetch http://x/ || goto fail\n", err: `line 2: "||" is not supported`},
		{name: "label", script: "#!ipxe\n:retry\n", err: `command ":retry" is not supported`},
		{name: "option", script: "#!ipxe\nchain --autofree http://x/\n", err: `chain option "--autofree" is not supported`},
		{name: "no URL", script: "#!ipxe\nkernel\n", err: "line 2: kernel without a URL"},
		{name: "boot with an image", script: "#!ipxe\nboot vmlinuz\n", err: "boot takes no arguments"},
		{name: "control character", script: "#!ipxe\necho a\x1bb\n", err: `line 2: control character '\x1b'`},
		{name: "NUL", script: "#!ipxe\necho \x00\n", err: "control character"},
		{name: "invalid UTF-8", script: "#!ipxe\necho \xff\n", err: "not valid UTF-8"},
		{name: "long line", script: "#!ipxe\necho " + strings.Repeat("a", maxLine) + "\n", err: "line 2: 8197 bytes, at most 8192"},
		{name: "too big", script: "#!ipxe\n" + strings.Repeat("\n", maxScript), err: "at most 65536"},
		{name: "too many commands", script: "#!ipxe\n" + strings.Repeat("echo\n", maxCommands+1), err: "more than 256 commands"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseScript([]byte(tc.script))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parseScript = %+v, %v; want an error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("parseScript = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestExpand(t *testing.T) {
	t.Parallel()
	mac, _ := net.ParseMAC("52:54:00:AA:bb:01")
	const uuid = "4c4c4544-0079-3510-8052-b2c04f4a4e79"
	for _, tc := range []struct {
		in, uuid, want, err string
	}{
		{in: "http://x/pxe/ipxe?mac=${net0/mac:hexhyp}&uuid=${uuid}", uuid: uuid, want: "http://x/pxe/ipxe?mac=52-54-00-aa-bb-01&uuid=" + uuid},
		{in: "http://x/?mac=${net0/mac:hexhyp}&uuid=${uuid}", want: "http://x/?mac=52-54-00-aa-bb-01&uuid="},
		{in: "${mac}/${net0/mac}/${mac:hexhyp}", want: "52:54:00:aa:bb:01/52:54:00:aa:bb:01/52-54-00-aa-bb-01"},
		{in: "no settings $ {x} }", want: "no settings $ {x} }"},
		{in: "http://x/${hostname}", err: `unknown setting "${hostname}"`},
		{in: "http://x/${net1/mac}", err: `unknown setting "${net1/mac}"`},
		{in: "http://x/${uuid", err: `unterminated setting "${uuid"`},
	} {
		got, err := expand(tc.in, mac, tc.uuid)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("expand(%q) = %q, %v; want an error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("expand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// FuzzParseScript: any input is parsed or refused within the bounds, and
// what is parsed holds only the commands the firmware runs, each URL
// command with a URL that is no option.
func FuzzParseScript(f *testing.F) {
	for _, s := range []string{
		"#!ipxe\nchain http://10.0.0.1:9300/pxe/ipxe?mac=${net0/mac:hexhyp}&uuid=${uuid}\n",
		"#!ipxe\necho caretaker lab\nimgfetch http://s/pxe/booted?mac=52:54:00:1a:b0:01&attempt=1&exp=1&token=ab\n",
		"#!ipxe\r\nkernel /vmlinuz a=b\r\ninitrd /i\r\nboot\r\n",
		"#!ipxe\n:l\ngoto l\n", "#!ipxe\nboot x\n", "", "#!ipxe",
	} {
		f.Add([]byte(s))
	}
	mac, _ := net.ParseMAC("52:54:00:1a:b0:01")
	f.Fuzz(func(t *testing.T, b []byte) {
		cmds, err := parseScript(b)
		if err != nil {
			return
		}
		if len(cmds) > maxCommands || len(b) > maxScript {
			t.Fatalf("%d commands from %d bytes accepted", len(cmds), len(b))
		}
		for _, c := range cmds {
			switch c.Name {
			case cmdChain, cmdImgfetch, cmdKernel, cmdInitrd:
				if c.URL == "" || strings.HasPrefix(c.URL, "-") || strings.ContainsAny(c.URL, " \t\r\n") {
					t.Fatalf("%s with URL %q", c.Name, c.URL)
				}
				// Every setting is expanded or refused.
				if s, err := expand(c.URL, mac, ""); err == nil && strings.Contains(s, "${") {
					t.Fatalf("expand(%q) = %q", c.URL, s)
				}
			case cmdEcho, cmdBoot:
				if c.URL != "" {
					t.Fatalf("%s with URL %q", c.Name, c.URL)
				}
			default:
				t.Fatalf("command %q accepted", c.Name)
			}
			if c.Line < 2 {
				t.Fatalf("command on line %d", c.Line)
			}
		}
	})
}
