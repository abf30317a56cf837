package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path/filepath"
	"strings"

	"caretaker/internal/config"
	"caretaker/internal/yamlfile"
)

// defaultURL is the server's default address.
const defaultURL = "http://127.0.0.1:9300"

// fileConfig is runbook's config file, ~/.config/runbook/config.yml.
// `caretaker lab` writes it so runbook works against a lab with no flags.
type fileConfig struct {
	URL string `yaml:"url"`
	// URLs are the servers of a clustered deployment, tried in order
	// while one cannot be connected to (api.NewClientURLs); set either
	// url or urls.
	URLs      []string `yaml:"urls"`
	Token     string   `yaml:"token"`
	TokenFile string   `yaml:"token_file"`
}

func (c *fileConfig) Validate() error {
	var errs []error
	if c.URL != "" && c.URLs != nil {
		errs = append(errs, yamlfile.Errorf("urls", "set either url or urls, not both"))
	}
	if c.URL != "" {
		if err := checkURL(c.URL); err != nil {
			errs = append(errs, yamlfile.Errorf("url", "%v", err))
		}
	}
	if c.URLs != nil && len(c.URLs) == 0 {
		errs = append(errs, yamlfile.Errorf("urls", "want at least one URL"))
	}
	for i, u := range c.URLs {
		if err := checkURL(u); err != nil {
			errs = append(errs, yamlfile.Errorf(fmt.Sprintf("urls[%d]", i), "%v", err))
		} else if j := indexOf(c.URLs[:i], u); j >= 0 {
			errs = append(errs, yamlfile.Errorf(fmt.Sprintf("urls[%d]", i), "%s is listed twice (urls[%d])", u, j))
		}
	}
	if c.Token != "" && c.TokenFile != "" {
		errs = append(errs, yamlfile.Errorf("token_file", "set either token or token_file, not both"))
	}
	return errors.Join(errs...)
}

// urls are the servers the file names, nil for none.
func (c *fileConfig) urls() []string {
	if c.URL != "" {
		return []string{c.URL}
	}
	return c.URLs
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if strings.TrimRight(v, "/") == strings.TrimRight(s, "/") {
			return i
		}
	}
	return -1
}

// checkURL accepts a server's base URL: http or https, a host, perhaps a
// path (behind a proxy), no credentials, query or fragment.
func checkURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("not a URL: %w", errors.Unwrap(err))
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.Opaque != "":
		return fmt.Errorf("want an http:// or https:// URL with a host, such as https://caretaker:9300; got %q", s)
	case u.User != nil:
		return fmt.Errorf("%s holds credentials: put the token in token_file", u.Redacted())
	case u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(s, "?") || strings.HasSuffix(s, "#"):
		return fmt.Errorf("want a server's base URL without query or fragment; got %q", s)
	}
	return nil
}

// splitURLs reads a comma-separated list of URLs from a flag or variable
// (named what in errors).
func splitURLs(what, v string) ([]string, error) {
	var out []string
	for _, u := range strings.Split(v, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		if err := checkURL(u); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		if indexOf(out, u) >= 0 {
			return nil, fmt.Errorf("%s: %s is listed twice", what, u)
		}
		out = append(out, u)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: want at least one URL", what)
	}
	return out, nil
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
	URLs  []string // one server, or the servers of a clustered deployment, in the order to try them
	Token string
}

// resolve picks the server URLs and token: flags, then RUNBOOK_URL and
// RUNBOOK_TOKEN, then the config file, then the default URL. --url and
// RUNBOOK_URL take a comma-separated list.
func resolve(getenv func(string) string, flagURL, flagTokenFile string) (connection, error) {
	var fc fileConfig
	path := configPath(getenv)
	if err := yamlfile.Load(path, &fc); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return connection{}, fmt.Errorf("runbook config: %w", err)
	}
	c := connection{URLs: []string{defaultURL}, Token: fc.Token}
	if u := fc.urls(); u != nil {
		c.URLs = u
	}
	if fc.TokenFile != "" {
		t, err := config.ReadSecret(fc.TokenFile)
		if err != nil {
			return connection{}, fmt.Errorf("runbook config %s: token_file: %w", path, err)
		}
		c.Token = t
	}
	if v := getenv("RUNBOOK_URL"); v != "" {
		u, err := splitURLs("RUNBOOK_URL", v)
		if err != nil {
			return connection{}, err
		}
		c.URLs = u
	}
	if v := getenv("RUNBOOK_TOKEN"); v != "" {
		c.Token = v
	}
	if flagURL != "" {
		u, err := splitURLs("--url", flagURL)
		if err != nil {
			return connection{}, err
		}
		c.URLs = u
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
