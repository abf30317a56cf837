package lab

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

const runbookMarker = "# written by caretaker lab; removed when the lab stops\n"

// writeRunbookConfig points runbook at the lab's one server; see
// writeRunbookConfigURLs.
func writeRunbookConfig(path, url, token string) (func() error, error) {
	return writeRunbookConfigURLs(path, []string{url}, token)
}

// runbookConfig is the file the lab writes for runbook: `url:` for one
// server, `urls:` (tried in order while one cannot be connected to) for
// several.
func runbookConfig(urls []string, token string) []byte {
	var b strings.Builder
	b.WriteString(runbookMarker)
	if len(urls) == 1 {
		fmt.Fprintf(&b, "url: %s\n", urls[0])
	} else {
		b.WriteString("urls:\n")
		for _, u := range urls {
			fmt.Fprintf(&b, "  - %s\n", u)
		}
	}
	fmt.Fprintf(&b, "token: %s\n", token)
	return []byte(b.String())
}

// writeRunbookConfigURLs points runbook at the lab's servers, the API
// base URLs of every server (at least one). It returns a function that
// puts back what was there before — but only if the file is still the
// lab's, so an edit made meanwhile is never lost.
func writeRunbookConfigURLs(path string, urls []string, token string) (func() error, error) {
	if len(urls) == 0 {
		return nil, errors.New("write runbook config: no server URL")
	}
	old, err := os.ReadFile(path)
	// A file left by a lab that did not stop cleanly is not worth restoring.
	existed := err == nil && !bytes.HasPrefix(old, []byte(runbookMarker))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read runbook config: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("write runbook config: %w", err)
	}
	ours := runbookConfig(urls, token)
	if err := os.WriteFile(path, ours, 0o600); err != nil {
		return nil, fmt.Errorf("write runbook config: %w", err)
	}
	return func() error {
		now, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(now, ours) {
			return nil // changed or removed since: leave it alone
		}
		if existed {
			return os.WriteFile(path, old, 0o600)
		}
		return os.Remove(path)
	}, nil
}
