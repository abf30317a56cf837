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

// secretsDir writes a password file, bmc.pass, into a fresh directory and
// returns the directory.
func secretsDir(t testing.TB, content string) string {
	t.Helper()
	return filepath.Dir(writeSecret(t, content))
}

// password_file names a file inside the secrets directory; nothing else on
// the server can be read and sent to a BMC.
func TestPasswordFileConfined(t *testing.T) {
	t.Parallel()
	outside := writeSecret(t, "not-for-a-bmc\n") // readable by root alone, like /etc/shadow
	dir := secretsDir(t, "s3cret\n")
	if err := os.MkdirAll(filepath.Join(dir, "rack1"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{
		"escape":       outside,
		"escape-rel":   "../" + filepath.Base(filepath.Dir(outside)) + "/bmc.pass",
		"inside":       "bmc.pass",
		"rack1/kvm-a1": "../bmc.pass",
	} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, wantErr string
	}{
		{"bmc.pass", ""},
		{"./bmc.pass", ""},
		{"inside", ""},
		{"rack1/kvm-a1", ""}, // a link that stays inside
		{outside, `: password_file names a file inside the BMC secrets directory (provisioner.bmc.secrets_dir): a file name or a relative path without "..", not an absolute path`},
		{"/etc/shadow", `"/etc/shadow": password_file names a file inside`},
		{"../bmc.pass", `"../bmc.pass": password_file names a file inside`},
		{"rack1/../bmc.pass", `"rack1/../bmc.pass": password_file names a file inside`},
		{"escape", "open " + filepath.Join(dir, "escape") + ": path escapes from parent"},
		{"escape-rel", "path escapes from parent"},
		{"rack1", "is not a regular file"},
		{"", "must not be empty"},
	} {
		got, err := readPassword(dir, tc.name)
		switch {
		case tc.wantErr == "" && (err != nil || got != "s3cret"):
			t.Errorf("readPassword(%q) = %q, %v; want the password", tc.name, got, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("readPassword(%q) = %q, %v; want an error with %q", tc.name, got, err, tc.wantErr)
		case err != nil && strings.Contains(err.Error(), "not-for-a-bmc"):
			t.Errorf("error reveals the file: %v", err)
		}
	}
	// Validate refuses the form before anything is read.
	cfg := Config{Type: TypeIPMI, Address: "127.0.0.1", Username: "admin", PasswordFile: "/etc/shadow"}
	if err := cfg.Validate(); err == nil || err.Error() != `password_file: "/etc/shadow": `+PasswordFileRule {
		t.Errorf("Validate: %v", err)
	}
	// Without a secrets directory nothing is read.
	if _, err := readPassword("", "bmc.pass"); err == nil || !strings.Contains(err.Error(), "no BMC secrets directory") {
		t.Errorf("readPassword without a directory: %v", err)
	}
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
			got, err := readPassword(filepath.Dir(p), filepath.Base(p))
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
			cfg:     Config{Type: "redfish", Address: "bmc.example", Username: "root", SecretsDir: "/nonexistent", PasswordFile: "bmc.pass"},
			wantErr: "read BMC password: secrets directory: open /nonexistent: no such file or directory",
		},
		{
			name:    "password file outside the secrets directory",
			cfg:     Config{Type: "redfish", Address: "bmc.example", Username: "root", SecretsDir: filepath.Dir(long), PasswordFile: "/etc/shadow"},
			wantErr: `bmc config: password_file: "/etc/shadow": ` + PasswordFileRule,
		},
		{
			name:    "IPMI password too long",
			cfg:     Config{Type: "ipmi", Address: "127.0.0.1", Username: "admin", SecretsDir: filepath.Dir(long), PasswordFile: filepath.Base(long)},
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
