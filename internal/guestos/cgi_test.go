package guestos

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"caretaker/internal/needs"
)

// TestPingCGI runs the guest's ping script with the host's busybox, in
// front of a stand-in ping that records its arguments: a query that is
// not a dotted IPv4 address gets 400 and runs nothing.
func TestPingCGI(t *testing.T) {
	busybox := needs.Program(t, "busybox")
	script := filepath.Join("rootfs", "www", "cgi-bin", "ping")
	for _, tt := range []struct {
		query    string
		pingExit int
		status   string
		body     string
	}{
		{"10.77.250.12", 0, "200 OK", "reachable"},
		{"0.0.0.0", 0, "200 OK", "reachable"},
		{"255.255.255.255", 1, "502 Bad Gateway", "unreachable"},
		{"10.77.250.99", 1, "502 Bad Gateway", "unreachable"},
		{"", 0, "400 Bad Request", ""},
		{"10.77.250", 0, "400 Bad Request", ""},
		{"10.77.250.1.2", 0, "400 Bad Request", ""},
		{"010.77.250.1", 0, "400 Bad Request", ""},
		{"256.1.1.1", 0, "400 Bad Request", ""},
		{"1.2.3.1000", 0, "400 Bad Request", ""},
		{"1..2.3", 0, "400 Bad Request", ""},
		{".1.2.3", 0, "400 Bad Request", ""},
		{"1.2.3.", 0, "400 Bad Request", ""},
		{"1.2.3.-1", 0, "400 Bad Request", ""},
		{"*.*.*.*", 0, "400 Bad Request", ""},
		{"1.2.3.4;reboot", 0, "400 Bad Request", ""},
		{"1.2.3.4%20-f", 0, "400 Bad Request", ""},
		{"-f", 0, "400 Bad Request", ""},
		{" 1.2.3.4", 0, "400 Bad Request", ""},
		{"1.2.3.4\n", 0, "400 Bad Request", ""},
		{"$(reboot)", 0, "400 Bad Request", ""},
		{"fd00::1", 0, "400 Bad Request", ""},
	} {
		t.Run(tt.query, func(t *testing.T) {
			bin := t.TempDir()
			marker := filepath.Join(t.TempDir(), "ran")
			fake := "#!/bin/sh\necho \"$*\" >" + marker + "\necho 'fake ping output'\nexit " + map[bool]string{true: "0", false: "1"}[tt.pingExit == 0] + "\n"
			if err := os.WriteFile(filepath.Join(bin, "ping"), []byte(fake), 0o755); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, busybox, "sh", script)
			cmd.Env = []string{"PATH=" + bin, "QUERY_STRING=" + tt.query}
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("busybox sh %s: %v", script, err)
			}
			header, body, ok := strings.Cut(string(out), "\r\n\r\n")
			if !ok {
				t.Fatalf("no blank line after the header in %q", out)
			}
			if want := "Status: " + tt.status + "\r\n"; !strings.HasPrefix(header, want) {
				t.Errorf("answer starts %q, want %q (busybox httpd wants Status first)", header, want)
			}
			ran, err := os.ReadFile(marker)
			if tt.body == "" {
				if err == nil {
					t.Errorf("ping ran (%q) for a refused query", ran)
				}
				return
			}
			if want := "-c 2 -W 1 " + tt.query + "\n"; string(ran) != want {
				t.Errorf("ping ran with %q (%v), want %q", ran, err, want)
			}
			if want := tt.body + "\nfake ping output\n"; body != want {
				t.Errorf("body %q, want %q", body, want)
			}
		})
	}
}
