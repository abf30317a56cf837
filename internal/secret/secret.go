// Package secret reads caretaker's secret files — API, agent and webhook
// tokens, the PXE callback key, BMC passwords — the one way: a file that
// group or others may read is refused, and a token must be long enough
// that it cannot be guessed. No error includes a secret.
package secret

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// MinTokenLength is the fewest characters a token may have. 32 random
// bytes written as hex (64 characters) or base64 (44) are well over it:
//
//	openssl rand -hex 32 > token && chmod 600 token
//	head -c 32 /dev/urandom | base64 > token && chmod 600 token
const MinTokenLength = 32

// HowToGenerate is the advice errors about weak tokens give.
const HowToGenerate = "generate one with `openssl rand -hex 32` or `head -c 32 /dev/urandom | base64`"

// Read returns the content of the secret file at path as it is. A file
// readable by group or others is refused: the secret in it is not one.
// Its errors name the file; callers say what they read it for.
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err // *fs.PathError: "open <path>: …"
	}
	defer f.Close()
	fi, err := f.Stat() // of the file opened, not of what the path names now
	if err != nil {
		return nil, err
	}
	if err := CheckMode(path, fi.Mode()); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<16))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// CheckMode refuses the mode of a secret file that group or others may
// read.
func CheckMode(path string, mode os.FileMode) error {
	if mode.Perm()&0o044 != 0 {
		return fmt.Errorf("%s: mode %#o: a secret file must not be readable by group or others (chmod 600 %s)",
			path, mode.Perm(), path)
	}
	return nil
}

// ReadFile is Read, trimmed of surrounding white space; an empty file is
// an error.
func ReadFile(path string) (string, error) {
	b, err := Read(path)
	if err != nil {
		return "", fmt.Errorf("read secret: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("read secret %s: file is empty", path)
	}
	return s, nil
}

// ReadToken is ReadFile for a bearer token or key: it must have at least
// MinTokenLength characters.
func ReadToken(path string) (string, error) {
	s, err := ReadFile(path)
	if err != nil {
		return "", err
	}
	if err := CheckToken(s); err != nil {
		return "", fmt.Errorf("read secret %s: %w", path, err)
	}
	return s, nil
}

// CheckToken refuses a token shorter than MinTokenLength.
func CheckToken(s string) error {
	if n := len(s); n < MinTokenLength {
		return fmt.Errorf("the token has %d characters, a token needs at least %d; %s", n, MinTokenLength, HowToGenerate)
	}
	return nil
}
