package secret

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const strong = "0123456789abcdef0123456789abcdef" // 32 characters

func write(t *testing.T, name, body string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return p
}

func TestReadToken(t *testing.T) {
	ok := write(t, "ok.token", "  "+strong+"\n", 0o600)
	if s, err := ReadToken(ok); err != nil || s != strong {
		t.Errorf("ReadToken(0600, 32 characters) = %q, %v", s, err)
	}
	if s, err := ReadToken(write(t, "owner-only.token", strong, 0o400)); err != nil || s != strong {
		t.Errorf("ReadToken(0400) = %q, %v", s, err)
	}
	for _, tc := range []struct {
		name, body string
		mode       os.FileMode
		want       string
	}{
		{"world-readable", strong, 0o644, "mode 0644: a secret file must not be readable by group or others (chmod 600 "},
		{"group-readable", strong, 0o640, "mode 0640: a secret file must not be readable by group or others"},
		{"short", "abc\n", 0o600, "the token has 3 characters, a token needs at least 32; generate one with `openssl rand -hex 32`"},
		{"31 characters", strong[:31], 0o600, "the token has 31 characters"},
		{"empty", " \n", 0o600, "file is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := write(t, tc.name, tc.body, tc.mode)
			_, err := ReadToken(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("ReadToken = %v, want an error naming %s and containing %q", err, p, tc.want)
			}
			if strings.Contains(err.Error(), strong[:8]) || (tc.name == "short" && strings.Contains(err.Error(), "abc")) {
				t.Errorf("the error shows the secret: %v", err)
			}
		})
	}
	if _, err := ReadToken(filepath.Join(t.TempDir(), "nope")); err == nil || !strings.Contains(err.Error(), "read secret: open ") {
		t.Errorf("missing file: %v", err)
	}
}

// Passwords (BMCs) keep their length rules elsewhere; the mode rule is the same.
func TestRead(t *testing.T) {
	if b, err := Read(write(t, "pw", "pw\n", 0o600)); err != nil || string(b) != "pw\n" {
		t.Errorf("Read = %q, %v", b, err)
	}
	p := write(t, "pw", "pw\n", 0o604)
	want := p + ": mode 0604: a secret file must not be readable by group or others (chmod 600 " + p + ")"
	if _, err := Read(p); err == nil || err.Error() != want {
		t.Errorf("Read(0604) = %v, want %q", err, want)
	}
}
