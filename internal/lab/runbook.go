package lab

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

const runbookMarker = "# written by caretaker lab; removed when the lab stops\n"

// writeRunbookConfig points runbook at the lab. It returns a function that
// puts back what was there before — but only if the file is still the
// lab's, so an edit made meanwhile is never lost.
func writeRunbookConfig(path, url, token string) (func() error, error) {
	old, err := os.ReadFile(path)
	// A file left by a lab that did not stop cleanly is not worth restoring.
	existed := err == nil && !bytes.HasPrefix(old, []byte(runbookMarker))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read runbook config: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("write runbook config: %w", err)
	}
	ours := []byte(fmt.Sprintf("%surl: %s\ntoken: %s\n", runbookMarker, url, token))
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
