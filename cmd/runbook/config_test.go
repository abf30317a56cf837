package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// writeFileConfig writes runbook's config file as the lab does.
func writeFileConfig(path string, c fileConfig) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	data := fmt.Sprintf("url: %s\ntoken: %s\n", c.URL, c.Token)
	return os.WriteFile(path, []byte(data), 0o600)
}
