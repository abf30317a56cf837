package bmc

import (
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"caretaker/internal/golden"
	"caretaker/internal/yamlfile"
)

var update = flag.Bool("update", false, "rewrite the .err golden files in testdata")

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func loadConfig(path string) error {
	var c Config
	return yamlfile.Load(path, &c)
}

func TestConfigFiles(t *testing.T) {
	t.Parallel()
	golden.GoodFiles(t, "testdata/config/good/*.yml", loadConfig)
	golden.BadFiles(t, "testdata/config/bad/*.yml", loadConfig, *update)
}

// writeSecret writes a password file into a fresh directory.
func writeSecret(t testing.TB, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bmc.pass")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadPassword(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, content, want, wantErr string
		mode                         os.FileMode
	}{
		{name: "plain", content: "s3cret", want: "s3cret"},
		{name: "newline", content: "s3cret\n", want: "s3cret"},
		{name: "crlf", content: "s3cret\r\n", want: "s3cret"},
		{name: "spaces kept", content: " s3 cret \n", want: " s3 cret "},
		{name: "empty", content: "\n", wantErr: "is empty"},
		{name: "two lines", content: "s3cret\nother\n", wantErr: "has more than one line"},
		{name: "world-readable", content: "s3cret\n", mode: 0o644, wantErr: "mode 0644: a secret file must not be readable by group or others"},
		{name: "group-readable", content: "s3cret\n", mode: 0o640, wantErr: "mode 0640"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeSecret(t, tc.content)
			if tc.mode != 0 {
				os.Chmod(p, tc.mode)
			}
			got, err := readPassword(p)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), p) {
					t.Fatalf("err = %v, want one naming %s with %q", err, p, tc.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Fatalf("error reveals the password: %v", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("readPassword = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	long := writeSecret(t, "a-password-of-25-bytes-xx\n")
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{
			name:    "invalid config names fields",
			cfg:     Config{Type: "ipmi"},
			wantErr: "bmc config: address: must not be empty\nusername: must not be empty\npassword_file: must not be empty",
		},
		{
			name:    "missing password file",
			cfg:     Config{Type: "redfish", Address: "bmc.example", Username: "root", PasswordFile: "/nonexistent/bmc.pass"},
			wantErr: "read BMC password: open /nonexistent/bmc.pass: no such file or directory",
		},
		{
			name:    "IPMI password too long",
			cfg:     Config{Type: "ipmi", Address: "127.0.0.1", Username: "admin", PasswordFile: long},
			wantErr: "read BMC password: " + long + ": IPMI passwords have at most 20 bytes",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg, discard())
			if err == nil || err.Error() != tc.wantErr {
				t.Fatalf("New: %v\nwant: %s", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "a-password") {
				t.Fatalf("error reveals the password: %v", err)
			}
		})
	}
}

func TestPowerStateString(t *testing.T) {
	t.Parallel()
	for s, want := range map[PowerState]string{PowerUnknown: "unknown", PowerOn: "on", PowerOff: "off", PowerState(7): "unknown"} {
		if got := s.String(); got != want {
			t.Errorf("PowerState(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}
