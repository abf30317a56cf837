package main

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"caretaker/internal/config"
	"caretaker/internal/yamlfile"
)

// defaultURL is the server's default address.
const defaultURL = "http://127.0.0.1:9300"

// fileConfig is runbook's config file, ~/.config/runbook/config.yml.
// `caretaker lab` writes it so runbook works against a lab with no flags.
type fileConfig struct {
	URL       string `yaml:"url"`
	Token     string `yaml:"token"`
	TokenFile string `yaml:"token_file"`
}

func (c *fileConfig) Validate() error {
	if c.Token != "" && c.TokenFile != "" {
		return yamlfile.Errorf("token_file", "set either token or token_file, not both")
	}
	return nil
}

// configPath is where runbook looks for its config file.
func configPath(getenv func(string) string) string {
	if p := getenv("RUNBOOK_CONFIG"); p != "" {
		return p
	}
	dir := getenv("XDG_CONFIG_HOME")
	if dir == "" {
		dir = filepath.Join(getenv("HOME"), ".config")
	}
	return filepath.Join(dir, "runbook", "config.yml")
}

// connection is where and how to reach the server.
type connection struct {
	URL   string
	Token string
}

// resolve picks the server URL and token: flags, then RUNBOOK_URL and
// RUNBOOK_TOKEN, then the config file, then the default URL.
func resolve(getenv func(string) string, flagURL, flagTokenFile string) (connection, error) {
	var fc fileConfig
	path := configPath(getenv)
	if err := yamlfile.Load(path, &fc); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return connection{}, fmt.Errorf("runbook config: %w", err)
	}
	c := connection{URL: defaultURL, Token: fc.Token}
	if fc.URL != "" {
		c.URL = fc.URL
	}
	if fc.TokenFile != "" {
		t, err := config.ReadSecret(fc.TokenFile)
		if err != nil {
			return connection{}, fmt.Errorf("runbook config %s: token_file: %w", path, err)
		}
		c.Token = t
	}
	if v := getenv("RUNBOOK_URL"); v != "" {
		c.URL = v
	}
	if v := getenv("RUNBOOK_TOKEN"); v != "" {
		c.Token = v
	}
	if flagURL != "" {
		c.URL = flagURL
	}
	if flagTokenFile != "" {
		t, err := config.ReadSecret(flagTokenFile)
		if err != nil {
			return connection{}, fmt.Errorf("--token-file: %w", err)
		}
		c.Token = t
	}
	if c.Token == "" {
		return c, fmt.Errorf("no API token: set RUNBOOK_TOKEN, pass --token-file, or put token_file in %s (a running `caretaker lab` writes it)", path)
	}
	return c, nil
}
